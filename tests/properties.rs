//! Property tests: whatever a client sends — any bytes, any JSON, near-valid requests with wrong
//! types, extreme numbers, odd Unicode, deep nesting — the request decoders, the parameter
//! parsers, the codecs and every task's pre-processing give a value or a typed error (a 4xx, or
//! 503 when full), never a panic, a 500 or a hang; and the codecs round-trip what they write.
//!
//! Case counts keep the whole file under a minute in a debug build on two cores;
//! `PROPTEST_CASES=N` sets every test's count (e.g. 2000 for a long run). A failure prints the
//! smallest input proptest could shrink it to.

mod common;
#[path = "properties/pipelines.rs"]
mod pipelines;
#[path = "properties/strategies.rs"]
mod strategies;
#[path = "properties/text_and_parameters.rs"]
mod text_and_parameters;

use proptest::prelude::*;
use proptest::test_runner::Config;
use sagemaker_hf_server::error::ServerError;
use sagemaker_hf_server::http::batch::{decode_body, Body};
use sagemaker_hf_server::http::codec::{
    decode, decode_csv, encode, request_format, response_format, RequestFormat, ResponseFormat,
};
use sagemaker_hf_server::http::pyjson::{gson_error_body, python_float_repr, to_python_json};
use serde_json::{json, Map, Value};

use strategies::{body, body_bytes, json_value, text};

/// `cases` runs (or `PROPTEST_CASES`), no regression files written into the source tree: a
/// failure found here becomes a named test next to the code it fixes.
pub fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: None,
        // (a failing case may be a slow one: shrinking stops after a minute with what it has)
        max_shrink_time: 60_000,
        ..Config::default()
    }
}

/// Error messages echo request content only cut short: a 1 MB input never comes back whole.
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// A client's error: a 4xx with a bounded message, a 503 when full or the 504 at the request's
/// deadline. A 500 for a request is a bug.
pub fn client_error(error: &ServerError) -> Result<(), TestCaseError> {
    let message = error.to_string();
    prop_assert!(
        !matches!(error, ServerError::Internal(_)),
        "a server fault for a client's input: {error:?}"
    );
    prop_assert!(
        message.len() <= MAX_MESSAGE_BYTES,
        "an error message of {} bytes: {}...",
        message.len(),
        message.chars().take(200).collect::<String>()
    );
    Ok(())
}

const FORMATS: [RequestFormat; 3] = [
    RequestFormat::Json,
    RequestFormat::JsonLines,
    RequestFormat::Csv,
];

proptest! {
    #![proptest_config(config(1024))]

    /// Any body in any format decodes to a value or a 400.
    #[test]
    fn any_body_decodes_or_is_a_400(bytes in body_bytes()) {
        for format in FORMATS {
            match decode(format, &bytes) {
                Ok(_) => {}
                Err(e) => client_error(&e)?,
            }
            match decode_body(format, &bytes) {
                Ok(Body::One(_)) => {}
                Ok(Body::Records(records)) => {
                    prop_assert!(!records.is_empty());
                    prop_assert!(records.windows(2).all(|w| w[0].line < w[1].line));
                }
                Err(e) => client_error(&e)?,
            }
        }
    }

    /// Any `Content-Type` / `Accept` value is a format or the DLC's unsupported-type error.
    #[test]
    fn any_media_type_header_is_a_format_or_a_400(value in prop_oneof![
        "[ -~]{0,80}",
        "(application|text|\\*)/(json|csv|jsonlines|jsonl|x-jsonlines|\\*|plain)(;q=[0-9.]{0,4})?(, ?(text|application)/(csv|json)(;q=[0-9.e-]{0,5})?){0,3}",
        prop::collection::vec(any::<u8>(), 0..80).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]) {
        let Ok(header) = axum::http::HeaderValue::from_str(&value) else {
            return Ok(()); // (not a header hyper would let through)
        };
        for name in ["content-type", "contenttype", "accept"] {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert(name, header.clone());
            for outcome in [request_format(&headers).map(|_| ()), response_format(&headers).map(|_| ())] {
                if let Err(e) = outcome {
                    prop_assert!(matches!(e, ServerError::UnsupportedContentType(_)), "{e:?}");
                }
            }
        }
    }

    /// What the server writes as JSON reads back as the same value (Python's float text included).
    #[test]
    fn python_json_reads_back_as_the_same_value(value in json_value()) {
        let text = to_python_json(&value);
        let back: Value = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        prop_assert_eq!(&back, &value);
        let line = encode(ResponseFormat::JsonLines, &value).unwrap();
        prop_assert_eq!(line.last(), Some(&b'\n'));
    }

    /// Python's `repr(float)`: reads back as the same float, with a point or an exponent.
    #[test]
    fn python_float_text_reads_back_exactly(x in any::<f64>()) {
        let text = python_float_repr(x);
        if x.is_finite() {
            let back: f64 = text.parse().unwrap();
            prop_assert_eq!(back.to_bits(), x.to_bits(), "{}", text);
            prop_assert!(text.contains('.') || text.contains('e'), "{}", text);
        } else {
            prop_assert!(["NaN", "Infinity", "-Infinity"].contains(&text.as_str()));
        }
    }

    /// JSON Lines: records written one per line come back in order, with their line numbers.
    #[test]
    fn json_lines_records_read_back_in_order(values in prop::collection::vec(json_value(), 1..6), crlf in any::<bool>()) {
        let end = if crlf { "\r\n" } else { "\n" };
        let text: String = values.iter().map(|v| format!("{}{end}", to_python_json(v))).collect();
        let Body::Records(records) = decode_body(RequestFormat::JsonLines, text.as_bytes()).unwrap() else {
            return Err(TestCaseError::fail("JSON Lines gave one value"));
        };
        prop_assert_eq!(records.iter().map(|r| r.line).collect::<Vec<_>>(), (1..=values.len()).collect::<Vec<_>>());
        prop_assert_eq!(records.into_iter().map(|r| r.body).collect::<Vec<_>>(), values);
    }

    /// An `inputs` CSV column as any CSV writer quotes it reads back as the same strings.
    #[test]
    fn csv_inputs_read_back(texts in prop::collection::vec(text(), 1..6)) {
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.write_record(["inputs"]).unwrap();
        for t in &texts {
            writer.write_record([t]).unwrap();
        }
        let csv = String::from_utf8(writer.into_inner().unwrap()).unwrap();
        prop_assert_eq!(decode_csv(&csv).unwrap(), json!({"inputs": texts}));
    }

    /// `question,context` rows read back as objects.
    #[test]
    fn csv_question_context_rows_read_back(rows in prop::collection::vec((text(), text()), 1..5)) {
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.write_record(["question", "context"]).unwrap();
        for (q, c) in &rows {
            writer.write_record([q, c]).unwrap();
        }
        let csv = String::from_utf8(writer.into_inner().unwrap()).unwrap();
        let want: Vec<Value> = rows.iter().map(|(q, c)| json!({"question": q, "context": c})).collect();
        prop_assert_eq!(decode_csv(&csv).unwrap(), json!({"inputs": want}));
    }

    /// A result written as CSV has the first row's keys as header and each row's cells (as
    /// Python's `str()`) below; results that are not rows of the header's keys are a 400.
    #[test]
    fn csv_results_write_rows_or_a_400(rows in prop::collection::vec(
        prop::collection::vec((prop::sample::select(vec!["label", "score", "word", "start"]), json_value()), 0..4),
        0..5,
    )) {
        let rows: Vec<Map<String, Value>> = rows
            .into_iter()
            .map(|r| r.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            .collect();
        let value = Value::Array(rows.iter().cloned().map(Value::Object).collect());
        match encode(ResponseFormat::Csv, &value) {
            Err(e) => client_error(&e)?,
            Ok(bytes) if rows.is_empty() => prop_assert!(bytes.is_empty()),
            // (no columns: nothing to read back; Python writes empty lines, csv an empty field)
            Ok(_) if rows[0].is_empty() => {}
            Ok(bytes) => {
                let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(&bytes[..]);
                let records: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>().unwrap();
                let header: Vec<&String> = rows[0].keys().collect();
                prop_assert_eq!(records.len(), rows.len() + 1);
                prop_assert_eq!(records[0].iter().collect::<Vec<_>>(), header.iter().map(|h| h.as_str()).collect::<Vec<_>>());
                for (row, record) in rows.iter().zip(&records[1..]) {
                    for (name, cell) in header.iter().zip(record.iter()) {
                        if let Some(Value::String(s)) = row.get(*name) {
                            prop_assert_eq!(cell, s.as_str());
                        }
                    }
                }
            }
        }
    }

    /// The MMS error envelope is JSON that reads back as what was put in it.
    #[test]
    fn error_envelopes_read_back(code in 100u16..600, kind in text(), message in text()) {
        let body = gson_error_body(code, &kind, &message);
        let back: Value = serde_json::from_str(&body).unwrap();
        prop_assert_eq!(back, json!({"code": code, "type": kind, "message": message}));
    }

    /// Request bodies as JSON text decode to themselves.
    #[test]
    fn request_bodies_decode_to_themselves(value in body()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        prop_assert_eq!(decode(RequestFormat::Json, &bytes).unwrap(), value.clone());
        match decode_body(RequestFormat::Json, &bytes).unwrap() {
            Body::One(one) => prop_assert_eq!(one, value),
            Body::Records(_) => return Err(TestCaseError::fail("one line read as records")),
        }
    }
}
