//! Test harness: starts the real server binary on a free loopback port and talks raw HTTP/1.1 to
//! it, so tests control every header byte (a missing Content-Type, odd header names).
#![allow(dead_code)]

pub mod fake_hub;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server binary: the one cargo built, or `SAGEMAKER_HF_SERVER_BIN` (test executables
/// carried to a machine without Rust, as the GPU tests are).
pub fn bin() -> PathBuf {
    std::env::var_os("SAGEMAKER_HF_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sagemaker-hf-server")))
}

/// The command that starts the server binary: the binary itself, or, when
/// `SAGEMAKER_HF_SERVER_RUNNER` is set (a command line split at whitespace), that runner with the
/// binary as its first argument. Cross-target runs need it: with a cargo `runner` the test
/// harness runs under emulation (`cargo test --target aarch64-unknown-linux-gnu` on x86-64 runs
/// it as `qemu-aarch64 -cpu neoverse-n1 -L /usr/aarch64-linux-gnu <test>`), but the server the
/// tests spawn is an aarch64 executable too, which the kernel starts only through binfmt_misc
/// (not registered in most containers). `.ci/run` sets it to the same qemu command for its
/// aarch64 step.
pub fn server_command() -> Command {
    let runner = std::env::var("SAGEMAKER_HF_SERVER_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(bin());
            command
        }
        None => Command::new(bin()),
    }
}

/// Whether the server runs under a `SAGEMAKER_HF_SERVER_RUNNER` (an emulator). qemu runs its
/// floating-point code many times slower, so the server then gets a 600 s request deadline
/// instead of the default 60 s (tests that set their own keep theirs) and clients wait up to
/// 600 s for an answer instead of 120 s.
pub fn emulated() -> bool {
    std::env::var("SAGEMAKER_HF_SERVER_RUNNER").is_ok_and(|r| !r.trim().is_empty())
}

/// A limit of `seconds` on something the server computes, stretched 20x under emulation (a
/// pass over a 256-token batch of MiniLM takes well under a second natively, ~40 s in qemu).
pub fn time_limit(seconds: u64) -> Duration {
    Duration::from_secs(if emulated() { 20 * seconds } else { seconds })
}

/// A path in the repository (`SAGEMAKER_HF_REPO_DIR` where the tests run from a copy).
pub fn repo_path(relative: &str) -> PathBuf {
    std::env::var_os("SAGEMAKER_HF_REPO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join(relative)
}

/// A model `models/fetch_models.sh` provides, checked for one of its files.
pub fn fetched_model(relative: &str, file: &str) -> PathBuf {
    let dir = repo_path(relative);
    assert!(
        dir.join(file).is_file(),
        "{} is missing: run models/fetch_models.sh first",
        dir.display()
    );
    dir
}

/// One call of a Python client script in `tests/` (the test venv `models/fetch_models.sh` makes,
/// `MODELS_CACHE` as there): `script PORT CALL_JSON` prints one JSON object.
pub fn python_client(script: &str, port: u16, call: &serde_json::Value) -> serde_json::Value {
    let cache = std::env::var_os("MODELS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_path("models/cache"));
    let python = cache.join("venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run models/fetch_models.sh first",
        python.display()
    );
    let output = Command::new(python)
        .arg(repo_path(&format!("tests/{script}")))
        .arg(port.to_string())
        .arg(call.to_string())
        .output()
        .unwrap_or_else(|e| panic!("run tests/{script}: {e}"));
    assert!(
        output.status.success(),
        "{script} {call}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("one JSON object from {script}: {e}"))
}

/// The real MiniLM classifier, assembled by `models/fetch_models.sh`.
pub fn minilm_cls() -> PathBuf {
    fetched_model("models/minilm-l6-cls", "model.safetensors")
}

/// The real SmolLM2-135M-Instruct GGUF with its tokenizer files.
pub fn smollm2() -> PathBuf {
    fetched_model(
        "models/smollm2-135m-instruct",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Server {
    pub port: u16,
    child: Child,
}

impl Server {
    /// Starts the binary serving `model_dir` (as `HF_MODEL_ID`) and waits for `/ping` 200.
    pub fn start(model_dir: &Path, env: &[(&str, &str)]) -> Server {
        let server = Server::spawn(model_dir.to_str().unwrap(), env);
        server.wait_ready(Duration::from_secs(120));
        server
    }

    /// Starts the binary without waiting; `HF_MODEL_ID` = `model_id`.
    pub fn spawn(model_id: &str, env: &[(&str, &str)]) -> Server {
        Server::spawn_with(Some(model_id), env)
    }

    /// Starts a multi-model endpoint (`SAGEMAKER_MULTI_MODEL=true`, no model) and waits for
    /// `/ping` 200.
    pub fn start_multi_model(env: &[(&str, &str)]) -> Server {
        let mut env = env.to_vec();
        env.insert(0, ("SAGEMAKER_MULTI_MODEL", "true"));
        let server = Server::spawn_with(None, &env);
        server.wait_ready(Duration::from_secs(120));
        server
    }

    fn spawn_with(model_id: Option<&str>, env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let mut command = server_command();
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .env("SAGEMAKER_BIND_TO_PORT", port.to_string())
            .env("SERVER_BIND_ADDRESS", "127.0.0.1")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(model_id) = model_id {
            command.env("HF_MODEL_ID", model_id);
        }
        if emulated() {
            command.env("SAGEMAKER_MODEL_SERVER_TIMEOUT", "600");
        }
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("start the server binary");
        Server { port, child }
    }

    pub fn wait_ready(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            if let Ok(r) = try_request(self.port, "GET", "/ping", &[], b"") {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                started.elapsed() < limit,
                "server on port {} not ready in {limit:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit; returns its exit code and standard error.
    pub fn wait_exit(mut self, limit: Duration) -> (Option<i32>, String) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut stderr = String::new();
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .unwrap();
                return (status.code(), stderr);
            }
            assert!(
                started.elapsed() < limit,
                "server did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM, as SageMaker does on scale-in or update.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Stops the server and returns what it logged on standard error.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        stderr
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        request(self.port, method, path, headers, body)
    }

    /// `POST /invocations` with `Content-Type: application/json`.
    pub fn invoke_json(&self, body: &str) -> Response {
        self.request(
            "POST",
            "/invocations",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    /// A multi-model endpoint's `POST /models` of the model folder `dir` under `name`.
    pub fn load_model(&self, name: &str, dir: &Path) -> Response {
        let body = serde_json::json!({"model_name": name, "url": dir.to_str().unwrap()});
        self.request(
            "POST",
            "/models",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Asserts the DLC envelope `{"code","type","message"}` with this status; returns the message.
    pub fn envelope(&self, status: u16) -> String {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        let v = self.json();
        assert_eq!(v["code"], status as u64, "{v}");
        assert!(v["type"].is_string(), "{v}");
        v["message"].as_str().expect("message").to_string()
    }
}

pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    try_request(port, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub fn try_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    let limit = if emulated() { 600 } else { 120 };
    stream.set_read_timeout(Some(Duration::from_secs(limit)))?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(status_line))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// Compares a server result with a golden pipeline result: same shape, keys (in order), strings
/// and integers; floats within `tolerance`.
pub fn assert_close(
    got: &serde_json::Value,
    want: &serde_json::Value,
    tolerance: f64,
    context: &str,
) {
    use serde_json::Value;
    match (got, want) {
        (Value::Number(g), Value::Number(w)) if g.is_f64() || w.is_f64() => {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            assert!((g - w).abs() <= tolerance, "{context}: {g} vs {w}");
        }
        (Value::Array(g), Value::Array(w)) => {
            assert_eq!(
                g.len(),
                w.len(),
                "{context}: length\n got {got}\nwant {want}"
            );
            for (i, (g, w)) in g.iter().zip(w).enumerate() {
                assert_close(g, w, tolerance, &format!("{context}[{i}]"));
            }
        }
        (Value::Object(g), Value::Object(w)) => {
            let gk: Vec<_> = g.keys().collect();
            let wk: Vec<_> = w.keys().collect();
            assert_eq!(gk, wk, "{context}: keys");
            for (k, w) in w {
                assert_close(&g[k], w, tolerance, &format!("{context}.{k}"));
            }
        }
        _ => assert_eq!(got, want, "{context}"),
    }
}

pub const TOLERANCE: f64 = 1e-4;

/// Replays a golden file (models/make_fixtures.py) against the real binary serving `model_dir`:
/// one request at a time, then all at once (so requests share padded batches and masking is
/// exercised against the unbatched reference). Answers must match within 1e-4; requests the
/// pipeline refused must get a 400 envelope.
pub fn replay_golden(golden: &str, model_dir: &Path, env: &[(&str, &str)]) {
    replay_golden_within(golden, model_dir, env, TOLERANCE)
}

/// The `records` of a golden file (a path from the repository root).
pub fn golden_records(golden: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(repo_path(golden)).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
    parsed["records"].as_array().unwrap().clone()
}

/// [`replay_golden`] with another float tolerance (half precision).
pub fn replay_golden_within(golden: &str, model_dir: &Path, env: &[(&str, &str)], tolerance: f64) {
    use serde_json::Value;
    let records = golden_records(golden);
    let server = Server::start(model_dir, env);

    let check = |i: usize, record: &Value, response: Response| {
        let request = record["request"].to_string();
        // A deliberate difference, recorded with the golden: the pipeline answers, we refuse.
        let refused_on_purpose = record.get("deviation").is_some();
        match record.get("response").filter(|_| !refused_on_purpose) {
            Some(want) => {
                assert_eq!(response.status, 200, "{request}: {}", response.text());
                assert_close(
                    &response.json(),
                    want,
                    tolerance,
                    &format!("{golden} record {i} {request}"),
                );
            }
            None => {
                let message = response.envelope(400);
                assert!(!message.is_empty(), "{golden}: {request}");
                // The parameter the refusal is about, when the golden names one.
                if let Some(name) = record.get("names").and_then(Value::as_str) {
                    assert!(
                        message.contains(name),
                        "{golden} record {i} {request}: the 400 does not name `{name}`: {message}"
                    );
                }
            }
        }
    };

    for (i, record) in records.iter().enumerate() {
        check(
            i,
            record,
            server.invoke_json(&record["request"].to_string()),
        );
    }
    let requests = records
        .iter()
        .map(|record| {
            let body = record["request"].to_string().into_bytes();
            ("application/json".to_string(), body)
        })
        .collect();
    let responses = invoke_concurrently(server.port, requests);
    for (i, (record, response)) in records.iter().zip(responses).enumerate() {
        check(i, record, response);
    }
}

/// POSTs every (content type, body) to `/invocations` at once, a thread each; the responses in
/// the requests' order.
pub fn invoke_concurrently(port: u16, requests: Vec<(String, Vec<u8>)>) -> Vec<Response> {
    invoke_concurrently_with(port, requests, &[])
}

/// [`invoke_concurrently`] with more headers on every request (`Accept`, say).
pub fn invoke_concurrently_with(
    port: u16,
    requests: Vec<(String, Vec<u8>)>,
    headers: &[(&str, &str)],
) -> Vec<Response> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let handles: Vec<_> = requests
        .into_iter()
        .map(|(content_type, body)| {
            let headers = headers.clone();
            std::thread::spawn(move || {
                let mut all = vec![("Content-Type", content_type.as_str())];
                all.extend(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                request(port, "POST", "/invocations", &all, &body)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .collect()
}
