"""The PyTorch + PEFT side of the CPU side-by-side benchmark (scripts/side_by_side_cpu.sh):
one fine-tuning step (forward, cross-entropy, backward, AdamW; or a forward pass, below) of a checkpoint (BERT, RoBERTa,
ELECTRA or DistilBERT: AutoModelForSequenceClassification, each family's module names) under
each method, in float32 on the CPU with `torch.set_num_threads(THREADS)` — the same work as
`spafit bench --model MODEL --batch-size B --seq-len T --method M`:

  full    every tensor trains
  bitfit  every bias of the encoder (LayerNorm biases included) + the classifier
  lora    r 8, alpha 16, dropout 0.1 on query and value of every layer (+ classifier)
  spafit  layers [0, N1) frozen, [N1, N2) biases, [N2, L) biases + LoRA r 8, alpha 16,
          dropout 0.1 on all six linear maps (+ classifier)
  lora-dora, spafit-dora   lora and spafit with DoRA adapters (use_dora; `spafit bench --dora`)

Training mode (dropout on), random token ids (the first one [CLS]), every token real, two
labels. Prints one JSON line per method prefixed `TORCH`; the step time is the median;
`peak_mem_mib` is the process's peak resident memory over the steps (warm-up included), as
`spafit bench` measures it: Linux's VmHWM, started over from the resident memory once the
model, optimizer and batch exist (`resident_before_steps_mib`). Run one method per process
for a peak of its own (the side-by-side script does).
With TORCH_CPU_BENCH_DTYPE=bf16 the forward and loss run under `torch.autocast("cpu",
torch.bfloat16)` (PyTorch's mixed precision; beside `spafit bench --dtype bf16`).
With TORCH_CPU_BENCH_PASS=inference each step is a forward pass in evaluation mode under
`torch.inference_mode()` to the logits (beside `spafit bench --inference`).
usage: torch_peft_cpu_bench.py MODEL_DIR B T STEPS WARMUP THREADS N1 N2 METHOD...
"""
import json
import statistics
import sys
import time

import contextlib
import os

import torch
from transformers import AutoModelForSequenceClassification

SIX = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
# DistilBERT's and DeBERTa-v2's names of the same maps.
SIX_DISTILBERT = ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"]
SIX_DEBERTA = ["query_proj", "key_proj", "value_proj", "attention.output.dense", "intermediate.dense",
               "output.dense"]


def layer_of(name):
    return int(name.split(".layer.")[1].split(".")[0])


def model_for(path, method, n1, n2):
    torch.manual_seed(0)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_implementation="sdpa")
    except ValueError:
        # DeBERTa's disentangled attention has no SDPA path in transformers.
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    layers = model.config.num_hidden_layers
    distilbert = model.config.model_type == "distilbert"
    # The encoder's layers, and the head (with the dense map spafit trains with it: RoBERTa's
    # and ELECTRA's classifier.dense, DistilBERT's pre_classifier).
    encoder = "distilbert.transformer." if distilbert else f"{model.base_model_prefix}.encoder."
    head = ("classifier", "pre_classifier")
    six = SIX_DISTILBERT if distilbert else SIX_DEBERTA if model.config.model_type == "deberta-v2" else SIX
    if method == "bitfit":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith(head) or (name.startswith(encoder) and name.endswith(".bias"))
    elif method in ("lora", "spafit", "lora-dora", "spafit-dora"):
        from peft import LoraConfig, get_peft_model
        adapters = method.removesuffix("-dora")
        targets, lora_layers = (six[:3:2], list(range(layers))) if adapters == "lora" else (six, list(range(n2, layers)))
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=targets,
                                                 layers_to_transform=lora_layers, modules_to_save=["classifier"],
                                                 use_dora=method.endswith("-dora")))
        if adapters == "spafit":
            for name, p in model.named_parameters():
                if name.endswith(".bias") and ".layer." in name and layer_of(name) >= n1:
                    p.requires_grad = True
    return model


def proc_status_mib(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def reset_peak_resident():
    # Linux 4.0 on: the peak starts over from the current resident memory.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def bench(path, method, batch, seq, steps, warmup, n1, n2):
    inference = os.environ.get("TORCH_CPU_BENCH_PASS", "training") == "inference"
    model = model_for(path, method, n1, n2)
    model = model.eval() if inference else model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(1000, model.config.vocab_size, (batch, seq), generator=g)
    ids[:, 0] = 101
    labels = torch.arange(batch) % 2

    bf16 = os.environ.get("TORCH_CPU_BENCH_DTYPE", "f32") == "bf16"
    peak_reset = reset_peak_resident()
    resident_before = proc_status_mib("VmRSS:")

    def forward_only():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            model(input_ids=ids).logits.float().numpy()

    def training_step():
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step = forward_only if inference else training_step

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    peak = proc_status_mib("VmHWM:") if peak_reset else None
    times.sort()
    ms = statistics.median(times) * 1e3  # an even count's: the mean of the middle two, as spafit bench
    line = {"method": method, "batch": batch, "seq_len": seq, "ms_per_step": round(ms, 3),
            "trainable_params": sum(p.numel() for p in params), "threads": torch.get_num_threads(),
            "dtype": "bf16" if bf16 else "f32", "pass": "inference" if inference else "training",
            "peak_mem_mib": peak, "resident_before_steps_mib": resident_before,
            "torch": torch.__version__}
    print("TORCH " + json.dumps(line), flush=True)


if __name__ == "__main__":
    path, batch, seq, steps, warmup, threads, n1, n2 = sys.argv[1], *map(int, sys.argv[2:9])
    torch.set_num_threads(threads)
    for method in sys.argv[9:] or ["full", "bitfit", "lora", "spafit"]:
        bench(path, method, batch, seq, steps, warmup, n1, n2)
