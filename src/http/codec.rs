//! Request decoders (by `Content-Type`) and response encoders (by `Accept`).
//!
//! Tolerant where the DLC is strict: media types are matched without parameters and in any case
//! (`application/json; charset=utf-8` works), and `Accept` may be a list with q-values. What the
//! DLC does not decode still gets its exact 400 message.

use axum::http::HeaderMap;
use serde_json::{Map, Value};

use super::pyjson::{python_float_repr, to_python_json};
use crate::error::ServerError;
use crate::tasks::text_to_image::Picture;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFormat {
    Json,
    /// One JSON request per line (`http::batch`).
    JsonLines,
    Csv,
    /// An image body (`image/png`, `image/jpeg`, ...): the image tasks' input, not decoded here.
    Image,
    /// An audio body (`audio/x-flac`, `audio/mpeg`, ...): speech recognition's input.
    Audio,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    Json,
    /// One JSON answer per line.
    JsonLines,
    Csv,
    /// An image file (text-to-image's answer, as the DLC's `encode_image` saves it): its
    /// media type and format.
    Image(&'static str, image::ImageFormat),
}

impl ResponseFormat {
    pub fn content_type(&self) -> &'static str {
        match self {
            ResponseFormat::Json => "application/json",
            ResponseFormat::JsonLines => JSON_LINES,
            ResponseFormat::Csv => "text/csv",
            ResponseFormat::Image(media_type, _) => media_type,
        }
    }
}

/// The media type of JSON Lines answers.
pub const JSON_LINES: &str = "application/jsonlines";

/// The names JSON Lines goes by (SageMaker's is `application/jsonlines`).
fn is_json_lines(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/jsonlines" | "application/jsonl" | "application/x-jsonlines"
    )
}

/// `Content-Type`, also under the DLC's alternative name `ContentType`.
pub fn request_format(headers: &HeaderMap) -> Result<RequestFormat, ServerError> {
    let raw = headers
        .get("content-type")
        .or_else(|| headers.get("contenttype"));
    let Some(raw) = raw else {
        return Err(ServerError::UnsupportedContentType("None".into()));
    };
    let text = String::from_utf8_lossy(raw.as_bytes()).to_string();
    match media_type(&text).as_str() {
        "application/json" => Ok(RequestFormat::Json),
        "text/csv" => Ok(RequestFormat::Csv),
        lines if is_json_lines(lines) => Ok(RequestFormat::JsonLines),
        image if IMAGE_TYPES.contains(&image) => Ok(RequestFormat::Image),
        audio if AUDIO_TYPES.contains(&audio) => Ok(RequestFormat::Audio),
        _ => Err(ServerError::UnsupportedContentType(text)),
    }
}

/// The DLC's image types (`content_types.VISION_TYPES`), and `image/jpg` (ours).
const IMAGE_TYPES: &[&str] = &[
    "image/jpeg",
    "image/png",
    "image/tiff",
    "image/bmp",
    "image/gif",
    "image/webp",
    "image/x-image",
    "image/jpg",
];

/// The DLC's audio types (`content_types.AUDIO_TYPES`), and (ours) `audio/wav`, `audio/x-wav`,
/// `audio/flac`, `audio/mp3`, `audio/vorbis`.
const AUDIO_TYPES: &[&str] = &[
    "audio/x-flac",
    "audio/mpeg",
    "audio/wave",
    "audio/ogg",
    "audio/x-audio",
    "audio/wav",
    "audio/x-wav",
    "audio/flac",
    "audio/mp3",
    "audio/vorbis",
];

/// The first acceptable type in the client's order of preference (q-values, then position).
pub fn response_format(headers: &HeaderMap) -> Result<ResponseFormat, ServerError> {
    let Some(raw) = headers.get("accept") else {
        return Ok(ResponseFormat::Json);
    };
    let text = String::from_utf8_lossy(raw.as_bytes()).to_string();
    if text.trim().is_empty() {
        return Ok(ResponseFormat::Json);
    }
    let mut ranges: Vec<(f32, String)> = text
        .split(',')
        .map(|part| {
            let mut pieces = part.split(';');
            let kind = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = pieces
                .filter_map(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|v| v.trim().parse::<f32>().ok())
                })
                .next()
                .unwrap_or(1.0);
            (q, kind)
        })
        .filter(|(q, _)| *q > 0.0)
        .collect();
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0)); // stable: equal q keeps the client's order
    for (_, kind) in ranges {
        match kind.as_str() {
            "application/json" | "*/*" | "application/*" => return Ok(ResponseFormat::Json),
            "text/csv" | "text/*" => return Ok(ResponseFormat::Csv),
            lines if is_json_lines(lines) => return Ok(ResponseFormat::JsonLines),
            other => {
                if let Some(format) = image_format(other) {
                    return Ok(format);
                }
            }
        }
    }
    Err(ServerError::UnsupportedContentType(text))
}

fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

pub fn decode(format: RequestFormat, body: &[u8]) -> Result<Value, ServerError> {
    match format {
        // (a JSON Lines body is split into records by `http::batch`; one record alone is JSON)
        RequestFormat::Json | RequestFormat::JsonLines => {
            if body.iter().all(|b| b.is_ascii_whitespace()) {
                return Err(ServerError::bad_request(
                    "The request body is empty: send a JSON object such as {\"inputs\": \"...\"}",
                ));
            }
            serde_json::from_slice(body).map_err(|e| {
                ServerError::bad_request(format!("The request body is not valid JSON: {e}"))
            })
        }
        RequestFormat::Image => Err(ServerError::bad_request(
            "an image body cannot be read as JSON",
        )),
        RequestFormat::Audio => Err(ServerError::bad_request(
            "an audio body cannot be read as JSON",
        )),
        RequestFormat::Csv => {
            let text = std::str::from_utf8(body).map_err(|e| {
                ServerError::bad_request(format!("The CSV body is not valid UTF-8: {e}"))
            })?;
            decode_csv(text)
        }
    }
}

/// The DLC's `decode_csv`: the header must mention `inputs`, `question` or `context`; an
/// `inputs` column becomes a list of strings, other columns a list of objects.
pub fn decode_csv(text: &str) -> Result<Value, ServerError> {
    let Some(first_line) = text.lines().find(|l| !l.trim().is_empty()) else {
        return Err(ServerError::bad_request(
            "The CSV body is empty: send a header line (`inputs`, or `question,context`) and one row per input",
        ));
    };
    let header = first_line.to_lowercase();
    if !["question", "context", "inputs"]
        .iter()
        .any(|k| header.contains(k))
    {
        return Err(ServerError::bad_request(
            "You need to provide the correct CSV with Header columns to use it with the inference toolkit default handler.",
        ));
    }
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| ServerError::bad_request(format!("The CSV header cannot be read: {e}")))?
        .iter()
        .map(str::to_string)
        .collect();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record
            .map_err(|e| ServerError::bad_request(format!("The CSV body cannot be read: {e}")))?;
        let mut row = Map::new();
        for (i, name) in headers.iter().enumerate() {
            row.insert(
                name.clone(),
                record
                    .get(i)
                    .map_or(Value::Null, |v| Value::String(v.to_string())),
            );
        }
        rows.push(row);
    }
    let inputs = if headers.iter().any(|h| h == "inputs") {
        rows.into_iter()
            .map(|mut r| r.shift_remove("inputs").unwrap_or(Value::Null))
            .collect()
    } else {
        rows.into_iter().map(Value::Object).collect()
    };
    let mut body = Map::new();
    body.insert("inputs".into(), Value::Array(inputs));
    Ok(Value::Object(body))
}

pub fn encode(format: ResponseFormat, value: &Value) -> Result<Vec<u8>, ServerError> {
    match format {
        ResponseFormat::Json => Ok(to_python_json(value).into_bytes()),
        ResponseFormat::JsonLines => Ok(format!("{}\n", to_python_json(value)).into_bytes()),
        ResponseFormat::Csv => encode_csv(value),
        ResponseFormat::Image(media_type, _) => Err(ServerError::bad_request(format!(
            "Accept: {media_type} is for text-to-image's answers; ask for application/json instead"
        ))),
    }
}

/// The DLC's image response types (`content_types.VISION_TYPES`; `image/x-image` is PNG).
fn image_format(media_type: &str) -> Option<ResponseFormat> {
    type F = image::ImageFormat;
    Some(match media_type {
        "image/png" => ResponseFormat::Image("image/png", F::Png),
        "image/x-image" => ResponseFormat::Image("image/x-image", F::Png),
        "image/jpeg" => ResponseFormat::Image("image/jpeg", F::Jpeg),
        "image/tiff" => ResponseFormat::Image("image/tiff", F::Tiff),
        "image/bmp" => ResponseFormat::Image("image/bmp", F::Bmp),
        "image/gif" => ResponseFormat::Image("image/gif", F::Gif),
        "image/webp" => ResponseFormat::Image("image/webp", F::WebP),
        _ => return None,
    })
}

/// A generated image as the response's format asks: the file itself for an image type; for
/// JSON (and JSON Lines) a string of the base64 PNG, as the DLC's JSON encoder writes a PIL
/// image.
pub fn encode_picture(format: ResponseFormat, picture: &Picture) -> Result<Vec<u8>, ServerError> {
    match format {
        ResponseFormat::Image(_, format) => picture.encode(format),
        ResponseFormat::Json | ResponseFormat::JsonLines => encode(format, &picture.base64_png()?),
        ResponseFormat::Csv => Err(ServerError::bad_request(
            "text-to-image answers with an image: ask for image/png or application/json",
        )),
    }
}

/// `csv.DictWriter` with the first row's keys as header and `\r\n` line ends.
fn encode_csv(value: &Value) -> Result<Vec<u8>, ServerError> {
    let not_tabular = || {
        ServerError::bad_request(
            "Accept: text/csv needs a result that is a list of objects (one row each); use Accept: application/json for this request",
        )
    };
    let Value::Array(items) = value else {
        return Err(not_tabular());
    };
    let rows: Vec<&Map<String, Value>> = items
        .iter()
        .map(|i| i.as_object().ok_or_else(not_tabular))
        .collect::<Result<_, _>>()?;
    let Some(first) = rows.first() else {
        return Ok(Vec::new());
    };
    let header: Vec<&String> = first.keys().collect();
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    let io = |e: csv::Error| ServerError::Internal(format!("writing CSV: {e}"));
    writer
        .write_record(header.iter().map(|h| h.as_str()))
        .map_err(io)?;
    for row in rows {
        if let Some(extra) = row.keys().find(|k| !header.contains(k)) {
            return Err(ServerError::bad_request(format!(
                "dict contains fields not in fieldnames: '{extra}'"
            )));
        }
        writer
            .write_record(header.iter().map(|h| csv_cell(row.get(*h))))
            .map_err(io)?;
    }
    writer
        .into_inner()
        .map_err(|e| ServerError::Internal(format!("writing CSV: {e}")))
}

/// A cell as Python's `str()` writes it.
fn csv_cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => if *b { "True" } else { "False" }.into(),
        Some(Value::Number(n)) if n.is_f64() => python_float_repr(n.as_f64().unwrap_or(f64::NAN)),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => to_python_json(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn content_types_are_tolerant_but_unknown_ones_keep_the_dlc_message() {
        assert_eq!(
            request_format(&headers(&[("content-type", "application/json")])).unwrap(),
            RequestFormat::Json
        );
        assert_eq!(
            request_format(&headers(&[(
                "content-type",
                "Application/JSON; charset=utf-8"
            )]))
            .unwrap(),
            RequestFormat::Json
        );
        assert_eq!(
            request_format(&headers(&[("contenttype", "text/csv")])).unwrap(),
            RequestFormat::Csv
        );
        for lines in [
            "application/jsonlines",
            "application/jsonl",
            "application/x-jsonlines",
        ] {
            assert_eq!(
                request_format(&headers(&[("content-type", lines)])).unwrap(),
                RequestFormat::JsonLines
            );
        }
        let e = request_format(&headers(&[])).unwrap_err().to_string();
        assert!(
            e.starts_with("Content type None is not supported by this framework."),
            "{e}"
        );
        let e = request_format(&headers(&[("content-type", "text/plain")]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("Content type text/plain is not"), "{e}");
    }

    #[test]
    fn accept_lists_and_q_values() {
        assert_eq!(
            response_format(&headers(&[])).unwrap(),
            ResponseFormat::Json
        );
        assert_eq!(
            response_format(&headers(&[("accept", "*/*")])).unwrap(),
            ResponseFormat::Json
        );
        assert_eq!(
            response_format(&headers(&[("accept", "text/csv")])).unwrap(),
            ResponseFormat::Csv
        );
        assert_eq!(
            response_format(&headers(&[("accept", "application/json, text/csv")])).unwrap(),
            ResponseFormat::Json
        );
        assert_eq!(
            response_format(&headers(&[("accept", "application/json;q=0.5, text/csv")])).unwrap(),
            ResponseFormat::Csv
        );
        assert_eq!(
            response_format(&headers(&[("accept", "application/jsonlines")])).unwrap(),
            ResponseFormat::JsonLines
        );
        assert!(response_format(&headers(&[("accept", "text/plain")])).is_err());
    }

    #[test]
    fn csv_inputs_and_question_context() {
        assert_eq!(
            decode_csv("inputs\r\nI love you\r\nI like you").unwrap(),
            json!({"inputs": ["I love you", "I like you"]})
        );
        assert_eq!(
            decode_csv("question,context\r\nwhere do i live?,My name is Philipp and I live in Nuremberg\r\n").unwrap(),
            json!({"inputs": [{"question": "where do i live?", "context": "My name is Philipp and I live in Nuremberg"}]})
        );
        assert!(decode_csv("I love this!\n")
            .unwrap_err()
            .to_string()
            .starts_with("You need to provide the correct CSV"));
        assert!(decode_csv("").unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn csv_output_like_dictwriter() {
        let v = json!([{"label": "NEGATIVE", "score": 0.6648045778274536}, {"label": "a,b", "score": 1e-05}]);
        assert_eq!(
            String::from_utf8(encode(ResponseFormat::Csv, &v).unwrap()).unwrap(),
            "label,score\r\nNEGATIVE,0.6648045778274536\r\n\"a,b\",1e-05\r\n"
        );
        assert!(encode(ResponseFormat::Csv, &json!([[{"a": 1}]])).is_err());
        assert!(encode(ResponseFormat::Csv, &json!({"a": 1})).is_err());
    }
}
