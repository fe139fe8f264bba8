"""Vision fixtures (issue 15): sample images made here, tiny seeded image models of every family
we serve, and the goldens of transformers 4.51.3's pipelines on them, as the DLC computes them.

Run with the peer venv (transformers 4.51.3, torch 2.6.0, Pillow, the DLC's toolkit):
    ~/.cache/dlc-peer/venv/bin/python models/make_vision_fixtures.py [family ...]
The DETR fixtures with a timm backbone (`detr-timm`, `detr-timm-dc5`) also need timm 1.0.31 and
torchvision 0.21.0 (timm imports it), installed so that torch and transformers stay as they are:
    ~/.cache/dlc-peer/venv/bin/pip install --no-deps timm==1.0.31 torchvision==0.21.0
Their models and goldens are committed: tests and CI need neither.

Writes models/fixtures/images/*.{png,jpg,gif,bmp,webp,tiff}, models/tiny/vision-<family>/ and
models/golden/image-classification/<family>.json. A golden record names the image file, how it
is sent (`raw`: the bytes with their Content-Type, decoded by the toolkit's decoder as the DLC
does; `base64` / `data-url`: JSON `{"inputs": ...}`, decoded by the pipeline's load_image), the
`parameters`, and the pipeline's answer.
"""

import base64
import io
import json
import os
import re
import sys

import numpy as np
import torch
import transformers
from PIL import Image
from sagemaker_huggingface_inference_toolkit import decoder_encoder

HERE = os.path.dirname(os.path.abspath(__file__))
IMAGES = os.path.join(HERE, "fixtures", "images")
TINY = os.path.join(HERE, "tiny")
GOLDEN = os.path.join(HERE, "golden")

LABELS = ["tabby", "tiger", "lemon", "volcano", "teapot"]


def smooth_rgb(width, height, seed):
    """A photo-like image: smooth colour gradients plus mild noise (compresses well)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = []
    for c in range(3):
        fx, fy, phase = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 6.28)
        wave = np.sin(x / width * fx * 6.28 + phase) * np.cos(y / height * fy * 6.28)
        channels.append(128 + 100 * wave + rng.normal(0, 6, size=wave.shape))
    return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


def make_images():
    os.makedirs(IMAGES, exist_ok=True)
    made = {}

    def save(name, image, **kwargs):
        path = os.path.join(IMAGES, name)
        image.save(path, **kwargs)
        made[name] = path

    save("rgb-64x48.png", Image.fromarray(smooth_rgb(64, 48, 1)))
    save("rgb-300x200.png", Image.fromarray(smooth_rgb(300, 200, 2)))  # downscaled: antialiasing
    save("rgb-19x27.png", Image.fromarray(smooth_rgb(19, 27, 3)))  # upscaled, odd sizes
    save("grey-40x40.png", Image.fromarray(smooth_rgb(40, 40, 4)[..., 0], mode="L"))
    rgba = np.concatenate([smooth_rgb(50, 30, 5), smooth_rgb(50, 30, 6)[..., :1]], -1)
    save("rgba-50x30.png", Image.fromarray(rgba, mode="RGBA"))
    save("palette-45x35.png", Image.fromarray(smooth_rgb(45, 35, 7)).quantize(colors=16))
    with_alpha = Image.fromarray(smooth_rgb(33, 44, 8)).quantize(colors=8)
    save("palette-trns-33x44.png", with_alpha, transparency=3)
    photo = Image.fromarray(smooth_rgb(80, 60, 9))
    save("photo-80x60.jpg", photo, format="JPEG", quality=92)
    exif = photo.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    save("exif-rotated-80x60.jpg", photo, format="JPEG", quality=92, exif=exif.tobytes())
    # JPEG's other layouts (the decoder must give Pillow's bytes for each): no chroma
    # subsampling, progressive 4:2:2 at an odd size (edge upsampling), greyscale.
    save("photo-444-80x60.jpg", photo, format="JPEG", quality=85, subsampling=0)
    save("photo-progressive-61x47.jpg", Image.fromarray(smooth_rgb(61, 47, 14)), format="JPEG",
         quality=75, subsampling=1, progressive=True)
    save("grey-40x40.jpg", Image.fromarray(smooth_rgb(40, 40, 4)[..., 0], mode="L"),
         format="JPEG", quality=90)
    save("rgb-36x28.gif", Image.fromarray(smooth_rgb(36, 28, 10)).quantize(colors=32))
    save("rgb-36x28.bmp", Image.fromarray(smooth_rgb(36, 28, 11)))
    save("rgb-36x28.webp", Image.fromarray(smooth_rgb(36, 28, 12)), lossless=True)
    save("rgb-36x28.tiff", Image.fromarray(smooth_rgb(36, 28, 13)))
    # A CMYK JPEG (black varying too), as Pillow writes one (Adobe's inverted samples), and
    # Pillow's `convert("RGB")` of it as a PNG: the pixels decoding must give (not a record).
    cmyk = np.concatenate([smooth_rgb(40, 30, 15), smooth_rgb(40, 30, 16)[..., :1]], -1)
    save("cmyk-40x30.jpg", Image.frombytes("CMYK", (40, 30), cmyk.tobytes()), format="JPEG",
         quality=90)
    Image.open(made["cmyk-40x30.jpg"]).convert("RGB").save(
        os.path.join(IMAGES, "cmyk-40x30.pillow-rgb.png"))
    return made


CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "webp": "image/webp",
    "tiff": "image/tiff",
}


def id2label(n):
    return {i: LABELS[i % len(LABELS)] + ("" if i < len(LABELS) else str(i)) for i in range(n)}


def classifier(family, num_labels=5):
    """A tiny seeded `...ForImageClassification` and its image processor."""
    torch.manual_seed(15)
    labels = id2label(num_labels)
    common = dict(id2label=labels, label2id={v: k for k, v in labels.items()})
    if family == "vit":
        config = transformers.ViTConfig(
            image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=64, **common)
        model = transformers.ViTForImageClassification(config)
        processor = transformers.ViTImageProcessor(
            size={"height": 32, "width": 32}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    elif family == "deit":
        config = transformers.DeiTConfig(
            image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=64, **common)
        model = transformers.DeiTForImageClassificationWithTeacher(config)
        processor = transformers.DeiTImageProcessor(
            size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32})
    elif family == "resnet":
        config = transformers.ResNetConfig(
            embedding_size=16, hidden_sizes=[16, 24, 32], depths=[1, 2, 1],
            layer_type="bottleneck", downsample_in_first_stage=False, **common)
        model = transformers.ResNetForImageClassification(config)
        processor = transformers.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    elif family == "resnet-basic":
        config = transformers.ResNetConfig(
            embedding_size=16, hidden_sizes=[16, 24], depths=[2, 1], layer_type="basic", **common)
        model = transformers.ResNetForImageClassification(config)
        processor = transformers.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    elif family == "convnext":
        config = transformers.ConvNextConfig(
            hidden_sizes=[16, 32], depths=[1, 2], num_stages=2, layer_scale_init_value=0.5, **common)
        model = transformers.ConvNextForImageClassification(config)
        processor = transformers.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
    elif family == "dinov2":
        # image_size differs from the crop: the position embeddings are interpolated, as with
        # the real checkpoints (518 vs 224).
        config = transformers.Dinov2Config(
            image_size=40, patch_size=8, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, mlp_ratio=2, layerscale_value=0.5, **common)
        model = transformers.Dinov2ForImageClassification(config)
        processor = transformers.BitImageProcessor(
            size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    else:
        raise ValueError(family)
    # Random init leaves some parameters at exact constants (LayerNorm 1/0, zero biases):
    # perturb everything so that a wrong or missing weight changes the scores.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    return model, processor


def pipeline_records(pipe, images, parameter_sets, vias):
    records = []
    for name in sorted(images):
        ext = name.rsplit(".", 1)[1]
        data = open(images[name], "rb").read()
        for via in vias:
            for parameters in parameter_sets:
                if via == "raw":
                    if parameters:
                        continue  # a binary body carries no parameters
                    inputs = decoder_encoder.decode(data, CONTENT_TYPES[ext])["inputs"]
                elif via == "base64":
                    inputs = base64.b64encode(data).decode()
                else:
                    inputs = f"data:{CONTENT_TYPES[ext]};base64," + base64.b64encode(data).decode()
                output = pipe(inputs, **parameters) if parameters else pipe(inputs)
                record = {"image": name, "via": via}
                if via == "raw":
                    record["content_type"] = CONTENT_TYPES[ext]
                if parameters:
                    record["parameters"] = parameters
                record["response"] = json.loads(json.dumps(output))
                records.append(record)
    return records


def image_classification(images):
    families = ["vit", "deit", "resnet", "resnet-basic", "convnext", "dinov2"]
    wanted = [f for f in sys.argv[1:] if f in families] or families
    out_dir = os.path.join(GOLDEN, "image-classification")
    os.makedirs(out_dir, exist_ok=True)
    for family in families:
        if family not in wanted:
            continue
        model, processor = classifier(family)
        path = os.path.join(TINY, f"vision-{family}")
        model.save_pretrained(path, safe_serialization=True)
        processor.save_pretrained(path)
        pipe = transformers.pipeline("image-classification", model=path, feature_extractor=path)
        assert type(pipe.image_processor).__name__ == type(processor).__name__, pipe.image_processor
        parameter_sets = [
            None,
            {"top_k": 2},
            {"top_k": 10},
            {"function_to_apply": "sigmoid", "top_k": 3},
            {"function_to_apply": "none"},
        ]
        records = pipeline_records(pipe, images, parameter_sets[:1], ["raw"])
        first = {k: images[k] for k in ["rgb-64x48.png", "exif-rotated-80x60.jpg"]}
        records += pipeline_records(pipe, first, parameter_sets, ["base64"])
        records += pipeline_records(pipe, {"rgb-19x27.png": images["rgb-19x27.png"]}, [None], ["data-url"])
        # A list of images: a list of answers.
        listed = [base64.b64encode(open(images[n], "rb").read()).decode()
                  for n in ["rgb-64x48.png", "grey-40x40.png"]]
        records.append({
            "images": ["rgb-64x48.png", "grey-40x40.png"], "via": "base64", "parameters": {"top_k": 2},
            "response": json.loads(json.dumps(pipe(listed, top_k=2))),
        })
        golden = {
            "model": f"tiny/vision-{family}",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "image_processor": type(pipe.image_processor).__name__,
            "records": records,
        }
        with open(os.path.join(out_dir, f"{family}.json"), "w") as f:
            json.dump(golden, f, indent=1, ensure_ascii=False)
            f.write("\n")
        print(family, len(records), "records")


def decoder_parity(images):
    """What PIL decodes each image to (RGB, EXIF applied): the Rust decoder's unit reference."""
    out = {}
    from transformers.image_utils import load_image
    for name in sorted(images):
        data = open(images[name], "rb").read()
        image = load_image(base64.b64encode(data).decode())
        array = np.asarray(image, dtype=np.uint8)
        out[name] = {"width": image.width, "height": image.height,
                     "sum": int(array.astype(np.int64).sum()),
                     "first_row": array[0].reshape(-1)[:24].tolist(),
                     # sum((i + 1) * byte): any byte changed or moved changes it.
                     "checksum": int((array.reshape(-1).astype(np.uint64)
                                      * np.arange(1, array.size + 1, dtype=np.uint64)).sum())}
    # Pillow's resize of decoded images (the processors' step), as a position-weighted checksum
    # sum((i + 1) * byte) of the RGB bytes: the Rust resize must give the same bytes.
    resized = []
    filters = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS,
               "box": Image.BOX, "hamming": Image.HAMMING}
    for name in ["rgb-300x200.png", "palette-trns-33x44.png", "rgb-19x27.png", "grey-40x40.png"]:
        image = load_image(base64.b64encode(open(images[name], "rb").read()).decode())
        for (w, h) in [(32, 32), (224, 224), (36, 41), (17, 30), (image.width, 20), (20, image.height)]:
            for fname, f in filters.items():
                data = np.asarray(image.resize((w, h), f, reducing_gap=None), dtype=np.uint64).reshape(-1)
                check = int((data * np.arange(1, data.size + 1, dtype=np.uint64)).sum())
                resized.append({"image": name, "width": w, "height": h, "filter": fname, "checksum": check})
    with open(os.path.join(IMAGES, "resized.json"), "w") as f:
        json.dump({"pillow": Image.__version__, "cases": resized}, f, indent=0)
        f.write("\n")
    with open(os.path.join(IMAGES, "decoded.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


def tiny_clip_tokenizer(path):
    """A CLIP byte-level BPE tokenizer with a small vocabulary: the 256 byte symbols, each also
    word-final (`</w>`), merges learned greedily from a few sentences, and CLIP's two specials."""
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    corpus = ("this is a photo of a cat . a dog , a tiger and a lemon ! the teapot on a volcano "
              "photograph picture of two cats playing with dogs in the garden").split()
    words = {}
    for w in corpus:
        key = tuple(w[:-1]) + (w[-1] + "</w>",)
        words[key] = words.get(key, 0) + 1
    merges = []
    for _ in range(120):
        pairs = {}
        for word, n in words.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + n
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda p: pairs[p])
        merges.append(best)
        vocab.append(best[0] + best[1])
        merged = {}
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + n
        words = merged
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    tokenizer = transformers.CLIPTokenizerFast(
        vocab_file=os.path.join(path, "vocab.json"), merges_file=os.path.join(path, "merges.txt"))
    tokenizer.save_pretrained(path)
    os.remove(os.path.join(path, "vocab.json"))
    os.remove(os.path.join(path, "merges.txt"))
    return tokenizer


def zero_shot_image_classification(images):
    path = os.path.join(TINY, "vision-clip")
    tokenizer = tiny_clip_tokenizer(path)
    torch.manual_seed(16)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=40,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4),
        projection_dim=16)
    model = transformers.CLIPModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "logit_scale":
                p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    model.save_pretrained(path, safe_serialization=True)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(path)
    pipe = transformers.pipeline("zero-shot-image-classification", model=path, feature_extractor=path)
    assert type(pipe.image_processor).__name__ == "CLIPImageProcessor", pipe.image_processor
    parameter_sets = [
        {"candidate_labels": ["cat", "dog", "tiger"]},
        {"candidate_labels": ["a lemon", "a teapot on a volcano", "two cats playing with dogs in the garden", "x"]},
        {"candidate_labels": ["cat", "dog"], "hypothesis_template": "a picture of {} !"},
        {"candidate_labels": ["photograph"]},
    ]
    records = pipeline_records(pipe, images, parameter_sets[:1], ["base64"])
    first = {k: images[k] for k in ["rgb-64x48.png", "exif-rotated-80x60.jpg"]}
    records += pipeline_records(pipe, first, parameter_sets[1:], ["base64"])
    records += pipeline_records(pipe, {"rgb-19x27.png": images["rgb-19x27.png"]}, parameter_sets[:1], ["data-url"])
    out_dir = os.path.join(GOLDEN, "zero-shot-image-classification")
    os.makedirs(out_dir, exist_ok=True)
    golden = {"model": "tiny/vision-clip", "transformers": transformers.__version__, "torch": torch.__version__,
              "image_processor": type(pipe.image_processor).__name__, "records": records}
    with open(os.path.join(out_dir, "clip.json"), "w") as f:
        json.dump(golden, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("clip", len(records), "records")


SIGLIP_CORPUS = [
    "this is a photo of a cat", "a dog and a tiger", "a lemon on the table", "the teapot on a volcano",
    "a photograph of two cats playing with dogs in the garden", "a picture of a red car",
    "three birds sitting on a wire", "an old man reading a book", "a bowl of fruit",
    "mountains under a blue sky", "children playing football in the park", "a cup of coffee",
]


def tiny_siglip_tokenizer(path):
    """A SigLIP tokenizer as the real checkpoints ship it (spiece.model, SiglipTokenizer: no fast
    class in transformers), from a tiny SentencePiece Unigram model trained here; and the
    tokenizer.json this server reads, built to tokenize as SiglipTokenizer does (lowercase,
    punctuation removed, whitespace collapsed, `▁` prefix, `</s>` appended), checked against it."""
    import sentencepiece as spm
    import string
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    os.makedirs(path, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SIGLIP_CORPUS * 4), model_writer=model, vocab_size=64, hard_vocab_limit=False,
        model_type="unigram", normalization_rule_name="identity", num_threads=1, seed_sentencepiece_size=1000,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        minloglevel=2)
    spiece = os.path.join(path, "spiece.model")
    with open(spiece, "wb") as f:
        f.write(model.getvalue())
    slow = transformers.SiglipTokenizer(vocab_file=spiece)
    slow.save_pretrained(path)
    sp = spm.SentencePieceProcessor(model_file=spiece)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    fast = Tokenizer(models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=False))
    punctuation = "[" + re.escape(string.punctuation) + "]"
    fast.normalizer = normalizers.Sequence([
        normalizers.Lowercase(), normalizers.Replace(Regex(punctuation), ""),
        normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()])
    fast.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    fast.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    fast.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", sp.eos_id())])
    fast.add_special_tokens(["<pad>", "</s>", "<unk>"])
    fast.save(os.path.join(path, "tokenizer.json"))
    checks = SIGLIP_CORPUS + ["This is a photo of CAT.", "A picture of  {} !", "x", "Zebra? Ünïcode-free, ok"]
    for text in checks:
        want = slow(text)["input_ids"]
        got = fast.encode(text).ids
        assert got == want, (text, got, want)
    return slow


def siglip_zero_shot(images):
    """A tiny seeded SiglipModel (attention-pooling vision head, text `head`, logit scale and
    bias) and the pipeline's sigmoid scores, texts padded to 64 tokens as the pipeline pads them."""
    path = os.path.join(TINY, "vision-siglip")
    tokenizer = tiny_siglip_tokenizer(path)
    torch.manual_seed(18)
    config = transformers.SiglipConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4))
    model = transformers.SiglipModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        # Scores spread over (0, 1) rather than all near 0.5 or saturated.
        model.logit_scale.fill_(float(np.log(12.0)))
        model.logit_bias.fill_(2.0)
    model.eval()
    model.save_pretrained(path, safe_serialization=True)
    processor = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})
    processor.save_pretrained(path)
    pipe = transformers.pipeline("zero-shot-image-classification", model=path, feature_extractor=path)
    assert type(pipe.image_processor).__name__ == "SiglipImageProcessor", pipe.image_processor
    assert type(pipe.tokenizer).__name__ == "SiglipTokenizer", pipe.tokenizer
    long_label = " ".join(["two cats playing with dogs in the garden"] * 10)  # truncated to 64 tokens
    parameter_sets = [
        {"candidate_labels": ["cat", "dog", "tiger"]},
        {"candidate_labels": ["a lemon", "a teapot on a volcano", long_label, "x"]},
        {"candidate_labels": ["Cat!", "dog"], "hypothesis_template": "a picture of {} ..."},
        {"candidate_labels": ["photograph"]},
    ]
    records = pipeline_records(pipe, images, parameter_sets[:1], ["base64"])
    first = {k: images[k] for k in ["rgb-64x48.png", "exif-rotated-80x60.jpg"]}
    records += pipeline_records(pipe, first, parameter_sets[1:], ["base64"])
    records += pipeline_records(pipe, {"rgb-19x27.png": images["rgb-19x27.png"]}, parameter_sets[:1], ["data-url"])
    out_dir = os.path.join(GOLDEN, "zero-shot-image-classification")
    os.makedirs(out_dir, exist_ok=True)
    golden = {"model": "tiny/vision-siglip", "transformers": transformers.__version__, "torch": torch.__version__,
              "image_processor": type(pipe.image_processor).__name__, "records": records}
    with open(os.path.join(out_dir, "siglip.json"), "w") as f:
        json.dump(golden, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("siglip", len(records), "records")


FEATURE_FAMILIES = ["vit", "dinov2", "deit", "resnet", "convnext", "clip"]


def image_feature_extraction(images, families=FEATURE_FAMILIES):
    """Base models' last hidden states (and pooler outputs): token rows for the transformers,
    [C, h, w] maps for the convolutional networks (ResNet's pooler [C, 1, 1], ConvNeXt's [C])."""
    out_dir = os.path.join(GOLDEN, "image-feature-extraction")
    os.makedirs(out_dir, exist_ok=True)
    for family in families:
        torch.manual_seed(17)
        if family == "resnet":
            config = transformers.ResNetConfig(
                embedding_size=16, hidden_sizes=[16, 24, 32], depths=[1, 2, 1],
                layer_type="bottleneck", downsample_in_first_stage=False)
            model = transformers.ResNetModel(config)
            processor = transformers.ConvNextImageProcessor(size={"shortest_edge": 64}, crop_pct=0.875)
        elif family == "convnext":
            config = transformers.ConvNextConfig(
                hidden_sizes=[16, 32], depths=[1, 2], num_stages=2, layer_scale_init_value=0.5)
            model = transformers.ConvNextModel(config)
            processor = transformers.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875)
        elif family == "deit":
            config = transformers.DeiTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=64)
            model = transformers.DeiTModel(config)
            processor = transformers.DeiTImageProcessor(size={"height": 36, "width": 36},
                                                        crop_size={"height": 32, "width": 32})
        elif family == "clip":
            # CLIPVisionModel (model_type clip_vision_model: the vision tower alone, which AutoModel
            # loads; a whole CLIPModel fails in this pipeline, which passes it no input_ids)
            config = transformers.CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                                   num_attention_heads=4, intermediate_size=64)
            model = transformers.CLIPVisionModel(config)
            processor = transformers.CLIPImageProcessor(size={"shortest_edge": 36},
                                                        crop_size={"height": 32, "width": 32})
        elif family == "vit":
            config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=4, intermediate_size=64)
            model = transformers.ViTModel(config)
            processor = transformers.ViTImageProcessor(size={"height": 32, "width": 32})
        else:
            config = transformers.Dinov2Config(image_size=40, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=4, mlp_ratio=2, layerscale_value=0.5)
            model = transformers.Dinov2Model(config)
            processor = transformers.BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32})
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        model.eval()
        path = os.path.join(TINY, f"vision-{family}-features")
        model.save_pretrained(path, safe_serialization=True)
        processor.save_pretrained(path)
        if family == "clip":
            # as openai's CLIP folders have it: the toolkit's feature_extractor=model_dir needs a
            # feature_extractor_type for a clip_vision_model config (else a ValueError)
            pre = os.path.join(path, "preprocessor_config.json")
            settings = json.load(open(pre))
            settings["feature_extractor_type"] = "CLIPFeatureExtractor"
            with open(pre, "w") as f:
                json.dump(settings, f, indent=2, sort_keys=True)
                f.write("\n")
        pipe = transformers.pipeline("image-feature-extraction", model=path, feature_extractor=path)
        records = pipeline_records(pipe, {k: images[k] for k in ["rgb-64x48.png", "palette-45x35.png"]},
                                   [None], ["raw"])
        records += pipeline_records(pipe, {k: images[k] for k in ["rgb-19x27.png", "exif-rotated-80x60.jpg"]},
                                    [None, {"pool": True}], ["base64"])
        listed = [base64.b64encode(open(images[n], "rb").read()).decode() for n in ["rgb-64x48.png", "grey-40x40.png"]]
        records.append({"images": ["rgb-64x48.png", "grey-40x40.png"], "via": "base64", "parameters": {"pool": True},
                        "response": json.loads(json.dumps(pipe(listed, pool=True)))})
        golden = {"model": f"tiny/vision-{family}-features", "transformers": transformers.__version__,
                  "torch": torch.__version__, "image_processor": type(pipe.image_processor).__name__,
                  "records": records}
        with open(os.path.join(out_dir, f"{family}-features.json"), "w") as f:
            json.dump(golden, f, indent=1)
            f.write("\n")
        print(family, "features", len(records), "records")


def object_detection(images):
    """A tiny seeded DetrForObjectDetection with a transformers ResNet backbone (not timm's) and
    the object-detection pipeline's answers (post_process_object_detection, boxes as ints)."""
    torch.manual_seed(19)
    labels = id2label(5)
    backbone = transformers.ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 24, 32], depths=[1, 1, 1], layer_type="bottleneck",
        out_features=["stage3"])
    config = transformers.DetrConfig(
        use_timm_backbone=False, backbone=None, backbone_config=backbone, use_pretrained_backbone=False,
        d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=12, id2label=labels,
        label2id={v: k for k, v in labels.items()})
    detr_fixture("detr", config, images, frozen_affine=False)


def object_detection_timm(images):
    """A tiny seeded DETR with a timm backbone, as facebook/detr-resnet-50 ships (use_timm_backbone,
    backbone "resnet50", timm's weight names): timm's resnet50 (bottleneck blocks, depths 3, 4, 6, 3)
    with narrow stages (timm's `channels` argument; the stem stays 64 wide), all four stages, DETR
    taking the last map. Needs timm in the peer venv (timm 1.0.31 and torchvision 0.21.0, the
    latter for timm's imports, installed with `pip install --no-deps`); the model and the golden
    are committed, so only regenerating them does."""
    torch.manual_seed(23)
    labels = id2label(5)
    config = transformers.DetrConfig(
        use_timm_backbone=True, backbone="resnet50", use_pretrained_backbone=False, dilation=False,
        backbone_kwargs={"out_indices": [1, 2, 3, 4], "in_chans": 3, "channels": [4, 8, 8, 8]},
        d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=12, id2label=labels,
        label2id={v: k for k, v in labels.items()})
    detr_fixture("detr-timm", config, images, frozen_affine=True)


def object_detection_timm_dc5(images):
    """A tiny seeded DC5 DETR with a timm basic-block backbone (as facebook/detr-resnet-50-dc5 ships
    but resnet18, narrow): `dilation` makes DetrConvEncoder ask timm for output_stride 16, the
    last stage dilated instead of strided."""
    torch.manual_seed(29)
    labels = id2label(5)
    config = transformers.DetrConfig(
        use_timm_backbone=True, backbone="resnet18", use_pretrained_backbone=False, dilation=True,
        backbone_kwargs={"out_indices": [1, 2, 3, 4], "in_chans": 3, "channels": [4, 8, 12, 16]},
        d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=12, id2label=labels,
        label2id={v: k for k, v in labels.items()})
    detr_fixture("detr-timm-dc5", config, images, frozen_affine=True)


def detr_fixture(family, config, images, frozen_affine):
    """Seeds the DETR of `config`, writes it to models/tiny/vision-<family> and the pipeline's
    answers to models/golden/object-detection/<family>.json. `frozen_affine`: the frozen
    BatchNorms' weight and bias (buffers) are randomised too (timm zero-initialises each block's
    last one, which would leave the blocks' convolutions untested)."""
    model = transformers.DetrForObjectDetection(config)
    with torch.no_grad():
        # DETR's init (std 0.02) makes every query answer alike: weights at 1/sqrt(fan_in) instead.
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, float(p[0].numel()) ** -0.5)
            else:
                p.add_(torch.randn_like(p) * 0.05)
        model.model.query_position_embeddings.weight.normal_(0.0, 1.0)
        # BatchNorm statistics (buffers) too, so that folding them in is tested.
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.add_(torch.randn_like(b) * 0.05)
            elif name.endswith("running_var"):
                b.mul_(1 + torch.rand_like(b) * 0.2)
            elif frozen_affine and name.endswith(".weight"):
                b.copy_(1 + torch.randn_like(b) * 0.2)
            elif frozen_affine and name.endswith(".bias"):
                b.add_(torch.randn_like(b) * 0.05)
        # Confident, spread-out predictions: a sharper class head, boxes away from 0.5.
        model.bbox_predictor.layers[2].weight.mul_(2.0)
    model.eval()
    processor = transformers.DetrImageProcessor(size={"shortest_edge": 48, "longest_edge": 64})
    # The queries' final states share a large common part, so one label would win everywhere:
    # centre the class logits on one fixture image's mean query, and sharpen them, so that the
    # detections carry several labels.
    with torch.no_grad():
        sample = processor(images=[Image.open(images["rgb-64x48.png"]).convert("RGB")], return_tensors="pt")
        hidden = model.model(**sample).last_hidden_state[0]
        head = model.class_labels_classifier
        head.bias.copy_(-(hidden.mean(0) @ head.weight.T))
        head.weight.mul_(4.0)
        head.bias.mul_(4.0)
    path = os.path.join(TINY, f"vision-{family}")
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    detection_golden(family, "DetrImageProcessor", images)


def detection_golden(family, processor_class, images, extra=None):
    """The object-detection pipeline's answers on models/tiny/vision-<family> (thresholds default,
    0, 0.3 and 0.9; a list of two images), written to models/golden/object-detection/<family>.json
    with `extra` keys before the records."""
    path = os.path.join(TINY, f"vision-{family}")
    pipe = transformers.pipeline("object-detection", model=path, feature_extractor=path)
    assert type(pipe.image_processor).__name__ == processor_class, pipe.image_processor
    parameter_sets = [None, {"threshold": 0.0}, {"threshold": 0.3}, {"threshold": 0.9}]
    records = pipeline_records(pipe, images, parameter_sets[:1], ["raw"])
    records += pipeline_records(pipe, images, parameter_sets[1:2], ["base64"])
    # Lossless images only: a JPEG decodes a level or two off Pillow's, which may move a score
    # across a threshold.
    first = {k: images[k] for k in ["rgb-64x48.png", "rgb-300x200.png", "palette-45x35.png"]}
    records += pipeline_records(pipe, first, parameter_sets[2:], ["base64"])
    listed = [base64.b64encode(open(images[n], "rb").read()).decode() for n in ["rgb-64x48.png", "rgb-19x27.png"]]
    records.append({"images": ["rgb-64x48.png", "rgb-19x27.png"], "via": "base64", "parameters": {"threshold": 0.3},
                    "response": json.loads(json.dumps(pipe(listed, threshold=0.3)))})
    out_dir = os.path.join(GOLDEN, "object-detection")
    os.makedirs(out_dir, exist_ok=True)
    golden = {"model": f"tiny/vision-{family}", "transformers": transformers.__version__, "torch": torch.__version__,
              "image_processor": type(pipe.image_processor).__name__, **(extra or {}), "records": records}
    with open(os.path.join(out_dir, f"{family}.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    print(family, len(records), "records")


def object_detection_yolos(images):
    """A tiny seeded YolosForObjectDetection (hustvl/yolos-small's layout: ViT layers over the
    patches, detection tokens after them, mid-layer position embeddings) and the pipeline's answers.
    Its config's image_size (64 x 96: a 4 x 6 patch grid) differs from most processed sizes, so the
    position embeddings are interpolated (bicubic) for every image but rgb-300x200.png."""
    torch.manual_seed(31)
    labels = id2label(5)
    config = transformers.YolosConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, image_size=[64, 96],
        patch_size=16, num_detection_tokens=10, use_mid_position_embeddings=True, id2label=labels,
        label2id={v: k for k, v in labels.items()})
    model = transformers.YolosForObjectDetection(config)
    with torch.no_grad():
        # YOLOS's init (std 0.02, zero tokens) makes every detection token answer alike.
        for name, p in model.named_parameters():
            if "position_embeddings" in name or name.endswith(("cls_token", "detection_tokens")):
                p.normal_(0.0, 0.5)
            elif p.dim() >= 2:
                p.normal_(0.0, float(p[0].numel()) ** -0.5)
            else:
                p.add_(torch.randn_like(p) * 0.05)
        model.bbox_predictor.layers[2].weight.mul_(2.0)
    model.eval()
    processor = transformers.YolosImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    # As for DETR: centre the class logits on one image's mean detection token, and sharpen them.
    with torch.no_grad():
        sample = processor(images=[Image.open(images["rgb-64x48.png"]).convert("RGB")], return_tensors="pt")
        hidden = model.vit(sample["pixel_values"]).last_hidden_state[0, -config.num_detection_tokens:]
        head = model.class_labels_classifier.layers
        inner = torch.relu(head[1](torch.relu(head[0](hidden))))
        head[2].bias.copy_(-(inner.mean(0) @ head[2].weight.T))
        head[2].weight.mul_(4.0)
        head[2].bias.mul_(4.0)
    path = os.path.join(TINY, "vision-yolos")
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    sizes = {name: list(processor(images=[Image.open(file).convert("RGB")])["pixel_values"][0].shape)
             for name, file in sorted(images.items())}
    detection_golden("yolos", "YolosImageProcessor", images, {"processed_sizes": sizes})


if __name__ == "__main__":
    made = make_images()
    decoder_parity(made)
    only = sys.argv[1:]
    if not only or any(f in only for f in ["vit", "deit", "resnet", "resnet-basic", "convnext", "dinov2"]):
        image_classification(made)
    if not only or "clip" in only:
        zero_shot_image_classification(made)
    if not only or "siglip" in only:
        siglip_zero_shot(made)
    if not only or "detr" in only:
        object_detection(made)
    if not only or "detr-timm" in only:
        object_detection_timm(made)
    if not only or "detr-timm-dc5" in only:
        object_detection_timm_dc5(made)
    if not only or "yolos" in only:
        object_detection_yolos(made)
    if not only or "features" in only:
        image_feature_extraction(made)
    elif any(f"{f}-features" in only for f in FEATURE_FAMILIES):
        image_feature_extraction(made, [f for f in FEATURE_FAMILIES if f"{f}-features" in only])
