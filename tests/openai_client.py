"""One call of the official `openai` Python client against a local server, for tests/http_openai.rs.

    openai_client.py PORT CALL_JSON

CALL_JSON: {"operation": "chat" | "completion" | "models" | "post", "params": {...}}
  chat / completion: client.chat.completions.create(**params) / client.completions.create(**params);
    with "stream": true, every chunk is collected.
  models: client.models.list().
  post: {"path": "/generate", "body": {...}}: a plain JSON POST (urllib), answered with the status
    and the body's text (TGI's routes, other paths).

Prints one JSON object: `response` (the client's parsed object, model_dump()), or `chunks` (a
list of them), or `error` ({"class", "status", "body"}) when the client raised an APIStatusError.
"""

import json
import sys

import urllib.error
import urllib.request

import openai


def main():
    port, call = sys.argv[1], json.loads(sys.argv[2])
    base = f"http://127.0.0.1:{port}"
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="local", max_retries=0, timeout=600)
    operation, params = call["operation"], call.get("params", {})
    out = {}
    try:
        if operation == "models":
            out["response"] = client.models.list().model_dump()
        elif operation == "post":
            request = urllib.request.Request(
                base + params["path"],
                data=json.dumps(params["body"]).encode(),
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=600) as answer:
                    out["status"], out["text"] = answer.status, answer.read().decode()
            except urllib.error.HTTPError as error:
                out["status"], out["text"] = error.code, error.read().decode()
        else:
            create = client.chat.completions.create if operation == "chat" else client.completions.create
            answer = create(**params)
            if params.get("stream"):
                out["chunks"] = [chunk.model_dump() for chunk in answer]
            else:
                out["response"] = answer.model_dump()
    except openai.APIStatusError as error:
        out["error"] = {"class": type(error).__name__, "status": error.status_code, "body": error.body}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
