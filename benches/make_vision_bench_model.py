"""A realistic-size image classifier for benches/load_vision.py: ViT-Base/16 at 224 (86M
parameters, `google/vit-base-patch16-224`'s shape, 1000 labels) with seeded random weights, its
ViTImageProcessor, and a 640 x 480 photo-like JPEG to classify. Speed is what it is for.

usage: ~/.cache/dlc-peer/venv/bin/python benches/make_vision_bench_model.py [OUT_DIR]
Writes OUT_DIR (default models/bench)/vit-base/ and OUT_DIR/photo-640x480.jpg.
"""
import os
import sys

import numpy as np
import torch
import transformers
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
out_root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "models", "bench")
torch.manual_seed(224)
labels = {i: f"class_{i}" for i in range(1000)}
config = transformers.ViTConfig(id2label=labels, label2id={v: k for k, v in labels.items()})
model = transformers.ViTForImageClassification(config).eval()
path = os.path.join(out_root, "vit-base")
model.save_pretrained(path, safe_serialization=True)
transformers.ViTImageProcessor().save_pretrained(path)

rng = np.random.default_rng(640)
y, x = np.mgrid[0:480, 0:640].astype(np.float64)
channels = [128 + 90 * np.sin(x / 640 * rng.uniform(1, 4) * 6.28 + rng.uniform(0, 6))
            * np.cos(y / 480 * rng.uniform(1, 4) * 6.28) + rng.normal(0, 10, x.shape) for _ in range(3)]
photo = Image.fromarray(np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8))
photo.save(os.path.join(out_root, "photo-640x480.jpg"), quality=90)
print(path)
