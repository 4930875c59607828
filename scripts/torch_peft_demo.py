"""The PyTorch + PEFT side of the demo side by side (scripts/side_by_side_demo.sh): replays the
batches `spafit demo --write-batches FILE` trained on — the same examples, token ids and labels
in the same order, each batch padded to its longest row — with the demo's settings: AdamW
(betas 0.9/0.999, eps 1e-8, weight decay 0.01 except biases and LayerNorm), linear warmup over
ceil(6% of the steps) then linear decay, gradient-norm clip 1.0, dropout 0.1, float32 on the
CPU with `torch.set_num_threads(THREADS)`. Then evaluates on the demo's dev split (every tenth
Rotten Tomatoes row, max length 64, batches of 64 sorted by length).

Prints one JSON line prefixed `TORCH`: train_seconds (the optimizer steps, batch tensors
included; loading and evaluation excluded, as spafit's train_seconds), dev_accuracy, steps.
usage: torch_peft_demo.py MODEL_DIR BATCHES_JSONL DATA_CSV METHOD LR THREADS N1 N2
"""
import csv
import json
import math
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from torch_peft_cpu_bench import model_for  # noqa: E402  the same four methods as the bench


def padded(rows, pad=0):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def dev_split(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["source"] == "rotten_tomatoes"]
    return [(r["text"], int(r["label"])) for i, r in enumerate(rows) if i % 10 == 0]


def evaluate(model, tokenizer, dev):
    enc = [tokenizer(t, truncation=True, max_length=64)["input_ids"] for t, _ in dev]
    order = sorted(range(len(dev)), key=lambda i: len(enc[i]))
    correct = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), 64):
            chunk = order[start : start + 64]
            ids, mask = padded([enc[i] for i in chunk])
            pred = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
            correct += sum(int(p) == dev[i][1] for p, i in zip(pred.tolist(), chunk))
    return correct / len(dev)


def main():
    path, batches_path, data, method = sys.argv[1:5]
    lr, (threads, n1, n2) = float(sys.argv[5]), map(int, sys.argv[6:9])
    torch.set_num_threads(threads)
    steps = [json.loads(line) for line in open(batches_path)]
    model = model_for(path, method, n1, n2).train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_decay = {n for n, _ in named if n.endswith(".bias") or "LayerNorm" in n}  # as spafit
    exempt = [p for n, p in named if n in no_decay]
    decayed = [p for n, p in named if n not in no_decay]
    optimizer = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": 0.01}, {"params": exempt, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.999), eps=1e-8)
    total = len(steps)
    warmup = math.ceil(0.06 * total)

    def lr_at(k):
        return k / max(warmup, 1) if k < warmup else max(0.0, (total - k) / max(total - warmup, 1))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    started = time.perf_counter()
    for s in steps:
        ids, mask = padded(s["input_ids"])
        types, _ = padded(s["token_type_ids"])
        labels = torch.tensor(s["labels"], dtype=torch.long)
        loss = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    train_seconds = time.perf_counter() - started

    from transformers import AutoTokenizer

    accuracy = evaluate(model, AutoTokenizer.from_pretrained(path), dev_split(data))
    line = {"method": method, "lr": lr, "steps": total, "train_seconds": round(train_seconds, 2),
            "dev_accuracy": round(accuracy, 4), "trainable_params": sum(p.numel() for _, p in named),
            "threads": torch.get_num_threads(), "torch": torch.__version__}
    print("TORCH " + json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
