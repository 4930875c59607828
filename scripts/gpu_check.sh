#!/usr/bin/env bash
# The GPU check, in two halves. A GPU is lent rarely and for minutes: everything is built
# here, and one call there runs it all and prints its summary last (the device tool returns
# the output's tail), failures at the very end.
#
#   scripts/gpu_check.sh build     here (no GPU needed): compiles every kernel with the pinned
#                                  nvcc and builds, release and stripped, the integration
#                                  tests (one binary: the tensor-core wrappers, the
#                                  cross-backend ops, the whole models and the rest), spafit
#                                  and the GEMM microbenchmark into ONE archive,
#                                  gpu-bundle/bundle.tar.xz (ignored by git; ~6 MB, where the
#                                  binaries themselves are ~110 MB: the device tool carries at
#                                  most 64 MiB, the repository's own ~40 MB included).
#   scripts/gpu_check.sh run       on the GPU machine (x86_64, no Rust, no network), from the
#                                  repository root with gpu-bundle/ carried along, in this order:
#                                  1. the tensor-core wrapper tests (the hardware judges the
#                                     fragment layouts the CPU stand-in assumes);
#                                  2. every CUDA op against the f64 CPU reference;
#                                  3. the whole tiny-BERT model, four methods, f32 and bf16;
#                                  4. compute-sanitizer memcheck and racecheck, where the
#                                     machine supports them;
#                                  5. spafit bench --device cuda on a random BERT-base (batch
#                                     32 × 128 tokens, bf16) for the four methods (SPAFIT also
#                                     in micro-batches of 8: `spafit/8`, and its forward
#                                     pass alone: `spafit/inference`), and the same
#                                     step in PyTorch + PEFT (scripts/torch_peft_bench.py) in
#                                     the same call, with the ratios;
#                                  6. the fused-LoRA GEMM at 4096×1024×1024, 4096×4096×1024
#                                     and 4096×1024×4096 for every tile configuration beside
#                                     cuBLAS; the fused attention, forward and backward, at
#                                     a step's shapes for one stage buffer and two.
#                                  7. ncu on two GEMM kernels and on the attention forward
#                                     and backward of the bench's step (GPU_CHECK_PROFILES
#                                     picks the families, default "gemm attention";
#                                     GPU_CHECK_NO_PROFILE=1 skips them all, for a short
#                                     last window).
#                                  Every stage has its own time limit, and all of them together
#                                  stay inside $GPU_CHECK_BUDGET seconds (default 420), so the
#                                  call ends with its summary inside the device tool's 600 s
#                                  and leaves room in a 15-minute lease to run it again.
#                                  With $OUT set (the device tool), the full log lands in
#                                  $OUT/gpu_check.log.
#   scripts/gpu_check.sh rehearse  here, without a GPU: the same run, stage for stage, from the
#                                  same archive, on the CPU stand-in (`cuda-emu`), with the
#                                  benchmarks shrunk to a random BERT-tiny and PyTorch on the
#                                  CPU ($PYTHON, when it imports torch, transformers and peft).
#                                  It checks the script itself: the archive, every stage's
#                                  command line and the tables' parsing, so a GPU minute is
#                                  never lost to a typo. Its times mean nothing. CI runs it
#                                  (scripts/test.sh) from its own test-profile build:
#                                  GPU_CHECK_PROFILE=test GPU_CHECK_ARCHIVE=elsewhere.tar.xz
#                                  for both halves.
#
# With the device tool: run(command="scripts/gpu_check.sh run", carry=["gpu-bundle"],
# timeout_s=600).
set -uo pipefail
cd "$(dirname "$0")/.."
# CI rehearses from its own test-profile build, in a folder of its own, never over the
# release bundle a developer made for the GPU.
archive=${GPU_CHECK_ARCHIVE:-gpu-bundle/bundle.tar.xz}
profile=${GPU_CHECK_PROFILE:-release}
# The integration tests (every tests/integration/*.rs in one binary), the GEMM and attention
# sweeps, spafit.
programs="integration gpu_gemm gpu_attention spafit"

executables() {  # cargo --message-format=json on stdin → "name path" per executable
    python3 -c 'import json,sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])'
}

# A hash of the sources the bundle is built from. The bundle's staleness is judged by it, not
# by git: the device tool's copy of the repository carries the files as they are here but
# its git metadata as it was when the session began.
source_hash() {
    find kernels src benches tests build.rs Cargo.toml Cargo.lock -type f \
        \( -name '*.rs' -o -name '*.cu' -o -name '*.cuh' -o -name '*.h' -o -name '*.cpp' -o -name 'Cargo.*' \) |
        LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16
}

build() {
    set -e
    scripts/install_nvcc.sh >/dev/null
    export SPAFIT_REQUIRE_NVCC=1
    # The pinned nvcc 13.0, whatever else is on PATH: the GPU machine's driver (580) refuses
    # PTX from a newer toolkit. CI's test-profile rehearsal keeps its build's environment.
    [ "$profile" = release ] && export SPAFIT_NVCC="$PWD/.cache/cuda/nvidia/cu13/bin/nvcc"
    # Machine code for the lent GPU (an H200, sm_90), so its first process does not spend
    # ~20 s of the window having the driver compile the PTX; another GPU still gets the PTX.
    [ "$profile" = release ] && export SPAFIT_CUDA_SASS=${SPAFIT_CUDA_SASS:-90}
    local staging
    staging=$(mktemp -d)
    trap "rm -rf '$staging'" EXIT
    local errors="$staging/cargo.err"
    local tests=(--test integration)
    {
        if [ "$profile" = release ]; then
            cargo test --release --locked --no-run --message-format=json "${tests[@]}"
            cargo bench --locked --no-run --message-format=json --bench gpu_gemm --bench gpu_attention
            cargo build --release --locked --message-format=json --bin spafit
        else
            # The spafit binary the integration tests were built with: `cargo build --profile
            # test` compiles the library and the binary again under other hashes (2.5 minutes
            # of CI on 2 cores).
            cargo test --locked --no-run --message-format=json "${tests[@]}" --bench gpu_gemm --bench gpu_attention
        fi
    } 2>"$errors" | executables | while read -r name path; do
        cp "$path" "$staging/$name"
        strip "$staging/$name"
    done
    for f in $programs; do
        [ -x "$staging/$f" ] || { tail -n 30 "$errors" >&2; echo "could not build $f" >&2; exit 1; }
    done
    echo "profile $profile, commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' + uncommitted changes'), sources $(source_hash)" \
        >"$staging/BUILD"
    rm -f "$archive" && mkdir -p "$(dirname "$archive")"
    # Every program embeds the same kernels (PTX and sm_90 code, ~15 MB) and much the same
    # Rust: a dictionary that spans the whole tar stores them once (7 MB against 28 MB for
    # xz -6's 8 MiB window, and ten times faster; decompressing takes 256 MiB of memory).
    tar -C "$staging" -cf - $programs BUILD | xz -T2 --lzma2=preset=2,dict=256MiB >"$archive"
    echo "bundle: $(du -h "$archive" | cut -f1) in $archive, $(cat "$staging/BUILD")" \
        "(carry $(dirname "$archive") to the GPU machine)"
}

# Unpacks the archive into a scratch folder and prints its path. Python's tarfile reads xz
# where the machine has no xz program.
unpack() {
    [ -f "$archive" ] || { echo "no $archive: run 'scripts/gpu_check.sh build' first" >&2; return 1; }
    local dir
    dir=$(mktemp -d "${TMPDIR:-/tmp}/spafit-gpu-check.XXXXXX")
    if command -v xz >/dev/null 2>&1; then
        xz -dc "$archive" | tar -C "$dir" -xf - || return 1
    else
        python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
            "$archive" "$dir" || return 1
    fi
    for f in $programs BUILD; do
        [ -e "$dir/$f" ] || { echo "$archive holds no $f: rebuild it with 'scripts/gpu_check.sh build'" >&2; return 1; }
    done
    echo "$dir"
}

# Where cuBLAS, the GEMM sweep's ceiling, lies when it is not on the loader's path: CUDA's own
# folder or a pip wheel (nvidia-cublas) of the machine's Python. Prints a LD_LIBRARY_PATH.
cublas_path() {
    local dirs
    dirs=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
roots = set(site.getsitepackages() + [site.getusersitepackages()])
found = {os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "libcublas.so*"), recursive=True)}
print(":".join(sorted(found)))
PY
    )
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
        ls "$d"/libcublas.so* >/dev/null 2>&1 && dirs="${dirs:+$dirs:}$d"
    done
    echo "$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

# run MODE: MODE is "gpu" (the GPU check) or "rehearsal" (the same on the CPU stand-in).
run() {
    local mode=$1 bin
    bin=$(unpack) || exit 1
    local log=${OUT:-$(mktemp -d)}/gpu_check.log
    : >"$log"
    local failed=() unsupported=() may_be_unsupported=0
    local deadline=$((SECONDS + ${GPU_CHECK_BUDGET:-420}))
    stage() {  # stage NAME SECONDS COMMAND...: runs it, logs it, remembers a failure
        local name=$1 limit=$2
        shift 2
        # The limits are a GPU's; the stand-in runs the same stages tens of times slower
        # (ops vs f64: 42 s of 90 on a Zen 5 VM, 88 s on a VM without AVX-512), and a rehearsal
        # checks the script, not the speed.
        [ "$mode" = gpu ] || limit=$((limit * 3))
        local left=$((deadline - SECONDS))
        if [ "$left" -lt 5 ]; then
            echo "=== $name: not run, the check's time budget is spent" | tee -a "$log"
            failed+=("$name (not run: time budget spent)")
            return
        fi
        [ "$limit" -gt "$left" ] && limit=$left
        echo "=== $name (limit ${limit}s)" | tee -a "$log"
        local t0=$SECONDS start
        start=$(wc -l <"$log")
        # -k: a CUDA process that ignores TERM must not outlive the budget.
        timeout -k 10 "$limit" "$@" >>"$log" 2>&1
        local rc=$?
        # A command killed mid-line leaves the log without its last newline.
        [ -n "$(tail -c1 "$log")" ] && echo >>"$log"
        echo "=== $name: exit $rc in $((SECONDS - t0))s" | tee -a "$log"
        if [ "$rc" -ne 0 ] && [ "$may_be_unsupported" = 1 ] &&
            tail -n +"$start" "$log" | grep -qE "Device not supported|ERR_NVGPUCTRPERM|LibraryNotLoaded"; then
            unsupported+=("$name (the tool does not support this machine's GPU)")
        elif [ "$rc" -ne 0 ]; then
            failed+=("$name (exit $rc$([ "$rc" -eq 124 ] && echo ', time limit'))")
        fi
    }
    local device shape batch seq steps warmup
    echo "bundle: $(cat "$bin/BUILD")" | tee -a "$log"
    local stale=""
    if ! grep -q "sources $(source_hash)$" "$bin/BUILD"; then
        stale="STALE BUNDLE: built from other sources than this checkout's ($(cat "$bin/BUILD")); rebuild it"
        echo "$stale" | tee -a "$log"
    fi
    if [ "$mode" = gpu ]; then
        device=cuda shape=base batch=32 seq=128 steps=10 warmup=3
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$log"
        grep -q "^profile release" "$bin/BUILD" ||
            echo "NOT A RELEASE BUILD: its times say nothing; run 'scripts/gpu_check.sh build' without GPU_CHECK_PROFILE" | tee -a "$log"
    else
        device=cuda-emu shape=tiny batch=4 seq=32 steps=2 warmup=1
        echo "REHEARSAL on the CPU stand-in: the same stages, a tiny model; times mean nothing" | tee -a "$log"
    fi
    # Where the bundle has no machine code for this GPU (SPAFIT_CUDA_SASS at build), the driver
    # compiles the PTX on first load (~20 s for the GEMM and attention modules): one cache for
    # every stage, large enough to keep them all.
    export CUDA_CACHE_PATH=${CUDA_CACHE_PATH:-${TMPDIR:-/tmp}/spafit-cuda-cache} CUDA_CACHE_MAXSIZE=4294967296
    # One test at a time on the GPU, so a fault's output is the failing test's alone; the
    # rehearsal runs the same tests on every core (checking the stage, not the tests, which CI
    # has just run twice).
    local threads=1
    [ "$mode" = gpu ] || threads=$(nproc 2>/dev/null || echo 1)
    # select_tests ARRAY STAGE REGEX: the integration tests whose names match the extended
    # regular expression, into ARRAY as arguments for `--exact` (the harness's own filters
    # match substrings and cannot say "cuda tests of cross_backend"). None is STAGE's failure:
    # `--exact` with no name would run every test in the binary.
    select_tests() {
        local -n into=$1
        mapfile -t into < <("$bin/integration" --list --format terse 2>/dev/null |
            sed -n 's/: test$//p' | grep -E "$3")
        if [ "${#into[@]}" -eq 0 ]; then
            failed+=("$2 (the test binary lists no test matching $3)")
            into=(no-such-test)
        fi
    }
    local ops_on_cuda
    select_tests ops_on_cuda "ops vs f64" '^cross_backend::.*cuda'
    stage "tensor-core wrappers" 45 "$bin/integration" --test-threads 1 --nocapture tensor_core::
    # The correctness stages run as users run (launches queued, not waited for); one that
    # fails on the GPU runs again with every launch waiting for its kernel
    # (SPAFIT_CUDA_SYNC=1), so that a kernel fault is named by its kernel, not by whichever
    # call came next.
    local failures_before=${#failed[@]}
    stage "ops vs f64" 90 "$bin/integration" --test-threads "$threads" --nocapture --exact "${ops_on_cuda[@]}"
    if [ "${#failed[@]}" -gt "$failures_before" ] && [ "$mode" = gpu ]; then
        stage "ops vs f64, every launch waited for" 60 env SPAFIT_CUDA_SYNC=1 \
            "$bin/integration" --test-threads 1 --nocapture --exact "${ops_on_cuda[@]}"
    fi
    failures_before=${#failed[@]}
    stage "tiny BERT, four methods" 90 "$bin/integration" --test-threads "$threads" --nocapture cuda_model::
    if [ "${#failed[@]}" -gt "$failures_before" ] && [ "$mode" = gpu ]; then
        stage "tiny BERT, every launch waited for" 60 env SPAFIT_CUDA_SYNC=1 \
            "$bin/integration" --test-threads 1 --nocapture cuda_model::
    fi
    # RoBERTa (SPAFIT, f32, dropout on) against the f64 CPU reference, from the fixture in
    # this checkout.
    stage "tiny RoBERTa, SPAFIT" 60 env SPAFIT_ROBERTA_FIXTURE="$PWD/tests/fixtures/tiny-roberta" \
        "$bin/integration" --test-threads 1 --nocapture --exact roberta::roberta_on_cuda_matches_the_f64_reference
    # ELECTRA (full fine-tuning, its embeddings' projection included, and SPAFIT).
    stage "tiny ELECTRA, full and SPAFIT" 60 env SPAFIT_ELECTRA_FIXTURE="$PWD/tests/fixtures/tiny-electra" \
        "$bin/integration" --test-threads 1 --nocapture --exact electra::electra_on_cuda_matches_the_f64_reference
    # DistilBERT (full fine-tuning and SPAFIT; no segment table, the ReLU head).
    stage "tiny DistilBERT, full and SPAFIT" 60 env SPAFIT_DISTILBERT_FIXTURE="$PWD/tests/fixtures/tiny-distilbert" \
        "$bin/integration" --test-threads 1 --nocapture --exact distilbert::distilbert_on_cuda_matches_the_f64_reference
    # MPNet (full fine-tuning, whose relative position table trains through the bias's own
    # gradient kernels, and SPAFIT): every attention kernel adding the position bias.
    stage "tiny MPNet, full and SPAFIT" 60 env SPAFIT_MPNET_FIXTURE="$PWD/tests/fixtures/tiny-mpnet" \
        "$bin/integration" --test-threads 1 --nocapture --exact mpnet::mpnet_on_cuda_matches_the_f64_reference
    # ERNIE (full fine-tuning, with the task-type table's row 0 added to every token, and SPAFIT).
    stage "tiny ERNIE, full and SPAFIT" 60 env SPAFIT_ERNIE_FIXTURE="$PWD/tests/fixtures/tiny-ernie" \
        "$bin/integration" --test-threads 1 --nocapture --exact ernie::ernie_on_cuda_matches_the_f64_reference
    # DeBERTa (v3's and v2's shapes, full fine-tuning and SPAFIT, f32 and mixed precision):
    # the disentangled-attention kernels, first alone against the f64 CPU.
    stage "disentangled attention" 30 "$bin/integration" --test-threads 1 --nocapture --exact \
        disentangled_attention::disentangled_attention_on_cuda_matches_the_f64_cpu
    stage "tiny DeBERTa, full and SPAFIT" 90 env SPAFIT_DEBERTA_FIXTURE="$PWD/tests/fixtures/tiny-deberta" \
        SPAFIT_DEBERTA_V2_FIXTURE="$PWD/tests/fixtures/tiny-deberta-v2" \
        "$bin/integration" --test-threads 1 --nocapture --exact deberta::deberta_on_cuda_matches_the_f64_reference
    # A multi-label head (a sigmoid per class, binary cross-entropy), full and SPAFIT.
    stage "tiny multi-label BERT, full and SPAFIT" 60 env SPAFIT_MULTILABEL_FIXTURE="$PWD/tests/fixtures/tiny-multilabel" \
        "$bin/integration" --test-threads 1 --nocapture --exact multi_label::multi_label_on_cuda_matches_the_f64_reference
    if [ "$mode" = gpu ] && command -v compute-sanitizer >/dev/null 2>&1; then
        # Some of the machines refuse the tools ("Device not supported"): noted, not failed.
        may_be_unsupported=1
        local bf16_ops
        select_tests bf16_ops memcheck '^cross_backend::.*cuda_bf16'
        stage "memcheck" 60 compute-sanitizer --tool memcheck --error-exitcode 9 \
            "$bin/integration" --test-threads 1 --exact "${bf16_ops[@]}"
        stage "racecheck" 40 compute-sanitizer --tool racecheck --error-exitcode 9 \
            "$bin/integration" --test-threads 1 tensor_core::
        # The attention kernels' shared tiles, in one stage buffer and two (the second's
        # copies in flight beside the products): the hazards a schedule of the stand-in may
        # not expose.
        stage "racecheck attention" 40 compute-sanitizer --tool racecheck --error-exitcode 9 \
            "$bin/integration" --test-threads 1 --exact cross_backend::cuda_attention_stages_give_the_same_bits
        # The _pb kernels and the position bias's gradient (its dS tile in shared memory).
        stage "racecheck position bias" 40 compute-sanitizer --tool racecheck --error-exitcode 9 \
            "$bin/integration" --test-threads 1 --exact cross_backend::attention_position_bias::cuda_bf16
        may_be_unsupported=0
    elif [ "$mode" = gpu ]; then
        echo "compute-sanitizer: not installed, memcheck and racecheck skipped" | tee -a "$log"
    else
        echo "compute-sanitizer: not run in a rehearsal (the stand-in has its own guard pages)" | tee -a "$log"
    fi
    for method in full bitfit lora spafit; do
        stage "spafit bench $method" 30 "$bin/spafit" bench --device "$device" --dtype bf16 \
            --shape "$shape" --method "$method" --batch-size "$batch" --seq-len "$seq" \
            --steps "$steps" --warmup "$warmup" --kernel-times
    done
    # What recomputing the GELU and LayerNorm outputs linear maps' gradients read costs in
    # time and saves in memory: the same steps keeping them (rows "/kept" in the table).
    for method in full spafit; do
        stage "spafit bench $method keeping linear inputs" 30 env SPAFIT_CUDA_KEEP_LINEAR_INPUTS=1 \
            "$bin/spafit" bench --device "$device" --dtype bf16 --shape "$shape" --method "$method" \
            --batch-size "$batch" --seq-len "$seq" --steps "$steps" --warmup "$warmup"
    done
    # Gradient accumulation's price and saving on the device: the same SPAFIT step in four
    # micro-batches.
    stage "spafit bench spafit in micro-batches" 30 "$bin/spafit" bench --device "$device" \
        --dtype bf16 --shape "$shape" --method spafit --batch-size "$batch" --seq-len "$seq" \
        --micro-batch-size $((batch / 4)) --steps "$steps" --warmup "$warmup"
    # Inference as eval and predict run it (forward passes in evaluation mode), beside
    # PyTorch's (row "spafit/inference").
    stage "spafit bench spafit inference" 30 "$bin/spafit" bench --device "$device" \
        --dtype bf16 --shape "$shape" --method spafit --batch-size "$batch" --seq-len "$seq" \
        --steps "$steps" --warmup "$warmup" --inference
    local python=${PYTHON:-python3} torch_device=cuda
    [ "$mode" = gpu ] || torch_device=cpu
    if "$python" -c "import torch, transformers, peft" >/dev/null 2>&1; then
        stage "PyTorch + PEFT bench" 90 env TORCH_PEFT_BENCH_DEVICE=$torch_device \
            "$python" scripts/torch_peft_bench.py "$shape" "$batch" "$seq" "$steps" "$warmup"
    else
        echo "PyTorch + PEFT: not importable by $python, side-by-side skipped" | tee -a "$log"
    fi
    stage "GEMM sweep" 60 env LD_LIBRARY_PATH="$(cublas_path)" "$bin/gpu_gemm"
    stage "attention sweep" 30 "$bin/gpu_attention"
    if [ "$mode" = gpu ] && [ -z "${GPU_CHECK_NO_PROFILE:-}" ] && command -v ncu >/dev/null 2>&1; then
        # Where a GEMM's time goes: one launch each of the tile every large GEMM uses (bf16
        # operands, 4096×1024×1024) and of the weight-gradient layout of the bench's step,
        # with warp stalls, pipes and memory traffic, each report in a
        # file of its own beside the log. ncu reads the counters only where the machine lets
        # it (Firecracker yes, gVisor no): a refusal is noted as not supported, not failed.
        local dir families=${GPU_CHECK_PROFILES:-gemm attention}
        dir=$(dirname "$log")
        may_be_unsupported=1
        # profile NAME KERNEL-REGEX LAUNCHES-TO-SKIP PROGRAM ARGS...: one launch, its report in
        # ncu_NAME.txt.
        profile() {
            local name=$1 kernel=$2 skip=$3
            shift 3
            stage "profile $name (ncu_$name.txt)" 60 bash -c \
                'out=$1 kernel=$2 skip=$3; shift 3
                ncu --clock-control none --kernel-name "regex:$kernel" --launch-skip "$skip" --launch-count 1 \
                    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
                    --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section SchedulerStats \
                    "$@" >"$out" 2>&1 || { tail -n 5 "$out"; exit 1; }' _ "$dir/ncu_$name.txt" "$kernel" "$skip" "$@"
        }
        if [[ " $families " == *" gemm "* ]]; then
            for kernel in kk_128x128x64_w2x4_s3 mn_128x128x64_w2x4_s3; do
                profile "$kernel" "gemm_tc_$kernel" 1 "$bin/gpu_gemm"
            done
        fi
        if [[ " $families " == *" attention "* ]]; then
            # Past the warm-up steps' launches (12 layers each), in the bench's full step.
            for kernel in attention_forward_tc attention_backward_dkdv_tc; do
                profile "$kernel" "$kernel" 24 "$bin/spafit" bench --device "$device" --dtype bf16 \
                    --shape "$shape" --method full --batch-size "$batch" --seq-len "$seq" --steps 1 --warmup 2
            done
        fi
        may_be_unsupported=0
    fi

    # The device tool returns the last 12,000 characters: the one-line-per-check table goes to
    # a file beside the log, and what decides the run comes last.
    local table
    table=$(dirname "$log")/gpu_check_table.txt
    printf "%-34s %-22s %-6s %s\n" "check" "backend" "result" "worst error" >"$table"
    grep -hoE "^(TC|XB|XM) .*" "$log" | awk '
        $1 == "TC" { printf "%-34s %-22s %-6s %s\n", "tc." $2, $3, $4, "" ; next }
        { key = $2 " " $3; if (!(key in worst) || $4 + 0 > worst[key] + 0) { worst[key] = $4; res[key] = $5 } }
        END { for (k in worst) { split(k, a, " "); printf "%-34s %-22s %-6s %s\n", a[1], a[2], res[k], worst[k] } }' |
        grep -v " cpu-" | sort >>"$table"
    echo
    grep -h "^GG " "$log"
    grep -h "^GS best" "$log"
    grep -h "^GA " "$log"
    echo
    echo "train step (/inference: a forward pass), random BERT-$shape, batch $batch x $seq, bf16 (spafit on $device, PyTorch on $torch_device):"
    printf "%-8s %14s %14s %12s %12s %8s\n" method "spafit ms" "PyTorch ms" "spafit MiB" "PyTorch MiB" speedup
    python3 - "$log" <<'PY'
import json, sys
ours, torch = {}, {}
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("TORCH "):
        r = json.loads(line[6:]); torch[r["method"]] = r
    elif line.startswith("{") and '"autograd_nodes"' in line:
        r = json.loads(line)
        micro = r.get("micro_batch", r["batch"])
        key = r["method"] if micro == r["batch"] else f'{r["method"]}/{micro}'
        key += "/inference" if r.get("pass") == "inference" else ""
        ours[key + ("/kept" if r.get("linear_inputs") == "kept" else "")] = r
for m in ["full", "bitfit", "lora", "spafit"] + sorted(k for k in ours if "/" in k):
    o, t = ours.get(m, {}), torch.get(m, {})
    om, tm = o.get("ms_per_step"), t.get("ms_per_step")
    ratio = f"{tm / om:.2f}x" if om and tm else "-"
    fmt = lambda v: f"{v:.1f}" if isinstance(v, (int, float)) else "-"
    print(f"{m:8} {fmt(om):>14} {fmt(tm):>14} {fmt(o.get('peak_device_mib')):>12} {fmt(t.get('peak_device_mib')):>12} {ratio:>8}")
# Machine code built for this GPU (SPAFIT_CUDA_SASS), or PTX its driver had to compile.
codes = sorted({r["kernel_code"] for r in ours.values() if r.get("kernel_code")})
if codes:
    print("spafit's kernels: " + "; ".join(codes))
# Where a step's device time goes (one more step, each kernel between two events): the
# kernels' share of the wall time says how launch-bound the step is.
for m in ["full", "bitfit", "lora", "spafit"]:
    k = ours.get(m, {}).get("kernel_times")
    if not k:
        continue
    busy = 100 * k["kernel_ms"] / k["step_ms"] if k["step_ms"] else 0
    launches = sum(x["launches"] for x in k["kernels"])
    top = ", ".join(f'{x["kernel"]} {x["ms"]:.2f}' for x in k["kernels"][:4])
    print(f"{m:8} kernels {k['kernel_ms']:.2f} of {k['step_ms']:.2f} ms ({busy:.0f}% busy, {launches} launches): {top}")
PY
    echo
    echo "checks against the f64 reference (every row: $table):"
    awk 'NR > 1 { n[$2]++; if ($3 != "PASS") bad[$2]++ }
        END { for (b in n) printf "  %-24s %4d checks, %d not PASS\n", b, n[b], bad[b] + 0 }' "$table" | sort
    awk 'NR > 1 && $3 != "PASS"' "$table" | head -30
    echo
    grep "^=== .*: " "$log"
    grep -h "panicked\|FAIL" "$log" | grep -v "^=== " | head -20
    [ "$mode" = gpu ] || echo "REHEARSAL on the CPU stand-in: checks the script, not a GPU"
    [ -n "$stale" ] && echo "$stale"
    echo "FAILURES: ${#failed[@]}"
    for f in "${failed[@]}"; do echo "  FAIL $f"; done
    for f in "${unsupported[@]}"; do echo "  NOT SUPPORTED $f"; done
    # The device tool brings back files of at most 16 MB: a failing assertion that prints a
    # whole tensor once made the log larger than that, and it stayed on the machine.
    if [ -n "${OUT:-}" ] && [ "$(wc -c <"$log")" -gt 15000000 ]; then
        gzip -9f "$log" && echo "the log was large: $log.gz"
    fi
    rm -rf "$bin"
    [ "${#failed[@]}" -eq 0 ]
}

case "${1:-}" in
    build) build ;;
    run) run gpu ;;
    rehearse) run rehearsal ;;
    *) echo "usage: scripts/gpu_check.sh build|run|rehearse" >&2; exit 2 ;;
esac
