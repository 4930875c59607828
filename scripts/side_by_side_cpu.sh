#!/usr/bin/env bash
# PyTorch + PEFT beside `spafit bench` on this machine's CPU, alternating in ONE run with the
# same work: all-MiniLM-L6-v2 (or the checkpoint MODEL names), batch 16 (BATCH), fixed lengths 64 and 256, dropout on, AdamW
# (or forward passes alone: PASS=inference); full,
# BitFit, LoRA (query, value) and SPAFIT (N1 2, N2 4, r 8, six maps). Two rounds; the table
# ends with the speed ratio (PyTorch ms / spafit ms: above 1 means spafit is faster). A second
# table gives each side's peak resident memory over the steps (Linux's VmHWM, started over once
# the model is loaded; each method in a process of its own), what the steps added to the memory
# resident before them, and the ratios PyTorch / spafit (above 1: spafit needs less).
#
# usage: scripts/side_by_side_cpu.sh [VENV]   (default .cache/torchenv; it needs torch,
# transformers and peft, and is created with them when missing: about 5 GB, not part of CI)
# env: STEPS (5), WARMUP (2), ROUNDS (2), LENGTHS ("64 256"), METHODS ("full bitfit lora spafit";
# also lora-dora and spafit-dora: DoRA adapters, PEFT's use_dora beside `spafit bench --dora`),
# DTYPE (f32; bf16: `spafit bench --dtype bf16` beside PyTorch under CPU bf16 autocast),
# MODEL (a checkpoint folder: BERT, RoBERTa, ELECTRA or DistilBERT), PASS (training; inference:
# forward passes in evaluation mode, `spafit bench --inference` beside PyTorch's
# `inference_mode`, as evaluation and prediction run them), BATCH (16) examples a step
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.cache/torchenv}
steps=${STEPS:-5}; warmup=${WARMUP:-2}; rounds=${ROUNDS:-2}
lengths=${LENGTHS:-"64 256"}; methods=${METHODS:-"full bitfit lora spafit"}
dtype=${DTYPE:-f32}
model=${MODEL:-.cache/models/all-MiniLM-L6-v2}
threads=$(nproc)
pass=${PASS:-training}; batch=${BATCH:-16}
case $pass in
    training) inference=() ;;
    inference) inference=(--inference) ;;
    *) echo "PASS is training or inference, not $pass" >&2; exit 2 ;;
esac

if ! "$venv/bin/python" -c "import torch, transformers, peft" 2>/dev/null; then
    # PyPI's torch (a CUDA build) where the CPU wheels' index cannot be reached: both run
    # the same CPU kernels here.
    echo "creating $venv (torch 2.15, the CPU wheel if its index answers, transformers 5.24, peft 0.21.2) ..." >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --index-url https://download.pytorch.org/whl/cpu "torch==2.15.*" \
        || "$venv/bin/pip" install -q "torch==2.15.*"
    "$venv/bin/pip" install -q "transformers==5.24.*" "peft==0.21.2"
fi
scripts/fetch_assets.sh >/dev/null
cargo build --release --quiet
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
echo "machine: $cpu, $threads cores; torch and spafit threads $threads; $dtype; $pass; $model; $(date -u +%FT%TZ)"

results=$(mktemp)
for round in $(seq "$rounds"); do
    for len in $lengths; do
        for method in $methods; do
            t=$(TORCH_CPU_BENCH_DTYPE=$dtype TORCH_CPU_BENCH_PASS=$pass "$venv/bin/python" scripts/torch_peft_cpu_bench.py "$model" "$batch" "$len" "$steps" "$warmup" \
                "$threads" 2 4 "$method" 2>/dev/null | sed -n 's/^TORCH //p')
            # lora-dora and spafit-dora: the method with `--dora`.
            adapters=${method%-dora}; strata=()
            [ "$adapters" != "$method" ] && strata=(--dora)
            [ "$adapters" = spafit ] && strata+=(--n1 2 --n2 4)
            s=$("${CARGO_TARGET_DIR:-target}"/release/spafit bench --threads "$threads" --model "$model" --method "$adapters" "${strata[@]}" \
                --batch-size "$batch" --seq-len "$len" --steps "$steps" --warmup "$warmup" --dtype "$dtype" "${inference[@]}")
            fields='import json,sys; r = json.load(sys.stdin); print(r["ms_per_step"], r["peak_mem_mib"], r["resident_before_steps_mib"])'
            # Assigned first: a line that does not parse stops the run here (set -e).
            torch_fields=$(echo "$t" | python3 -c "$fields")
            spafit_fields=$(echo "$s" | python3 -c "$fields")
            echo "$round $len $method $torch_fields $spafit_fields" | tee -a "$results" >&2
        done
    done
done
python3 - "$results" "$batch" <<'PY'
import sys, collections
batch = sys.argv[2]
rows = collections.OrderedDict()
memory = collections.OrderedDict()
for line in open(sys.argv[1]):
    r, length, method, t, t_peak, t_before, s, s_peak, s_before = line.split()
    rows.setdefault((int(length), method), []).append((float(t), float(s)))
    memory.setdefault((int(length), method), []).append((t_peak, t_before, s_peak, s_before))
print("| batch × length | method | PyTorch + PEFT ms/step (rounds) | spafit ms/step (rounds) | speed ratio PyTorch/spafit |")
print("|---|---|---|---|---|")
for (length, method), v in rows.items():
    ts = " / ".join(f"{t:.0f}" for t, _ in v)
    ss = " / ".join(f"{s:.0f}" for _, s in v)
    ratio = sum(t for t, _ in v) / sum(s for _, s in v)
    print(f"| {batch} × {length} | {method} | {ts} | {ss} | {ratio:.2f}× |")
print()
print("| batch × length | method | PyTorch + PEFT peak MiB (added by the steps) | spafit peak MiB (added by the steps) | memory ratio PyTorch/spafit: peak, added |")
print("|---|---|---|---|---|")
for (length, method), v in memory.items():
    if any("None" in m for m in v):
        print(f"| {batch} × {length} | {method} | (peak not measurable here: needs Linux's /proc/self/clear_refs) | | |")
        continue
    # The largest over the rounds: a peak is what a machine must have.
    tp, sp = (max(float(m[i]) for m in v) for i in (0, 2))
    t_added = max(float(m[0]) - float(m[1]) for m in v)
    s_added = max(float(m[2]) - float(m[3]) for m in v)
    print(f"| {batch} × {length} | {method} | {tp:.0f} ({t_added:.0f}) | {sp:.0f} ({s_added:.0f}) | {tp / sp:.2f}×, {t_added / s_added:.2f}× |")
PY
rm -f "$results"
