"""Goldens for every parameter the encoder pipelines accept (models/pipeline-parameters.md), one
request each, from transformers 4.51.3 on the committed tiny models (and the real MiniLM classifier):

    ~/.cache/dlc-peer/venv/bin/python models/make_encoder_param_fixtures.py

Writes models/golden/<task>/<model>-params.json, replayed by tests/parity_encoder_tasks.rs
(encoder_parameters_match_transformers). Each record holds the request and the pipeline's answer,
or its exception; a refused record may carry `names`: the parameter our 400 must name. A
`deviation` marks what the pipeline answers and the server refuses on purpose; a `note` says how
the answer was obtained when it is not the DLC's own call.
"""
import json
import os
import sys
import warnings

import torch
import transformers
from transformers import AutoTokenizer, pipeline

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import CONTEXT, GOLDEN, HERE, LONG, TINY, dlc_predict  # noqa: E402
from make_generation_fixtures import dlc_json  # noqa: E402

warnings.simplefilter("ignore")
transformers.logging.set_verbosity_error()

PADS_REFUSED = ("padding that adds pad tokens combined with left padding or without an attention mask "
                "is not served: a 400 that names the parameter")
FEATURE_BATCH_REFUSED = ("feature-extraction with batch_size > 1 over texts of different lengths (the pipeline pads "
                         "each batch and returns vectors for the pads) is not served: a 400 that names batch_size")
FEATURE_PADS_REFUSED = ("feature-extraction with padding that adds pad tokens (the pipeline returns vectors "
                        "for the pads) is not served: a 400 that names the parameter")
QA_EXPANDED = ("the DLC passes this object positionally and transformers 4.51 answers each character as a "
               "question; the golden is the pipeline's keyword call pipe(question=..., context=...), "
               "which answers each question against the context")


def case(body, names=None, deviation=None):
    """A request; `names`: the parameter a refusal must name; `deviation`: why we refuse on purpose."""
    return {"body": body, "names": names, "deviation": deviation}


def req(inputs, **parameters):
    return {"inputs": inputs, "parameters": parameters}


def write(task, name, model_dir, cases, run):
    records = []
    for c in cases:
        body = c["body"]
        try:
            record = {"request": body, "response": run(c)}
        except Exception as e:  # what the server must refuse with a 400
            record = {"request": body, "error": f"{type(e).__name__}: {e}"}
            if c["names"]:
                record["names"] = c["names"]
        if c["deviation"]:
            record["deviation"] = c["deviation"]
        if c.get("note"):
            record["note"] = c["note"]
        records.append(record)
    path = os.path.join(GOLDEN, task, f"{name}-params.json")
    with open(path, "w") as f:
        json.dump({"model": os.path.relpath(model_dir, HERE), "transformers": transformers.__version__,
                   "torch": torch.__version__, "records": records}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    for r in records:
        outcome = "ERR " + r["error"].splitlines()[0][:110] if "error" in r else json.dumps(r["response"])[:110]
        print(f"{task}/{name} {json.dumps(r['request'].get('parameters'))[:90]}\n    -> {outcome}")
    return records


def golden(task, name, cases, model_dir=None):
    model_dir = model_dir or os.path.join(TINY, name)
    pipe = pipeline(task, model=model_dir, tokenizer=model_dir, device=-1)

    def run(c):
        body = c["body"]
        if c.get("note") == QA_EXPANDED:
            inputs = body["inputs"]
            return dlc_json(pipe(question=inputs["question"], context=inputs["context"],
                                **body.get("parameters", {})))
        return dlc_json(dlc_predict(pipe, body))

    write(task, name, model_dir, cases, run)


# Parameters every pipeline's base class takes (`Pipeline.__call__`).
def loader_cases(inputs, batch_refused=None, **extra):
    return [
        case(req(inputs, batch_size=2, **extra), batch_refused and "batch_size", batch_refused),
        case(req(inputs[0], batch_size=2, **extra)),
        case(req(inputs, num_workers=0, **extra)),
        case(req(inputs, batch_size=0, **extra), names="batch_size"),
        case(req(inputs, batch_size="2", **extra), names="batch_size"),
        case(req(inputs, num_workers=-1, **extra), names="num_workers"),
    ]


def tokenizer_cases(wrap, text, special, pair="me too", pads_refused=None):
    """Tokenizer keyword arguments as `wrap(kwargs)` puts them in a request (text-classification: the
    parameters themselves; fill-mask: `tokenizer_kwargs`; feature-extraction: `tokenize_kwargs`)."""
    return [
        case(wrap(text, add_special_tokens=False)),
        case(wrap(text, add_special_tokens=True)),
        case(wrap(text, add_special_tokens=False, truncation=True, max_length=3)),
        case(wrap(text, text_pair=pair)),
        case(wrap(text, text_pair=pair, add_special_tokens=False)),
        case(wrap(text, text_pair=pair, return_token_type_ids=False)),
        case(wrap(text, text_pair=None)),
        case(wrap(text, text_pair=[pair]), names="text_pair"),
        case(wrap(text, return_token_type_ids=True)),
        case(wrap(text, return_attention_mask=True)),
        case(wrap(text, return_attention_mask=False)),
        case(wrap(text, padding=True, pad_to_multiple_of=8), pads_refused and "padding", pads_refused),
        case(wrap(text, pad_to_multiple_of=8)),
        case(wrap(text, padding_side="left")),
        case(wrap(text, padding_side="right", padding="max_length", max_length=16), pads_refused and "padding",
             pads_refused),
        case(wrap(text, stride=2)),
        case(wrap(text, stride=1, truncation=True, max_length=4)),
        case(wrap(text, stride=4, truncation=True, max_length=4), names="stride"),
        case(wrap(text, verbose=False)),
        case(wrap(special, split_special_tokens=True)),
        case(wrap(special, split_special_tokens=False)),
        case(wrap(text, is_split_into_words=False)),
        case(wrap(text, is_split_into_words=True), names="is_split_into_words"),
        case(wrap(text, max_length=2)),  # only the special tokens are left
        case(wrap(text, max_length=1)),  # shorter than the special tokens: no truncation
        case(wrap(text, truncation=True, max_length=0)),
        case(wrap(text, return_overflowing_tokens=False, return_length=False, return_special_tokens_mask=False,
                  return_offsets_mapping=False)),
        case(wrap(text, return_tensors="pt"), names="return_tensors"),
        case(wrap(text, return_overflowing_tokens=True), names="return_overflowing_tokens"),
        case(wrap(text, return_length=True), names="return_length"),
        case(wrap(text, return_special_tokens_mask=True), names="return_special_tokens_mask"),
        case(wrap(text, return_offsets_mapping=True), names="return_offsets_mapping"),
        case(wrap(text, text_target="x"), names="text_target"),
        case(wrap(text, padding="bogus"), names="padding"),
        case(wrap(text, padding_side="middle"), names="padding_side"),
        case(wrap(text, foo=1), names="foo"),
    ]


def padded_cases(wrap, text, why):
    """Padding a single input: no effect on the right with the attention mask; otherwise refused."""
    return [
        case(wrap(text, padding="max_length", max_length=16, padding_side="left"), "padding_side", why),
        case(wrap(text, padding="max_length", max_length=16, return_attention_mask=False),
             "return_attention_mask", why),
    ]


def text_classification(name, model_dir=None):
    special = "I love [SEP] this" if name.startswith(("bert", "distil", "minilm")) else "I love </s> this"

    def wrap(text, **kw):
        return req(text, **kw)

    cases = tokenizer_cases(wrap, "I love this", special) + [
        case(wrap("I love this", padding="max_length", max_length=16)),
        case(wrap("I love this", padding="max_length")),
    ] + padded_cases(wrap, "I love this", PADS_REFUSED) + [
        case(req(["I love this", "so so"], text_pair="me too")),
        case(req({"text": "I love this", "text_pair": "me too"}, text_pair="x"), names="text_pair"),
        case(req({"text": "I love this", "text_pair": "me too"}, add_special_tokens=False)),
        case(req("I love this", top_k=-1)),
        case(req("I love this", top_k=2.0)),
        case(req(["I love this", "so so"], top_k=2.0)),
        case(req("I love this", top_k=True)),
        case(req("I love this", top_k=False)),
        case(req("I love this", top_k="2")),
        case(req("I love this", top_k=1.5, return_all_scores=True)),
        case(req("I love this", return_all_scores=1)),
        case(req("I love this", return_all_scores=0)),
    ] + loader_cases(["I love this", "so so", "the food was great"])
    golden("text-classification", name, cases, model_dir)


def token_classification(name):
    tok = AutoTokenizer.from_pretrained(os.path.join(TINY, name))
    text = "I love this movie in Berlin"
    offsets = [list(o) for o in tok(text, return_offsets_mapping=True)["offset_mapping"]]
    # Every token moved one character to the right (the last one kept inside the text).
    shifted = [[s, e] if s == e else [min(s + 1, len(text) - 1), min(e + 1, len(text))] for s, e in offsets]
    cases = [
        case(req(text, offset_mapping=[offsets], ignore_labels=[])),
        case(req(text, offset_mapping=[shifted], ignore_labels=[])),
        case(req(text, offset_mapping=[shifted], aggregation_strategy="simple", ignore_labels=[])),
        case(req(text, offset_mapping=[shifted], aggregation_strategy="first", ignore_labels=[])),
        case(req([text, "the food was great"], offset_mapping=[shifted, offsets], ignore_labels=[])),
        case(req(text, offset_mapping=[], ignore_labels=[])),
        case(req(text, offset_mapping=None)),
        case(req(text, offset_mapping=offsets), names="offset_mapping"),
        case(req(text, offset_mapping=[offsets, offsets]), names="offset_mapping"),
        case(req(text, offset_mapping=[offsets[:3]], ignore_labels=[]), names="offset_mapping"),
        case(req(text, offset_mapping=["x"]), names="offset_mapping"),
        case(req(text, truncation=True), names="truncation"),
        case(req(text, max_length=4), names="max_length"),
        case(req(text, foo=1), names="foo"),
    ] + loader_cases([text, "the food was great"], ignore_labels=[])
    golden("token-classification", name, cases)


def question_answering(name):
    q = {"question": "What is used for inference?", "context": CONTEXT}
    several = {"question": ["Where do I live?", "What is used for inference?", "How was the food?"],
               "context": CONTEXT}
    cases = [
        case(req(q, padding="max_length")),
        case(req(q, padding=True)),
        case(req(q, padding="longest", max_seq_len=32, doc_stride=8)),
        case(req(q, padding="max_length", max_seq_len=32, doc_stride=8, top_k=2)),
        case(req(q, padding="bogus"), names="padding"),
        case(req(q, max_question_len=1)),
        case(req(q, topk=2)),
        case(req(q, topk=3, top_k=1)),
        case(req(q, align_to_words=False, top_k=3)),
        case(req(q, handle_impossible_answer=True, top_k=2)),
        case(req(q, foo=1, truncation=True, max_length=4)),  # silently dropped by the pipeline
        case(req(q, question="Where?", context="Here.")),  # likewise: the inputs win
        case({"inputs": several}, deviation=None),
        case({"inputs": several, "parameters": {"top_k": 2}}),
        case({"inputs": {"question": ["Where do I live?"], "context": CONTEXT}}),
        case({"inputs": {"question": ["Where do I live?", "How was the food?"],
                         "context": [CONTEXT, "The food was great."]}}),
        case({"inputs": {"question": ["Where do I live?", "How was the food?"], "context": [CONTEXT]}},
             names="question"),
        case({"inputs": {"question": "Where do I live?", "context": [CONTEXT, CONTEXT]}}, names="context"),
    ] + loader_cases([q, {"question": "How was the food?", "context": "The food was great."}])
    for c in cases:
        if isinstance(c["body"]["inputs"], dict) and isinstance(c["body"]["inputs"]["question"], list):
            c["note"] = QA_EXPANDED
    golden("question-answering", name, cases)


def fill_mask(name, mask):
    text, special = f"I {mask} this movie.", f"I {mask} this movie."

    def wrap(text, **kw):
        return req(text, tokenizer_kwargs=kw)

    cases = [c for c in tokenizer_cases(wrap, text, special, pair=f"so {mask}")
             if c["names"] not in ("stride",)] + [
        case(wrap(text, padding="max_length", max_length=16)),
    ] + padded_cases(wrap, text, PADS_REFUSED) + [
        case(wrap(LONG + f" {mask}", truncation=True, max_length=8), names=None),
        case(req(text, tokenizer_kwargs="x"), names="tokenizer_kwargs"),
        case(req(text, tokenizer_kwargs=None)),
        case(req(text, truncation=True), names="truncation"),
        case(req(text, foo=1), names="foo"),
    ] + loader_cases([text, f"The food was {mask}!"])
    golden("fill-mask", name, cases)


def feature_extraction(name):
    special = "I love [SEP] this" if name.startswith(("bert", "distil")) else "I love </s> this"

    def wrap(text, **kw):
        return req(text, tokenize_kwargs=kw)

    cases = tokenizer_cases(wrap, "I love this", special, pads_refused=FEATURE_PADS_REFUSED) + [
        case(wrap("I love this", padding="max_length", max_length=8), "padding", FEATURE_PADS_REFUSED),
        case(wrap("I love this", padding="max_length", max_length=3, truncation=True)),
        case(req("I love this", return_tensors=True)),
        case(req("I love this", return_tensors=False)),
        case(req("I love this", return_tensors="pt")),
        case(req("I love this", truncation=True, tokenize_kwargs={"max_length": 3})),
        case(req("I love this", truncation=True, tokenize_kwargs={"truncation": True}), names="truncation"),
        case(req("I love this", max_length=2, foo=1)),  # silently dropped by the pipeline
        case(req("I love this", tokenize_kwargs=[1]), names="tokenize_kwargs"),
    ] + loader_cases(["I love this", "so so", "the food was great"], batch_refused=FEATURE_BATCH_REFUSED) + [
        case(req(["I love this", "I love it"], batch_size=2)),  # the same length: no pads
    ]
    golden("feature-extraction", name, cases)


def zero_shot(name):
    labels = ["good", "bad", "food"]
    cases = [
        case(req("the food was great", candidate_labels=labels, multi_class=True)),
        case(req("the food was great", candidate_labels=labels, multi_class=False, multi_label=True)),
        case(req("the food was great", candidate_labels=labels, truncation=True, max_length=4, foo=1)),
        case(req("the food was great", candidate_labels=labels, hypothesis_template="It is {}.",
                 multi_label=False)),
    ] + loader_cases(["the food was great", "I love this movie"], candidate_labels=labels)
    golden("zero-shot-classification", name, cases)


def main():
    for name in ("bert-cls", "distilbert-cls", "roberta-cls"):
        text_classification(name)
    real = os.path.join(HERE, "minilm-l6-cls")
    if os.path.isdir(real):
        text_classification("minilm-l6-cls", real)
    for name in ("bert-ner", "roberta-ner"):
        token_classification(name)
    for name in ("bert-qa", "roberta-qa"):
        question_answering(name)
    fill_mask("bert-mlm", "[MASK]")
    fill_mask("roberta-mlm", "<mask>")
    for name in ("bert-st", "roberta-st"):
        feature_extraction(name)
    for name in ("bert-nli", "roberta-nli"):
        zero_shot(name)


if __name__ == "__main__":
    main()
