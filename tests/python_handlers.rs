//! Feature `python`: user scripts (`code/inference.py`) run as on the DLC. Each script of
//! tests/fixtures/python/ is served around the real MiniLM classifier by the real binary, and
//! its answers must be the Python DLC's (tests/fixtures/python/goldens.json, recorded from the
//! toolkit stack by models/make_python_hooks_goldens.py): the same status and headers, the same
//! bytes, or for JSON the same bytes but for float digits and the same JSON with floats within
//! 1e-4. Then what the DLC cannot be compared on: deadlines, start-up failures, multi-model.
//!
//! `cargo test --features python --test python_handlers`
#![cfg(feature = "python")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};

use common::{assert_close, minilm_cls, repo_path, Response, Server, TOLERANCE};

/// A model folder: MiniLM's files (symlinked) and the case's `code/` (copied), or `script` as
/// `code/inference.py` when given.
fn model_with(case: &str, script: Option<&str>) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sagemaker-hf-python-{}-{case}-{}",
        std::process::id(),
        uuid_like()
    ));
    let code = dir.join("code");
    std::fs::create_dir_all(&code).unwrap();
    for entry in std::fs::read_dir(minilm_cls()).unwrap() {
        let entry = entry.unwrap();
        let target = entry.path().canonicalize().unwrap();
        std::os::unix::fs::symlink(target, dir.join(entry.file_name())).unwrap();
    }
    match script {
        Some(text) => std::fs::write(code.join("inference.py"), text).unwrap(),
        None => {
            let fixture = repo_path(&format!("tests/fixtures/python/{case}/code"));
            for entry in std::fs::read_dir(fixture).unwrap() {
                let entry = entry.unwrap();
                std::fs::copy(entry.path(), code.join(entry.file_name())).unwrap();
            }
        }
    }
    dir
}

fn uuid_like() -> u128 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A throw-away virtual environment of the interpreter the server embeds, with the test
/// package's wheel beside it: where `code/requirements.txt` installs, so the tests never touch
/// the machine's Python.
fn venv_and_wheels() -> &'static (PathBuf, PathBuf) {
    static DIRS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DIRS.get_or_init(|| {
        let root =
            std::env::temp_dir().join(format!("sagemaker-hf-python-venv-{}", std::process::id()));
        let venv = root.join("venv");
        let wheels = root.join("wheels");
        let run = |args: &[&str]| {
            let out = Command::new("python3")
                .args(args)
                .output()
                .expect("python3");
            assert!(
                out.status.success(),
                "python3 {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        // With its own pip (Debian's python3 has none outside a venv).
        run(&["-m", "venv", venv.to_str().unwrap()]);
        let maker = repo_path("tests/fixtures/python/make_wheel.py");
        run(&[maker.to_str().unwrap(), wheels.to_str().unwrap()]);
        (venv, wheels)
    })
}

fn start(dir: &Path, env: &[(&str, &str)]) -> Server {
    let mut env = env.to_vec();
    env.push(("HF_TASK", "text-classification"));
    Server::start(dir, &env)
}

fn golden_case(case: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo_path("tests/fixtures/python/goldens.json")).unwrap();
    let goldens: Value = serde_json::from_str(&text).unwrap();
    goldens["cases"][case]
        .as_array()
        .unwrap_or_else(|| panic!("no golden for {case}: run models/make_python_hooks_goldens.py"))
        .clone()
}

/// The text with every number outside JSON strings replaced by `#`, and those numbers: what
/// the bytes must share when only float digits may differ.
fn skeleton(text: &str) -> (String, Vec<f64>) {
    let mut out = String::new();
    let mut numbers = Vec::new();
    let mut number = String::new();
    let (mut in_string, mut escaped) = (false, false);
    fn end_number(number: &mut String, numbers: &mut Vec<f64>) {
        if !number.is_empty() {
            numbers.push(number.parse().unwrap_or(f64::NAN));
            number.clear();
        }
    }
    for c in text.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        let numeric = c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-');
        if numeric && (!number.is_empty() || c.is_ascii_digit() || c == '-') {
            if number.is_empty() {
                out.push('#');
            }
            number.push(c);
            continue;
        }
        end_number(&mut number, &mut numbers);
        if c == '"' {
            in_string = true;
        }
        out.push(c);
    }
    end_number(&mut number, &mut numbers);
    (out, numbers)
}

fn assert_like_dlc(case: &str, index: usize, got: &Response, want: &Value) {
    let context = format!("{case} request {index}");
    let want_body = match want["body_encoding"].as_str() {
        Some("base64") => decode_base64(want["body"].as_str().unwrap()),
        _ => want["body"].as_str().unwrap().as_bytes().to_vec(),
    };
    assert_eq!(
        got.status,
        want["status"].as_u64().unwrap() as u16,
        "{context}: {}",
        String::from_utf8_lossy(&got.body)
    );
    for (name, value) in want["headers"].as_object().unwrap() {
        assert_eq!(got.header(name), value.as_str(), "{context}: header {name}");
    }
    if got.body == want_body {
        return;
    }
    // Only float digits may differ: the same bytes around numbers within the tolerance (for
    // JSON, also the same values).
    let (got_text, want_text) = (got.text(), String::from_utf8(want_body).unwrap());
    let ((got_shape, got_numbers), (want_shape, want_numbers)) =
        (skeleton(&got_text), skeleton(&want_text));
    assert_eq!(
        got_shape, want_shape,
        "{context}: bytes\n got {got_text}\nwant {want_text}"
    );
    for (g, w) in got_numbers.iter().zip(&want_numbers) {
        assert!(
            (g - w).abs() <= TOLERANCE,
            "{context}: {g} vs {w}\n got {got_text}"
        );
    }
    if let (Ok(got_json), Ok(want_json)) = (
        serde_json::from_str::<Value>(&got_text),
        serde_json::from_str::<Value>(&want_text),
    ) {
        assert_close(&got_json, &want_json, TOLERANCE, &context);
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        bits = (bits << 6) | v;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}

/// Serves the case's script and replays the DLC's requests; every answer must be the DLC's.
fn replay(case: &str, env: &[(&str, &str)]) -> Server {
    let dir = model_with(case, None);
    let server = start(&dir, env);
    for (index, record) in golden_case(case).iter().enumerate() {
        let headers: Vec<(String, String)> = record["request"]["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let body = record["request"]["body"].as_str().unwrap();
        let got = server.request("POST", "/invocations", &headers, body.as_bytes());
        assert_like_dlc(case, index, &got, &record["response"]);
    }
    server
}

#[test]
fn pass_through_input_fn_and_output_fn() {
    replay("passthrough", &[]);
}

#[test]
fn every_hook_takes_the_context_argument() {
    replay("context", &[]);
}

#[test]
fn transform_fn_replaces_the_other_hooks() {
    replay("transform", &[]);
}

#[test]
fn requirements_txt_is_installed_at_start_up() {
    let (venv, wheels) = venv_and_wheels();
    replay(
        "requirements",
        &[
            ("VIRTUAL_ENV", venv.to_str().unwrap()),
            ("HF_SERVER_TEST_WHEELS", wheels.to_str().unwrap()),
        ],
    );
}

#[test]
fn hooks_that_raise_answer_400_and_the_worker_survives() {
    let server = replay("raises", &[]);
    // Still serving after the failures.
    let r = server.invoke_json(r#"{"text": "I love this!"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn predict_fn_post_processes_the_native_pipeline() {
    replay("postprocess", &[]);
}

#[test]
fn output_fn_answers_csv() {
    replay("csv_output", &[]);
}

#[test]
fn input_fn_decodes_a_content_type_of_its_own() {
    replay("custom_content_type", &[]);
}

#[test]
fn model_fn_builds_a_native_pipeline() {
    replay("model_fn", &[]);
}

#[test]
fn what_hooks_return_is_sent_as_mms_sends_it() {
    replay("returns", &[]);
}

/// A hook past the request deadline answers 504 and keeps its thread until it returns; a pool
/// whose every thread is so held answers 503; then it serves again.
#[test]
fn a_hook_past_the_deadline_is_a_504_then_a_full_pool_a_503() {
    let dir = model_with("slow", None);
    let server = start(
        &dir,
        &[
            ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "1"),
            ("SERVER_PYTHON_THREADS", "1"),
        ],
    );
    let late = server.invoke_json(r#"{"sleep": 4}"#);
    assert!(late
        .envelope(504)
        .contains("SAGEMAKER_MODEL_SERVER_TIMEOUT"));
    let busy = server.invoke_json(r#"{"sleep": 0}"#);
    assert!(
        busy.envelope(503).contains("SERVER_PYTHON_THREADS"),
        "{}",
        busy.text()
    );
    std::thread::sleep(Duration::from_secs(4));
    let r = server.invoke_json(r#"{"sleep": 0}"#);
    assert_eq!((r.status, r.json()), (200, json!({"slept": 0})));
}

fn start_up_error(dir: &Path, env: &[(&str, &str)]) -> String {
    let mut env = env.to_vec();
    env.push(("HF_TASK", "text-classification"));
    let (code, stderr) =
        Server::spawn(dir.to_str().unwrap(), &env).wait_exit(Duration::from_secs(120));
    assert_eq!(code, Some(1), "{stderr}");
    stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("an `error:` line in {stderr}"))
        .to_string()
}

/// What the DLC retries on every request fails the start-up here, naming the script and why.
#[test]
fn failing_model_fn_requirements_or_hook_sets_are_start_up_errors() {
    let dir = model_with(
        "failing-model-fn",
        Some("def model_fn(model_dir):\n    raise RuntimeError('no weights here')\n"),
    );
    let line = start_up_error(&dir, &[]);
    assert!(
        line.contains("code/inference.py") && line.contains("RuntimeError: no weights here"),
        "{line}"
    );

    let dir = model_with(
        "mixed-hooks",
        Some("def transform_fn(model, data, content_type, accept):\n    pass\n\ndef input_fn(data, content_type):\n    pass\n"),
    );
    let line = start_up_error(&dir, &[]);
    assert!(
        line.contains("Cannot use transform_fn implementation in conjunction with input_fn"),
        "{line}"
    );

    let dir = model_with("bad-signature", Some("def input_fn(data):\n    pass\n"));
    let line = start_up_error(&dir, &[]);
    assert!(
        line.contains("input_fn definition takes 2 or 3 arguments but 1 were given"),
        "{line}"
    );

    let dir = model_with(
        "missing-package",
        Some("def output_fn(prediction, accept):\n    return 'x'\n"),
    );
    let (venv, wheels) = venv_and_wheels();
    std::fs::write(
        dir.join("code/requirements.txt"),
        "--no-index\n--find-links ${HF_SERVER_TEST_WHEELS}\nno-such-package-for-this-test==1.0\n",
    )
    .unwrap();
    let line = start_up_error(
        &dir,
        &[
            ("VIRTUAL_ENV", venv.to_str().unwrap()),
            ("HF_SERVER_TEST_WHEELS", wheels.to_str().unwrap()),
        ],
    );
    assert!(
        line.contains("requirements.txt") && line.contains("no-such-package-for-this-test"),
        "{line}"
    );
}

/// Two models of a multi-model endpoint, each with its own `inference.py`: each answers with
/// its own hooks (each script is its own module).
#[test]
fn each_model_of_a_multi_model_endpoint_runs_its_own_script() {
    let first = model_with(
        "mme-first",
        Some("def output_fn(prediction, accept):\n    return 'first'\n"),
    );
    let second = model_with(
        "mme-second",
        Some("def output_fn(prediction, accept):\n    return 'second'\n"),
    );
    let server = Server::start_multi_model(&[("HF_TASK", "text-classification")]);
    for (name, dir) in [("first", &first), ("second", &second)] {
        let r = server.load_model(name, dir);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for name in ["first", "second", "first"] {
        let r = server.request(
            "POST",
            &format!("/models/{name}/invoke"),
            &[("Content-Type", "application/json")],
            br#"{"inputs": "I love this!"}"#,
        );
        assert_eq!((r.status, r.text()), (200, name.to_string()));
    }
}

/// A `model_fn` that loads what our loader cannot read (no config.json, no weights of ours, no
/// HF_TASK): as on the DLC, no native pipeline is built, and the script serves the model; on a
/// multi-model endpoint too.
#[test]
fn model_fn_serves_a_folder_our_loader_cannot_read() {
    let dir = std::env::temp_dir().join(format!(
        "sagemaker-hf-python-{}-own-model-{}",
        std::process::id(),
        uuid_like()
    ));
    std::fs::create_dir_all(dir.join("code")).unwrap();
    std::fs::write(dir.join("scale.json"), r#"{"scale": 3}"#).unwrap();
    std::fs::write(
        dir.join("code/inference.py"),
        "import json, os\n\
         def model_fn(model_dir):\n    \
             with open(os.path.join(model_dir, 'scale.json')) as f:\n        \
                 return json.load(f)['scale']\n\
         def predict_fn(data, model):\n    \
             return {'length': len(data['inputs']) * model}\n",
    )
    .unwrap();
    let invoke = |server: &Server, path: &str| {
        let r = server.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            br#"{"inputs": "four"}"#,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let answer: Value = serde_json::from_str(&r.text()).unwrap();
        assert_eq!(answer, json!({"length": 12}));
    };
    let server = Server::start(&dir, &[]);
    invoke(&server, "/invocations");
    drop(server);

    let server = Server::start_multi_model(&[]);
    let r = server.load_model("own", &dir);
    assert_eq!(r.status, 200, "{}", r.text());
    invoke(&server, "/models/own/invoke");
}
