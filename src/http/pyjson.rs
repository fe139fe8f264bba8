//! JSON written byte for byte as the DLC writes it: Python's `json.dumps(..., ensure_ascii=False,
//! separators=(",", ":"))` for results (floats as Python's `repr`), and Gson's pretty printer with
//! HTML-safe escaping for MMS's error and ping bodies.

use serde_json::Value;

/// Compact JSON with Python's float text (`0.9985383749008179`, `1e-05`, `1e+16`, `2.0`).
pub fn to_python_json(value: &Value) -> String {
    let mut out = String::with_capacity(128);
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if n.is_f64() {
                write_python_float(out, n.as_f64().unwrap_or(f64::NAN));
            } else {
                out.push_str(&n.to_string());
            }
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

/// Python escapes `"`, `\`, and control characters (short forms for \b \f \n \r \t), nothing else
/// with `ensure_ascii=False` — the same set serde_json escapes.
fn write_string(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("a string always serializes"));
}

/// Python's `repr(float)`: shortest round-trip digits; positional for exponents in [-4, 16),
/// otherwise `d.ddde±XX`.
pub fn python_float_repr(x: f64) -> String {
    let mut out = String::with_capacity(24);
    write_python_float(&mut out, x);
    out
}

/// [`python_float_repr`] appended to `out` without allocating (results can hold many thousands
/// of floats: feature-extraction returns one per token and hidden unit).
pub fn write_python_float(out: &mut String, x: f64) {
    if x.is_nan() {
        return out.push_str("NaN");
    }
    if x.is_infinite() {
        return out.push_str(if x > 0.0 { "Infinity" } else { "-Infinity" });
    }
    if x == 0.0 {
        return out.push_str(if x.is_sign_negative() { "-0.0" } else { "0.0" });
    }
    // Shortest round-trip digits from std's `{:e}` (e.g. "-6.648045778274536e-1"), on the stack.
    let mut sci = StackText::default();
    std::fmt::Write::write_fmt(&mut sci, format_args!("{x:e}")).expect("fits in 40 bytes");
    let text = sci.as_str();
    let (mantissa, exponent) = text
        .split_once('e')
        .expect("LowerExp always has an exponent");
    let exponent: i32 = exponent.parse().expect("integer exponent");
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    if negative {
        out.push('-');
    }
    let mut digits = [0u8; 20];
    let mut count = 0;
    for b in mantissa.bytes().filter(|b| *b != b'.') {
        digits[count] = b;
        count += 1;
    }
    let digits = std::str::from_utf8(&digits[..count]).expect("ASCII digits");
    if (-4..16).contains(&exponent) {
        if exponent >= 0 {
            let point = exponent as usize + 1;
            if digits.len() > point {
                out.push_str(&digits[..point]);
                out.push('.');
                out.push_str(&digits[point..]);
            } else {
                out.push_str(digits);
                (digits.len()..point).for_each(|_| out.push('0'));
                out.push_str(".0");
            }
        } else {
            out.push_str("0.");
            (0..(-exponent - 1)).for_each(|_| out.push('0'));
            out.push_str(digits);
        }
    } else {
        out.push_str(mantissa);
        out.push('e');
        out.push(if exponent < 0 { '-' } else { '+' });
        if exponent.abs() < 10 {
            out.push('0');
        }
        std::fmt::Write::write_fmt(out, format_args!("{}", exponent.abs())).expect("a String");
    }
}

/// A small stack buffer that `write!` can format into.
struct StackText {
    bytes: [u8; 40],
    len: usize,
}

impl Default for StackText {
    fn default() -> Self {
        StackText {
            bytes: [0; 40],
            len: 0,
        }
    }
}

impl StackText {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).expect("formatted text is UTF-8")
    }
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.bytes.len() {
            return Err(std::fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// MMS's error body: Gson pretty printing with HTML-safe escaping and a trailing newline.
pub fn gson_error_body(code: u16, kind: &str, message: &str) -> String {
    format!(
        "{{\n  \"code\": {code},\n  \"type\": {},\n  \"message\": {}\n}}\n",
        gson_string(kind),
        gson_string(message)
    )
}

/// A body as MMS's Gson pretty printer writes it (two-space indent, `"key": value`, `[]` and
/// `{}` when empty) with the trailing newline MMS adds. Nulls are left out, as Gson does; numbers
/// print as serde_json prints them (MMS's bodies hold integers only).
pub fn gson_pretty(value: &Value) -> String {
    let mut out = String::with_capacity(256);
    write_gson(&mut out, value, 0);
    out.push('\n');
    out
}

fn write_gson(out: &mut String, value: &Value, depth: usize) {
    let indent = |out: &mut String, depth: usize| out.push_str(&"  ".repeat(depth));
    match value {
        Value::Array(items) if !items.is_empty() => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(",\n");
                }
                indent(out, depth + 1);
                write_gson(out, item, depth + 1);
            }
            out.push('\n');
            indent(out, depth);
            out.push(']');
        }
        Value::Object(map) if map.values().any(|v| !v.is_null()) => {
            out.push_str("{\n");
            let present = map.iter().filter(|(_, v)| !v.is_null());
            for (i, (key, item)) in present.enumerate() {
                if i > 0 {
                    out.push_str(",\n");
                }
                indent(out, depth + 1);
                out.push_str(&gson_string(key));
                out.push_str(": ");
                write_gson(out, item, depth + 1);
            }
            out.push('\n');
            indent(out, depth);
            out.push('}');
        }
        Value::Array(_) => out.push_str("[]"),
        Value::Object(_) => out.push_str("{}"),
        Value::String(s) => out.push_str(&gson_string(s)),
        other => out.push_str(&other.to_string()),
    }
}

pub fn gson_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '=' | '\'' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_print_like_python_repr() {
        let cases: &[(f64, &str)] = &[
            (0.6648045778274536, "0.6648045778274536"),
            (0.9985383749008179, "0.9985383749008179"),
            (1e-05, "1e-05"),
            (3.1e-05, "3.1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123.0, "123.0"),
            (1e15, "1000000000000000.0"),
            (-2.5, "-2.5"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1e-300, "1e-300"),
            (12.345, "12.345"),
        ];
        for (x, want) in cases {
            assert_eq!(python_float_repr(*x), *want, "{x}");
        }
        // An f32 score widened to f64 prints its full float64 digits, as `float(np.float32)` does.
        assert_eq!(
            python_float_repr(0.664_804_6_f32 as f64),
            "0.6648045778274536"
        );
    }

    #[test]
    fn compact_unicode_and_key_order() {
        let v = json!({"label": "J’adore ça 😀", "score": 0.5, "n": 3, "list": [true, null], "q": "a\"b\n"});
        assert_eq!(
            to_python_json(&v),
            "{\"label\":\"J’adore ça 😀\",\"score\":0.5,\"n\":3,\"list\":[true,null],\"q\":\"a\\\"b\\n\"}"
        );
    }

    #[test]
    fn gson_pretty_prints_as_mms() {
        let v = json!({"nextPageToken": null, "models": [{"modelName": "a=b", "modelUrl": "/m"}], "empty": [], "n": 1, "gpu": false});
        assert_eq!(
            gson_pretty(&v),
            "{\n  \"models\": [\n    {\n      \"modelName\": \"a\\u003db\",\n      \"modelUrl\": \"/m\"\n    }\n  ],\n  \"empty\": [],\n  \"n\": 1,\n  \"gpu\": false\n}\n"
        );
        assert_eq!(
            gson_pretty(&json!({"status": "Workers scaled"})),
            "{\n  \"status\": \"Workers scaled\"\n}\n"
        );
    }

    #[test]
    fn gson_envelope_escapes_html() {
        assert_eq!(
            gson_error_body(400, "InternalServerException", "'str' <x> & a=b\n"),
            "{\n  \"code\": 400,\n  \"type\": \"InternalServerException\",\n  \"message\": \"\\u0027str\\u0027 \\u003cx\\u003e \\u0026 a\\u003db\\n\"\n}\n"
        );
    }
}
