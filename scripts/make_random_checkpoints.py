"""Random checkpoints of published shapes, made by transformers (no network), for
`MODEL=DIR scripts/side_by_side_cpu.sh` on families whose real checkpoints the package
registries do not carry.

usage: .cache/torchenv/bin/python scripts/make_random_checkpoints.py [OUT]   (default .cache/models)
writes OUT/random-distilbert-base (DistilBertForSequenceClassification, distilbert-base's
shape), OUT/random-electra-small (ElectraForPreTraining, electra-small-discriminator's) and
OUT/random-deberta-v3-base (DebertaV2ForSequenceClassification, deberta-v3-base's: relative
positions alone in 256 logarithmic buckets, no segment table).
"""
import sys

import torch
from transformers import (DebertaV2Config, DebertaV2ForSequenceClassification, DistilBertConfig,
                          DistilBertForSequenceClassification, ElectraConfig,
                          ElectraForPreTraining)

out = sys.argv[1] if len(sys.argv) > 1 else ".cache/models"
torch.manual_seed(0)
DistilBertForSequenceClassification(DistilBertConfig(num_labels=2)).save_pretrained(
    f"{out}/random-distilbert-base")
electra_small = ElectraConfig(vocab_size=30522, embedding_size=128, hidden_size=256,
                              num_hidden_layers=12, num_attention_heads=4, intermediate_size=1024)
ElectraForPreTraining(electra_small).save_pretrained(f"{out}/random-electra-small")
deberta_v3_base = DebertaV2Config(
    vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, max_position_embeddings=512, type_vocab_size=0, layer_norm_eps=1e-7,
    relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=256,
    max_relative_positions=-1, share_att_key=True, norm_rel_ebd="layer_norm",
    position_biased_input=False, pooler_dropout=0, pooler_hidden_act="gelu", num_labels=2)
DebertaV2ForSequenceClassification(deberta_v3_base).save_pretrained(f"{out}/random-deberta-v3-base")
print("wrote", f"{out}/random-distilbert-base", f"{out}/random-electra-small",
      f"{out}/random-deberta-v3-base")
