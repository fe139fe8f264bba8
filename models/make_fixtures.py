"""Generate the test fixtures: tiny seeded models of every supported architecture, and golden
outputs of the Python `transformers` pipelines (what the DLC runs) for them and for the real
MiniLM classifier.

Run once, with transformers < 5 (the DLC pins 4.51.3) and torch; commit what it writes:

    python models/make_fixtures.py            # needs models/minilm-l6-cls (models/fetch_models.sh)
    python models/make_fixtures.py modernbert # only that family's encoder-task models and goldens
    python models/make_fixtures.py deberta-long # only the DeBERTa-v2 goldens past 64 tokens (committed models)

The peer kit's venv has the DLC's exact pins: ~/.cache/dlc-peer/venv/bin/python models/make_fixtures.py
A golden per encoder-pipeline parameter, on the committed models: models/make_encoder_param_fixtures.py.

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
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (AlbertConfig, AlbertTokenizerFast, AutoModel, AutoModelForMaskedLM,
                          AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, BertConfig,
                          BertForSequenceClassification, BertTokenizerFast, DebertaV2Config,
                          DebertaV2TokenizerFast, DistilBertConfig, ElectraConfig, ElectraTokenizerFast,
                          ModernBertConfig, PreTrainedTokenizerFast,
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


def unigram_cls_sep():
    """A DeBERTa-v3-style tokenizer: SentencePiece Unigram with BERT's special tokens."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.Nmt(), normalizers.NFKC()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"], unk_token="[UNK]"))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    return tok


def unigram_albert():
    """An ALBERT-style tokenizer: SentencePiece Unigram with ALBERT's special tokens and ids (<pad> 0, <unk> 1,
    [CLS] 2, [SEP] 3, [MASK] 4) and the normalizer transformers' AlbertConverter writes (do_lower_case,
    accents stripped; no precompiled charsmap)."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([
        normalizers.Replace("``", '"'), normalizers.Replace("''", '"'), normalizers.NFKD(),
        normalizers.StripAccents(), normalizers.Lowercase(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"], unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok


def byte_bpe_cls_sep():
    """A ModernBERT-style tokenizer: byte-level BPE with BERT's special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    return tok


def modernbert_fast(tokenizer_object, model_max_length):
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, model_max_length=model_max_length,
                                   unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                                   mask_token="[MASK]", model_input_names=["input_ids", "attention_mask"])


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


def golden(task, name, model_dir, cases, deviations=None):
    """The pipeline's answer to each request, as the DLC handler calls it."""
    pipe = pipeline(task, model=model_dir, tokenizer=model_dir, device=-1)
    golden_records(task, name, model_dir, cases, lambda body: to_json(dlc_predict(pipe, body)), deviations)


def to_json(value):
    """numpy scalars (token-classification scores) as the DLC's JSON encoder writes them."""
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


# ---------------------------------------------------------------------------------------------
# Issue 3: every encoder pipeline on every family. One tokenizer per family, one tiny model per
# head: <family>-ner, -qa, -mlm, -nli, -ranker, -st (a sentence-transformers folder).

NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
FAMILIES = {
    "bert": dict(
        tokenizer=wordpiece, fast=BertTokenizerFast, mask="[MASK]",
        config=lambda vocab, **kw: BertConfig(vocab_size=vocab, max_position_embeddings=MAX_LEN, type_vocab_size=2,
                                              hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                              intermediate_size=64, initializer_range=0.3, **kw),
        nli=["contradiction", "neutral", "entailment"],
        pooling=dict(pooling_mode_mean_tokens=True), normalize=True),
    "distilbert": dict(
        tokenizer=wordpiece, fast=DistilBertTokenizerFast, mask="[MASK]",
        config=lambda vocab, **kw: DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                                    max_position_embeddings=MAX_LEN, initializer_range=0.3, **kw),
        nli=["ENTAILMENT", "NEUTRAL", "CONTRADICTION"],  # entailment first: contradiction is the last column
        pooling=dict(pooling_mode_cls_token=True), normalize=False),
    "roberta": dict(
        tokenizer=byte_bpe, fast=RobertaTokenizerFast, mask="<mask>",
        config=lambda vocab, **kw: RobertaConfig(vocab_size=vocab, max_position_embeddings=MAX_LEN + 2,
                                                 type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                                 hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                 intermediate_size=64, initializer_range=0.3, **kw),
        nli=["Contradiction", "Entailment"],
        pooling=dict(pooling_mode_max_tokens=True, pooling_mode_mean_tokens=True), normalize=True),
    "xlm-roberta": dict(
        tokenizer=unigram, fast=XLMRobertaTokenizerFast, mask="<mask>",
        config=lambda vocab, **kw: XLMRobertaConfig(vocab_size=vocab, max_position_embeddings=MAX_LEN + 2,
                                                    type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                                                    eos_token_id=2, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=64,
                                                    initializer_range=0.3, **kw),
        nli=["yes", "maybe", "no"],  # no label starts with "entail": the pipeline falls back to the last
        pooling=dict(pooling_mode_mean_sqrt_len_tokens=True, pooling_mode_lasttoken=True), normalize=False),
    # DeBERTa-v3's layout: relative attention with log buckets, no absolute positions, no token types.
    "deberta-v2": dict(
        tokenizer=unigram_cls_sep, fast=DebertaV2TokenizerFast, mask="[MASK]",
        config=lambda vocab, **kw: DebertaV2Config(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                                   num_attention_heads=4, intermediate_size=64,
                                                   max_position_embeddings=MAX_LEN, relative_attention=True,
                                                   position_buckets=16, max_relative_positions=-1,
                                                   pos_att_type=["p2c", "c2p"], position_biased_input=False,
                                                   norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0,
                                                   pooler_hidden_size=32, pooler_hidden_act="gelu",
                                                   initializer_range=0.3, pad_token_id=0, **kw),
        nli=["entailment", "neutral", "contradiction"],
        pooling=dict(pooling_mode_mean_tokens=True), normalize=True),
    # Three layers: two with an 8-token sliding window, one global.
    "modernbert": dict(
        tokenizer=byte_bpe_cls_sep, fast=modernbert_fast, mask="[MASK]",
        config=lambda vocab, **kw: ModernBertConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                                    num_hidden_layers=3, num_attention_heads=4,
                                                    max_position_embeddings=MAX_LEN, global_attn_every_n_layers=3,
                                                    local_attention=8, pad_token_id=3, bos_token_id=1,
                                                    eos_token_id=2, cls_token_id=1, sep_token_id=2,
                                                    initializer_range=0.3, classifier_pooling="mean", **kw),
        nli=["contradiction", "entailment"],
        pooling=dict(pooling_mode_cls_token=True), normalize=True),
    # Embeddings narrower than the hidden size: exercises `embeddings_project`.
    "electra": dict(
        tokenizer=wordpiece, fast=ElectraTokenizerFast, mask="[MASK]",
        config=lambda vocab, **kw: ElectraConfig(vocab_size=vocab, embedding_size=16, hidden_size=32,
                                                 num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                                 max_position_embeddings=MAX_LEN, initializer_range=0.3, **kw),
        nli=["entailment", "not_entailment"],
        pooling=dict(pooling_mode_cls_token=True, pooling_mode_mean_tokens=True), normalize=False),
    # ALBERT: embeddings narrower than the hidden size (`embedding_hidden_mapping_in`) and one layer's
    # weights shared by all three layers (one group of one layer, as in every released checkpoint).
    "albert": dict(
        tokenizer=unigram_albert, fast=AlbertTokenizerFast, mask="[MASK]",
        config=lambda vocab, **kw: AlbertConfig(vocab_size=vocab, embedding_size=16, hidden_size=32,
                                                num_hidden_layers=3, num_hidden_groups=1, inner_group_num=1,
                                                num_attention_heads=4, intermediate_size=64, hidden_act="gelu_new",
                                                max_position_embeddings=MAX_LEN, type_vocab_size=2,
                                                pad_token_id=0, bos_token_id=2, eos_token_id=3,
                                                initializer_range=0.3, **kw),
        nli=["entailment", "neutral", "contradiction"],
        pooling=dict(pooling_mode_mean_tokens=True), normalize=False),
}


def sentence_transformers_folder(out, pooling, normalize, width):
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        os.makedirs(os.path.join(out, "2_Normalize"), exist_ok=True)
    with open(os.path.join(out, "modules.json"), "w") as f:
        json.dump(modules, f, indent=1)
    with open(os.path.join(out, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": 16, "do_lower_case": False}, f)
    os.makedirs(os.path.join(out, "1_Pooling"), exist_ok=True)
    config = {"word_embedding_dimension": width}
    for mode in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens",
                 "lasttoken"):
        config[f"pooling_mode_{mode}"] = pooling.get(f"pooling_mode_{mode}", False)
    with open(os.path.join(out, "1_Pooling", "config.json"), "w") as f:
        json.dump(config, f, indent=1)


def encoder_task_models(only=None):
    made = {}
    seed = 100
    for index, (family, spec) in enumerate(FAMILIES.items()):
        seed = 100 + 6 * index  # six heads per family: a family regenerated alone keeps its seeds
        if only and family not in only:
            continue
        tok = spec["tokenizer"]()
        fast = spec["fast"](tokenizer_object=tok, model_max_length=MAX_LEN)
        vocab = tok.get_vocab_size()
        heads = {
            "ner": (AutoModelForTokenClassification, dict(zip(("id2label", "label2id"), labels(NER_LABELS)))),
            "qa": (AutoModelForQuestionAnswering, {}),
            "mlm": (AutoModelForMaskedLM, {}),
            "nli": (AutoModelForSequenceClassification, dict(zip(("id2label", "label2id"), labels(spec["nli"])))),
            "ranker": (AutoModelForSequenceClassification, dict(num_labels=1)),
            "st": (AutoModel, {}),
        }
        for head, (auto, kwargs) in heads.items():
            seed += 1
            torch.manual_seed(seed)
            name = f"{family}-{head}"
            model = auto.from_config(spec["config"](vocab, **kwargs))
            made[name] = save(name, model, fast)
            if head == "st":
                sentence_transformers_folder(made[name], spec["pooling"], spec["normalize"], 32)
    return made


NER_CASES = [
    {"inputs": "My name is Wolfgang and I live in Berlin"},
    {"inputs": ["I love this movie", "the food was really not very good", ""]},
    {"inputs": "I love this wonderful film again", "parameters": {"aggregation_strategy": "simple"}},
    {"inputs": "unbelievably friendly service", "parameters": {"aggregation_strategy": "first"}},
    {"inputs": "unbelievably friendly service", "parameters": {"aggregation_strategy": "average"}},
    {"inputs": "unbelievably friendly service", "parameters": {"aggregation_strategy": "MAX"}},
    {"inputs": "I love this movie", "parameters": {"ignore_labels": []}},
    {"inputs": "I love this movie", "parameters": {"ignore_labels": ["O", "B-PER"], "aggregation_strategy": "simple"}},
    {"inputs": "I love this movie", "parameters": {"grouped_entities": True}},
    {"inputs": "I love this movie", "parameters": {"grouped_entities": True, "ignore_subwords": True}},
    {"inputs": "J’adore ça 😀 à Paris, c’est génial", "parameters": {"ignore_labels": []}},
    {"inputs": LONG + " the end", "parameters": {"aggregation_strategy": "first", "stride": 8}},
    {"inputs": LONG + " the end", "parameters": {"stride": 16, "ignore_labels": []}},
    {"inputs": LONG},
    # Refused by the pipeline.
    {"inputs": "I love this", "parameters": {"stride": 8, "aggregation_strategy": "none"}},
    {"inputs": "I love this", "parameters": {"aggregation_strategy": "bogus"}},
    {"inputs": 123},
]

CONTEXT = ("My Name is Philipp and I live in Nuremberg. This model is used with sagemaker for inference. "
           "The food was great but the service was slow.")
QA_CASES = [
    {"inputs": {"question": "What is used for inference?", "context": CONTEXT}},
    {"question": "Where do I live?", "context": CONTEXT},
    {"inputs": [{"question": "What is used for inference?", "context": CONTEXT},
                {"question": "How was the food?", "context": "The food was great."}]},
    {"inputs": [{"question": "How was the food?", "context": "The food was great."}]},
    {"inputs": {"question": "What is used?", "context": CONTEXT}, "parameters": {"top_k": 3}},
    {"inputs": {"question": "What is used?", "context": CONTEXT}, "parameters": {"max_answer_len": 2, "top_k": 2}},
    {"inputs": {"question": "What?", "context": CONTEXT}, "parameters": {"handle_impossible_answer": True}},
    {"inputs": {"question": "What?", "context": CONTEXT}, "parameters": {"align_to_words": False, "topk": 2}},
    {"inputs": {"question": "Which word?", "context": LONG + " " + CONTEXT},
     "parameters": {"max_seq_len": 32, "doc_stride": 8, "top_k": 2}},
    {"inputs": {"question": "Which word?", "context": CONTEXT + " " + LONG}},
    {"inputs": {"question": "Où ?", "context": "J’adore ça 😀 à Paris, c’est génial"}},
    # Refused by the pipeline.
    {"inputs": {"question": "What?"}},
    {"inputs": {"question": "", "context": CONTEXT}},
    {"inputs": {"question": "What?", "context": CONTEXT}, "parameters": {"doc_stride": 80, "max_seq_len": 40}},
    {"inputs": {"question": "What?", "context": CONTEXT}, "parameters": {"top_k": 0}},
]


def fill_mask_cases(mask):
    return [
        {"inputs": f"I {mask} this movie."},
        {"inputs": [f"I {mask} this movie.", f"The food was {mask}!"]},
        {"inputs": [f"The food was {mask}!"]},
        {"inputs": f"I {mask} this movie.", "parameters": {"top_k": 2}},
        {"inputs": f"I {mask} this movie.", "parameters": {"targets": ["love", "hate"]}},
        {"inputs": f"I {mask} this movie.", "parameters": {"targets": "good", "top_k": 3}},
        {"inputs": f"I {mask} this movie.", "parameters": {"targets": ["zebra"]}},
        {"inputs": f"I {mask} this {mask}.", "parameters": {"top_k": 2}},
        {"inputs": f"{mask}"},
        # Refused by the pipeline.
        {"inputs": "I love this movie."},
        {"inputs": [f"I {mask} it", "no mask here"]},
    ]


FEATURE_CASES = [
    {"inputs": "I love this!"},
    {"inputs": ["I love this!", "so so", ""]},
    {"inputs": LONG, "parameters": {"truncation": True}},
    {"inputs": "a fairly long sentence about nothing in particular",
     "parameters": {"tokenize_kwargs": {"truncation": True, "max_length": 5}}},
    # Refused by the pipeline (the model's position table is too short).
    {"inputs": LONG},
    {"inputs": 123},
]

ZERO_SHOT_CASES = [
    {"inputs": "I love this movie", "parameters": {"candidate_labels": ["positive", "negative", "neutral"]}},
    {"inputs": "the food was great", "parameters": {"candidate_labels": "food, service ,price,"}},
    {"inputs": "the food was great", "parameters": {"candidate_labels": ["food", "service"], "multi_label": True}},
    {"inputs": "the food was great", "parameters": {"candidate_labels": ["food"]}},
    {"inputs": "the food was great",
     "parameters": {"candidate_labels": ["food", "music"], "hypothesis_template": "The topic is {}."}},
    {"inputs": ["I love this movie", "the service was slow"], "parameters": {"candidate_labels": ["good", "bad"]}},
    {"inputs": ["I love this movie"], "parameters": {"candidate_labels": ["good", "bad"], "multi_class": True}},
    {"inputs": LONG, "parameters": {"candidate_labels": ["long", "short"]}},
    # Refused by the pipeline.
    {"inputs": "I love this movie"},
    {"inputs": "I love this movie", "parameters": {"candidate_labels": []}},
    {"inputs": "I love this movie", "parameters": {"candidate_labels": ["a"], "hypothesis_template": "no slot"}},
]

SENTENCE_TEXTS = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
                  "J’adore ça 😀", LONG]


def golden_records(task, name, model_dir, cases, run, deviations=None):
    """`deviations`: {case index: why the server refuses, on purpose, what the pipeline answers}."""
    records = []
    for i, body in enumerate(cases):
        try:
            records.append({"request": body, "response": run(body)})
        except Exception as e:  # what the server must refuse with a 400
            records.append({"request": body, "error": str(e)})
        if deviations and i in deviations:
            records[-1]["deviation"] = deviations[i]
    os.makedirs(os.path.join(GOLDEN, task), exist_ok=True)
    path = os.path.join(GOLDEN, task, f"{name}.json")
    with open(path, "w") as f:
        json.dump({"model": os.path.relpath(model_dir, HERE), "transformers": transformers.__version__,
                   "torch": torch.__version__, "records": records}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote", path, sum("error" in r for r in records), "errors of", len(records))


def sentence_goldens(name, model_dir):
    """What Hugging Face's inference toolkit answers for the sentence-transformers tasks."""
    from sentence_transformers import SentenceTransformer, util
    model = SentenceTransformer(model_dir, device="cpu")

    def embeddings(body):
        return {"embeddings": model.encode(body["inputs"]).tolist()}

    def similarity(body):
        inputs = body["inputs"]
        a = model.encode(inputs["source_sentence"], convert_to_tensor=True)
        b = model.encode(inputs["sentences"], convert_to_tensor=True)
        return {"similarities": util.cos_sim(a, b).tolist()[0]}

    golden_records("sentence-embeddings", name, model_dir,
                   [{"inputs": SENTENCE_TEXTS[0]}, {"inputs": SENTENCE_TEXTS}, {"inputs": [""]}], embeddings)
    golden_records("sentence-similarity", name, model_dir,
                   [{"inputs": {"source_sentence": SENTENCE_TEXTS[0], "sentences": SENTENCE_TEXTS[1:]}},
                    {"inputs": {"source_sentence": "I love this", "sentences": ["I love this"]}}], similarity)


def ranking_goldens(name, model_dir):
    from sentence_transformers import CrossEncoder
    model = CrossEncoder(model_dir, device="cpu")

    def rank(body):
        inputs = body["inputs"]
        if isinstance(inputs, dict):
            scores = model.predict([[inputs["query"], t] for t in inputs["texts"]]).tolist()
            order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
            keep = inputs.get("return_documents", False)
            return [dict(index=i, score=scores[i], **({"text": inputs["texts"][i]} if keep else {})) for i in order]
        return {"scores": model.predict(inputs).tolist()}

    cases = [
        {"inputs": ["I love this movie", "the film was great"]},
        {"inputs": [["I love this movie", "the film was great"], ["I love this movie", "the food was cold"],
                    ["J’adore ça", LONG]]},
        {"inputs": {"query": "good food", "texts": ["the food was great", "slow service", "tasty"]}},
        {"inputs": {"query": "good food", "texts": ["the food was great", "slow service"], "return_documents": True}},
    ]
    golden_records("sentence-ranking", name, model_dir, cases, rank)


def quire_cases():
    return [
        {"inputs": "She has went to the store and its raining."},
        {"inputs": ["He have a dog.", "I goes to school every day, its fun.", "Their is a problem with you're car."]},
        {"inputs": "She has went to the store and its raining.", "parameters": {"ignore_labels": ["$KEEP"]}},
        {"inputs": "Ths sentense has speling erors.", "parameters": {"aggregation_strategy": "first",
                                                                      "ignore_labels": []}},
        {"inputs": "Ths sentense has speling erors.", "parameters": {"aggregation_strategy": "average"}},
    ]


def encoder_task_goldens(only=None):
    for name, path in encoder_task_models(only).items():
        family, head = name.rsplit("-", 1)
        mask = FAMILIES[family]["mask"]
        if head == "ner":
            golden("token-classification", name, path, NER_CASES)
        elif head == "qa":
            golden("question-answering", name, path, QA_CASES)
        elif head == "mlm":
            golden("fill-mask", name, path, fill_mask_cases(mask))
        elif head == "nli":
            golden("zero-shot-classification", name, path, ZERO_SHOT_CASES)
        elif head == "ranker":
            ranking_goldens(name, path)
        elif head == "st":
            deviations = None
            if family == "modernbert":
                # Rotary positions let torch run past max_position_embeddings (with a warning);
                # the server holds the model to its declared length. (DeBERTa-v3's relative
                # positions have no such length: the server answers as the pipeline does.)
                deviations = {FEATURE_CASES.index({"inputs": LONG}):
                              "longer than max_position_embeddings: 400, send truncation"}
            golden("feature-extraction", name, path, FEATURE_CASES, deviations)
            sentence_goldens(name, path)
    if only:
        return
    minilm = os.path.join(HERE, "all-MiniLM-L6-v2")
    golden("feature-extraction", "all-MiniLM-L6-v2", minilm,
           [{"inputs": "A man is eating food."}, {"inputs": SENTENCE_TEXTS[:3]}])
    sentence_goldens("all-MiniLM-L6-v2", minilm)
    quire = os.path.join(HERE, "quire-tagger")
    golden("token-classification", "quire-tagger", quire, quire_cases())


# ---------------------------------------------------------------------------------------------
# DeBERTa-v2 past its position table: relative positions only (position_biased_input false), so
# the pipelines, which do not truncate by default, run inputs longer than max_position_embeddings
# (64). Only writes goldens, from the committed tiny models: `make_fixtures.py deberta-long`.

def long_words(tok, target, offset, masks=()):
    """WORDS in a fixed order, as many as make the encoding (special tokens included) reach
    `target` tokens; `masks`: word positions where the tokenizer's mask token goes instead."""
    words = []
    while True:
        i = len(words)
        words.append(tok.mask_token if i in masks else WORDS[(offset + i * 7) % len(WORDS)])
        text = " ".join(words)
        if len(tok(text)["input_ids"]) >= target:
            return text


def deberta_long_goldens():
    import logging
    import warnings
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.join(TINY, "deberta-v2-mlm"))

    def text(target, offset, masks=()):
        return long_words(tok, target, offset, masks)

    mask_cases = [{"inputs": text(100, 0, masks={22})}, {"inputs": text(150, 5, masks={38})},
                  {"inputs": text(300, 11, masks={75})}, {"inputs": text(200, 17, masks={3, 50})}]
    ner_cases = [{"inputs": text(120, 23)},
                 {"inputs": text(250, 29), "parameters": {"aggregation_strategy": "simple"}}]
    feature_cases = [{"inputs": text(130, 31)}]
    zero_shot_cases = [{"inputs": text(120, 37), "parameters": {"candidate_labels": ["good", "bad"]}}]

    class Collect(logging.Handler):
        def emit(self, record):
            said.append(f"log {record.levelname}: {record.getMessage()}")

    said = []
    logging.getLogger("transformers").addHandler(Collect())
    for task, name, cases in [("fill-mask", "deberta-v2-mlm", mask_cases),
                              ("token-classification", "deberta-v2-ner", ner_cases),
                              ("feature-extraction", "deberta-v2-st", feature_cases),
                              ("zero-shot-classification", "deberta-v2-nli", zero_shot_cases)]:
        model_dir = os.path.join(TINY, name)
        pipe = pipeline(task, model=model_dir, tokenizer=model_dir, device=-1)
        failed = []

        def run(body):
            said.clear()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    return to_json(dlc_predict(pipe, body))
                except Exception as e:
                    failed.append(repr(e))
                    raise
                finally:
                    said.extend(f"warning {w.category.__name__}: {w.message}" for w in caught)
                    heard = "; ".join(said) or "no warnings"
                    print(f"  {task} {name}: {len(pipe.tokenizer(body['inputs'])['input_ids'])} tokens;", heard)

        golden_records(task, f"{name}-long", model_dir, cases, run)
        if failed:
            sys.exit(f"{task} {name}: the pipeline refused {failed}")


def main():
    only = sys.argv[1:]
    if only == ["deberta-long"]:
        return deberta_long_goldens()
    if only:
        # `make_fixtures.py FAMILY ...`: only those families' encoder-task models and goldens.
        unknown = set(only) - FAMILIES.keys()
        if unknown:
            sys.exit(f"unknown families {sorted(unknown)}; known: {list(FAMILIES)}")
        return encoder_task_goldens(only)
    for name, path in tiny_models().items():
        golden("text-classification", name, path, TEXT_CLASSIFICATION_CASES)
    real = os.path.join(HERE, "minilm-l6-cls")
    if not os.path.isdir(real):
        sys.exit("models/minilm-l6-cls is missing: run models/fetch_models.sh first")
    golden("text-classification", "minilm-l6-cls", real, REAL_MODEL_CASES)
    for needed in ("all-MiniLM-L6-v2", "quire-tagger"):
        if not os.path.isdir(os.path.join(HERE, needed)):
            sys.exit(f"models/{needed} is missing: run models/fetch_models.sh first")
    encoder_task_goldens()


if __name__ == "__main__":
    main()
