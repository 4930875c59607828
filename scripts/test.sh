#!/usr/bin/env bash
# The project's one test command: format check, clippy with warnings as errors, every test.
# Prints a total line "tests: N passed, N failed, N skipped" at the end; "skipped" counts the
# ignored tests and the GPU tests that reported "SKIPPED <name>" for want of a CUDA device
# (they are not counted as passed).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked 2>&1 | tee "$log" || status=$?

# Sum the per-binary "test result:" lines so the count is visible in one place.
awk '/^test result:/ {
        for (i = 1; i <= NF; i++) {
            if ($(i+1) ~ /^passed/) p += $i
            if ($(i+1) ~ /^failed/) f += $i
            if ($(i+1) ~ /^ignored/) g += $i
        }
     }
     /^SKIPPED / { s += 1 }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p - s, f, g + s }' "$log"
exit "$status"
