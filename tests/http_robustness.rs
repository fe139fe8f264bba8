//! Hostile and malformed HTTP against the real binary: a catalogue of raw requests (one table
//! row each: the bytes, how the client sends them, what must come back), each answered within a
//! bounded time with a status from the expected set — the DLC envelope where our layer answers,
//! an empty body where hyper answers for itself (README: "Differences from the Python DLC") —
//! and followed by a healthy `/ping`. Then the limits behind the rows one by one, and SIGTERM
//! with stalled clients.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::{repo_path, time_limit, Server};
use serde_json::{json, Value};

/// The catalogue's servers give up on clients after this long (header and body timeouts).
const CLIENT_TIMEOUT_S: &str = "2";
/// The catalogue's payload limit: 1 MiB.
const LIMIT: usize = 1024 * 1024;

/// What must come back.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Our layer answers with one of these statuses: the DLC envelope for an error, a non-empty
    /// body for a success.
    Answer(&'static [u16]),
    /// hyper answers for itself, before our layer sees the request: this status, empty body.
    Hyper(u16),
    /// This status without a body (`HEAD`).
    NoBody(u16),
    /// The connection is closed without an answer (a request head that never completes).
    Dropped,
}

/// How the client sends the bytes.
#[derive(Clone, Copy, Debug)]
enum Send {
    /// All at once, then waits for the answer with its side of the connection open.
    Hold,
    /// All at once, then closes its writing side (a body cut short).
    HalfClose,
    /// The head at once where it is complete, then one byte every 150 ms (slowloris).
    Trickle,
}

struct Case {
    name: String,
    request: Vec<u8>,
    send: Send,
    expect: Expect,
    /// Answers bounded by the client timeouts take longer than the rest.
    slow: bool,
}

fn case(name: impl Into<String>, request: Vec<u8>, expect: Expect) -> Case {
    Case {
        name: name.into(),
        request,
        send: Send::Hold,
        expect,
        slow: false,
    }
}

impl Case {
    fn send(mut self, send: Send) -> Case {
        self.send = send;
        self.slow = true;
        self
    }

    fn slow(mut self) -> Case {
        self.slow = true;
        self
    }
}

use Expect::{Answer, Dropped, Hyper, NoBody};

const OK: &[u16] = &[200];
const BAD: &[u16] = &[400];
const OK_OR_BAD: &[u16] = &[200, 400];

/// A request with `Connection: close` and a `Content-Length` for `body`.
fn http(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    [head.into_bytes(), body.to_vec()].concat()
}

fn post_as(content_type: &str, body: &[u8]) -> Vec<u8> {
    http(
        "POST",
        "/invocations",
        &[("Content-Type", content_type)],
        body,
    )
}

fn post_json(body: &[u8]) -> Vec<u8> {
    post_as("application/json", body)
}

fn with_parameters(parameters: Value) -> Vec<u8> {
    post_json(
        json!({"inputs": "I love this", "parameters": parameters})
            .to_string()
            .as_bytes(),
    )
}

/// A request head ending where the body starts, with these header lines verbatim.
fn head(lines: &str) -> Vec<u8> {
    format!("POST /invocations HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n{lines}\r\n").into_bytes()
}

fn raw(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

// The tables below are kept one row per line (rustfmt would spread each row over several).

#[rustfmt::skip]
fn request_line_cases() -> Vec<Case> {
    let near_limit_query = format!("/ping?{}", "q".repeat(60_000));
    let over_limit_uri = format!("/ping?{}", "q".repeat(70_000));
    let long_method = "X".repeat(10_000);
    vec![
        case("garbage line", raw("GARBAGE\r\n\r\n"), Hyper(400)),
        case("method only", raw("GET\r\n\r\n"), Hyper(400)),
        case("binary junk", vec![0, 1, 2, 255, 254, 13, 10, 13, 10], Hyper(400)),
        case("HTTP/9.9", raw("GET /ping HTTP/9.9\r\n\r\n"), Hyper(400)),
        case("no version", raw("GET /ping\r\n\r\n"), Hyper(400)),
        case("bad method token", raw("G@T /ping HTTP/1.1\r\n\r\n"), Hyper(400)),
        case("lower-case method", http("get", "/ping", &[], b""), Answer(OK)),
        case("10 KB method", http(&long_method, "/ping", &[], b""), Answer(OK)),
        case("NUL in path", raw("GET /pi\0ng HTTP/1.1\r\n\r\n"), Hyper(400)),
        case("space in path", raw("GET /pi ng HTTP/1.1\r\n\r\n"), Hyper(400)),
        case("bad percent escape", http("GET", "/%zz", &[], b""), Answer(&[404])),
        case("dot segments", http("GET", "/../../etc/passwd", &[], b""), Answer(&[404])),
        case("double slash", http("GET", "//ping", &[], b""), Answer(OK)),
        case("60 KB query", http("GET", &near_limit_query, &[], b""), Answer(OK)),
        case("70 KB URI", http("GET", &over_limit_uri, &[], b""), Hyper(431)),
        case("asterisk form", http("OPTIONS", "*", &[], b""), Answer(&[404, 405])),
        case("absolute form", http("GET", "http://example.com/ping", &[], b""), Answer(OK)),
        case("OPTIONS /", http("OPTIONS", "/", &[], b""), Answer(&[405])),
        case("HEAD /ping", http("HEAD", "/ping", &[], b""), NoBody(200)),
        case("DELETE /metrics", http("DELETE", "/metrics", &[], b""), Answer(&[405])),
        case("unknown route", http("GET", "/admin", &[], b""), Answer(&[404])),
        case("other model", http("POST", "/models/other/invoke", &[], b"{}"), Answer(&[404])),
        case("10 KB model name", http("POST", &format!("/invocations?model_name={}", "m".repeat(10_000)), &[], b"{}"), Answer(&[404])),
        case("HTTP/2 preface", raw("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Dropped),
        case("HTTP/1.0 without Host", raw("GET /ping HTTP/1.0\r\n\r\n"), Answer(OK)),
    ]
}

/// `GET /ping` with these header lines.
fn ping_with(lines: &str) -> Vec<u8> {
    raw(&format!(
        "GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{lines}\r\n"
    ))
}

/// `POST /invocations` of a JSON body with these extra headers.
fn love_with(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    http(
        "POST",
        "/invocations",
        &all,
        br#"{"inputs": "I love this"}"#,
    )
}

#[rustfmt::skip]
fn header_cases() -> Vec<Case> {
    let many = |n: usize| -> String { (0..n).map(|i| format!("X-H{i}: v\r\n")).collect() };
    let big = |n: usize| format!("X-Big: {}\r\n", "b".repeat(n));
    let mut invalid_utf8 = ping_with("X-Bin: ");
    invalid_utf8.truncate(invalid_utf8.len() - 2);
    invalid_utf8.extend_from_slice(b"\xff\xfe\x80\r\n\r\n");
    let love = br#"{"inputs": "I love this"}"#;
    let accept_list = "x/y;q=0.1, ".repeat(1000);
    vec![
        case("header without colon", ping_with("Foo bar\r\n"), Hyper(400)),
        case("space in header name", ping_with("Foo Bar: x\r\n"), Hyper(400)),
        case("NUL in header value", ping_with("X-A: a\0b\r\n"), Hyper(400)),
        case("obsolete line folding", ping_with("X-A: a\r\n b\r\n"), Hyper(400)),
        case("1000 headers", ping_with(&many(1000)), Answer(OK)),
        case("2000 headers", ping_with(&many(2000)), Hyper(431)),
        case("40 KB header", ping_with(&big(40_000)), Answer(OK)),
        case("300 KB header", ping_with(&big(300_000)), Hyper(431)),
        case("non-UTF-8 header value", invalid_utf8, Answer(OK)),
        case("no Host", raw("GET /ping HTTP/1.1\r\nConnection: close\r\n\r\n"), Answer(OK)),
        case("two Hosts", ping_with("Host: y\r\n"), Answer(OK)),
        case("websocket upgrade", ping_with("Connection: upgrade\r\nUpgrade: websocket\r\n"), Answer(OK)),
        case("h2c upgrade", ping_with("Upgrade: h2c\r\nHTTP2-Settings: AAAA\r\n"), Answer(OK)),
        case("Transfer-Encoding gzip", ping_with("Transfer-Encoding: gzip\r\n"), Hyper(400)),
        case("Transfer-Encoding chunked twice", [head("Transfer-Encoding: chunked, chunked\r\n"), chunked(&[std::str::from_utf8(love).unwrap()])].concat(), Answer(OK_OR_BAD)),
        case("chunked on HTTP/1.0", raw("POST /invocations HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), Hyper(400)),
        case("Content-Type missing", http("POST", "/invocations", &[], love), Answer(OK_OR_BAD)),
        case("Content-Type with charset", post_as("application/json; charset=latin1", love), Answer(OK)),
        case("Content-Type x-npy", post_as("application/x-npy", love), Answer(BAD)),
        case("Content-Type text/plain", post_as("text/plain", love), Answer(BAD)),
        case("Content-Type multipart", post_as("multipart/form-data; boundary=x", love), Answer(BAD)),
        case("Content-Type form", post_as("application/x-www-form-urlencoded", b"inputs=x"), Answer(BAD)),
        case("10 KB Content-Type", post_as(&"a/b".repeat(3_400), love), Answer(BAD)),
        case("Content-Type garbage", post_as(";;;==", love), Answer(BAD)),
        case("Content-Encoding gzip, not gzipped", love_with(&[("Content-Encoding", "gzip")]), Answer(&[200, 400, 415])),
        case("Accept garbage", love_with(&[("Accept", "garbage")]), Answer(BAD)),
        case("Accept x-npy", love_with(&[("Accept", "application/x-npy")]), Answer(BAD)),
        case("Accept json q=0", love_with(&[("Accept", "application/json;q=0")]), Answer(&[200, 400, 406])),
        case("Accept 1000 types", love_with(&[("Accept", &accept_list)]), Answer(BAD)),
        case("Accept csv", love_with(&[("Accept", "text/csv")]), Answer(OK)),
        case("Accept */*", love_with(&[("Accept", "*/*")]), Answer(OK)),
    ]
}

/// A request head that declares this `Content-Length` (and sends no body).
fn with_length_only(value: &str) -> Vec<u8> {
    head(&format!("Content-Length: {value}\r\n"))
}

#[rustfmt::skip]
fn content_length_cases() -> Vec<Case> {
    let love = br#"{"inputs": "I love this"}"#.to_vec();
    let with_length = |value: &str| [with_length_only(value), love.clone()].concat();
    let n = love.len();
    let over = (LIMIT + 1).to_string();
    vec![
        case("Content-Length abc", with_length("abc"), Hyper(400)),
        case("Content-Length -1", with_length("-1"), Hyper(400)),
        case("Content-Length +25", with_length("+25"), Hyper(400)),
        case("Content-Length hex", with_length("0x19"), Hyper(400)),
        case("Content-Length overflow", with_length("99999999999999999999999"), Hyper(400)),
        case("Content-Length list that differs", with_length("25, 26"), Hyper(400)),
        case("Content-Length twice, different", [head("Content-Length: 25\r\nContent-Length: 26\r\n"), love.clone()].concat(), Hyper(400)),
        case("Content-Length twice, equal", [head(&format!("Content-Length: {n}\r\nContent-Length: {n}\r\n")), love.clone()].concat(), Answer(OK)),
        case("Content-Length and chunked", [head("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"), chunked(&[std::str::from_utf8(&love).unwrap()])].concat(), Answer(OK_OR_BAD)),
        // Refused from the head alone: the client sends no body and still gets its answer.
        case("Content-Length over the limit, no body", with_length_only(&over), Answer(&[413])),
        case("Content-Length 2^63, no body", with_length_only("9223372036854775808"), Answer(&[413])),
        case("Expect 100-continue over the limit", head(&format!("Content-Length: {over}\r\nExpect: 100-continue\r\n")), Answer(&[413])),
        case("over the limit, body sent", [with_length_only(&(LIMIT + 10).to_string()), vec![b'a'; LIMIT + 10]].concat(), Answer(&[413])),
        case("shorter body than declared, then EOF", [with_length_only("100"), b"{\"inputs\"".to_vec()].concat(), Answer(BAD)).send(Send::HalfClose),
        case("longer body than declared", [with_length_only("5"), love.clone()].concat(), Answer(BAD)),
        case("GET /ping with a body", http("GET", "/ping", &[], b"0123456789"), Answer(OK)),
    ]
}

/// A chunked body of these pieces.
fn chunked(pieces: &[&str]) -> Vec<u8> {
    let mut body = String::new();
    for piece in pieces {
        body.push_str(&format!("{:x}\r\n{piece}\r\n", piece.len()));
    }
    body.push_str("0\r\n\r\n");
    body.into_bytes()
}

#[rustfmt::skip]
fn chunked_cases() -> Vec<Case> {
    let te = head("Transfer-Encoding: chunked\r\n");
    let with = |body: &str| [te.clone(), body.as_bytes().to_vec()].concat();
    let love = r#"{"inputs": "I love this"}"#;
    let n = love.len();
    let bytes: Vec<String> = love.chars().map(String::from).collect();
    let one_byte_chunks: Vec<&str> = bytes.iter().map(String::as_str).collect();
    let piece = "a".repeat(64 * 1024);
    let oversize = vec![piece.as_str(); 20];
    vec![
        case("chunked, valid", [te.clone(), chunked(&[love])].concat(), Answer(OK)),
        case("chunked, one byte per chunk", [te.clone(), chunked(&one_byte_chunks)].concat(), Answer(OK)),
        case("chunk size not hex", with("zz\r\nabc\r\n0\r\n\r\n"), Answer(BAD)),
        case("chunk size overflows", with("ffffffffffffffffffff\r\nabc\r\n0\r\n\r\n"), Answer(BAD)),
        case("negative chunk size", with("-5\r\nabcde\r\n0\r\n\r\n"), Answer(BAD)),
        case("chunk longer than its size", with("2\r\nabcdef\r\n0\r\n\r\n"), Answer(BAD)),
        case("chunk extension", with(&format!("{n:x};name=value\r\n{love}\r\n0\r\n\r\n")), Answer(OK)),
        case("trailer", with(&format!("{n:x}\r\n{love}\r\n0\r\nX-Trailer: 1\r\n\r\n")), Answer(OK)),
        case("no last chunk, then EOF", with(&format!("{n:x}\r\n{love}\r\n")), Answer(BAD)).send(Send::HalfClose),
        case("chunked over the limit", [te.clone(), chunked(&oversize)].concat(), Answer(&[413])),
    ]
}

#[rustfmt::skip]
fn json_body_cases() -> Vec<Case> {
    let rows: [(&str, &[u8], &'static [u16]); 29] = [
        ("empty", b"", BAD),
        ("null", b"null", BAD),
        ("empty list", b"[]", OK_OR_BAD),
        ("string", b"\"just a string\"", BAD),
        ("number", b"123", BAD),
        ("true", b"true", BAD),
        ("open brace", b"{", BAD),
        ("missing value", br#"{"inputs": }"#, BAD),
        ("trailing garbage", br#"{"inputs": "x"} xyz"#, BAD),
        ("invalid UTF-8 in a string", b"{\"inputs\": \"\xff\xfe\"}", BAD),
        ("invalid UTF-8 outside strings", b"{\"inputs\xc3\x28\": 1}", BAD),
        ("UTF-8 BOM", b"\xef\xbb\xbf{\"inputs\": \"I love this\"}", OK_OR_BAD),
        ("UTF-16", b"\xff\xfe{\0\"\0i\0\"\0:\0\"\0x\0\"\0}\0", BAD),
        ("lone surrogate", br#"{"inputs": "\ud800"}"#, OK_OR_BAD),
        ("NaN literal", br#"{"inputs": NaN}"#, BAD),
        ("comment", br#"{"inputs": "x" /* c */}"#, BAD),
        ("single quotes", b"{'inputs': 'x'}", BAD),
        ("inputs a number", br#"{"inputs": 5}"#, BAD),
        ("inputs an object", br#"{"inputs": {"a": 1}}"#, BAD),
        ("inputs null", br#"{"inputs": null}"#, BAD),
        ("inputs empty string", br#"{"inputs": ""}"#, OK_OR_BAD),
        ("no inputs", br#"{"parameters": {}}"#, BAD),
        ("duplicate keys", br#"{"inputs": "a", "inputs": "I love this"}"#, OK_OR_BAD),
        ("parameters a string", br#"{"inputs": "x", "parameters": "top_k"}"#, BAD),
        ("parameters a list", br#"{"inputs": "x", "parameters": [1]}"#, BAD),
        ("1e400", br#"{"inputs": "x", "parameters": {"top_k": 1e400}}"#, BAD),
        // A Python int: every label, sorted (as the pipeline; see text-classification/*-params.json).
        ("huge integer", br#"{"inputs": "x", "parameters": {"top_k": 99999999999999999999999}}"#, OK),
        ("CSV as JSON", b"inputs\nI love this\n", BAD),
        ("random bytes", b"\x00\x9c\xff\x10\x02garbage\x7f", BAD),
    ];
    rows.into_iter()
        .map(|(name, body, statuses)| case(format!("body: {name}"), post_json(body), Answer(statuses)))
        .collect()
}

#[rustfmt::skip]
fn body_cases() -> Vec<Case> {
    let deep_list = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    let long_text = json!({"inputs": "word ".repeat(180_000)}).to_string();
    let many_inputs = json!({"inputs": vec!["I love this"; 100]}).to_string();
    let thousand_parameters = Value::Object((0..1000).map(|i| (format!("p{i}"), json!(i))).collect());
    let json_lines = r#"{"inputs": "I love this"}"#.to_string() + "\n";
    vec![
        case("100 000 nested lists", post_json(deep_list.as_bytes()), Answer(BAD)),
        case("10 000 nested objects", post_json(deep_object.as_bytes()), Answer(BAD)),
        case("900 KB input text", post_json(long_text.as_bytes()), Answer(BAD)),
        case("100 inputs", post_json(many_inputs.as_bytes()), Answer(OK)),
        case("unknown 100 KB parameter", with_parameters(json!({"p".repeat(100_000): 1})), Answer(BAD)),
        case("1000 unknown parameters", with_parameters(thousand_parameters), Answer(BAD)),
        // The pipeline's answers (models/golden/text-classification/*-params.json): `scores[:-1]`,
        // and a top_k that is not an int ignored.
        case("top_k -1", with_parameters(json!({"top_k": -1})), Answer(OK)),
        case("top_k a string", with_parameters(json!({"top_k": "5"})), Answer(OK)),
        case("truncation a string", with_parameters(json!({"truncation": "yes"})), Answer(BAD)),
        case("function_to_apply unknown", with_parameters(json!({"function_to_apply": "evil"})), Answer(BAD)),
        case("function_to_apply 100 KB", with_parameters(json!({"function_to_apply": "e".repeat(100_000)})), Answer(BAD)),
        case("100 KB key in an input", post_json(json!({"inputs": {"text": "a", "k".repeat(100_000): 1}}).to_string().as_bytes()), Answer(BAD)),
        case("100 KB key in a list input", post_json(json!({"inputs": [{"text": "a", "k".repeat(100_000): 1}]}).to_string().as_bytes()), Answer(BAD)),
        case("100 KB top_k string (ignored, as by the pipeline)", with_parameters(json!({"top_k": "9".repeat(100_000)})), Answer(OK)),
        case("CSV", post_as("text/csv", b"inputs\nI love this\n"), Answer(OK_OR_BAD)),
        // Read to the end of the body, as Python's csv module does.
        case("CSV unbalanced quote", post_as("text/csv", b"inputs\n\"I love this\n"), Answer(OK)),
        case("CSV invalid UTF-8", post_as("text/csv", b"inputs\n\xff\xfe\n"), Answer(BAD)),
        case("CSV 100 000 columns", post_as("text/csv", ",".repeat(100_000).as_bytes()), Answer(OK_OR_BAD)),
        case("JSON Lines, a bad line", post_as("application/jsonlines", b"{\"inputs\": \"x\"}\n{oops\n"), Answer(BAD)),
        case("JSON Lines, 50 records", post_as("application/jsonlines", json_lines.repeat(50).as_bytes()), Answer(OK)),
        case("JSON Lines, blank lines only", post_as("application/jsonlines", b"\n\n\n"), Answer(OK_OR_BAD)),
    ]
}

/// Clients that stop or crawl: each is cut off by the 2 s header or body timeout.
#[rustfmt::skip]
fn stall_cases() -> Vec<Case> {
    let crawling_body = br#"{"inputs": "I love this"}"#;
    vec![
        case("connects, sends nothing", vec![], Dropped).slow(),
        case("half a request line", raw("POST /invoca"), Dropped).slow(),
        case("head without its blank line", raw("GET /ping HTTP/1.1\r\nHost: x\r\n"), Dropped).slow(),
        case("slowloris head", raw("GET /ping HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"), Dropped).send(Send::Trickle),
        // The answer comes at once; the connection then idles until the header timeout closes it.
        case("idle keep-alive", raw("GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"), Answer(OK)).slow(),
        case("stalled body", [with_length_only("100"), b"{\"inputs\"".to_vec()].concat(), Answer(&[408])).slow(),
        case("stalled chunked body", [head("Transfer-Encoding: chunked\r\n"), b"a\r\n{\"inpu".to_vec()].concat(), Answer(&[408])).slow(),
        case("Expect 100-continue, body never sent", head("Content-Length: 20\r\nExpect: 100-continue\r\n"), Answer(&[408])).slow(),
        // A byte every 150 ms never pauses 2 s: the body is read to its end.
        case("body at a crawl", [with_length_only(&crawling_body.len().to_string()), crawling_body.to_vec()].concat(), Answer(OK)).send(Send::Trickle),
    ]
}

#[rustfmt::skip]
fn generation_cases() -> Vec<Case> {
    let p = |parameters: Value| post_json(json!({"inputs": "Hello", "parameters": parameters}).to_string().as_bytes());
    let inputs = |inputs: Value| post_json(json!({"inputs": inputs, "parameters": {"max_new_tokens": 2}}).to_string().as_bytes());
    let stops: Vec<String> = (0..10_000).map(|i| format!("stop{i}")).collect();
    let streamed_string = json!({"inputs": "Hello", "stream": "true"}).to_string();
    vec![
        case("max_new_tokens -1", p(json!({"max_new_tokens": -1})), Answer(BAD)),
        case("max_new_tokens 1e30", p(json!({"max_new_tokens": 1e30})), Answer(BAD)),
        case("max_new_tokens a string", p(json!({"max_new_tokens": "ten"})), Answer(BAD)),
        case("max_new_tokens 1.5", p(json!({"max_new_tokens": 1.5})), Answer(BAD)),
        case("max_new_tokens null", p(json!({"max_new_tokens": null})), Answer(OK_OR_BAD)),
        case("max_new_tokens past the positions", p(json!({"max_new_tokens": 100_000})), Answer(OK_OR_BAD)),
        case("min_new_tokens over max_new_tokens", p(json!({"max_new_tokens": 2, "min_new_tokens": 10})), Answer(BAD)),
        case("num_return_sequences 0", p(json!({"num_return_sequences": 0, "max_new_tokens": 2})), Answer(BAD)),
        // Larger than the queue: refused for good (never a retryable 503).
        case("num_return_sequences 100000", p(json!({"num_return_sequences": 100_000, "max_new_tokens": 2})), Answer(&[400, 413])),
        case("100 KB stop_sequence, 100 KB temperature", p(json!({"stop_sequence": "s".repeat(100_000), "temperature": "t".repeat(100_000)})), Answer(BAD)),
        case("temperature -1", p(json!({"do_sample": true, "temperature": -1})), Answer(BAD)),
        case("temperature a string", p(json!({"temperature": "hot"})), Answer(BAD)),
        case("top_p 2", p(json!({"do_sample": true, "top_p": 2})), Answer(BAD)),
        case("top_k -5", p(json!({"do_sample": true, "top_k": -5})), Answer(BAD)),
        case("repetition_penalty 0", p(json!({"repetition_penalty": 0})), Answer(BAD)),
        case("stop a number", p(json!({"stop": 5})), Answer(BAD)),
        case("10 000 stop sequences", p(json!({"stop": stops, "max_new_tokens": 2})), Answer(OK_OR_BAD)),
        case("seed -1", p(json!({"seed": -1})), Answer(BAD)),
        case("seed 1e40", p(json!({"seed": 1e40})), Answer(BAD)),
        case("do_sample a string", p(json!({"do_sample": "yes"})), Answer(BAD)),
        case("num_beams 0", p(json!({"num_beams": 0})), Answer(BAD)),
        case("num_beams 10000", p(json!({"num_beams": 10_000, "max_new_tokens": 2})), Answer(&[200, 400, 413, 503])),
        case("return_full_text a number", p(json!({"return_full_text": 3})), Answer(BAD)),
        case("logits_processor", p(json!({"logits_processor": ["x"]})), Answer(BAD)),
        case("eos_token_id a string", p(json!({"eos_token_id": "x"})), Answer(BAD)),
        case("unknown 100 KB generation parameter", p(json!({"q".repeat(100_000): 1})), Answer(BAD)),
        case("stream a string", post_json(streamed_string.as_bytes()), Answer(BAD)),
        case("message without role", inputs(json!([{"content": "hi"}])), Answer(BAD)),
        case("role a number", inputs(json!([{"role": 5, "content": "hi"}])), Answer(BAD)),
        case("content an object", inputs(json!([{"role": "user", "content": {"a": 1}}])), Answer(BAD)),
        case("messages of numbers", inputs(json!([1, 2, 3])), Answer(BAD)),
        case("empty prompt", inputs(json!("")), Answer(OK_OR_BAD)),
        case("nested empty lists", inputs(json!([[]])), Answer(OK_OR_BAD)),
    ]
}

/// What came back on one connection.
#[derive(Debug)]
struct Reply {
    status: Option<u16>,
    head: String,
    body: Vec<u8>,
    continued: bool,
}

/// Sends `case` on a fresh connection and reads until the server closes it (or `limit`).
fn exchange(port: u16, case: &Case, limit: Duration) -> (Reply, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let (request, send) = (case.request.clone(), case.send);
    // Writes may fail once the server has answered and closed: that is its right.
    let sender = std::thread::spawn(move || match send {
        Send::Hold => drop(writer.write_all(&request)),
        Send::HalfClose => {
            let _ = writer.write_all(&request);
            let _ = writer.shutdown(Shutdown::Write);
        }
        Send::Trickle => {
            let head_end = request.windows(4).position(|w| w == b"\r\n\r\n");
            let (head, rest) = request.split_at(head_end.map_or(0, |end| end + 4));
            let _ = writer.write_all(head);
            for &byte in rest {
                if writer.write_all(&[byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(150));
            }
        }
    });
    let mut raw = Vec::new();
    let mut buffer = [0u8; 65536];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buffer[..n]),
            // A reset after the answer (the server closed with unread bytes) ends the exchange.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "{}: no end within {limit:?} ({e}); got {:?}",
                case.name,
                String::from_utf8_lossy(&raw)
            ),
        }
    }
    let elapsed = started.elapsed();
    drop(stream);
    let _ = sender.join();
    (parse(&raw), elapsed)
}

fn parse(mut raw: &[u8]) -> Reply {
    let mut continued = false;
    while raw.starts_with(b"HTTP/1.1 100 ") {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        raw = &raw[end + 4..];
        continued = true;
    }
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        assert!(
            raw.is_empty(),
            "a partial answer: {:?}",
            String::from_utf8_lossy(raw)
        );
        return Reply {
            status: None,
            head: String::new(),
            body: Vec::new(),
            continued,
        };
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let rest = &raw[end + 4..];
    let body = match length {
        Some(n) => rest[..n.min(rest.len())].to_vec(),
        None => rest.to_vec(),
    };
    Reply {
        status,
        head,
        body,
        continued,
    }
}

fn check(case: &Case, reply: &Reply) {
    let name = &case.name;
    let text = String::from_utf8_lossy(&reply.body);
    match case.expect {
        Answer(statuses) => {
            let status = reply.status.unwrap_or_else(|| panic!("{name}: no answer"));
            assert!(
                statuses.contains(&status),
                "{name}: {status} not in {statuses:?}: {text}"
            );
            if status >= 400 {
                assert!(
                    reply.head.contains("content-type: application/json"),
                    "{name}: {}",
                    reply.head
                );
                let envelope: Value = serde_json::from_slice(&reply.body)
                    .unwrap_or_else(|e| panic!("{name}: not the envelope ({e}): {text}"));
                assert_eq!(envelope["code"], status, "{name}: {envelope}");
                assert!(
                    envelope["type"].is_string() && envelope["message"].is_string(),
                    "{name}: {envelope}"
                );
                // Messages quote a bounded part of the request, never all of it.
                let message = envelope["message"].as_str().unwrap_or_default();
                assert!(
                    message.len() <= 2048,
                    "{name}: a {} byte message: {}...",
                    message.len(),
                    &message[..message.floor_char_boundary(200)]
                );
            } else {
                assert!(!reply.body.is_empty(), "{name}: empty {status}");
            }
        }
        Hyper(status) => {
            assert_eq!(reply.status, Some(status), "{name}: {}", reply.head);
            assert!(
                reply.body.is_empty(),
                "{name}: hyper's answer has a body: {text}"
            );
        }
        NoBody(status) => {
            assert_eq!(reply.status, Some(status), "{name}: {}", reply.head);
            assert!(reply.body.is_empty(), "{name}: {text}");
        }
        Dropped => assert_eq!(reply.status, None, "{name}: {}", reply.head),
    }
}

fn assert_healthy(server: &Server, after: &str) {
    let started = Instant::now();
    let ping = server.request("GET", "/ping", &[], b"");
    assert_eq!(ping.status, 200, "/ping after {after}: {}", ping.text());
    assert!(
        started.elapsed() < time_limit(5),
        "/ping after {after} took {:?}",
        started.elapsed()
    );
}

/// Replays `cases` one connection each; every answer within its bound, `/ping` healthy after.
fn replay(server: Server, cases: Vec<Case>) {
    let mut names = std::collections::HashSet::new();
    let mut failed = Vec::new();
    for case in &cases {
        assert!(
            names.insert(case.name.clone()),
            "two rows named {}",
            case.name
        );
        // Stalls are cut at 2 s; everything else is answered at once.
        let bound = if case.slow {
            Duration::from_secs(8)
        } else {
            time_limit(10)
        };
        // Every row runs; the failures (each printed as it happens) are listed at the end.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let (reply, elapsed) = exchange(server.port, case, bound + Duration::from_secs(5));
            check(case, &reply);
            assert!(elapsed < bound, "{}: took {elapsed:?}", case.name);
        }));
        if outcome.is_err() {
            failed.push(case.name.clone());
        }
        assert_healthy(&server, &case.name);
    }
    let stderr = server.stop();
    assert!(
        failed.is_empty(),
        "{} of {} rows failed: {failed:?}",
        failed.len(),
        cases.len()
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn client_timeouts(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut env = vec![
        ("SERVER_HEADER_TIMEOUT_SECONDS", CLIENT_TIMEOUT_S),
        ("SERVER_BODY_TIMEOUT_SECONDS", CLIENT_TIMEOUT_S),
        ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "1"),
    ];
    env.extend_from_slice(extra);
    env
}

#[test]
fn a_catalogue_of_hostile_requests_to_a_classifier() {
    let cases: Vec<Case> = [
        request_line_cases(),
        header_cases(),
        content_length_cases(),
        chunked_cases(),
        json_body_cases(),
        body_cases(),
        stall_cases(),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(cases.len() >= 100, "{} rows", cases.len());
    replay(
        Server::start(&common::minilm_cls(), &client_timeouts(&[])),
        cases,
    );
}

#[test]
fn a_catalogue_of_hostile_generation_parameters() {
    let env = client_timeouts(&[("HF_TASK", "text-generation")]);
    replay(
        Server::start(&repo_path("models/tiny/llama-lm"), &env),
        generation_cases(),
    );
}

#[test]
fn an_oversized_content_length_is_refused_before_the_body_is_sent() {
    let server = Server::start(&common::minilm_cls(), &client_timeouts(&[]));
    let over = format!("Content-Length: {}\r\n", LIMIT + 1);
    // The head alone brings the 413 (before, the server waited for the body).
    let refused = case("head only", head(&over), Answer(&[413]));
    let (reply, elapsed) = exchange(server.port, &refused, Duration::from_secs(10));
    check(&refused, &reply);
    assert!(String::from_utf8_lossy(&reply.body).contains("1048576"));
    // The answer is at once; the connection then waits (2 s) for the body it discards.
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    // With `Expect: 100-continue`, no `100 Continue` invites the body.
    let expect = format!("{over}Expect: 100-continue\r\n");
    let refused = case("100-continue", head(&expect), Answer(&[413]));
    let (reply, _) = exchange(server.port, &refused, Duration::from_secs(10));
    check(&refused, &reply);
    assert!(!reply.continued, "a 100 Continue went out before the 413");

    // Within the limit, `Expect: 100-continue` gets its 100 and then the answer.
    let love = r#"{"inputs": "I love this"}"#;
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream.set_read_timeout(Some(time_limit(10))).unwrap();
    let lines = format!("Content-Length: {}\r\nExpect: 100-continue\r\n", love.len());
    stream.write_all(&head(&lines)).unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(love.as_bytes()).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert_eq!(parse(&rest).status, Some(200));
}

/// Opens a connection and leaves it in the state `request` puts it in.
fn stalled_client(port: u16, request: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(request).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
}

/// Reads until the server closes the connection; returns what came.
fn read_until_closed(mut stream: TcpStream) -> Vec<u8> {
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => raw,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => raw,
        Err(e) => panic!("the server kept a stalled connection open: {e}"),
    }
}

#[test]
fn sigterm_finishes_in_flight_work_and_drops_stalled_clients_within_the_drain_cap() {
    const DRAIN_S: u64 = 15;
    // Header and body timeouts far beyond the cap: only the cap can end the stalled clients.
    let server = Server::start(
        &common::smollm2(),
        &[
            ("SERVER_SHUTDOWN_DRAIN_SECONDS", "15"),
            ("SERVER_HEADER_TIMEOUT_SECONDS", "600"),
            ("SERVER_BODY_TIMEOUT_SECONDS", "600"),
        ],
    );
    let port = server.port;
    // An in-flight streamed generation: its head has arrived when SIGTERM is sent.
    let body = json!({"inputs": "Once upon a time", "stream": true,
        "parameters": {"max_new_tokens": 48, "min_new_tokens": 48}})
    .to_string();
    let mut in_flight = stalled_client(port, &post_json(body.as_bytes()));
    let mut first = [0u8; 12];
    in_flight.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let stalled = vec![
        stalled_client(port, b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Slow: aaa"),
        stalled_client(
            port,
            &[head("Content-Length: 100\r\n"), b"{\"in".to_vec()].concat(),
        ),
        stalled_client(port, b""),
    ];
    let mut idle = stalled_client(port, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = [0u8; 12];
    idle.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");

    let started = Instant::now();
    server.terminate();
    // The idle keep-alive connection is closed at once.
    let idle_rest = read_until_closed(idle);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "idle connection held {:?}",
        started.elapsed()
    );
    assert!(
        !idle_rest.windows(8).any(|w| w == b"HTTP/1.1"),
        "a second answer on the idle connection"
    );
    // The in-flight stream runs to its end.
    let rest = read_until_closed(in_flight);
    let text = String::from_utf8_lossy(&rest);
    assert_eq!(text.matches("data:").count(), 48, "{text}");
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
    // The stalled clients are dropped when the cap runs out, and the process ends with it.
    for client in stalled {
        read_until_closed(client);
    }
    let (code, stderr) = server.wait_exit(Duration::from_secs(DRAIN_S + 10));
    let took = started.elapsed();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        took >= Duration::from_secs(DRAIN_S - 1),
        "{took:?}: the stalled clients were not held until the cap?"
    );
    assert!(took < Duration::from_secs(DRAIN_S + 5), "{took:?}");
    assert!(stderr.contains("SERVER_SHUTDOWN_DRAIN_SECONDS"), "{stderr}");
}
