"""Records the Python DLC's answers to the user scripts of tests/fixtures/python/ (custom inference
code, issue 13) into tests/fixtures/python/goldens.json, for tests/python_handlers.rs.

Each case is MiniLM's 2-label classifier (models/minilm-l6-cls) with the case's `code/` folder,
served by the real toolkit stack of the peer kit (/work/shared/peer: sagemaker-huggingface-
inference-toolkit 2.6.0, MMS 1.1.11, transformers 4.51.3), which installs `code/requirements.txt`
and imports `code/inference.py` as the DLC does. Every answer is recorded: status, Content-Type,
the headers the script sets, and the body.

    python3 models/make_python_hooks_goldens.py [--peer-kit /work/shared/peer] [--port 8391]

The requirements case installs tests/fixtures/python/make_wheel.py's package into the peer's venv
from a local folder (no network); it is uninstalled afterwards.
"""

import argparse
import base64
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "python")
MODEL = os.path.join(REPO, "models", "minilm-l6-cls")
JSON_TYPE = {"Content-Type": "application/json"}

# case -> requests (headers, body); the same requests replay against our server.
CASES = {
    "passthrough": [
        (JSON_TYPE, '{"inputs": "I love this!"}'),
        (JSON_TYPE, '{"inputs": ["I love this!", "This is terrible."]}'),
        (JSON_TYPE, '{"inputs": "I love this!", "parameters": {"top_k": 2}}'),
    ],
    "context": [
        (
            {**JSON_TYPE, "X-Amzn-SageMaker-Custom-Attributes": "trace=on"},
            '{"inputs": "I love this!"}',
        ),
    ],
    "transform": [
        ({**JSON_TYPE, "Accept": "application/json"}, '{"inputs": ["good", "bad"]}'),
        (JSON_TYPE, '{"inputs": "fine"}'),
    ],
    "requirements": [
        (JSON_TYPE, '{"inputs": "I love this!"}'),
    ],
    "raises": [
        ({"Content-Type": "text/plain"}, "I love this!"),
        (JSON_TYPE, '{"inputs": "no text key"}'),
        (JSON_TYPE, '{"text": "I love this!"}'),
    ],
    "postprocess": [
        (JSON_TYPE, '{"inputs": ["I love this!", "This is terrible."]}'),
        (JSON_TYPE, '{"inputs": "I love this!", "parameters": {"top_k": 2}}'),
    ],
    "csv_output": [
        ({**JSON_TYPE, "Accept": "text/csv"}, '{"inputs": ["I love this!", "bad", "fine"]}'),
        (JSON_TYPE, '{"inputs": "I love this!"}'),
    ],
    "custom_content_type": [
        ({"Content-Type": "application/x-text-lines"}, "I love this!\nThis is terrible.\n\nfine\n"),
        ({"Content-Type": "application/x-text-lines", "Accept": "text/csv"}, "one\ntwo\n"),
        ({"Content-Type": "application/xml"}, "<inputs/>"),
    ],
    "model_fn": [
        (JSON_TYPE, '{"inputs": "I love this!"}'),
        (JSON_TYPE, '{"inputs": ["I love this!", "bad"], "parameters": {"top_k": 1}}'),
    ],
    "returns": [
        (JSON_TYPE, '{"kind": "object"}'),
        (JSON_TYPE, '{"kind": "bytes"}'),
        (JSON_TYPE, '{"kind": "none"}'),
        (JSON_TYPE, '{"kind": "unserializable"}'),
    ],
}

# Response headers worth comparing (the rest are MMS's or ours: request ids, dates).
KEPT_HEADERS = ("content-type", "x-handler")


def assemble(case, root):
    """MiniLM's files (symlinked) plus the case's code/ folder (copied)."""
    model = os.path.join(root, case)
    os.makedirs(model)
    for name in os.listdir(MODEL):
        os.symlink(os.path.realpath(os.path.join(MODEL, name)), os.path.join(model, name))
    shutil.copytree(os.path.join(FIXTURES, case, "code"), os.path.join(model, "code"))
    return model


def send(port, headers, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/invocations", body=body.encode("utf-8"), headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    kept = {k.lower(): v for k, v in response.getheaders() if k.lower() in KEPT_HEADERS}
    try:
        text, encoding = data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(data).decode(), "base64"
    return {"status": response.status, "headers": kept, "body": text, "body_encoding": encoding}


def wait_for_free_mms(limit_s=1800):
    """The toolkit runs one MMS per machine: wait while another session's peer is up."""
    deadline = time.time() + limit_s
    while subprocess.run(["pgrep", "-f", "com.amazonaws.ml.mms.ModelServer"], capture_output=True).returncode == 0:
        if time.time() > deadline:
            sys.exit("another multi-model-server kept running")
        time.sleep(5)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--peer-kit", default="/work/shared/peer")
    parser.add_argument("--port", type=int, default=8391)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    out_path = os.path.join(FIXTURES, "goldens.json")
    goldens = {"about": __doc__.strip().splitlines()[0], "cases": {}}
    if os.path.exists(out_path):
        goldens = json.load(open(out_path))
    root = tempfile.mkdtemp(prefix="python-hooks-")
    wheels = os.path.join(root, "wheels")
    subprocess.run([sys.executable, os.path.join(FIXTURES, "make_wheel.py"), wheels], check=True)
    env = dict(os.environ, HF_SERVER_TEST_WHEELS=wheels, SAGEMAKER_MODEL_SERVER_WORKERS="1")
    peer_python = os.path.expanduser("~/.cache/dlc-peer/venv/bin/python")
    try:
        for case in args.cases:
            model = assemble(case, root)
            wait_for_free_mms()
            start = [os.path.join(args.peer_kit, "start-peer.sh"), model, "text-classification", str(args.port)]
            subprocess.run(start, check=True, env=env, stdout=subprocess.DEVNULL)
            try:
                answers = [
                    {"request": {"headers": headers, "body": body}, "response": send(args.port, headers, body)}
                    for headers, body in CASES[case]
                ]
            finally:
                subprocess.run([os.path.join(args.peer_kit, "stop-peer.sh"), str(args.port)], env=env)
            goldens["cases"][case] = answers
            print(case, [a["response"]["status"] for a in answers], file=sys.stderr)
    finally:
        subprocess.run([peer_python, "-m", "pip", "uninstall", "-y", "-q", "hfserver-test-greeting"])
        shutil.rmtree(root, ignore_errors=True)
    with open(out_path, "w") as f:
        json.dump(goldens, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
