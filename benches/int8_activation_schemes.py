#!/usr/bin/env python
"""Which activation quantization an int8 encoder can afford (issue 16): the MiniLM encoders'
dense layers simulated in float64 with int8 per-channel weights and each activation scheme
(blocks of 32 / 64 / 128 inputs, one scale per row, 16-bit hi/lo per row, ONNX Runtime's
per-tensor uint8, SmoothQuant + per row), against float32, on the golden files' texts and more.
The weights-only row is the floor no activation scheme gets under.

usage: ~/.cache/dlc-peer/venv/bin/python benches/int8_activation_schemes.py
(results: benches/results/int8-activation-schemes.md, .json)
"""
import json, math, sys
import torch, torch.nn as nn
from transformers import AutoTokenizer, AutoModel, AutoModelForSequenceClassification

torch.set_num_threads(1)
torch.manual_seed(0)

import os
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
M = os.path.join(ROOT, "models")
CLS_DIR = f"{M}/minilm-l6-cls"
ST_DIR = f"{M}/all-MiniLM-L6-v2"
GOLDEN = [f"{M}/golden/text-classification/minilm-l6-cls.json",
          f"{M}/golden/text-classification/minilm-l6-cls-params.json",
          f"{M}/golden/sentence-embeddings/all-MiniLM-L6-v2.json",
          f"{M}/golden/feature-extraction/all-MiniLM-L6-v2.json"]
CALIB = "The quick brown fox jumps over the lazy dog. I love this movie, but the ending was terrible."

EXTRA = [
    "Hi.",
    "Terrible service.",
    "What a wonderful day it is!",
    "The movie was okay, nothing special, but the acting was decent.",
    "I can't believe how bad the customer support was; they hung up on me twice.",
    "Quantum entanglement is a physical phenomenon that occurs when pairs of particles interact.",
    "Please transfer $1,250.00 to account #4471-8832 by 5:30 PM on 2024-03-15.",
    "This is, without a doubt, the single greatest piece of software I have ever had the pleasure of using.",
    "The stock market fell sharply on Tuesday after the central bank unexpectedly raised interest rates by half a percentage point.",
    "Honestly? Meh.",
    "She sells sea shells by the sea shore.",
    "The patient presented with acute abdominal pain, fever of 39.2 C, and elevated white blood cell counts, "
    "prompting an emergency CT scan which revealed appendicitis.",
    "I ordered the pasta, which arrived cold and soggy, and the waiter ignored us for forty minutes; "
    "however, the dessert was surprisingly good and the manager apologized and comped our drinks.",
    "ERROR: connection refused (errno 111) at /usr/lib/python3/site-packages/requests/adapters.py:519",
    "Let me tell you a story about a small town nestled in the mountains, where every winter the snow fell so heavily "
    "that the roads closed for weeks, and the townspeople gathered each evening in the old stone hall to share bread, "
    "soup and stories of years long past, while the children played by the great fireplace and the elders argued "
    "good-naturedly about whose grandfather had been the bravest hunter, the best fiddler, or the most stubborn farmer "
    "in the whole valley, and nobody ever really won.",
    "Absolutely not.",
    "The new update broke everything and I want a refund immediately!!!",
    "A cat sat on the mat.",
    "Two men are playing chess in the park while a crowd watches quietly.",
    "In 1969, Neil Armstrong and Buzz Aldrin became the first humans to walk on the Moon, while Michael Collins "
    "orbited above in the command module Columbia.",
    "lol this is sooo good 😂😂 10/10 would recommend",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
]


def collect_texts():
    texts = []
    def add(x):
        if isinstance(x, str):
            texts.append(x)
        elif isinstance(x, list):
            for y in x:
                add(y)
        elif isinstance(x, dict):
            for k in ("text", "text_pair"):
                if k in x:
                    add(x[k])
    for f in GOLDEN:
        for r in json.load(open(f))["records"]:
            req = r["request"]
            add(req.get("inputs"))
            add(req.get("text")); add(req.get("text_pair"))
            p = req.get("parameters") or {}
            if isinstance(p, dict):
                for k in ("text_pair", "text_target"):
                    add(p.get(k))
    golden = list(dict.fromkeys(texts))
    return golden, list(dict.fromkeys(golden + EXTRA))


# ---------------------------------------------------------------- quantizers
def qw_per_channel(W):
    """W [out,in] float64 -> (q_w int-valued float64, s_w [out])"""
    s = W.abs().amax(dim=1) / 127.0
    s_safe = torch.where(s > 0, s, torch.ones_like(s))
    q = torch.round(W / s_safe[:, None]).clamp(-127, 127)
    return q, s


def q_sym_blocks(x, block, qmax):
    """x [T,K] -> list of (q [T,b], s [T]) for blocks of size `block` (None = whole row)."""
    K = x.shape[1]
    block = K if block is None else block
    out = []
    for k0 in range(0, K, block):
        xb = x[:, k0:k0 + block]
        s = xb.abs().amax(dim=1) / qmax
        s_safe = torch.where(s > 0, s, torch.ones_like(s))
        q = torch.round(xb / s_safe[:, None]).clamp(-qmax, qmax)
        out.append((k0, q, s))
    return out


class QLinear(nn.Module):
    def __init__(self, lin, scheme, smooth=None):
        super().__init__()
        W = lin.weight.detach().double()
        self.b = lin.bias.detach().double() if lin.bias is not None else None
        self.m = None
        if scheme == "G":
            self.m = smooth.double()
            W = W * self.m[None, :]
        self.qw, self.sw = qw_per_channel(W)
        if scheme == "REF":  # sanity: no quantization at all (float64 path)
            self.qw, self.sw = W, torch.ones(W.shape[0], dtype=torch.float64)
        self.scheme = scheme

    def forward(self, x):
        shp = x.shape
        dt = x.dtype
        x = x.reshape(-1, shp[-1]).double()
        sc = self.scheme
        if sc == "G":
            x = x / self.m[None, :]
        if sc in ("A", "B", "C", "D", "G", "E"):
            block = {"A": 32, "B": 64, "C": 128}.get(sc)
            qmax = 16192.0 if sc == "E" else 127.0
            acc = torch.zeros(x.shape[0], self.qw.shape[0], dtype=torch.float64)
            for k0, q, s in q_sym_blocks(x, block, qmax):
                acc += s[:, None] * (q @ self.qw[:, k0:k0 + q.shape[1]].T)  # inner dot exact in f64
            y = acc * self.sw[None, :]
        elif sc == "F":
            rmin = min(x.min().item(), 0.0)
            rmax = max(x.max().item(), 0.0)
            scale = (rmax - rmin) / 255.0
            if scale == 0:
                scale = 1.0
            zp = float(min(max(round(-rmin / scale), 0), 255))  # python round = half-even
            q = (torch.round(x / scale) + zp).clamp(0, 255) - zp
            y = scale * (q @ self.qw.T) * self.sw[None, :]
        elif sc in ("W8", "REF"):  # weights as prepared, activations unquantized
            y = (x @ self.qw.T) * self.sw[None, :]
        else:
            raise ValueError(sc)
        if self.b is not None:
            y = y + self.b[None, :]
        return y.to(dt).reshape(*shp[:-1], -1)


KINDS = {"attention.self.query": "qkv", "attention.self.key": "qkv", "attention.self.value": "qkv",
         "attention.output.dense": "attn-out", "intermediate.dense": "intermediate", "output.dense": "output"}


def encoder_linears(model):
    enc = model.bert.encoder if hasattr(model, "bert") else model.encoder
    res = []
    for li, layer in enumerate(enc.layer):
        for sub, kind in KINDS.items():
            parent = layer
            parts = sub.split(".")
            for p in parts[:-1]:
                parent = getattr(parent, p)
            res.append((f"{li}.{sub}", kind, parent, parts[-1], getattr(parent, parts[-1])))
    return res


def set_scheme(model, originals, scheme, smooth):
    for (name, kind, parent, attr, lin) in originals:
        setattr(parent, attr, lin if scheme is None else QLinear(lin, scheme, smooth.get(name)))


# ---------------------------------------------------------------- stats hooks
def run_with_hooks(model, originals, encs, fn):
    """Run fn over encodings with f32 model, recording per-channel absmax and outlier ratio per kind."""
    chmax, ratio = {}, {}
    hooks = []
    for (name, kind, parent, attr, lin) in originals:
        def h(mod, inp, out, name=name, kind=kind):
            x = inp[0].detach().reshape(-1, inp[0].shape[-1]).double()
            cm = x.abs().amax(0)
            chmax[name] = torch.maximum(chmax[name], cm) if name in chmax else cm
            r = (x.abs().amax(1) / x.pow(2).mean(1).sqrt().clamp_min(1e-30)).max().item()
            ratio[kind] = max(ratio.get(kind, 0.0), r)
        hooks.append(lin.register_forward_hook(h))
    outs = [fn(e) for e in encs]
    for h in hooks:
        h.remove()
    return outs, chmax, ratio


def main():
    golden, texts = collect_texts()
    print(f"{len(golden)} distinct golden texts, {len(texts)} total with extras", file=sys.stderr)

    tok_c = AutoTokenizer.from_pretrained(CLS_DIR)
    cls = AutoModelForSequenceClassification.from_pretrained(CLS_DIR, attn_implementation="eager").eval()
    tok_s = AutoTokenizer.from_pretrained(ST_DIR)
    st = AutoModel.from_pretrained(ST_DIR, attn_implementation="eager").eval()

    enc_c = [tok_c(t, truncation=True, max_length=512, return_tensors="pt") for t in texts]
    enc_s = [tok_s(t, truncation=True, max_length=256, return_tensors="pt") for t in texts]
    calib_c = tok_c(CALIB, return_tensors="pt")
    calib_s = tok_s(CALIB, return_tensors="pt")

    def f_cls(e):
        with torch.no_grad():
            return torch.softmax(cls(**e).logits[0].double(), -1)

    def f_st(e):
        with torch.no_grad():
            h = st(**e).last_hidden_state[0].double()
            m = e["attention_mask"][0].double()[:, None]
            v = (h * m).sum(0) / m.sum().clamp_min(1e-9)
            return v / v.norm().clamp_min(1e-12)

    lin_c = encoder_linears(cls)
    lin_s = encoder_linears(st)

    ref_c, _, ratio_c = run_with_hooks(cls, lin_c, enc_c, f_cls)
    ref_s, _, ratio_s = run_with_hooks(st, lin_s, enc_s, f_st)
    _, cal_c, _ = run_with_hooks(cls, lin_c, [calib_c], f_cls)
    _, cal_s, _ = run_with_hooks(st, lin_s, [calib_s], f_st)

    def smooth_factors(lins, cal):
        out = {}
        for (name, kind, parent, attr, lin) in lins:
            wmax = lin.weight.detach().double().abs().amax(0)
            xmax = cal[name]
            m = (xmax / wmax).sqrt()
            out[name] = torch.where((xmax > 0) & (wmax > 0) & torch.isfinite(m), m, torch.ones_like(m))
        return out

    sm_c, sm_s = smooth_factors(lin_c, cal_c), smooth_factors(lin_s, cal_s)

    ng = len(golden)
    print("outlier ratio max(|x|)/rms per kind (f32, all inputs):")
    for k in ("qkv", "attn-out", "intermediate", "output"):
        print(f"  {k:12s} cls={ratio_c[k]:8.2f}  st={ratio_s[k]:8.2f}")
    ref_lbl = [int(p.argmax()) for p in ref_c]
    margins = [abs(float(p[1] - p[0])) for p in ref_c]
    print(f"f32 cls: min |p1-p0| margin = {min(margins):.4g}; labels={sorted(set(ref_lbl))}")

    hdr = f"{'scheme':7s} {'cls maxdP':>10s} {'flips':>6s} {'(golden)':>8s} {'st mincos':>12s} {'st maxabs':>10s} | golden-only: {'cls maxdP':>10s} {'mincos':>12s} {'maxabs':>10s}"
    print(hdr)
    results = {}
    for sc in ["REF", "W8", "A", "B", "C", "D", "E", "F", "G"]:
        set_scheme(cls, lin_c, sc, sm_c)
        set_scheme(st, lin_s, sc, sm_s)
        out_c = [f_cls(e) for e in enc_c]
        out_s = [f_st(e) for e in enc_s]
        set_scheme(cls, lin_c, None, sm_c)
        set_scheme(st, lin_s, None, sm_s)
        dP = [float((a - b).abs().max()) for a, b in zip(out_c, ref_c)]
        flips = [i for i, (a, l) in enumerate(zip(out_c, ref_lbl)) if int(a.argmax()) != l]
        cos = [float((a * b).sum() / (a.norm() * b.norm())) for a, b in zip(out_s, ref_s)]
        mab = [float((a - b).abs().max()) for a, b in zip(out_s, ref_s)]
        gfl = sum(1 for i in flips if i < ng)
        print(f"{sc:7s} {max(dP):10.3e} {len(flips):6d} {gfl:8d} {min(cos):12.8f} {max(mab):10.3e} | "
              f"{max(dP[:ng]):10.3e} {min(cos[:ng]):12.8f} {max(mab[:ng]):10.3e}")
        if flips:
            print("        flips at:", [(texts[i][:40], round(margins[i], 4)) for i in flips])
        worst = min(range(len(cos)), key=lambda i: cos[i])
        print(f"        worst cos text: {texts[worst][:60]!r}; worst dP text: {texts[max(range(len(dP)), key=lambda i: dP[i])][:60]!r}")
        results[sc] = dict(cls_max_dp=max(dP), flips=len(flips), st_min_cos=min(cos), st_max_abs=max(mab))
    json.dump(dict(results=results, ratio_cls=ratio_c, ratio_st=ratio_s, texts=texts),
              open(os.path.join(ROOT, "benches", "results", "int8-activation-schemes.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
