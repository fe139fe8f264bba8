//! What the property tests send: arbitrary JSON (bounded depth and size), arbitrary bytes, and
//! near-valid requests — the shapes the tasks take with wrong types, extreme numbers, odd
//! strings and every parameter name the pipelines know.

use proptest::prelude::*;
use sagemaker_hf_server::generation;
use serde_json::{json, Map, Number, Value};

/// Every name a request body or `parameters` object may hold, across the tasks (so that
/// generated objects often hit the code that reads them, not only "unknown parameter"): the
/// encoder tasks' names below, the generation pipelines' own lists, and names they refuse.
pub fn known_keys() -> Vec<&'static str> {
    let refused = ["assistant_model", "num_beam_groups", "use_cache"];
    ENCODER_KEYS
        .iter()
        .chain(generation::params::ACCEPTED)
        .chain(generation::extra_params::EXTRA_ACCEPTED)
        .chain(&refused)
        .copied()
        .collect()
}

const ENCODER_KEYS: &[&str] = &[
    // bodies and structured inputs
    "inputs",
    "parameters",
    "stream",
    "question",
    "context",
    "text",
    "text_pair",
    "source_sentence",
    "sentences",
    "query",
    "texts",
    "return_documents",
    "role",
    "content",
    // encoder pipelines
    "top_k",
    "topk",
    "function_to_apply",
    "return_all_scores",
    "truncation",
    "max_length",
    "padding",
    "tokenize_kwargs",
    "tokenizer_kwargs",
    "return_tensors",
    "targets",
    "aggregation_strategy",
    "ignore_labels",
    "stride",
    "doc_stride",
    "max_answer_len",
    "max_seq_len",
    "max_question_len",
    "handle_impossible_answer",
    "align_to_words",
    "candidate_labels",
    "hypothesis_template",
    "multi_label",
];

/// Numbers at the edges: zero, one, the integer limits, u32 overflow (token ids), the float
/// limits and the smallest subnormal.
pub fn extreme_number() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(json!(0)),
        Just(json!(1)),
        Just(json!(2)),
        Just(json!(-1)),
        Just(json!(0.0)),
        Just(json!(-0.0)),
        Just(json!(0.5)),
        Just(json!(1.5)),
        Just(json!(63)),
        Just(json!(64)),
        Just(json!(65)),
        Just(json!(256)),
        Just(json!(257)),
        Just(json!(4_294_967_295u64)),
        Just(json!(4_294_967_296u64)),
        Just(json!(i64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(u64::MAX)),
        Just(json!(1e20)),
        Just(json!(-1e20)),
        Just(json!(f64::MAX)),
        Just(json!(f64::MIN)),
        Just(json!(f64::MIN_POSITIVE)),
        Just(json!(5e-324)),
    ]
    .boxed()
}

pub fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        extreme_number(),
        (-100i64..100).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("JSON has finite numbers only", |x| {
            Number::from_f64(x).map(Value::Number)
        }),
    ]
    .boxed()
}

/// Texts: words the tokenizers know (and mask tokens), any Unicode (control characters,
/// surrogates' neighbours, combining marks), the template characters zero-shot formats, and
/// now and then a long one.
pub fn text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[a-z ]{0,24}",
        2 => prop::collection::vec(
            prop::sample::select(vec![
                "hello", "world", "[MASK]", "<mask>", "[CLS]", "[SEP]", "<s>", "</s>", "<pad>",
                "{}", "{", "}", "{0}", "This example is {}.", "I", "love", "it", ".", "?", "##",
                "\u{0}", "\u{fffd}", "\u{200b}", "é", "😀", "\r\n", "\t", "  ",
            ]),
            0..12,
        )
        .prop_map(|words| words.join(" ")),
        2 => any::<String>(),
        1 => "\\PC{0,64}",
        1 => (1usize..4000, prop::sample::select(vec!["a ", "x", "é", "😀", "[MASK] "]))
            .prop_map(|(n, unit)| unit.repeat(n)),
    ]
    .boxed()
}

pub fn key() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(known_keys()).prop_map(str::to_string),
        1 => "[a-z_]{0,12}",
        1 => any::<String>(),
    ]
    .boxed()
}

fn leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ]
    .boxed()
}

/// Any JSON value: up to 4 levels, 8 items per container, ~64 nodes.
pub fn json_value() -> BoxedStrategy<Value> {
    leaf()
        .prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..8)
                    .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
            ]
        })
        .boxed()
}

/// A list of texts (sometimes empty, sometimes holding something else).
fn texts() -> BoxedStrategy<Value> {
    prop_oneof![
        4 => prop::collection::vec(text().prop_map(Value::String), 0..5).prop_map(Value::Array),
        1 => prop::collection::vec(leaf(), 0..5).prop_map(Value::Array),
    ]
    .boxed()
}

/// `inputs` in the shapes the tasks take, with their parts of any type now and then.
pub fn inputs() -> BoxedStrategy<Value> {
    let part = || {
        prop_oneof![
            4 => text().prop_map(Value::String),
            1 => texts(),
            1 => json_value(),
        ]
    };
    prop_oneof![
        6 => text().prop_map(Value::String),
        3 => texts(),
        2 => (part(), part()).prop_map(|(q, c)| json!({"question": q, "context": c})),
        1 => prop::collection::vec((part(), part()), 0..3).prop_map(|pairs| {
            Value::Array(pairs.into_iter().map(|(q, c)| json!({"question": q, "context": c})).collect())
        }),
        2 => (part(), prop::option::of(part()))
            .prop_map(|(t, p)| match p {
                Some(p) => json!({"text": t, "text_pair": p}),
                None => json!({"text": t}),
            }),
        2 => (part(), texts()).prop_map(|(s, list)| json!({"source_sentence": s, "sentences": list})),
        2 => (part(), texts(), prop::option::of(leaf()))
            .prop_map(|(q, t, r)| json!({"query": q, "texts": t, "return_documents": r})),
        2 => prop::collection::vec((text(), text()), 1..4).prop_map(|pairs| {
            Value::Array(pairs.into_iter().map(|(a, b)| json!([a, b])).collect())
        }),
        2 => chat(),
        2 => json_value(),
    ]
    .boxed()
}

/// A chat: `{"role", "content"}` messages, the roles and contents not always what templates
/// expect.
pub fn chat() -> BoxedStrategy<Value> {
    let role = prop_oneof![
        3 => prop::sample::select(vec!["system", "user", "assistant", "tool"]).prop_map(str::to_string),
        1 => text(),
    ];
    let content = prop_oneof![
        4 => text().prop_map(Value::String),
        1 => json_value(),
    ];
    prop::collection::vec((role, content), 1..6)
        .prop_map(|messages| {
            Value::Array(
                messages
                    .into_iter()
                    .map(|(role, content)| json!({"role": role, "content": content}))
                    .collect(),
            )
        })
        .boxed()
}

/// A parameter's value: mostly plausible (small integers, flags, strategy names, id lists),
/// and extreme numbers or any JSON.
pub fn parameter_value() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => (0u64..70).prop_map(Value::from),
        3 => extreme_number(),
        2 => any::<bool>().prop_map(Value::Bool),
        2 => prop::sample::select(vec![
            "simple", "first", "average", "max", "none", "longest_first", "only_first",
            "only_second", "do_not_truncate", "longest", "max_length", "do_not_pad", "never",
            "sigmoid", "softmax", "This is {}.", "{}", "", "pt", "np",
        ])
        .prop_map(|s| Value::String(s.into())),
        2 => prop::collection::vec(extreme_number(), 0..4).prop_map(Value::Array),
        1 => prop::collection::vec(prop::collection::vec(0u64..100, 0..3), 0..3).prop_map(|lists| json!(lists)),
        1 => prop::collection::vec(text().prop_map(Value::String), 0..4).prop_map(Value::Array),
        1 => text().prop_map(Value::String),
        1 => json_value(),
    ]
    .boxed()
}

/// A `parameters` object of known and unknown names; now and then not an object at all.
pub fn parameters() -> BoxedStrategy<Value> {
    prop_oneof![
        8 => prop::collection::vec((key(), parameter_value()), 0..5)
            .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        1 => Just(Value::Null),
        1 => json_value(),
    ]
    .boxed()
}

/// A request body: near-valid most of the time, anything JSON now and then.
pub fn body() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => (inputs(), prop::option::of(parameters())).prop_map(|(inputs, parameters)| {
            let mut body = json!({"inputs": inputs});
            if let Some(parameters) = parameters {
                body["parameters"] = parameters;
            }
            body
        }),
        1 => (inputs(), parameters(), leaf())
            .prop_map(|(i, p, stream)| json!({"inputs": i, "parameters": p, "stream": stream})),
        1 => json_value(),
    ]
    .boxed()
}

/// Bytes a client may send as a body: arbitrary, a valid body cut or with a byte changed or
/// invalid UTF-8 put in, deep nesting, several lines.
pub fn body_bytes() -> BoxedStrategy<Vec<u8>> {
    let valid = || body().prop_map(|v| serde_json::to_vec(&v).unwrap());
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..256),
        2 => valid(),
        2 => (valid(), any::<prop::sample::Index>()).prop_map(|(bytes, at)| {
            bytes[..at.index(bytes.len() + 1)].to_vec()
        }),
        2 => (valid(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mut bytes, at, b)| {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            bytes
        }),
        1 => (valid(), any::<prop::sample::Index>(), prop::sample::select(vec![
            &b"\xff"[..], b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\0", b"\n", b"\r\n",
        ]))
            .prop_map(|(mut bytes, at, insert)| {
                let i = at.index(bytes.len() + 1);
                bytes.splice(i..i, insert.iter().copied());
                bytes
            }),
        1 => (1usize..20_000, prop::sample::select(vec![("[", "]"), ("{\"a\":", "}")]))
            .prop_map(|(depth, (open, close))| {
                format!("{}1{}", open.repeat(depth), close.repeat(depth)).into_bytes()
            }),
        2 => prop::collection::vec(valid(), 1..4).prop_map(|lines| lines.join(&b"\n"[..])),
        1 => prop::collection::vec(prop::collection::vec(text(), 0..3), 0..5).prop_map(|rows| {
            rows.into_iter().map(|r| r.join(",")).collect::<Vec<_>>().join("\n").into_bytes()
        }),
    ]
    .boxed()
}

/// A body shaped for `task`: its `inputs` forms (parts sometimes of the wrong type) and its
/// own parameter names with plausible or odd values, so that many requests get through to
/// the model and the pipeline's output.
pub fn task_body(task: &str) -> BoxedStrategy<Value> {
    let string = || text().prop_map(Value::String).boxed();
    let one_or_list = || prop_oneof![3 => string(), 2 => texts()].boxed();
    let (inputs, keys): (BoxedStrategy<Value>, &'static [&'static str]) = match task {
        "text-classification" => (
            prop_oneof![
                3 => one_or_list(),
                1 => (string(), string()).prop_map(|(t, p)| json!({"text": t, "text_pair": p})),
            ]
            .boxed(),
            &[
                "top_k",
                "function_to_apply",
                "return_all_scores",
                "truncation",
                "max_length",
                "padding",
            ],
        ),
        "token-classification" => (
            one_or_list(),
            &[
                "aggregation_strategy",
                "ignore_labels",
                "stride",
                "truncation",
                "max_length",
                "padding",
            ],
        ),
        "question-answering" => {
            let example = || {
                (string(), string())
                    .prop_map(|(q, c)| json!({"question": q, "context": c}))
                    .boxed()
            };
            (
                prop_oneof![
                    3 => example(),
                    1 => prop::collection::vec(example(), 1..4).prop_map(Value::Array),
                ]
                .boxed(),
                &[
                    "top_k",
                    "doc_stride",
                    "max_answer_len",
                    "max_seq_len",
                    "max_question_len",
                    "handle_impossible_answer",
                    "align_to_words",
                    "padding",
                ],
            )
        }
        "fill-mask" => {
            let masked = || {
                ("[a-z ]{0,20}", "[a-z ]{0,20}", 1usize..3)
                    .prop_map(|(a, b, n)| Value::String(format!("{a} {} {b}", "[MASK]".repeat(n))))
                    .boxed()
            };
            (
                prop_oneof![
                    3 => masked(),
                    1 => prop::collection::vec(masked(), 1..4).prop_map(Value::Array),
                    1 => one_or_list(),
                ]
                .boxed(),
                &["top_k", "targets", "tokenizer_kwargs", "truncation"],
            )
        }
        "zero-shot-classification" => {
            let labels = prop_oneof![
                string(),
                prop::collection::vec(string(), 0..4).prop_map(Value::Array),
                leaf(),
            ];
            return (
                one_or_list(),
                labels,
                prop::option::of(parameter_value()),
                prop::option::of(parameter_value()),
            )
                .prop_map(|(inputs, labels, template, multi)| {
                    let mut parameters = json!({"candidate_labels": labels});
                    if let Some(t) = template {
                        parameters["hypothesis_template"] = t;
                    }
                    if let Some(m) = multi {
                        parameters["multi_label"] = m;
                    }
                    json!({"inputs": inputs, "parameters": parameters})
                })
                .boxed();
        }
        "feature-extraction" => (
            one_or_list(),
            &["truncation", "tokenize_kwargs", "return_tensors"],
        ),
        "sentence-similarity" => (
            (string(), texts())
                .prop_map(|(s, list)| json!({"source_sentence": s, "sentences": list}))
                .boxed(),
            &[],
        ),
        "sentence-ranking" => (
            prop_oneof![
                (text(), text()).prop_map(|(a, b)| json!([a, b])),
                prop::collection::vec((text(), text()), 1..4).prop_map(|p| Value::Array(
                    p.into_iter().map(|(a, b)| json!([a, b])).collect()
                )),
                (string(), texts(), prop::option::of(leaf()))
                    .prop_map(|(q, t, r)| json!({"query": q, "texts": t, "return_documents": r})),
            ]
            .boxed(),
            &[],
        ),
        "text-generation" => (
            prop_oneof![3 => one_or_list(), 2 => chat()].boxed(),
            GENERATION_KEYS,
        ),
        "text2text-generation" | "summarization" | "translation" => {
            (one_or_list(), GENERATION_KEYS)
        }
        _ => (one_or_list(), &[]),
    };
    let parameters =
        prop::sample::subsequence(keys, 0..=keys.len().min(4)).prop_flat_map(|names| {
            prop::collection::vec(parameter_value(), names.len()).prop_map(move |values| {
                let map: Map<String, Value> =
                    names.iter().map(|n| n.to_string()).zip(values).collect();
                Value::Object(map)
            })
        });
    (inputs, parameters)
        .prop_map(|(inputs, parameters)| json!({"inputs": inputs, "parameters": parameters}))
        .boxed()
}

/// The generation parameters the property tests vary (with small `max_new_tokens` most often,
/// from `parameter_value`'s small integers).
const GENERATION_KEYS: &[&str] = &[
    "max_new_tokens",
    "min_new_tokens",
    "max_length",
    "min_length",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "num_beams",
    "num_return_sequences",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "return_full_text",
    "stop",
    "seed",
    "eos_token_id",
    "bad_words_ids",
    "return_tensors",
    "prefix",
    "stop_sequence",
    "sequence_bias",
    "suppress_tokens",
    "min_p",
    "typical_p",
    "exponential_decay_length_penalty",
    "early_stopping",
    "length_penalty",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "stream",
    "truncation",
];
