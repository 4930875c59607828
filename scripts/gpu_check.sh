#!/usr/bin/env bash
# The GPU check, in two halves.
#
#   scripts/gpu_check.sh build   here (no GPU needed): compiles every kernel with the pinned
#                                nvcc, builds the cross-backend test binary (release,
#                                stripped) into gpu-bundle/ (ignored by git).
#   scripts/gpu_check.sh run     on the GPU machine (x86_64, no Rust, no network), from the
#                                repository root with gpu-bundle/ carried along: runs every
#                                op on CUDA against the f64 CPU reference, then the CUDA tests
#                                again under compute-sanitizer memcheck when it is installed,
#                                and prints a pass/fail table with each op's worst error last.
#
# With the device tool: run(command="scripts/gpu_check.sh run", carry=["gpu-bundle"]).
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=gpu-bundle

build() {
    scripts/install_nvcc.sh >/dev/null
    export SPAFIT_REQUIRE_NVCC=1
    local exe
    exe=$(cargo test --release --locked --no-run --test cross_backend --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cross_backend":
        print(m["executable"])')
    [ -n "$exe" ] || { echo "could not build the cross_backend test binary" >&2; exit 1; }
    rm -rf "$bundle" && mkdir -p "$bundle"
    cp "$exe" "$bundle/cross_backend"
    strip "$bundle/cross_backend"
    du -sh "$bundle" | awk '{print "bundle: " $1 " in gpu-bundle/ (carry it to the GPU machine)"}'
}

run() {
    [ -x "$bundle/cross_backend" ] || { echo "no $bundle/cross_backend: run 'scripts/gpu_check.sh build' first" >&2; exit 1; }
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
    local log status=0
    log=$(mktemp)
    timeout 240 "$bundle/cross_backend" --test-threads 1 --nocapture >"$log" 2>&1 || status=$?
    grep -oE "SKIPPED.*|test result:.*|panicked.*" "$log" || true
    if [ "$status" -ne 0 ]; then
        echo "--- failures ---"
        grep -A6 "panicked" "$log" | head -60 || true
    fi
    if command -v compute-sanitizer >/dev/null 2>&1; then
        echo "--- compute-sanitizer memcheck (CUDA tests) ---"
        timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 "$bundle/cross_backend" --test-threads 1 cuda \
            2>&1 | grep -E "ERROR SUMMARY|test result:|Invalid|out of bounds" | head -20 || status=$?
    else
        echo "compute-sanitizer: not installed, memcheck skipped"
    fi
    echo
    printf "%-28s %-16s %-6s %s\n" "op" "backend" "result" "worst rel err"
    grep -o "XB .*" "$log" | awk '{ key = $2 " " $3; if (!(key in worst) || $4 + 0 > worst[key] + 0) { worst[key] = $4; res[key] = $5 } }
         END { for (k in worst) { split(k, a, " "); printf "%-28s %-16s %-6s %s\n", a[1], a[2], res[k], worst[k] } }' |
        { grep "${GPU_CHECK_BACKEND:-cuda}" || true; } | sort
    exit "$status"
}

case "${1:-}" in
    build) build ;;
    run) run ;;
    *) echo "usage: scripts/gpu_check.sh build|run" >&2; exit 2 ;;
esac
