"""Generate the test fixtures: tiny seeded models of every supported architecture, and golden
outputs of the Python `transformers` pipelines (what the DLC runs) for them and for the real
MiniLM classifier.

Run once, with transformers < 5 (the DLC pins 4.51.3) and torch; commit what it writes:

    python models/make_fixtures.py            # needs models/minilm-l6-cls (models/fetch_models.sh)

The peer kit's venv has the DLC's exact pins: ~/.cache/dlc-peer/venv/bin/python models/make_fixtures.py

Writes models/tiny/<name>/ (config, weights, tokenizer) and models/golden/<task>/<name>.json.
Weights are seeded, but `tokenizers`' WordPiece/Unigram training is not bit-reproducible from run to
run: always commit the models and the golden files of one run together.
The golden files hold, for each request, the body as a client sends it and the pipeline's result
(or the exception text when the pipeline refuses the request).
"""
import json
import os
import shutil
import sys

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (BertConfig, BertForSequenceClassification, BertTokenizerFast, DistilBertConfig,
                          DistilBertForSequenceClassification, DistilBertTokenizerFast, RobertaConfig,
                          RobertaForSequenceClassification, RobertaTokenizerFast, XLMRobertaConfig,
                          XLMRobertaForSequenceClassification, XLMRobertaTokenizerFast, pipeline)

assert int(transformers.__version__.split(".")[0]) < 5, "use transformers<5 (the DLC pins 4.51.3)"
HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "tiny")
GOLDEN = os.path.join(HERE, "golden")
MAX_LEN = 64  # small position tables make truncation cheap to test

WORDS = ("i love this hate that movie film great bad terrible wonderful so food was the a is it good "
         "really not very much fine okay best worst ever acting plot story music service place "
         "price friendly slow fast cold hot tasty boring exciting again never always would recommend "
         "first part second short long sentence about nothing in particular word me too").split()
CORPUS = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(4 + i % 9)) for i in range(600)]
CORPUS += ["J’adore ça 😀", "Ça va très bien, merci !", "Is it good? It is great.", "I love this!", "I hate this."]


def wordpiece():
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def byte_bpe():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(sep=("</s>", 2), cls=("<s>", 0), trim_offsets=True,
                                                      add_prefix_space=False)
    return tok


def unigram():
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Nmt(), normalizers.NFKC()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return tok


def labels(names):
    return {i: n for i, n in enumerate(names)}, {n: i for i, n in enumerate(names)}


def save(name, model, fast):
    out = os.path.join(TINY, name)
    shutil.rmtree(out, ignore_errors=True)
    model.eval().save_pretrained(out, safe_serialization=True)
    fast.save_pretrained(out)
    return out


def tiny_models():
    made = {}
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  initializer_range=0.3)

    torch.manual_seed(1)
    tok = wordpiece()
    id2label, label2id = labels(["negative", "neutral", "positive"])
    cfg = BertConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=MAX_LEN, type_vocab_size=2,
                     id2label=id2label, label2id=label2id, **common)
    bert = BertForSequenceClassification(cfg).eval()
    fast = BertTokenizerFast(tokenizer_object=tok, model_max_length=MAX_LEN)
    made["bert-cls"] = save("bert-cls", bert, fast)
    # The same model in the other weight layouts a repo can have (the loader must give the same
    # results): PyTorch pickle, and safetensors split into shards with an index.
    for name, kwargs in (("bert-cls-pytorch-bin", dict(safe_serialization=False)),
                         ("bert-cls-sharded", dict(safe_serialization=True, max_shard_size="100KB"))):
        out = os.path.join(TINY, name)
        shutil.rmtree(out, ignore_errors=True)
        bert.save_pretrained(out, **kwargs)
        fast.save_pretrained(out)

    torch.manual_seed(2)
    id2label, label2id = labels(["NEGATIVE", "POSITIVE"])
    cfg = DistilBertConfig(vocab_size=tok.get_vocab_size(), dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                           max_position_embeddings=MAX_LEN, id2label=id2label, label2id=label2id,
                           initializer_range=0.3)
    made["distilbert-cls"] = save("distilbert-cls", DistilBertForSequenceClassification(cfg),
                                  DistilBertTokenizerFast(tokenizer_object=wordpiece(), model_max_length=MAX_LEN))

    torch.manual_seed(3)
    tok = byte_bpe()
    id2label, label2id = labels(["sports", "politics", "science", "arts"])
    cfg = RobertaConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=MAX_LEN + 2, type_vocab_size=1,
                        pad_token_id=1, bos_token_id=0, eos_token_id=2, hidden_act="gelu_new",
                        problem_type="multi_label_classification", id2label=id2label, label2id=label2id, **common)
    made["roberta-cls"] = save("roberta-cls", RobertaForSequenceClassification(cfg),
                               RobertaTokenizerFast(tokenizer_object=tok, model_max_length=MAX_LEN))

    torch.manual_seed(4)
    tok = unigram()
    cfg = XLMRobertaConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=MAX_LEN + 2,
                           type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=1, **common)
    made["xlm-roberta-cls"] = save("xlm-roberta-cls", XLMRobertaForSequenceClassification(cfg),
                                   XLMRobertaTokenizerFast(tokenizer_object=tok, model_max_length=MAX_LEN))
    return made


LONG = " ".join(["word"] * 100)  # longer than the tiny models' 64 positions
TEXT_CLASSIFICATION_CASES = [
    {"inputs": "I love this!"},
    {"inputs": ["I love this!", "I hate this.", "", "J’adore ça 😀"]},
    {"inputs": "I love this!", "parameters": {"top_k": 2}},
    {"inputs": ["I love this!", "so so"], "parameters": {"top_k": None}},
    {"inputs": "I love this!", "parameters": {"top_k": 0}},
    {"inputs": "I love this!", "parameters": {"return_all_scores": True}},
    {"inputs": ["I love this!", "I hate this."], "parameters": {"return_all_scores": False}},
    {"inputs": "I love this!", "parameters": {"function_to_apply": "sigmoid"}},
    {"inputs": "I love this!", "parameters": {"function_to_apply": "none", "top_k": 3}},
    {"inputs": "I love this!", "parameters": {"function_to_apply": "SOFTMAX", "top_k": None}},
    {"text": "I love this!", "text_pair": "Me too"},
    {"inputs": {"text": "Is it good?", "text_pair": "It is great."}, "parameters": {"top_k": 1}},
    {"inputs": [{"text": "first part", "text_pair": "second part"}, "plain text"]},
    {"inputs": [[["first part", "second part"]]]},
    {"inputs": []},
    {"inputs": LONG, "parameters": {"truncation": True}},
    {"inputs": "a fairly long sentence about nothing in particular", "parameters": {"max_length": 8}},
    {"inputs": [{"text": LONG, "text_pair": "short"}], "parameters": {"truncation": "only_first"}},
    {"inputs": [{"text": LONG, "text_pair": LONG}], "parameters": {"truncation": True, "padding": True}},
    # Refused by the pipeline (the server must answer 400 too).
    {"inputs": LONG},
    {"inputs": None},
    {"inputs": 123},
    {"inputs": ["a", ["b", "c"]]},
]

REAL_MODEL_CASES = [
    {"inputs": "I love this!"},
    {"inputs": ["I love this!", "I hate this."]},
    {"inputs": "I love this!", "parameters": {"top_k": 2}},
    {"inputs": ["I love this!", "I hate this."], "parameters": {"top_k": 2}},
    {"inputs": "I love this!", "parameters": {"top_k": None}},
    {"inputs": "I love this!", "parameters": {"function_to_apply": "none"}},
    {"text": "I love this!", "text_pair": "Me too"},
    {"inputs": ""},
    {"inputs": "J’adore ça 😀"},
    {"inputs": " ".join(["word"] * 600), "parameters": {"truncation": True}},
    {"inputs": ["The quick brown fox jumps over the lazy dog.", "A man is eating food.",
                "A man is eating a piece of bread.", "The girl is carrying a baby."]},
    {"inputs": " ".join(["word"] * 600)},
]


def dlc_predict(pipe, body):
    """The DLC handler's `predict`: inputs = data.pop("inputs", data); parameters = data.pop("parameters")."""
    data = json.loads(json.dumps(body))
    inputs = data.pop("inputs", data)
    parameters = data.pop("parameters", None)
    return pipe(inputs, **parameters) if parameters is not None else pipe(inputs)


def golden(task, name, model_dir, cases):
    pipe = pipeline(task, model=model_dir, tokenizer=model_dir, device=-1)
    records = []
    for body in cases:
        try:
            records.append({"request": body, "response": dlc_predict(pipe, body)})
        except Exception as e:  # what the DLC turns into a 400
            records.append({"request": body, "error": str(e)})
    os.makedirs(os.path.join(GOLDEN, task), exist_ok=True)
    path = os.path.join(GOLDEN, task, f"{name}.json")
    with open(path, "w") as f:
        json.dump({"model": os.path.relpath(model_dir, HERE), "transformers": transformers.__version__,
                   "torch": torch.__version__, "records": records}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote", path, sum("error" in r for r in records), "errors of", len(records))


def main():
    for name, path in tiny_models().items():
        golden("text-classification", name, path, TEXT_CLASSIFICATION_CASES)
    real = os.path.join(HERE, "minilm-l6-cls")
    if not os.path.isdir(real):
        sys.exit("models/minilm-l6-cls is missing: run models/fetch_models.sh first")
    golden("text-classification", "minilm-l6-cls", real, REAL_MODEL_CASES)


if __name__ == "__main__":
    main()
