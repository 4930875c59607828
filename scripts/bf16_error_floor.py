"""The bf16 error floor: how far PyTorch's own bf16 autocast lands from float64 on the tiny
random BERT of tests/integration/cuda_model.rs (hidden 15, 3 heads, 3 layers), per method and quantity.
The flash-attention habit: a bf16 kernel passes when its error is at most about twice what a
trusted implementation gets in the same precision; this measures the trusted side.

    SPAFIT_DUMP_TINY_BERT=DIR cargo test --test integration cuda_model::dump_tiny_bert -- --ignored
    python bf16_error_floor.py DIR tests/fixtures/tiny-bert-bf16/torch_errors.json

Needs torch and transformers (any venv; not part of CI). Dropout off on both sides. LoRA is
two extra linear maps, written here in plain torch so autocast treats them as PEFT's do.
"""
import copy
import json
import sys

import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification


class LoraLinear(torch.nn.Module):
    """y = x·Wᵀ + b + scale·(x·Aᵀ)·Bᵀ with PEFT's parameter names (weight, bias, lora_A, lora_B)."""

    def __init__(self, out_f, in_f, rank, scale):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(out_f, in_f, dtype=torch.float64))
        self.bias = torch.nn.Parameter(torch.zeros(out_f, dtype=torch.float64))
        self.lora_A = torch.nn.Linear(in_f, rank, bias=False, dtype=torch.float64)
        self.lora_B = torch.nn.Linear(rank, out_f, bias=False, dtype=torch.float64)
        self.scale = scale

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight, self.bias) + self.scale * self.lora_B(self.lora_A(x))


def set_module(root, path, module):
    parent, _, last = path.rpartition(".")
    setattr(root.get_submodule(parent), last, module)


def build(cfg, case, state):
    config = BertConfig(**cfg, hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        num_labels=case["num_labels"], attn_implementation="eager")
    model = BertForSequenceClassification(config).double()
    for name, t in state.items():
        if name.endswith(".lora_A.weight"):
            path = name[: -len(".lora_A.weight")]
            out_f, in_f = state[path + ".weight"].shape
            set_module(model, path, LoraLinear(out_f, in_f, t.shape[0], case["lora_scale"]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all("position_ids" in k for k in missing), missing
    trainable = set(case["trainable"])
    for n, p in model.named_parameters():
        p.requires_grad = n in trainable
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    return model.eval()


def run(model, batch, labels, bf16):
    ids = torch.tensor(batch["input_ids"]).view(batch["batch"], batch["seq"])
    types = torch.tensor(batch["token_type_ids"]).view_as(ids)
    mask = torch.tensor(batch["attention_mask"]).view_as(ids)
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels)
    out.loss.backward()
    grads = {n: p.grad.double().clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.logits.double().detach(), out.loss.double().detach().reshape(1), grads


def rel_err(got, want):
    got, want = got.flatten(), want.flatten()
    if want.abs().max() < 1e-12:  # zero in exact arithmetic (the key bias): compare magnitudes
        return float(got.abs().max())
    return float((got - want).norm() / want.norm())


def main():
    dump, out_path = sys.argv[1], sys.argv[2]
    spec = json.load(open(f"{dump}/cases.json"))
    result = {"reference": "PyTorch %s bf16 autocast on the CPU vs float64, dropout off" % torch.__version__, "cases": {}}
    for case in spec["cases"]:
        state = load_file(f"{dump}/{case['name']}.safetensors")
        labels = (torch.tensor(case["labels"], dtype=torch.float64) if case["num_labels"] == 1
                  else torch.tensor(case["labels"], dtype=torch.long))
        m64 = build(spec["config"], case, state)
        logits, loss, grads = run(m64, spec["batch"], labels, bf16=False)
        m32 = copy.deepcopy(m64).float()
        for n, p in m32.named_parameters():
            p.requires_grad = n in set(case["trainable"])
        lab32 = labels.float() if case["num_labels"] == 1 else labels
        l16, loss16, g16 = run(m32, spec["batch"], lab32, bf16=True)
        errors = {"logits": rel_err(l16, logits), "loss": rel_err(loss16, loss),
                  "grads": {n: rel_err(g16[n], g) for n, g in grads.items()}}
        errors["worst_grad"] = max(errors["grads"].values())
        result["cases"][case["name"]] = errors
        print(f"{case['name']}: logits {errors['logits']:.3e} loss {errors['loss']:.3e} worst grad {errors['worst_grad']:.3e}")
    json.dump(result, open(out_path, "w"), indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
