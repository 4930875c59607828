#!/usr/bin/env bash
# The GPU check, in two halves. A GPU is lent rarely and for minutes: everything is built
# here, and one call there runs it all and prints one table, failures first.
#
#   scripts/gpu_check.sh build   here (no GPU needed): compiles every kernel with the pinned
#                                nvcc and builds, release and stripped, into gpu-bundle/
#                                (ignored by git): the tensor-core wrapper tests, the
#                                cross-backend op tests, the whole-model tests, spafit, and the
#                                GEMM microbenchmark.
#   scripts/gpu_check.sh run     on the GPU machine (x86_64, no Rust, no network), from the
#                                repository root with gpu-bundle/ carried along, in this order:
#                                1. the tensor-core wrapper tests (the hardware judges the
#                                   fragment layouts the CPU stand-in assumes);
#                                2. every CUDA op against the f64 CPU reference;
#                                3. the whole tiny-BERT model, four methods, f32 and bf16;
#                                4. compute-sanitizer memcheck and racecheck, where installed;
#                                5. spafit bench --device cuda on a random BERT-base (batch 32 ×
#                                   128 tokens, bf16) for the four methods, and the same step
#                                   in PyTorch + PEFT (scripts/torch_peft_bench.py) in the same
#                                   call, with the ratios;
#                                6. the fused-LoRA GEMM at 4096×1024×1024, 4096×4096×1024 and
#                                   4096×1024×4096 for every tile configuration beside cuBLAS.
#                                Under 5 minutes; every stage has its own time limit. With $OUT
#                                set (the device tool), the full log lands in $OUT/gpu_check.log.
#
# With the device tool: run(command="scripts/gpu_check.sh run", carry=["gpu-bundle"]).
set -uo pipefail
cd "$(dirname "$0")/.."
bundle=gpu-bundle

executables() {  # cargo --message-format=json on stdin → "name path" per executable
    python3 -c 'import json,sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])'
}

build() {
    set -e
    scripts/install_nvcc.sh >/dev/null
    export SPAFIT_REQUIRE_NVCC=1
    rm -rf "$bundle" && mkdir -p "$bundle"
    {
        cargo test --release --locked --no-run --message-format=json \
            --test tensor_core --test cross_backend --test cuda_model
        cargo bench --locked --no-run --message-format=json --bench gpu_gemm
        cargo build --release --locked --message-format=json --bin spafit
    } 2>/dev/null | executables | while read -r name path; do
        cp "$path" "$bundle/$name"
        strip "$bundle/$name"
    done
    for f in tensor_core cross_backend cuda_model gpu_gemm spafit; do
        [ -x "$bundle/$f" ] || { echo "could not build $f" >&2; exit 1; }
    done
    du -sh "$bundle" | awk '{print "bundle: " $1 " in gpu-bundle/ (carry it to the GPU machine)"}'
}

run() {
    for f in tensor_core cross_backend cuda_model gpu_gemm spafit; do
        [ -x "$bundle/$f" ] || { echo "no $bundle/$f: run 'scripts/gpu_check.sh build' first" >&2; exit 1; }
    done
    local log=${OUT:-$(mktemp -d)}/gpu_check.log
    : >"$log"
    local failed=()
    stage() {  # stage NAME SECONDS COMMAND...: runs it, logs it, remembers a failure
        local name=$1 limit=$2
        shift 2
        echo "=== $name (limit ${limit}s)" | tee -a "$log"
        local t0=$SECONDS
        timeout "$limit" "$@" >>"$log" 2>&1
        local rc=$?
        echo "=== $name: exit $rc in $((SECONDS - t0))s" | tee -a "$log"
        [ "$rc" -eq 0 ] || failed+=("$name (exit $rc)")
    }
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$log"
    stage "tensor-core wrappers" 60 "$bundle/tensor_core" --test-threads 1 --nocapture
    stage "ops vs f64" 90 "$bundle/cross_backend" --test-threads 1 --nocapture cuda
    stage "tiny BERT, four methods" 90 "$bundle/cuda_model" --test-threads 1 --nocapture
    if command -v compute-sanitizer >/dev/null 2>&1; then
        stage "memcheck" 100 compute-sanitizer --tool memcheck --error-exitcode 9 \
            "$bundle/cross_backend" --test-threads 1 cuda_bf16
        stage "racecheck" 60 compute-sanitizer --tool racecheck --error-exitcode 9 \
            "$bundle/tensor_core" --test-threads 1
    else
        echo "compute-sanitizer: not installed, memcheck and racecheck skipped" | tee -a "$log"
    fi
    for method in full bitfit lora spafit; do
        stage "spafit bench $method" 45 "$bundle/spafit" bench --device cuda --dtype bf16 --shape base \
            --method "$method" --batch-size 32 --seq-len 128 --steps 10 --warmup 3
    done
    if python3 -c "import torch, transformers, peft" >/dev/null 2>&1; then
        stage "PyTorch + PEFT bench" 150 python3 scripts/torch_peft_bench.py base 32 128 10 3
    else
        echo "PyTorch + PEFT: not importable, side-by-side skipped" | tee -a "$log"
    fi
    stage "GEMM sweep" 60 "$bundle/gpu_gemm"

    echo
    echo "FAILURES: ${#failed[@]}"
    for f in "${failed[@]}"; do echo "  FAIL $f"; done
    grep -h "panicked\|FAIL" "$log" | grep -v "^=== " | head -20
    echo
    printf "%-34s %-22s %-6s %s\n" "check" "backend" "result" "worst error"
    grep -hoE "^(TC|XB|XM) .*" "$log" | awk '
        $1 == "TC" { printf "%-34s %-22s %-6s %s\n", "tc." $2, $3, $4, "" ; next }
        { key = $2 " " $3; if (!(key in worst) || $4 + 0 > worst[key] + 0) { worst[key] = $4; res[key] = $5 } }
        END { for (k in worst) { split(k, a, " "); printf "%-34s %-22s %-6s %s\n", a[1], a[2], res[k], worst[k] } }' |
        grep -v " cpu-" | sort
    echo
    echo "train step, random BERT-base, batch 32 x 128, bf16:"
    printf "%-8s %14s %14s %12s %12s %8s\n" method "spafit ms" "PyTorch ms" "spafit MiB" "PyTorch MiB" speedup
    python3 - "$log" <<'EOF'
import json, sys
ours, torch = {}, {}
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("TORCH "):
        r = json.loads(line[6:]); torch[r["method"]] = r
    elif line.startswith("{") and '"autograd_nodes"' in line:
        r = json.loads(line); ours[r["method"]] = r
for m in ["full", "bitfit", "lora", "spafit"]:
    o, t = ours.get(m, {}), torch.get(m, {})
    om, tm = o.get("ms_per_step"), t.get("ms_per_step")
    ratio = f"{tm / om:.2f}x" if om and tm else "-"
    fmt = lambda v: f"{v:.1f}" if isinstance(v, (int, float)) else "-"
    print(f"{m:8} {fmt(om):>14} {fmt(tm):>14} {fmt(o.get('peak_device_mib')):>12} {fmt(t.get('peak_device_mib')):>12} {ratio:>8}")
EOF
    echo
    grep -h "^GG " "$log"
    [ "${#failed[@]}" -eq 0 ]
}

case "${1:-}" in
    build) build ;;
    run) run ;;
    *) echo "usage: scripts/gpu_check.sh build|run" >&2; exit 2 ;;
esac
