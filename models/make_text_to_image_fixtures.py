"""text-to-image fixtures (issue 15): a tiny seeded Stable Diffusion folder (diffusers layout:
model_index.json, unet/, vae/, text_encoder/, tokenizer/ with vocab.json and merges.txt as the
real SD repos ship it, scheduler/ PNDM as SD 1.x configures it) and the goldens of the DLC's
`SMDiffusionPipelineForText2Image` call on it: `pipeline(prompt, num_images_per_prompt=1,
**parameters).images[0]`, with the starting latents injected (torch's generator is not ours to
match: each record holds the latents it started from, which the test sends as `latents`).

Run with the peer venv plus diffusers (the DLC image ships it):
    ~/.cache/dlc-peer/venv/bin/pip install diffusers==0.32.2
    ~/.cache/dlc-peer/venv/bin/python models/make_text_to_image_fixtures.py

Writes models/tiny/sd-pndm/ and models/golden/text-to-image/sd-pndm.json, and the same
components with SD 2.x's DDIM scheduler (v-prediction) in models/tiny/sd-ddim/ (its component
folders link to sd-pndm's) with models/golden/text-to-image/sd-ddim.json: per record the
prompt, parameters, latents (a nested list) and the image as the DLC encodes it for
`Accept: image/png` (base64), plus its RGB pixels' sum and size.

`... make_text_to_image_fixtures.py unet` writes only models/tiny/sd-unet-linear/unet/ (an SD
2.x-style UNet: linear projections, heads per block, two transformer layers in a block) and
models/golden/text-to-image/sd-unet-linear.json: the UNet's noise predictions for seeded
latents (an odd size, two images), timesteps and prompt states, checked by our UNet's unit test.
"""

import sys

import base64
import io
import json
import os
import shutil

import numpy as np
import torch
import diffusers
import transformers

from make_vision_fixtures import GOLDEN, TINY, tiny_clip_tokenizer


def make(path):
    # (32 norm groups, as every Stable Diffusion has: candle-transformers' UNet blocks assume it)
    torch.manual_seed(18)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=4, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=4)
    vae = diffusers.AutoencoderKL(
        block_out_channels=[32, 32, 32, 32], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        sample_size=32)
    # The tiny CLIP tokenizer of the vision fixtures, as the slow CLIPTokenizer the SD repos
    # name (vocab.json and merges.txt).
    tokenizer_dir = os.path.join(path, "tokenizer")
    tiny_clip_tokenizer(tokenizer_dir).save_pretrained(tokenizer_dir)
    tokenizer = transformers.CLIPTokenizer(
        vocab_file=os.path.join(tokenizer_dir, "vocab.json"),
        merges_file=os.path.join(tokenizer_dir, "merges.txt"), model_max_length=77)
    shutil.rmtree(tokenizer_dir)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    # Random init leaves norms at 1/0 and biases at 0: perturb everything so that a wrong or
    # missing weight changes the image.
    with torch.no_grad():
        for module in (unet, vae, text_encoder):
            for p in module.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    scheduler = diffusers.PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)
    # As the SD repos ship it: vocab.json and merges.txt, no tokenizer.json.
    saved = os.path.join(path, "tokenizer")
    if os.path.exists(os.path.join(saved, "tokenizer.json")):
        os.remove(os.path.join(saved, "tokenizer.json"))
    assert os.path.exists(os.path.join(saved, "vocab.json")), os.listdir(saved)
    return diffusers.DiffusionPipeline.from_pretrained(path, torch_dtype=torch.float32)


def ddim_variant(path):
    """The same components with SD 2.x's DDIM scheduler (v-prediction): sd-ddim/, whose
    component folders link to sd-pndm's."""
    ddim = os.path.join(TINY, "sd-ddim")
    shutil.rmtree(ddim, ignore_errors=True)
    os.makedirs(os.path.join(ddim, "scheduler"))
    for component in ["text_encoder", "tokenizer", "unet", "vae"]:
        os.symlink(os.path.join("..", "sd-pndm", component), os.path.join(ddim, component))
    scheduler = diffusers.DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    scheduler.save_pretrained(os.path.join(ddim, "scheduler"))
    index = json.load(open(os.path.join(path, "model_index.json")))
    index["scheduler"] = ["diffusers", "DDIMScheduler"]
    with open(os.path.join(ddim, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
    return ddim


def main():
    path = os.path.join(TINY, "sd-pndm")
    pipe = make(path)
    assert type(pipe.tokenizer).__name__ == "CLIPTokenizer", type(pipe.tokenizer)
    cases = [
        ("a photo of a cat", {"num_inference_steps": 3}),
        ("a tiger and a lemon on the volcano", {"num_inference_steps": 4, "guidance_scale": 5.0}),
        ("two dogs playing", {"num_inference_steps": 2, "guidance_scale": 1.0}),
        ("a teapot", {"num_inference_steps": 3, "negative_prompt": "a blurry photo"}),
        ("a cat", {"num_inference_steps": 3, "height": 48, "width": 32}),
        ("the garden", {"num_inference_steps": 1}),
    ]
    goldens(pipe, "sd-pndm", cases, 18)
    ddim = diffusers.DiffusionPipeline.from_pretrained(ddim_variant(path), torch_dtype=torch.float32)
    assert type(ddim.scheduler).__name__ == "DDIMScheduler"
    goldens(ddim, "sd-ddim", cases[:4], 19)


def goldens(pipe, name, cases, seed):
    rng = np.random.default_rng(seed)
    records = []
    for prompt, parameters in cases:
        h = parameters.get("height", 32) // 8
        w = parameters.get("width", 32) // 8
        latents = rng.standard_normal((1, 4, h, w)).astype(np.float32)
        image = pipe(prompt, num_images_per_prompt=1, latents=torch.from_numpy(latents),
                     **parameters).images[0]
        out = io.BytesIO()
        image.save(out, format="PNG")  # the toolkit's encode_image for Accept: image/png
        pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        records.append({"prompt": prompt, "parameters": parameters,
                        "latents": latents.tolist(),
                        "png": base64.b64encode(out.getvalue()).decode(),
                        "width": image.width, "height": image.height,
                        "pixel_sum": int(pixels.astype(np.int64).sum())})
    out_dir = os.path.join(GOLDEN, "text-to-image")
    os.makedirs(out_dir, exist_ok=True)
    golden = {"model": f"tiny/{name}", "diffusers": diffusers.__version__,
              "transformers": transformers.__version__, "torch": torch.__version__,
              "records": records}
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    print(len(records), "records", [r["pixel_sum"] for r in records])


def unet_linear():
    torch.manual_seed(21)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=4, in_channels=4,
        out_channels=4, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24,
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2))
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    unet.eval()
    path = os.path.join(TINY, "sd-unet-linear", "unet")
    unet.save_pretrained(path, safe_serialization=True)
    rng = np.random.default_rng(21)
    records = []
    for images, h, w, t in [(1, 4, 4, 981), (2, 5, 6, 1), (2, 3, 7, 500)]:
        latents = rng.standard_normal((images, 4, h, w)).astype(np.float32)
        text = rng.standard_normal((images, 77, 24)).astype(np.float32)
        with torch.no_grad():
            noise = unet(torch.from_numpy(latents), t, encoder_hidden_states=torch.from_numpy(text)).sample
        records.append({"timestep": t, "latents": latents.tolist(), "text": text.tolist(),
                        "noise": noise.numpy().tolist()})
    out_dir = os.path.join(GOLDEN, "text-to-image")
    golden = {"model": "tiny/sd-unet-linear/unet", "diffusers": diffusers.__version__,
              "torch": torch.__version__, "records": records}
    with open(os.path.join(out_dir, "sd-unet-linear.json"), "w") as f:
        json.dump(golden, f)
        f.write("\n")
    print(len(records), "UNet records")


if __name__ == "__main__":
    if sys.argv[1:] == ["unet"]:
        unet_linear()
    else:
        main()
