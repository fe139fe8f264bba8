#!/usr/bin/env python
"""How close int8 can get on the quire tagger (models/quire-tagger, a DistilBERT token
classifier with 213 tags): its encoder's dense layers simulated in float64 with int8 weights
(per output channel, and per group of 256 / 128 / 64 / 32 inputs) and activations left exact,
then with int8 per-channel weights and each activation scheme our kernels run (blocks of 32,
16-bit halves per row). The largest change of any token's softmax score from float32, on the
golden file's texts and on 22 more (benches/int8_activation_schemes.py's extras).

usage: ~/.cache/dlc-peer/venv/bin/python benches/int8_weight_floor.py
(results: benches/results/int8-weight-floor.md)
"""
import json
import os
import sys

import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import int8_activation_schemes as schemes  # noqa: E402  (QLinear, the extra texts)

torch.set_num_threads(2)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "quire-tagger")
GOLDEN = os.path.join(ROOT, "models", "golden", "token-classification", "quire-tagger.json")
SUBLAYERS = ["attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "ffn.lin1", "ffn.lin2"]


class GroupWeights(torch.nn.Module):
    """int8 weights with one scale per output channel and group of `group` inputs; exact inputs."""

    def __init__(self, linear, group):
        super().__init__()
        w = linear.weight.detach().double()
        q = torch.empty_like(w)
        for k0 in range(0, w.shape[1], group):
            block = w[:, k0:k0 + group]
            scale = (block.abs().amax(1, keepdim=True) / 127).clamp_min(1e-30)
            q[:, k0:k0 + group] = torch.round(block / scale).clamp(-127, 127) * scale
        self.weight, self.bias = q, linear.bias.detach().double()

    def forward(self, x):
        return (x.double() @ self.weight.T + self.bias).to(x.dtype)


def main():
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForTokenClassification.from_pretrained(MODEL).eval()
    golden = []
    for record in json.load(open(GOLDEN))["records"]:
        inputs = record["request"]["inputs"]
        golden += inputs if isinstance(inputs, list) else [inputs]
    golden = list(dict.fromkeys(golden))
    texts = golden + schemes.EXTRA
    linears = []
    for layer in model.distilbert.transformer.layer:
        for name in SUBLAYERS:
            parent_name, attr = name.split(".")
            parent = getattr(layer, parent_name)
            linears.append((parent, attr, getattr(parent, attr)))

    def scores(make=None):
        for parent, attr, linear in linears:
            setattr(parent, attr, linear if make is None else make(linear))
        with torch.no_grad():
            out = [model(**tokenizer(t, return_tensors="pt")).logits.softmax(-1)[0] for t in texts]
        for parent, attr, linear in linears:
            setattr(parent, attr, linear)
        return out

    reference = scores()
    rows = []

    def measure(label, make):
        diffs = [(a - b).abs().max().item() for a, b in zip(scores(make), reference)]
        rows.append((label, max(diffs[:len(golden)]), max(diffs)))
        print(f"{label}: golden {rows[-1][1]:.2e}, all {rows[-1][2]:.2e}", file=sys.stderr)

    for group in [None, 256, 128, 64, 32]:
        label = "weights per channel" if group is None else f"weights per group of {group}"
        measure(label + ", exact activations", lambda lin, g=group: GroupWeights(lin, g or 1 << 30))
    measure("per channel, activations in blocks of 32 (VNNI / AVX2 / portable)", lambda lin: schemes.QLinear(lin, "A"))
    measure("per channel, activations in 16-bit halves per row (AMX tiles)", lambda lin: schemes.QLinear(lin, "E"))
    out = os.path.join(ROOT, "benches", "results", "int8-weight-floor.md")
    with open(out, "w") as f:
        f.write("# int8 on the quire tagger: the weights' own floor\n\n")
        f.write(f"Command: `~/.cache/dlc-peer/venv/bin/python benches/int8_weight_floor.py` (float64 simulation, "
                f"transformers {__import__('transformers').__version__}). Largest change of a token's softmax score "
                f"from float32 over the {len(golden)} golden texts and over all {len(texts)} texts.\n\n")
        f.write("| scheme | golden texts | all texts |\n|---|---|---|\n")
        for label, g, a in rows:
            f.write(f"| {label} | {g:.2e} | {a:.2e} |\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
