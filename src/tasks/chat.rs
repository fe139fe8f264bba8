//! Chat templates: the model's Jinja template (`chat_template.jinja`, or `chat_template` in
//! `tokenizer_config.json`) rendered as `transformers`' `apply_chat_template` does, with
//! `messages`, `add_generation_prompt`, the special tokens and `raise_exception`.

use std::path::Path;

use anyhow::{Context, Result};
use minijinja::{Environment, ErrorKind};
use serde_json::Value;

use crate::error::ServerError;

pub struct ChatTemplate {
    env: Environment<'static>,
    /// Whether the template reads `tools` (has a tools section).
    reads_tools: bool,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// The template beside the tokenizer, if the model has one.
    pub fn load(dir: &Path, tokenizer_config: &Value) -> Result<Option<Self>> {
        let source = match std::fs::read_to_string(dir.join("chat_template.jinja")) {
            Ok(text) => Some(text),
            Err(_) => match tokenizer_config.get("chat_template") {
                Some(Value::String(text)) => Some(text.clone()),
                // A list of named templates: the one named "default".
                Some(Value::Array(named)) => named
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template").and_then(Value::as_str))
                    .map(str::to_string),
                _ => None,
            },
        };
        let Some(source) = source else {
            return Ok(None);
        };
        let mut env = Environment::new();
        // A template comes with the model: one that loops (for ever, or for minutes) must not
        // hold a request, /ping or shutdown. Fuel counts template instructions.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // transformers' `tojson`: Python's json.dumps (", " and ": ", no HTML escapes), not
        // minijinja's compact, HTML-escaped JSON (tools render into the prompt with it).
        env.add_filter("tojson", python_tojson);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        let reads_tools = source.contains("tools");
        env.add_template_owned("chat", source)
            .context("parsing the chat template")?;
        let token = |key: &str| -> String {
            match tokenizer_config.get(key) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Object(o)) => o
                    .get("content")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                _ => String::new(),
            }
        };
        Ok(Some(ChatTemplate {
            reads_tools,
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
            env,
        }))
    }

    pub fn reads_tools(&self) -> bool {
        self.reads_tools
    }

    /// The prompt for `messages`, ending with the assistant's turn opened.
    pub fn render(&self, messages: &Value) -> Result<String, ServerError> {
        self.render_with_tools(messages, None)
    }

    /// [`render`](Self::render) with `tools` (OpenAI's list of `{"type": "function",
    /// "function": {...}}`), as `apply_chat_template(messages, tools=...)` passes them.
    pub fn render_with_tools(
        &self,
        messages: &Value,
        tools: Option<&Value>,
    ) -> Result<String, ServerError> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| ServerError::Internal(format!("chat template: {e}")))?;
        template
            .render(minijinja::context! {
                messages => messages,
                tools => tools,
                add_generation_prompt => true,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| match e.kind() {
                ErrorKind::OutOfFuel => ServerError::bad_request(format!(
                    "the model's chat template did not finish within {TEMPLATE_FUEL} steps"
                )),
                _ => {
                    ServerError::bad_request(format!("the chat template refused the messages: {e}"))
                }
            })
    }
}

/// `value | tojson(indent=None)` as transformers' filter (json.dumps, ensure_ascii=False).
fn python_tojson(
    value: minijinja::Value,
    kwargs: minijinja::value::Kwargs,
) -> Result<minijinja::Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    for unused in ["ensure_ascii", "separators", "sort_keys"] {
        let _: Option<minijinja::Value> = kwargs.get(unused)?;
    }
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    python_json(&json, indent, 0, &mut out);
    Ok(minijinja::Value::from_safe_string(out))
}

/// `json.dumps`' layout: `, ` and `: ` on one line, or `indent` spaces per level.
fn python_json(value: &Value, indent: Option<usize>, level: usize, out: &mut String) {
    let newline = |out: &mut String, level: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * level));
        }
    };
    let separator = if indent.is_some() { "," } else { ", " };
    match value {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, level + 1);
                python_json(item, indent, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, level + 1);
                out.push_str(&Value::String(key.clone()).to_string());
                out.push_str(": ");
                python_json(item, indent, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Template instructions one rendering may run: far more than any real chat template needs for
/// thousands of messages (SmolLM2's runs ~40 per message), and a fraction of a second.
const TEMPLATE_FUEL: u64 = 5_000_000;

/// Whether `value` is one chat: a non-empty list of `{"role", "content"}` objects.
pub fn is_chat(value: &Value) -> bool {
    matches!(value, Value::Array(items) if !items.is_empty() && items.iter().all(|m| {
        m.get("role").is_some_and(Value::is_string) && m.get("content").is_some()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_smollm_style_templates_with_python_methods() {
        let dir = std::env::temp_dir().join(format!("shs-chat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = serde_json::json!({
            "bos_token": "<s>",
            "chat_template": "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'x' %}{{ raise_exception('bad role') }}{% endif %}<|{{ m['role'] }}|>{{ m['content'].strip() }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
        });
        let template = ChatTemplate::load(&dir, &config).unwrap().unwrap();
        let messages = serde_json::json!([{"role": "user", "content": "  Hi "}]);
        assert_eq!(
            template.render(&messages).unwrap(),
            "<s><|user|>Hi\n<|assistant|>"
        );
        let bad = serde_json::json!([{"role": "x", "content": "?"}]);
        let e = template.render(&bad).unwrap_err().to_string();
        assert!(e.contains("bad role"), "{e}");
        assert!(is_chat(&messages));
        assert!(!is_chat(&serde_json::json!(["a"])));
    }

    #[test]
    fn tools_render_as_transformers_renders_them() {
        // models/make_tool_fixtures.py: Qwen2.5's template, prompts from apply_chat_template.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny/llama-tools-lm");
        let config: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap(),
        )
        .unwrap();
        let template = ChatTemplate::load(&dir, &config).unwrap().unwrap();
        assert!(template.reads_tools());
        let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/golden/text-generation/llama-tools-lm-chat.json");
        let cases: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(golden).unwrap()).unwrap();
        assert_eq!(cases.len(), 4);
        for case in cases {
            let tools = Some(&case["tools"]).filter(|t| !t.is_null());
            let prompt = template
                .render_with_tools(&case["messages"], tools)
                .unwrap();
            assert_eq!(prompt, case["prompt"].as_str().unwrap());
        }
        let value = serde_json::json!({"b": [1, 2.5, {"c": "é\n"}], "a": {}, "d": []});
        let mut out = String::new();
        python_json(&value, None, 0, &mut out);
        assert_eq!(out, r#"{"b": [1, 2.5, {"c": "é\n"}], "a": {}, "d": []}"#);
        out.clear();
        python_json(&serde_json::json!({"a": [1]}), Some(2), 0, &mut out);
        assert_eq!(out, "{\n  \"a\": [\n    1\n  ]\n}");
    }

    #[test]
    fn a_template_that_loops_for_ever_is_stopped() {
        let dir = std::env::temp_dir().join(format!("shs-chat-fuel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = serde_json::json!({
            "chat_template": "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
        });
        let template = ChatTemplate::load(&dir, &config).unwrap().unwrap();
        let started = std::time::Instant::now();
        let error = template
            .render(&serde_json::json!([{"role": "user", "content": "hi"}]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("did not finish"), "{error}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
}
