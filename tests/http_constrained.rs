//! Constrained decoding through real clients against the real binary on SmolLM2: OpenAI's
//! `response_format` (`json_schema`, `json_object`) through the official `openai` client, greedy
//! and sampled, `n` > 1, streamed; TGI's `grammar` (JSON schema and regex) on `/generate`,
//! `/generate_stream` and on `/invocations` as a pipeline parameter; invalid and pathological
//! grammars refused quickly; TGI's `decoder_input_details`; parameters sent as null.
//! tests/openai_client.py makes each client call.

mod common;

use std::time::Instant;

use common::Server;
use serde_json::{json, Value};

fn client(server: &Server, operation: &str, params: Value) -> Value {
    common::python_client(
        "openai_client.py",
        server.port,
        &json!({"operation": operation, "params": params}),
    )
}

/// A POST through the client script: (status, body).
fn post(server: &Server, path: &str, body: Value) -> (u64, String) {
    let answer = client(server, "post", json!({"path": path, "body": body}));
    (
        answer["status"].as_u64().unwrap(),
        answer["text"].as_str().unwrap().to_string(),
    )
}

/// A person: every field required, nothing else, bounded strings and numbers.
fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "city": {"type": "string", "enum": ["Paris", "London", "Tokyo", "Lima"]},
            "pets": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}
        },
        "required": ["name", "age", "city", "pets"],
        "additionalProperties": false
    })
}

/// Checks `text` is JSON valid under [`person_schema`] (validated here, field by field).
fn assert_person(text: &str) {
    let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {text}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["age", "city", "name", "pets"], "{text}");
    let name = object["name"].as_str().unwrap();
    assert!((1..=24).contains(&name.chars().count()), "{text}");
    let age = object["age"].as_i64().unwrap_or_else(|| panic!("{text}"));
    assert!((0..=120).contains(&age), "{text}");
    let city = object["city"].as_str().unwrap();
    assert!(
        ["Paris", "London", "Tokyo", "Lima"].contains(&city),
        "{text}"
    );
    let pets = object["pets"].as_array().unwrap();
    assert!(pets.len() <= 3, "{text}");
    assert!(pets
        .iter()
        .all(|p| p.as_str().is_some_and(|p| p.chars().count() <= 12)));
}

const PROMPTS: &[&str] = &[
    "Describe a person who lives in a big city, as JSON.",
    "Invent a character for a short story. Give their name, age, city and pets.",
    "Hi! What's the weather like today?",
];

#[test]
fn json_schema_answers_validate_greedy_sampled_streamed_and_n() {
    let server = Server::start(&common::smollm2(), &[]);
    let format = json!({"type": "json_schema", "json_schema": {"name": "person", "schema": person_schema(), "strict": true}});
    for (i, prompt) in PROMPTS.iter().enumerate() {
        let messages = json!([{"role": "user", "content": prompt}]);
        let greedy = json!({"model": "m", "messages": messages, "max_tokens": 120, "temperature": 0, "response_format": format});
        let answer = client(&server, "chat", greedy.clone())["response"].clone();
        let choice = &answer["choices"][0];
        assert_eq!(choice["finish_reason"], "stop", "{answer}");
        assert_person(choice["message"]["content"].as_str().unwrap());

        // Sampled, two choices at once (each its own automaton in the batch).
        let mut sampled = greedy.clone();
        sampled["temperature"] = json!(1.0);
        sampled["seed"] = json!(i);
        sampled["n"] = json!(2);
        let answer = client(&server, "chat", sampled)["response"].clone();
        let choices = answer["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 2);
        for choice in choices {
            assert_person(choice["message"]["content"].as_str().unwrap());
        }

        // Streamed: the deltas add up to the greedy answer.
        let mut streamed = greedy;
        streamed["stream"] = json!(true);
        let chunks = client(&server, "chat", streamed)["chunks"].clone();
        let text: String = chunks
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_person(&text);
    }

    // json_object: any JSON object; a plain request beside it in the same batch is unaffected.
    let messages = json!([{"role": "user", "content": "List three colors."}]);
    let object = json!({"model": "m", "messages": messages, "max_tokens": 60, "temperature": 0, "response_format": {"type": "json_object"}});
    let answer = client(&server, "chat", object)["response"].clone();
    let content = answer["choices"][0]["message"]["content"].as_str().unwrap();
    if answer["choices"][0]["finish_reason"] == "stop" {
        let parsed: Value = serde_json::from_str(content).unwrap();
        assert!(parsed.is_object(), "{content}");
    } else {
        assert!(content.starts_with('{'), "{content}");
    }

    // Errors: a schema the compiler refuses, a bad response_format; OpenAI's shape and 400.
    let error = |format: Value| {
        let body =
            json!({"model": "m", "messages": messages, "max_tokens": 5, "response_format": format});
        client(&server, "chat", body)["error"].clone()
    };
    let bad = error(
        json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}),
    );
    assert_eq!(bad["status"], 400, "{bad}");
    assert_eq!(bad["body"]["type"], "invalid_request_error");
    assert!(
        bad["body"]["message"].as_str().unwrap().contains("grammar"),
        "{bad}"
    );
    let bad = error(json!({"type": "xml"}));
    assert_eq!(bad["status"], 400);
}

#[test]
fn tgi_grammar_regex_and_json_pipeline_grammar_and_limits() {
    let server = Server::start(&common::smollm2(), &[]);
    let phone = "[0-9]{3}-[0-9]{4}";
    let matches_phone = |text: &str| {
        let b = text.as_bytes();
        b.len() == 8
            && b[3] == b'-'
            && b.iter()
                .enumerate()
                .all(|(i, c)| i == 3 || c.is_ascii_digit())
    };
    let regex = json!({"type": "regex", "value": phone});
    let body = json!({"inputs": "My phone number is", "parameters": {"max_new_tokens": 20, "grammar": regex, "details": true}});
    let (status, text) = post(&server, "/generate", body.clone());
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    let generated = answer["generated_text"].as_str().unwrap();
    assert!(matches_phone(generated), "{generated}");
    assert_eq!(answer["details"]["finish_reason"], "eos_token");
    let (status, text) = post(&server, "/generate_stream", body);
    assert_eq!(status, 200, "{text}");
    let last: Value = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .next_back()
        .map(|d| serde_json::from_str(d.trim()).unwrap())
        .unwrap();
    assert!(
        matches_phone(last["generated_text"].as_str().unwrap()),
        "{last}"
    );

    // TGI's json grammar (schema as an object, or as JSON text), sampled.
    for value in [person_schema(), json!(person_schema().to_string())] {
        let grammar = json!({"type": "json", "value": value});
        let body = json!({"inputs": "A person, as JSON:", "parameters": {"max_new_tokens": 120, "grammar": grammar, "do_sample": true, "seed": 3}});
        let (status, text) = post(&server, "/generate", body);
        assert_eq!(status, 200, "{text}");
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_person(answer["generated_text"].as_str().unwrap());
    }

    // The same parameter on /invocations (the pipeline's shape), beside an unconstrained one.
    let body = json!({"inputs": "My phone number is", "parameters": {"max_new_tokens": 20, "grammar": regex, "return_full_text": false}});
    let answer = server.invoke_json(&body.to_string()).json();
    assert!(
        matches_phone(answer[0]["generated_text"].as_str().unwrap()),
        "{answer}"
    );

    // Invalid grammars: TGI's 422 with its validation error; the pipeline's 400.
    for grammar in [
        json!({"type": "regex", "value": "[0-9"}),
        json!({"type": "json", "value": {"type": "nonsense"}}),
        json!({"type": "yaml", "value": "x"}),
    ] {
        let body = json!({"inputs": "x", "parameters": {"grammar": grammar}});
        let (status, text) = post(&server, "/generate", body.clone());
        assert_eq!(status, 422, "{text}");
        let error: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(error["error_type"], "validation");
        let answer = server.invoke_json(&body.to_string());
        assert_eq!(answer.status, 400);
    }
    // A pathological schema ends in an error quickly, not a hung server.
    let started = Instant::now();
    let huge = json!({"type": "array", "items": {"type": "string", "pattern": "(a|b)*a(a|b){40}"}, "minItems": 1000000});
    let body = json!({"inputs": "x", "parameters": {"max_new_tokens": 4, "grammar": {"type": "json", "value": huge}}});
    let (status, text) = post(&server, "/generate", body);
    assert!(
        started.elapsed() < common::time_limit(20),
        "{:?}",
        started.elapsed()
    );
    assert!(status == 422 || status == 200, "{status} {text}");
    let (status, _) = post(
        &server,
        "/generate",
        json!({"inputs": "ok", "parameters": {"max_new_tokens": 2}}),
    );
    assert_eq!(status, 200);
}

#[test]
fn decoder_input_details_and_null_parameters() {
    let server = Server::start(&common::smollm2(), &[]);
    // The prompt's scores: every token, the first without a log-probability.
    let prompt = "The capital of France is";
    let body = json!({"inputs": prompt, "parameters": {"max_new_tokens": 1, "details": true, "decoder_input_details": true}});
    let (status, text) = post(&server, "/generate", body);
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    let prefill = answer["details"]["prefill"].as_array().unwrap();
    assert!(prefill.len() > 3, "{answer}");
    assert_eq!(prefill[0]["logprob"], Value::Null);
    let joined: String = prefill
        .iter()
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    assert_eq!(joined, prompt);
    for t in &prefill[1..] {
        let logprob = t["logprob"].as_f64().unwrap();
        assert!(logprob <= 0.0 && logprob > -40.0, "{t}");
    }
    // The greedy token after the prompt, scored again as the last prompt token, has the same
    // log-probability (one pass over the whole prompt against the step-by-step cache).
    let next = &answer["details"]["tokens"][0];
    let extended = format!("{prompt}{}", next["text"].as_str().unwrap());
    let body = json!({"inputs": extended, "parameters": {"max_new_tokens": 1, "details": true, "decoder_input_details": true}});
    let (_, text) = post(&server, "/generate", body);
    let again: Value = serde_json::from_str(&text).unwrap();
    let prefill_again = again["details"]["prefill"].as_array().unwrap();
    if prefill_again.len() == prefill.len() + 1 {
        let last = prefill_again.last().unwrap();
        assert_eq!(last["id"], next["id"]);
        let (a, b) = (
            last["logprob"].as_f64().unwrap(),
            next["logprob"].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 0.02, "{a} vs {b}");
    }
    // Not when streaming, as TGI.
    let body =
        json!({"inputs": prompt, "parameters": {"details": true, "decoder_input_details": true}});
    let (status, _) = post(&server, "/generate_stream", body);
    assert_eq!(status, 422);

    // Parameters sent as null are absent: the same greedy answers as without them.
    let messages = json!([{"role": "user", "content": "Say hello."}]);
    let plain = json!({"model": "m", "messages": messages, "max_tokens": 8, "temperature": 0});
    let mut nulls = plain.clone();
    for key in [
        "n",
        "stop",
        "seed",
        "top_p",
        "top_logprobs",
        "logprobs",
        "logit_bias",
        "stream",
        "stream_options",
        "frequency_penalty",
        "presence_penalty",
        "response_format",
        "tools",
        "tool_choice",
        "max_completion_tokens",
        "user",
        "parallel_tool_calls",
        "min_tokens",
        "top_k",
        "repetition_penalty",
        "guided_json",
        "guided_regex",
        "functions",
        "function_call",
        "metadata",
        "store",
        "service_tier",
    ] {
        nulls[key] = Value::Null;
    }
    let (status, with_nulls) = post(&server, "/v1/chat/completions", nulls);
    assert_eq!(status, 200, "{with_nulls}");
    let (_, without) = post(&server, "/v1/chat/completions", plain);
    let content = |t: &str| {
        serde_json::from_str::<Value>(t).unwrap()["choices"][0]["message"]["content"].clone()
    };
    assert_eq!(content(&with_nulls), content(&without));
    let tgi = |parameters: Value| {
        let (status, text) = post(
            &server,
            "/generate",
            json!({"inputs": prompt, "parameters": parameters}),
        );
        assert_eq!(status, 200, "{text}");
        serde_json::from_str::<Value>(&text).unwrap()["generated_text"].clone()
    };
    let nulls = json!({"max_new_tokens": 6, "do_sample": null, "top_k": null, "top_p": null, "temperature": null, "seed": null, "stop": null, "grammar": null, "details": null, "repetition_penalty": null, "return_full_text": null, "truncate": null, "watermark": null, "top_n_tokens": null, "decoder_input_details": null, "best_of": null, "typical_p": null, "frequency_penalty": null, "adapter_id": null});
    assert_eq!(tgi(nulls), tgi(json!({"max_new_tokens": 6})));
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city, now.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "enum": ["Paris", "Lima", "Oslo"]},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": false}}})
}

fn clock_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "local_time", "description": "The time in a time zone.",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}},
                       "required": ["zone"], "additionalProperties": false}}})
}

/// The answer's one tool call: (name, arguments), the arguments checked against its tool.
fn tool_call(answer: &Value) -> (String, Value) {
    let choice = &answer["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{answer}");
    assert_eq!(choice["message"]["content"], Value::Null, "{answer}");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{answer}");
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(calls[0]["type"], "function");
    let name = calls[0]["function"]["name"].as_str().unwrap().to_string();
    let arguments: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    check_arguments(&name, &arguments);
    (name, arguments)
}

fn check_arguments(name: &str, arguments: &Value) {
    let object = arguments.as_object().unwrap();
    match name {
        "get_weather" => {
            assert_eq!(object.len(), 2, "{arguments}");
            assert!(["Paris", "Lima", "Oslo"].contains(&object["city"].as_str().unwrap()));
            assert!(["celsius", "fahrenheit"].contains(&object["unit"].as_str().unwrap()));
        }
        "local_time" => {
            assert_eq!(object.len(), 1, "{arguments}");
            assert!(object["zone"].as_str().unwrap().chars().count() <= 8);
        }
        other => panic!("{other} is not a declared tool"),
    }
}

#[test]
fn tool_calls_parse_and_name_a_declared_tool() {
    let server = Server::start(&common::smollm2(), &[]);
    let tools = json!([weather_tool(), clock_tool()]);
    let questions = [
        "What is the weather in Paris?",
        "What time is it in Tokyo?",
        "Tell me a joke.",
    ];
    for question in questions {
        let messages = json!([{"role": "user", "content": question}]);
        let required = json!({"model": "m", "messages": messages, "tools": tools, "tool_choice": "required", "max_tokens": 80, "temperature": 0});
        let answer = client(&server, "chat", required.clone())["response"].clone();
        tool_call(&answer);
        // Streamed: one delta with the whole call, then finish_reason tool_calls.
        let mut streamed = required;
        streamed["stream"] = json!(true);
        let chunks = client(&server, "chat", streamed)["chunks"].clone();
        let chunks = chunks.as_array().unwrap();
        let calls: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
            .flatten()
            .collect();
        assert_eq!(calls.len(), 1, "{chunks:?}");
        let arguments: Value =
            serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        check_arguments(calls[0]["function"]["name"].as_str().unwrap(), &arguments);
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
    }
    // A named tool is the one called.
    let messages = json!([{"role": "user", "content": "What is the weather in Paris?"}]);
    let named = json!({"model": "m", "messages": messages, "tools": tools, "max_tokens": 80, "temperature": 0,
                       "tool_choice": {"type": "function", "function": {"name": "local_time"}}});
    let (name, _) = tool_call(&client(&server, "chat", named)["response"]);
    assert_eq!(name, "local_time");
    // auto: text or a call, either whole; a conversation with an earlier call and its result.
    let history = json!([
        {"role": "user", "content": "Weather in Lima?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Lima\", \"unit\": \"celsius\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 18}"},
    ]);
    for messages in [messages, history] {
        let auto = json!({"model": "m", "messages": messages, "tools": tools, "max_tokens": 40, "temperature": 0});
        let answer = client(&server, "chat", auto)["response"].clone();
        match answer["choices"][0]["finish_reason"].as_str().unwrap() {
            "tool_calls" => {
                tool_call(&answer);
            }
            _ => {
                let content = answer["choices"][0]["message"]["content"].as_str().unwrap();
                assert!(!content.trim_start().starts_with('{'), "{answer}");
            }
        }
    }
    // tool_choice "none": plain text; a call to an undeclared tool: 400.
    let none = json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}], "tools": tools, "tool_choice": "none", "max_tokens": 8, "temperature": 0});
    let answer = client(&server, "chat", none)["response"].clone();
    assert!(
        answer["choices"][0]["message"]["content"].is_string(),
        "{answer}"
    );
    let unknown = json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}], "tools": tools, "tool_choice": {"type": "function", "function": {"name": "nope"}}});
    assert_eq!(client(&server, "chat", unknown)["error"]["status"], 400);
}

#[test]
fn tools_render_through_a_template_with_a_tools_section() {
    let model = common::repo_path("models/tiny/llama-tools-lm");
    let server = Server::start(&model, &[]);
    let golden: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(common::repo_path(
            "models/golden/text-generation/llama-tools-lm-chat.json",
        ))
        .unwrap(),
    )
    .unwrap();
    for case in &golden[..2] {
        let body = json!({"model": "m", "messages": case["messages"], "tools": case["tools"], "tool_choice": "required", "max_tokens": 200, "temperature": 0});
        let answer = client(&server, "chat", body)["response"].clone();
        // The prompt is transformers' rendering, token for token in length.
        assert_eq!(
            answer["usage"]["prompt_tokens"],
            case["ids"].as_array().unwrap().len(),
            "{answer}"
        );
        // A random model's call still parses (the grammar bounds every argument).
        tool_call(&answer);
    }
}
