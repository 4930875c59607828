"""The PyTorch + PEFT side of the side-by-side benchmark: one fine-tuning step (forward,
loss, backward, fused AdamW) of a random-weight BERT under each method, on the same GPU and
with the same work as `spafit bench --shape SHAPE --batch-size B --seq-len T`:

  full    every tensor trains
  bitfit  every bias of the encoder + the classifier
  lora    r 8, alpha 16 on query and value of every layer (+ classifier)
  spafit  layers [0, N1) frozen, [N1, N2) biases, [N2, L) biases + LoRA r 8 on all six linear
          maps (+ classifier), N1 and N2 the nearest whole numbers to L/3 and 2L/3 — spafit's
          defaults

bf16 autocast, dropout on (training mode), random token ids, no padding. A method written
`M/inference` times forward passes instead, in evaluation mode under `inference_mode` and
autocast, to the logits (beside `spafit bench --inference`). Prints one JSON line per method
prefixed `TORCH`. usage: torch_peft_bench.py SHAPE B T STEPS WARMUP [METHOD...] (default: the
four methods and spafit/inference)
Runs on the GPU; TORCH_PEFT_BENCH_DEVICE=cpu runs it on the CPU (the GPU check's rehearsal).
"""
import json
import os
import statistics
import sys
import time

import torch
from transformers import BertConfig, BertForSequenceClassification

# (hidden, layers, heads), as `spafit bench --shape` builds them.
SHAPES = {"tiny": (128, 2, 2), "mini": (256, 4, 4), "base": (768, 12, 12), "large": (1024, 24, 16)}
DEVICE = os.environ.get("TORCH_PEFT_BENCH_DEVICE", "cuda")


def synchronize():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def model_for(shape, method):
    hidden, layers, heads = SHAPES[shape]
    config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=4 * hidden, vocab_size=30522, num_labels=2, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    if method == "bitfit":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("classifier") or (name.startswith("bert.encoder.") and name.endswith(".bias"))
    elif method in ("lora", "spafit"):
        from peft import LoraConfig, get_peft_model
        if method == "lora":
            targets, lora_layers = ["query", "value"], list(range(layers))
        else:
            targets = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
            lora_layers = list(range(round(2 * layers / 3), layers))
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=targets,
                                                 layers_to_transform=lora_layers, modules_to_save=["classifier"]))
        if method == "spafit":
            for name, p in model.named_parameters():
                if name.endswith(".bias") and ".layer." in name:
                    if int(name.split(".layer.")[1].split(".")[0]) >= round(layers / 3):
                        p.requires_grad = True
    return model


def bench(shape, key, batch, seq, steps, warmup):
    method, _, pass_ = key.partition("/")
    inference = pass_ == "inference"
    model = model_for(shape, method).to(DEVICE)
    model = model.eval() if inference else model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01, fused=DEVICE == "cuda")
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1000, 30522, (batch, seq), generator=g).to(DEVICE)
    labels = (torch.arange(batch) % 2).to(DEVICE)

    def training_step():
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def forward_only():
        with torch.inference_mode(), torch.autocast(DEVICE, dtype=torch.bfloat16):
            model(input_ids=ids).logits.float().cpu()

    step = forward_only if inference else training_step

    for _ in range(warmup):
        step()
    synchronize()
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        synchronize()
        times.append(time.perf_counter() - t)
    times.sort()
    ms = statistics.median(times) * 1e3  # an even count's: the mean of the middle two, as spafit bench
    line = {"method": key, "pass": "inference" if inference else "training", "shape": shape, "batch": batch, "seq_len": seq, "ms_per_step": round(ms, 3),
            "samples_per_s": round(batch * 1e3 / ms, 1),
            "peak_device_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if DEVICE == "cuda" else None,
            "trainable_params": sum(p.numel() for p in params), "torch": torch.__version__}
    print("TORCH " + json.dumps(line), flush=True)
    del model, optimizer
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


if __name__ == "__main__":
    shape, batch, seq, steps, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    for method in sys.argv[6:] or ["full", "bitfit", "lora", "spafit", "spafit/inference"]:
        bench(shape, method, batch, seq, steps, warmup)
