//! OpenAI's `tools` / `tool_choice` on the chat route. The tools reach the model through its
//! chat template when the template has a tools section (it reads `tools`, as transformers'
//! `apply_chat_template(tools=...)` passes them), otherwise through [`DEFAULT_TOOL_PROMPT`] in
//! the system message. A call is produced by constrained decoding, so it always parses: one JSON
//! object `{"name": <a declared tool>, "arguments": <valid under its parameters' schema>}`.
//!
//! `tool_choice`: `"none"` (no tools shown, plain text), `"auto"` (the default with tools: either
//! text, which then cannot start with `{`, or a call), `"required"` (a call to any tool) or
//! `{"type": "function", "function": {"name": ...}}` (a call to that one). One call per answer.

use serde_json::{json, Map, Value};

use super::{bad, expected};
use crate::error::{cut, ServerError};
use crate::generation::constrained::GrammarSpec;

/// The system prompt that shows the tools to a model whose template has no tools section
/// (`{tools}`: one JSON object per line, as the request declared them).
pub const DEFAULT_TOOL_PROMPT: &str = "You can call these tools (JSON schemas of their arguments):\n{tools}\nTo call a tool, answer with only a JSON object: {\"name\": <the tool's name>, \"arguments\": <its arguments>}.";

/// The most tools one request may declare.
const MAX_TOOLS: usize = 128;

/// Which answers the request allows.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

/// The request's tools, read.
#[derive(Debug, Clone)]
pub struct Tools {
    /// As declared (`{"type": "function", "function": {...}}`), for the template.
    pub declared: Vec<Value>,
    pub choice: ToolChoice,
}

/// `tools` and `tool_choice` from the body (`None` without tools or with `"none"`).
pub fn parse(body: &Map<String, Value>) -> Result<Option<Tools>, ServerError> {
    for key in ["functions", "function_call"] {
        if body.get(key).is_some_and(|v| !v.is_null()) {
            return Err(bad(format!(
                "`{key}` (deprecated by OpenAI) is not supported: send `tools` / `tool_choice`"
            )));
        }
    }
    let declared = match body.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.len() <= MAX_TOOLS => items.clone(),
        Some(Value::Array(_)) => return Err(bad(format!("at most {MAX_TOOLS} tools are taken"))),
        Some(other) => return Err(expected("tools", "a list of tools", other)),
    };
    let mut names = Vec::with_capacity(declared.len());
    for (i, tool) in declared.iter().enumerate() {
        names.push(tool_name(i, tool)?);
    }
    let choice = match body.get("tool_choice") {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) if s == "none" => ToolChoice::None,
        Some(Value::String(s)) if s == "auto" => ToolChoice::Auto,
        Some(Value::String(s)) if s == "required" => ToolChoice::Required,
        Some(value @ Value::Object(o)) => {
            match o.get("function").and_then(|f| f.get("name")).and_then(Value::as_str) {
                Some(name) => ToolChoice::Named(name.to_string()),
                None => {
                    return Err(expected(
                        "tool_choice",
                        "\"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                        value,
                    ))
                }
            }
        }
        Some(other) => {
            return Err(expected(
                "tool_choice",
                "\"none\", \"auto\", \"required\" or a named function",
                other,
            ))
        }
    };
    if declared.is_empty() {
        return match choice {
            ToolChoice::None | ToolChoice::Auto => Ok(None),
            _ => Err(bad(
                "tool_choice asks for a tool call, but no tools are declared".into(),
            )),
        };
    }
    if let ToolChoice::Named(name) = &choice {
        if !names.contains(name) {
            return Err(bad(format!(
                "tool_choice names `{}`, which is not a declared tool",
                cut(name, 64)
            )));
        }
    }
    if choice == ToolChoice::None {
        return Ok(None);
    }
    Ok(Some(Tools { declared, choice }))
}

/// A declared tool's name, checked: `{"type": "function", "function": {"name", "parameters"?}}`.
fn tool_name(i: usize, tool: &Value) -> Result<String, ServerError> {
    let function = tool.get("function").filter(|f| f.is_object());
    let name = function.and_then(|f| f.get("name")).and_then(Value::as_str);
    match (tool.get("type").and_then(Value::as_str), name) {
        (Some("function"), Some(name))
            if !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
        {
            match function.and_then(|f| f.get("parameters")) {
                None | Some(Value::Null | Value::Object(_)) => Ok(name.to_string()),
                Some(other) => Err(expected(
                    &format!("tools[{i}].function.parameters"),
                    "a JSON schema object",
                    other,
                )),
            }
        }
        _ => Err(bad(format!(
            "tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": <letters, digits, _ or -, at most 64>, \"parameters\": <a JSON schema>}}}}"
        ))),
    }
}

impl Tools {
    /// The grammar of the answer: a call (to the named tool, or any), or (auto) a call or text.
    pub fn grammar(&self) -> GrammarSpec {
        let calls: Vec<Value> = self
            .declared
            .iter()
            .filter_map(|t| t.get("function"))
            .filter(|f| match &self.choice {
                ToolChoice::Named(name) => f.get("name").and_then(Value::as_str) == Some(name),
                _ => true,
            })
            .map(|f| {
                let parameters = match f.get("parameters") {
                    Some(p @ Value::Object(_)) => p.clone(),
                    _ => json!({"type": "object", "properties": {}}),
                };
                json!({
                    "type": "object",
                    "properties": {"name": {"const": f["name"]}, "arguments": parameters},
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                })
            })
            .collect();
        // (compact JSON, as for response_format; keywords the compiler lacks are ignored)
        let options = json!({"whitespace_flexible": false, "lenient": true});
        let schema = json!({"anyOf": calls, "x-guidance": options});
        match self.choice {
            ToolChoice::Auto => GrammarSpec::Lark(format!(
                "start: text | call\ntext: /[^{{\\s](?s:.*)/\ncall: %json {schema}\n"
            )),
            _ => GrammarSpec::Json {
                schema,
                strict: false,
            },
        }
    }

    /// The chat with the tools shown in the system message (for a template without a tools
    /// section), and earlier calls and results as text such a template can show.
    pub fn into_system_prompt(&self, chat: &mut Vec<Value>) {
        let lines: Vec<String> = self
            .declared
            .iter()
            .filter_map(|t| t.get("function"))
            .map(Value::to_string)
            .collect();
        let prompt = DEFAULT_TOOL_PROMPT.replace("{tools}", &lines.join("\n"));
        // Earlier calls, as the JSON the model answered with.
        for message in chat.iter_mut().filter_map(Value::as_object_mut) {
            let empty = message.get("content").and_then(Value::as_str) == Some("");
            if empty && message.contains_key("tool_calls") {
                let text = calls_text(message);
                message.insert("content".into(), Value::String(text));
            }
        }
        match chat.first_mut() {
            Some(Value::Object(first)) if first.get("role") == Some(&json!("system")) => {
                let own = first
                    .get("content")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let content = if own.is_empty() {
                    prompt
                } else {
                    format!("{own}\n\n{prompt}")
                };
                first.insert("content".into(), Value::String(content));
            }
            _ => chat.insert(0, json!({"role": "system", "content": prompt})),
        }
    }
}

/// An assistant message's earlier `tool_calls` as chat templates read them: each call's
/// `arguments` (JSON text in OpenAI's API) as an object.
pub fn calls_for_template(i: usize, message: &mut Map<String, Value>) -> Result<(), ServerError> {
    let Some(Value::Array(calls)) = message.get_mut("tool_calls") else {
        return Err(bad(format!("messages[{i}].tool_calls must be a list")));
    };
    for call in calls.iter_mut() {
        let Some(function) = call.get_mut("function").and_then(Value::as_object_mut) else {
            return Err(bad(format!(
                "messages[{i}].tool_calls: each call needs a `function` with `name` and `arguments`"
            )));
        };
        if let Some(Value::String(text)) = function.get("arguments") {
            if let Ok(arguments) = serde_json::from_str::<Value>(text) {
                function.insert("arguments".into(), arguments);
            }
        }
    }
    Ok(())
}

/// An assistant message's calls as the text the model answers a call with (for templates that
/// show only `content`).
pub fn calls_text(message: &Map<String, Value>) -> String {
    let calls = message.get("tool_calls").and_then(Value::as_array);
    calls
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("function"))
        .map(|f| json!({"name": f.get("name"), "arguments": f.get("arguments")}).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// An answer read as a tool call: `{"name", "arguments"}` (one the grammar made).
pub fn as_call(text: &str) -> Option<(String, Value)> {
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let value: Value = serde_json::from_str(text).ok()?;
    let name = value.get("name")?.as_str()?.to_string();
    Some((name, value.get("arguments")?.clone()))
}

/// OpenAI's `tool_calls` entry for a call.
pub fn call_json(name: &str, arguments: &Value, index: Option<usize>) -> Value {
    let mut call = json!({
        "id": format!("call_{}", uuid::Uuid::new_v4().simple()),
        "type": "function",
        "function": {"name": name, "arguments": arguments.to_string()},
    });
    if let Some(index) = index {
        call["index"] = json!(index);
    }
    call
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(extra: Value) -> Map<String, Value> {
        let mut body = json!({"tools": [
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "now"}},
        ]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body.as_object().unwrap().clone()
    }

    #[test]
    fn tool_choices_and_their_grammars() {
        let auto = parse(&body(json!({}))).unwrap().unwrap();
        assert_eq!(auto.choice, ToolChoice::Auto);
        assert!(matches!(auto.grammar(), GrammarSpec::Lark(g) if g.contains("%json")));
        let named = json!({"tool_choice": {"type": "function", "function": {"name": "now"}}});
        let named = parse(&body(named)).unwrap().unwrap();
        let GrammarSpec::Json { schema, .. } = named.grammar() else {
            panic!("a JSON grammar")
        };
        assert_eq!(schema["anyOf"].as_array().unwrap().len(), 1);
        assert!(parse(&body(json!({"tool_choice": "none"})))
            .unwrap()
            .is_none());
        let unknown = json!({"tool_choice": {"type": "function", "function": {"name": "x"}}});
        assert!(parse(&body(unknown)).is_err());
        let mut no_tools = body(json!({"tool_choice": "required"}));
        no_tools.remove("tools");
        assert!(parse(&no_tools).is_err());
        assert!(parse(&body(
            json!({"tools": [{"type": "function", "function": {"name": "a b"}}]})
        ))
        .is_err());
        assert_eq!(
            as_call(r#"{"name":"now","arguments":{}}"#),
            Some(("now".to_string(), json!({})))
        );
        assert_eq!(as_call("Hello"), None);
        let mut chat = vec![json!({"role": "user", "content": "Hi"})];
        auto.into_system_prompt(&mut chat);
        assert_eq!(chat[0]["role"], "system");
        assert!(chat[0]["content"].as_str().unwrap().contains("get_weather"));
    }
}
