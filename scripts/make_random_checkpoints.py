"""Random checkpoints of published shapes, made by transformers (no network), for
`MODEL=DIR scripts/side_by_side_cpu.sh` on families whose real checkpoints the package
registries do not carry.

usage: .cache/torchenv/bin/python scripts/make_random_checkpoints.py [OUT]   (default .cache/models)
writes OUT/random-distilbert-base (DistilBertForSequenceClassification, distilbert-base's
shape) and OUT/random-electra-small (ElectraForPreTraining, electra-small-discriminator's).
"""
import sys

import torch
from transformers import (DistilBertConfig, DistilBertForSequenceClassification, ElectraConfig,
                          ElectraForPreTraining)

out = sys.argv[1] if len(sys.argv) > 1 else ".cache/models"
torch.manual_seed(0)
DistilBertForSequenceClassification(DistilBertConfig(num_labels=2)).save_pretrained(
    f"{out}/random-distilbert-base")
electra_small = ElectraConfig(vocab_size=30522, embedding_size=128, hidden_size=256,
                              num_hidden_layers=12, num_attention_heads=4, intermediate_size=1024)
ElectraForPreTraining(electra_small).save_pretrained(f"{out}/random-electra-small")
print("wrote", f"{out}/random-distilbert-base", f"{out}/random-electra-small")
