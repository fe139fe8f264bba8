"""One call of boto3's `sagemaker-runtime` client against a local server, for tests/http_boto3.rs.

    boto3_client.py PORT CALL_JSON

CALL_JSON: {"operation": "invoke_endpoint" | "invoke_endpoint_with_response_stream",
            "params": {...the operation's keyword arguments; Body as a string...}}

Prints one JSON object: the parsed response members (`ContentType`, `InvokedProductionVariant`,
`CustomAttributes` when present), the HTTP status, headers and `ResponseMetadata.RequestId`
(`request_id`), the body as hex (`body_hex`) or,
for the response stream, each event's `PayloadPart` bytes as hex (`parts_hex`) as botocore's
event-stream parser decoded them; a modelled error (`ModelError`, ...) as `error`, with its
fields; an exception event ending the stream as `stream_error` (botocore's EventStreamError).
"""

import json
import sys

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError


def main():
    port, call = sys.argv[1], json.loads(sys.argv[2])
    client = boto3.client(
        "sagemaker-runtime",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        # Any credentials: the local server does not check SigV4.
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(retries={"max_attempts": 1}, read_timeout=600),
    )
    out = {}
    try:
        response = getattr(client, call["operation"])(**call["params"])
    except ClientError as error:
        out["error"] = {
            "class": type(error).__name__,
            "is_model_error": isinstance(error, client.exceptions.ModelError),
            "code": error.response["Error"]["Code"],
            "message": error.response["Error"]["Message"],
            "status": error.response["ResponseMetadata"]["HTTPStatusCode"],
            "request_id": error.response["ResponseMetadata"].get("RequestId"),
        }
        for field in ("OriginalStatusCode", "OriginalMessage", "LogStreamArn"):
            if field in error.response:
                out["error"][field] = error.response[field]
        print(json.dumps(out))
        return
    metadata = response["ResponseMetadata"]
    out["status"] = metadata["HTTPStatusCode"]
    out["request_id"] = metadata.get("RequestId")
    out["headers"] = metadata["HTTPHeaders"]
    for member in ("ContentType", "InvokedProductionVariant", "CustomAttributes"):
        if member in response:
            out[member] = response[member]
    body = response["Body"]
    if call["operation"] == "invoke_endpoint":
        out["body_hex"] = body.read().hex()
    else:
        out["parts_hex"] = []
        try:
            for event in body:
                out["parts_hex"].append(event["PayloadPart"]["Bytes"].hex())
        except EventStreamError as error:
            out["stream_error"] = {
                "code": error.response["Error"]["Code"],
                "message": error.response["Error"]["Message"],
            }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
