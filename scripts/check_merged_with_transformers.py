"""transformers reads what `spafit merge` writes: each PEFT-written fixture adapter
(tests/fixtures/peft-adapters*/) is merged by spafit into a checkpoint of its own, which
transformers' AutoModelForSequenceClassification loads with no adapter (no missing or unexpected
weight allowed) and runs on the fixture's texts; its logits are compared with the float64 logits
PEFT gave for base + adapter (expected.json). Not part of CI (it needs torch + transformers).
usage: check_merged_with_transformers.py SPAFIT_BINARY BASE_MODEL_DIR [--dtype f32|f64|bf16|f16]"""
import json, os, subprocess, sys, tempfile
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

spafit, base = sys.argv[1], sys.argv[2]
dtype = sys.argv[sys.argv.index("--dtype") + 1] if "--dtype" in sys.argv else "f32"
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
worst = 0.0
with tempfile.TemporaryDirectory() as tmp:
    for fixture_set in ["peft-adapters", "peft-adapters-wrapped"]:
        expected = json.load(open(os.path.join(root, fixture_set, "expected.json")))
        for name, case in expected["cases"].items():
            out = os.path.join(tmp, f"{fixture_set}-{name}")
            subprocess.run([spafit, "merge", "--model", base, "--adapter",
                            os.path.join(root, fixture_set, name), "--output", out,
                            "--dtype", dtype], check=True, capture_output=True)
            model, info = AutoModelForSequenceClassification.from_pretrained(
                out, output_loading_info=True)
            problems = {k: v for k, v in info.items() if v}
            assert not problems, f"{name}: {problems}"
            model = model.double().eval()
            tok = AutoTokenizer.from_pretrained(out)
            enc = tok(expected["texts"], padding=True, truncation=True,
                      max_length=expected["max_length"], return_tensors="pt")
            with torch.no_grad():
                logits = model(**enc).logits
            want = torch.tensor(case["logits"], dtype=torch.float64)
            err = (logits - want).abs().max().item()
            worst = max(worst, err)
            print(f"{fixture_set}/{name}: {type(model).__name__}, {model.config.problem_type}, "
                  f"{model.config.num_labels} outputs, max |logit - PEFT f64| = {err:.2e}")
# What each storage's rounding of the weights allows (measured: f64 1.1e-15, f32 1.4e-8, f16
# 4.9e-4, bf16 4.6e-3 on all-MiniLM-L6-v2).
tolerance = {"f64": 1e-13, "f32": 1e-7, "f16": 5e-3, "bf16": 2e-2}[dtype]
print(f"worst {worst:.2e} ({dtype} storage, tolerance {tolerance:.0e})")
assert worst <= tolerance, "the merge's logits are too far from PEFT's"
