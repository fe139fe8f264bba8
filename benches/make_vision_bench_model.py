"""Realistic-size image models for benches/load_vision.py, with seeded random weights: an image
classifier, ViT-Base/16 at 224 (86M parameters, `google/vit-base-patch16-224`'s shape, 1000
labels), and a captioner of `nlpconnect/vit-gpt2-image-captioning`'s shape (VisionEncoderDecoder:
ViT-Base/16 encoder, GPT-2-small decoder with cross-attention; SmolLM2's tokenizer, vocabulary
49152, as no GPT-2 tokenizer ships here), each with its ViTImageProcessor, a BLIP captioner of
`Salesforce/blip-image-captioning-base`'s shape (BlipConfig's defaults: ViT-B/16 at 384 x 384,
a BERT-base text decoder; all-MiniLM-L6-v2's bert-base-uncased vocabulary plus BLIP's `[DEC]`
and `[ENC]`, 30524 tokens as Salesforce's), and a 640 x 480 photo-like JPEG. Speed is what they
are for.

usage: ~/.cache/dlc-peer/venv/bin/python benches/make_vision_bench_model.py [OUT_DIR]
Writes OUT_DIR (default models/bench)/vit-base/, OUT_DIR/vit-gpt2-captioner/ (with a copy for
the DLC, vit-gpt2-captioner-dlc/: see below), OUT_DIR/blip-base-captioner/ and
OUT_DIR/photo-640x480.jpg.
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

torch.manual_seed(2021)
tokenizer = os.path.join(ROOT, "models", "smollm2-tokenizer")
decoder = transformers.GPT2Config(vocab_size=49152, bos_token_id=1, eos_token_id=2,
                                  add_cross_attention=True, is_decoder=True)
captioner = transformers.VisionEncoderDecoderModel(
    config=transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(transformers.ViTConfig(), decoder))
captioner.config.decoder_start_token_id = 1
captioner.config.eos_token_id = 2
captioner.config.pad_token_id = 2
captioner.generation_config.decoder_start_token_id = 1
captioner.generation_config.eos_token_id = 2
captioner.generation_config.pad_token_id = 2
captioner.eval()
caption_path = os.path.join(out_root, "vit-gpt2-captioner")
captioner.save_pretrained(caption_path, safe_serialization=True)
transformers.ViTImageProcessor().save_pretrained(caption_path)
# (saved by transformers 4.51.3 itself: the SmolLM2 folder's tokenizer_config.json names a
# newer transformers' tokenizer class)
transformers.PreTrainedTokenizerFast(
    tokenizer_file=os.path.join(tokenizer, "tokenizer.json"), bos_token="<|im_start|>",
    eos_token="<|im_end|>", pad_token="<|im_end|>").save_pretrained(caption_path)

# The DLC itself cannot load a VisionEncoderDecoder for image-to-text: its toolkit passes
# `tokenizer=<model dir>` as a string, which transformers 4.51.3 leaves unloaded for this config
# (every request: 400 `'str' object has no attribute 'pad_token_id'`). Its users' way out is a
# `code/inference.py` whose model_fn builds the pipeline: the benchmark's DLC runs this copy.
dlc_path = os.path.join(out_root, "vit-gpt2-captioner-dlc")
os.makedirs(os.path.join(dlc_path, "code"), exist_ok=True)
for name in os.listdir(caption_path):
    target = os.path.join(dlc_path, name)
    if not os.path.exists(target):
        os.symlink(os.path.join(caption_path, name), target)
with open(os.path.join(dlc_path, "code", "inference.py"), "w") as f:
    f.write("from transformers import pipeline\n\n\n"
            "def model_fn(model_dir):\n"
            "    return pipeline(\"image-to-text\", model=model_dir, device=-1)\n")

torch.manual_seed(384)
blip_tokenizer = transformers.BertTokenizerFast.from_pretrained(
    os.path.join(ROOT, "models", "all-MiniLM-L6-v2"),
    model_input_names=["input_ids", "attention_mask"])
blip_tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
blip = transformers.BlipForConditionalGeneration(transformers.BlipConfig()).eval()
blip_path = os.path.join(out_root, "blip-base-captioner")
blip.save_pretrained(blip_path, safe_serialization=True)
os.remove(os.path.join(blip_path, "generation_config.json"))  # as Salesforce's repositories
transformers.BlipImageProcessor().save_pretrained(blip_path)
blip_tokenizer.save_pretrained(blip_path)

rng = np.random.default_rng(640)
y, x = np.mgrid[0:480, 0:640].astype(np.float64)
channels = [128 + 90 * np.sin(x / 640 * rng.uniform(1, 4) * 6.28 + rng.uniform(0, 6))
            * np.cos(y / 480 * rng.uniform(1, 4) * 6.28) + rng.normal(0, 10, x.shape) for _ in range(3)]
photo = Image.fromarray(np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8))
photo.save(os.path.join(out_root, "photo-640x480.jpg"), quality=90)
print(path, caption_path)
