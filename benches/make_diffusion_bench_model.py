"""A Stable-Diffusion-shaped diffusers folder for benches/load_text_to_image.py, with seeded random
weights: SD 1.x's layout (CLIPTextModel, UNet2DConditionModel with cross-attention down/up blocks
and a mid block, AutoencoderKL with 4 blocks, PNDM with SD 1.5's schedule) at a quarter of SD
1.5's widths (UNet 96/192/384/384 channels, text encoder 384 wide and 6 layers, VAE 32/64/128/128)
so that a 256 x 256 image takes seconds on two cores, not minutes. Speed is what it is for.

usage: ~/.cache/dlc-peer/venv/bin/python benches/make_diffusion_bench_model.py [OUT_DIR]
(needs diffusers in the peer venv: pip install diffusers==0.32.2)
Writes OUT_DIR (default models/bench)/sd-quarter/ and sd-quarter-dlc/ (the DLC's copy).
"""
import os
import shutil
import sys

import diffusers
import torch
import transformers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "models"))
from make_vision_fixtures import tiny_clip_tokenizer  # noqa: E402

out_root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "models", "bench")
path = os.path.join(out_root, "sd-quarter")
torch.manual_seed(2022)
unet = diffusers.UNet2DConditionModel(
    sample_size=32, block_out_channels=(96, 192, 384, 384), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=384, attention_head_dim=8)
vae = diffusers.AutoencoderKL(
    block_out_channels=[32, 64, 128, 128], down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2, sample_size=256)
tokenizer_dir = os.path.join(path, "tokenizer")
tiny_clip_tokenizer(tokenizer_dir).save_pretrained(tokenizer_dir)
tokenizer = transformers.CLIPTokenizer(
    vocab_file=os.path.join(tokenizer_dir, "vocab.json"),
    merges_file=os.path.join(tokenizer_dir, "merges.txt"), model_max_length=77)
shutil.rmtree(tokenizer_dir)
text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
    vocab_size=len(tokenizer), hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
    num_attention_heads=6, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
scheduler = diffusers.PNDMScheduler(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)
pipe = diffusers.StableDiffusionPipeline(
    vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
    safety_checker=None, feature_extractor=None, requires_safety_checker=False)
pipe.save_pretrained(path, safe_serialization=True)
tokenizer_json = os.path.join(path, "tokenizer", "tokenizer.json")
if os.path.exists(tokenizer_json):
    os.remove(tokenizer_json)
# The peer kit's start script wants a config.json in the folder (a transformers model's); with
# HF_TASK=text-to-image the toolkit never reads it and loads the diffusers pipeline. The DLC's
# copy: the same files and a placeholder config.json.
dlc_path = os.path.join(out_root, "sd-quarter-dlc")
os.makedirs(dlc_path, exist_ok=True)
for name in os.listdir(path):
    if not os.path.exists(os.path.join(dlc_path, name)):
        os.symlink(os.path.join(path, name), os.path.join(dlc_path, name))
with open(os.path.join(dlc_path, "config.json"), "w") as f:
    f.write('{"_comment": "placeholder for the peer kit; the DLC serves model_index.json"}\n')
print(path, dlc_path)
