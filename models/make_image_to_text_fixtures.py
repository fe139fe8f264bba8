"""image-to-text fixtures (issue 15): a tiny seeded VisionEncoderDecoder (ViT encoder, GPT-2
decoder with cross-attention, an `enc_to_dec_proj` between their widths), a tiny seeded BLIP
captioner (`BlipForConditionalGeneration`, Salesforce/blip-image-captioning-*'s layout), and the
goldens of transformers 4.51.3's ImageToTextPipeline on them, as the DLC computes them.

Run with the peer venv (transformers 4.51.3, torch 2.6.0, Pillow, the DLC's toolkit), after
make_vision_fixtures.py made the sample images:
    ~/.cache/dlc-peer/venv/bin/python models/make_image_to_text_fixtures.py [gpt2 | blip ...]

Writes models/tiny/vision-{gpt2,blip}-captioner/ and models/golden/image-to-text/{gpt2,blip}-
captioner.json. The GPT-2 decoder's tokenizer is the committed tiny GPT-2's (models/tiny/gpt2-lm);
BLIP's is the tiny BERT's (models/tiny/bert-cls) with BLIP's `[DEC]` start token added, as
Salesforce's BLIP tokenizers carry it. The BLIP folder has no generation_config.json, as the
Salesforce repositories have none: generate's settings come from config.json. Records as in
make_vision_fixtures.py (`raw`, `base64`, `data-url`), plus `error` records: the message of the
pipeline's exception, which the DLC answers with a 400.
"""

import base64
import io
import json
import os
import shutil
import sys

import torch
import transformers

from make_vision_fixtures import CONTENT_TYPES, GOLDEN, IMAGES, TINY, pipeline_records

GPT2 = os.path.join(TINY, "gpt2-lm")
BERT = os.path.join(TINY, "bert-cls")


def captioner(path):
    torch.manual_seed(17)
    encoder = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64)
    decoder = transformers.GPT2Config(
        vocab_size=400, n_embd=32, n_layer=2, n_head=4, n_positions=64,
        bos_token_id=0, eos_token_id=2, add_cross_attention=True, is_decoder=True,
        initializer_range=0.3)
    config = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = 0
    config.pad_token_id = 2
    config.eos_token_id = 2
    model = transformers.VisionEncoderDecoderModel(config=config)
    # Random init leaves LayerNorms at 1/0 and biases at 0: perturb everything so that a wrong
    # or missing weight changes the text. The larger scale on the decoder keeps its logits apart
    # (a greedy choice should not hinge on the last float bit).
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if name.startswith("decoder.") else 0.05))
    model.eval()
    model.save_pretrained(path, safe_serialization=True)
    processor = transformers.ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor.save_pretrained(path)
    for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy(os.path.join(GPT2, name), os.path.join(path, name))


def save_trocr(path, encoder, decoder):
    """The VisionEncoderDecoder of `encoder` and a TrOCR `decoder` (BART's start token, pad 1, eos
    2), its weights perturbed from the current torch seed, and a 32 x 32 ViTImageProcessor."""
    config = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = 2
    config.pad_token_id = 1
    config.eos_token_id = 2
    model = transformers.VisionEncoderDecoderModel(config=config)
    # Larger cross-attention weights than elsewhere: the image must change the text.
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.6 if "encoder_attn." in name else 0.2 if name.startswith("decoder.") else 0.05
            p.add_(torch.randn_like(p) * scale)
    model.eval()
    model.save_pretrained(path, safe_serialization=True)
    transformers.ViTImageProcessor(
        size={"height": 32, "width": 32}, resample=3, image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5]).save_pretrained(path)


def trocr_captioner(path, learned_positions):
    """A VisionEncoderDecoder of microsoft/trocr-*'s layout: a ViT encoder (trocr-base's has no
    Q/K/V biases), a TrOCR decoder whose cross-attention reads the encoder's width itself
    (`cross_attention_hidden_size`: no enc_to_dec_proj), BART's start token."""
    torch.manual_seed(29 if learned_positions else 31)
    encoder = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, qkv_bias=not learned_positions)
    decoder = transformers.TrOCRConfig(
        vocab_size=400, d_model=32, decoder_layers=2, decoder_attention_heads=4,
        decoder_ffn_dim=64, max_position_embeddings=64, cross_attention_hidden_size=48,
        use_learned_position_embeddings=learned_positions, layernorm_embedding=learned_positions,
        scale_embedding=not learned_positions, activation_function="gelu" if learned_positions
        else "relu", bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2)
    save_trocr(path, encoder, decoder)
    for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy(os.path.join(GPT2, name), os.path.join(path, name))


# A corpus for the tiny XLM-R-style SentencePiece model (printed-text words, as TrOCR reads).
SPM_CORPUS = [
    "Invoice number 4471, due on the 3rd of March.",
    "The quick brown fox jumps over the lazy dog.",
    "Total amount: 1,250.00 EUR (including tax).",
    "Please sign here and return one copy to the office.",
    "Handwritten notes are harder to read than printed ones.",
    "Meeting moved to Thursday at 10:30 in room B-12.",
    "Dear Sir or Madam, thank you for your letter.",
    "Order #889 shipped via express courier yesterday.",
    "Café, naïve and résumé keep their accents.",
    "Chapter 7: The end of the beginning.",
]


def xlm_roberta_tokenizer(path):
    """microsoft/trocr-small-*'s tokenizer files: an XLM-R SentencePiece Unigram model
    (sentencepiece.bpe.model; ids 0-2 <unk> <s> </s>, no pad) and XLMRobertaTokenizer's settings,
    no tokenizer.json. Trained here on SPM_CORPUS, one thread (deterministic)."""
    import sentencepiece as spm
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SPM_CORPUS * 20), model_writer=model, vocab_size=180, model_type="unigram",
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, hard_vocab_limit=False,
        minloglevel=2)
    spm_path = os.path.join(path, "sentencepiece.bpe.model")
    with open(spm_path, "wb") as f:
        f.write(model.getvalue())
    tokenizer = transformers.XLMRobertaTokenizer(spm_path)
    tokenizer.save_pretrained(path)
    assert not os.path.exists(os.path.join(path, "tokenizer.json"))
    return tokenizer


def trocr_small_captioner(path):
    """A VisionEncoderDecoder of microsoft/trocr-small-*'s layout: a DeiT encoder (with its
    distillation token), a TrOCR decoder with sinusoidal positions, scaled embeddings and a ReLU,
    and XLM-R's SentencePiece tokenizer (the decoder's vocabulary is its fairseq ids)."""
    os.makedirs(path, exist_ok=True)
    tokenizer = xlm_roberta_tokenizer(path)
    torch.manual_seed(37)
    encoder = transformers.DeiTConfig(
        image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64)
    decoder = transformers.TrOCRConfig(
        vocab_size=len(tokenizer), d_model=32, decoder_layers=2, decoder_attention_heads=4,
        decoder_ffn_dim=64, max_position_embeddings=64, cross_attention_hidden_size=48,
        use_learned_position_embeddings=False, layernorm_embedding=False, scale_embedding=True,
        activation_function="relu", bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2)
    save_trocr(path, encoder, decoder)


def blip_captioner(path):
    # As Salesforce's BLIP tokenizers: no token_type_ids (generate would refuse them).
    tokenizer = transformers.BertTokenizerFast.from_pretrained(
        BERT, model_input_names=["input_ids", "attention_mask"])
    tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    torch.manual_seed(23)
    vision = {"image_size": 32, "patch_size": 8, "hidden_size": 48, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4}
    text = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 64,
            "bos_token_id": tokenizer.bos_token_id, "pad_token_id": tokenizer.pad_token_id,
            "sep_token_id": tokenizer.sep_token_id, "eos_token_id": 2}
    config = transformers.BlipConfig(text_config=text, vision_config=vision)
    model = transformers.BlipForConditionalGeneration(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if name.startswith("text_decoder.") else 0.05))
    model.eval()
    model.save_pretrained(path, safe_serialization=True)
    os.remove(os.path.join(path, "generation_config.json"))
    processor = transformers.BlipImageProcessor(size={"height": 32, "width": 32})
    processor.save_pretrained(path)
    tokenizer.save_pretrained(path)


def error_of(call):
    try:
        call()
    except Exception as e:  # the DLC answers any pipeline exception with a 400 and its message
        return str(e)
    raise AssertionError("expected an error")


def main():
    families = sys.argv[1:] or ["gpt2", "blip", "trocr", "trocr-small"]
    if "gpt2" in families:
        gpt2()
    if "blip" in families:
        blip()
    if "trocr" in families:
        trocr("trocr-captioner", True)
        trocr("trocr-sinusoidal-captioner", False)
    if "trocr-small" in families:
        trocr_small()


def trocr(name, learned_positions):
    path = os.path.join(TINY, f"vision-{name}")
    trocr_captioner(path, learned_positions)
    pipe = transformers.pipeline("image-to-text", model=path)
    parameter_sets = [
        {"max_new_tokens": 40},
        {"generate_kwargs": {"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 12}},
        {"generate_kwargs": {"no_repeat_ngram_size": 2, "repetition_penalty": 1.5}},
    ]
    names = ["rgb-64x48.png", "rgb-300x200.png", "grey-40x40.png", "photo-80x60.jpg"]
    records = caption_records(pipe, names, parameter_sets)
    write_golden(pipe, name, records)


def trocr_small():
    name = "trocr-small-captioner"
    path = os.path.join(TINY, f"vision-{name}")
    if os.path.isdir(path):
        shutil.rmtree(path)
    trocr_small_captioner(path)
    pipe = transformers.pipeline("image-to-text", model=path)
    assert type(pipe.tokenizer).__name__ == "XLMRobertaTokenizerFast", pipe.tokenizer
    parameter_sets = [
        {"max_new_tokens": 40},
        {"generate_kwargs": {"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 12}},
    ]
    records = caption_records(pipe, NAMES, parameter_sets)
    write_golden(pipe, name, records)
    # The converted fast tokenizer's encodings (special tokens added), for the Rust converter's test.
    texts = SPM_CORPUS[:3] + ["  Spaces   inside  and trailing  ", "unseen words: zebra, quixotic!", "Ünïcode ﬁ ①",
                              "<mask> at the start", ""]
    encodings = [{"text": t, "ids": pipe.tokenizer(t)["input_ids"]} for t in texts]
    with open(os.path.join(GOLDEN, "image-to-text", f"{name}-tokenizer.json"), "w") as f:
        json.dump(encodings, f, indent=1, ensure_ascii=False)
        f.write("\n")


# The images every captioner's golden covers, and the two that the parameter sets run on.
NAMES = ["rgb-64x48.png", "rgb-300x200.png", "grey-40x40.png", "palette-45x35.png",
         "photo-80x60.jpg", "exif-rotated-80x60.jpg", "rgba-50x30.png"]
FIRST = ["rgb-64x48.png", "photo-80x60.jpg"]


def caption_records(pipe, names, parameter_sets):
    """Each of `names` sent raw and as base64, then each parameter set on FIRST (base64)."""
    images = {n: os.path.join(IMAGES, n) for n in names}
    records = pipeline_records(pipe, images, [None], ["raw", "base64"])
    first = {k: os.path.join(IMAGES, k) for k in FIRST}
    return records + pipeline_records(pipe, first, parameter_sets, ["base64"])


def listed_record(pipe, names):
    """A list of base64 images with max_new_tokens 6; also returns the base64 strings."""
    listed = [base64.b64encode(open(os.path.join(IMAGES, n), "rb").read()).decode()
              for n in names]
    record = {"images": names, "via": "base64", "parameters": {"max_new_tokens": 6},
              "response": json.loads(json.dumps(pipe(listed, max_new_tokens=6)))}
    return record, listed


def blip():
    path = os.path.join(TINY, "vision-blip-captioner")
    blip_captioner(path)
    pipe = transformers.pipeline("image-to-text", model=path)
    parameter_sets = [
        {"max_new_tokens": 5},
        {"max_new_tokens": 30},
        {"prompt": "this movie is"},
        {"prompt": "this movie is", "max_new_tokens": 6},
        {"generate_kwargs": {"num_beams": 3}},
        {"generate_kwargs": {"num_beams": 3, "num_return_sequences": 2, "max_new_tokens": 8}},
        {"prompt": "a", "generate_kwargs": {"num_beams": 2, "max_length": 9}},
        {"generate_kwargs": {"no_repeat_ngram_size": 2, "repetition_penalty": 1.5}},
        {"generate_kwargs": {"min_length": 12}},
    ]
    records = caption_records(pipe, NAMES, parameter_sets)
    record, listed = listed_record(pipe, ["rgb-64x48.png", "grey-40x40.png"])
    records.append(record)
    for parameters in [{"prompt": ["a"]}, {"generate_kwargs": {"eos_token_id": 5}}]:
        records.append({"image": "rgb-64x48.png", "via": "base64", "parameters": parameters,
                        "error": error_of(lambda: pipe(listed[0], **parameters))})
    write_golden(pipe, "blip-captioner", records)


def gpt2():
    path = os.path.join(TINY, "vision-gpt2-captioner")
    captioner(path)
    pipe = transformers.pipeline("image-to-text", model=path)
    parameter_sets = [
        {"max_new_tokens": 5},
        {"max_new_tokens": 40},
        {"generate_kwargs": {"num_beams": 3}},
        {"generate_kwargs": {"num_beams": 4, "num_return_sequences": 2, "max_new_tokens": 12}},
        {"generate_kwargs": {"no_repeat_ngram_size": 2, "repetition_penalty": 1.5}},
        {"generate_kwargs": {"max_length": 8, "min_length": 6}},
        {"generate_kwargs": {"bad_words_ids": [[100], [200, 201]]}, "max_new_tokens": 10},
        {"timeout": 5.0},
    ]
    records = caption_records(pipe, NAMES, parameter_sets)
    records += pipeline_records(pipe, {"rgb-19x27.png": os.path.join(IMAGES, "rgb-19x27.png")},
                                [None], ["data-url"])
    record, listed = listed_record(pipe, ["rgb-64x48.png", "grey-40x40.png", "photo-80x60.jpg"])
    records.append(record)
    one = listed[0]
    for parameters in [
        {"prompt": "a photo of"},
        {"max_new_tokens": 5, "generate_kwargs": {"max_new_tokens": 6}},
    ]:
        records.append({"image": "rgb-64x48.png", "via": "base64", "parameters": parameters,
                        "error": error_of(lambda: pipe(one, **parameters))})
    write_golden(pipe, "gpt2-captioner", records)


def write_golden(pipe, name, records):
    out_dir = os.path.join(GOLDEN, "image-to-text")
    os.makedirs(out_dir, exist_ok=True)
    golden = {"model": f"tiny/vision-{name}", "transformers": transformers.__version__,
              "torch": torch.__version__, "image_processor": type(pipe.image_processor).__name__,
              "records": records}
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(golden, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(len(records), "records")
    for r in records[:12]:
        print(r.get("image"), r.get("parameters"), r.get("response", r.get("error")))


if __name__ == "__main__":
    main()
