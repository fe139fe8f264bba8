"""Benchmark models for the tasks no registry package carries a real model for: the real
all-MiniLM-L6-v2 encoder (22.7M parameters, so the compute is realistic) with a seeded random
task head. Scores are meaningless; speed is what they are for. The quire tagger
(models/quire-tagger) is the real token-classification model.

usage: python benches/make_bench_models.py [MINILM_DIR] [OUT_DIR]   (numpy + safetensors;
       models/fetch_models.sh's venv has both: models/cache/venv/bin/python)
Writes OUT_DIR (default models/bench)/minilm-{ner,qa,nli,ranker,mlm}/.
"""
import json
import os
import shutil
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
minilm = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "models", "all-MiniLM-L6-v2")
out_root = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "models", "bench")

base = {f"bert.{k}": v for k, v in load_file(os.path.join(minilm, "model.safetensors")).items()
        if k != "embeddings.position_ids"}
config = json.load(open(os.path.join(minilm, "config.json")))
hidden, vocab = config["hidden_size"], config["vocab_size"]
rng = np.random.default_rng(1234)


def normal(*shape):
    return (rng.standard_normal(shape) * 0.02).astype(np.float32)


def labels(names):
    return {str(i): n for i, n in enumerate(names)}, {n: i for i, n in enumerate(names)}


ner = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
nli = ["contradiction", "neutral", "entailment"]
heads = {
    "minilm-ner": ("BertForTokenClassification", labels(ner),
                   {"classifier.weight": normal(len(ner), hidden), "classifier.bias": np.zeros(len(ner), np.float32)}),
    "minilm-qa": ("BertForQuestionAnswering", None,
                  {"qa_outputs.weight": normal(2, hidden), "qa_outputs.bias": np.zeros(2, np.float32)}),
    "minilm-nli": ("BertForSequenceClassification", labels(nli),
                   {"classifier.weight": normal(len(nli), hidden), "classifier.bias": np.zeros(len(nli), np.float32)}),
    # A cross-encoder for sentence-ranking: one relevance logit.
    "minilm-ranker": ("BertForSequenceClassification", labels(["LABEL_0"]),
                      {"classifier.weight": normal(1, hidden), "classifier.bias": np.zeros(1, np.float32)}),
    "minilm-mlm": ("BertForMaskedLM", None, {
        "cls.predictions.transform.dense.weight": normal(hidden, hidden),
        "cls.predictions.transform.dense.bias": np.zeros(hidden, np.float32),
        "cls.predictions.transform.LayerNorm.weight": np.ones(hidden, np.float32),
        "cls.predictions.transform.LayerNorm.bias": np.zeros(hidden, np.float32),
        "cls.predictions.bias": np.zeros(vocab, np.float32),
    }),
}
for name, (architecture, label_maps, head) in heads.items():
    out = os.path.join(out_root, name)
    os.makedirs(out, exist_ok=True)
    tensors = dict(base)
    tensors.update(head)
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    cfg = dict(config, architectures=[architecture])
    if label_maps:
        cfg["id2label"], cfg["label2id"] = label_maps
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    for file in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(os.path.join(minilm, file), out)
    print("wrote", out)
