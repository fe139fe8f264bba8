//! AWS event-stream framing (`application/vnd.amazon.eventstream`), the body of SageMaker's
//! `InvokeEndpointWithResponseStream`, as botocore's `eventstream.py` reads it. One message:
//!
//! ```text
//! total length (u32 BE) | headers length (u32 BE) | CRC32 of those 8 bytes
//! headers: name length (u8) | name | type 7 (string) | value length (u16 BE) | value
//! payload
//! CRC32 of everything before it
//! ```
//!
//! We only write string headers, which is all the runtime API's events carry.

use serde_json::json;

/// Header value type 7: a UTF-8 string with a 16-bit length.
const STRING_HEADER: u8 = 7;
const PRELUDE_LENGTH: usize = 12;
const CRC_LENGTH: usize = 4;

/// One event-stream message with `headers` (name, string value) and `payload`.
pub fn message(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut encoded_headers = Vec::new();
    for (name, value) in headers {
        // (our header names and values are short constants and error messages: the caller
        // bounds messages, see `model_stream_error`)
        let name_length = u8::try_from(name.len()).expect("event header name under 256 bytes");
        let value_length = u16::try_from(value.len()).expect("event header value under 64 KiB");
        encoded_headers.push(name_length);
        encoded_headers.extend_from_slice(name.as_bytes());
        encoded_headers.push(STRING_HEADER);
        encoded_headers.extend_from_slice(&value_length.to_be_bytes());
        encoded_headers.extend_from_slice(value.as_bytes());
    }
    let total = PRELUDE_LENGTH + encoded_headers.len() + payload.len() + CRC_LENGTH;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&length_u32(total).to_be_bytes());
    out.extend_from_slice(&length_u32(encoded_headers.len()).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&encoded_headers);
    out.extend_from_slice(payload);
    let message_crc = crc32fast::hash(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    out
}

fn length_u32(length: usize) -> u32 {
    // (payloads are split into parts far below 4 GiB by the caller)
    u32::try_from(length).expect("event-stream message under 4 GiB")
}

/// A `PayloadPart` event: `bytes` are the part of the container's response it carries.
pub fn payload_part(bytes: &[u8]) -> Vec<u8> {
    message(
        &[
            (":event-type", "PayloadPart"),
            (":content-type", "application/octet-stream"),
            (":message-type", "event"),
        ],
        bytes,
    )
}

/// A `ModelStreamError` exception event (boto3 raises `EventStreamError` with this code and
/// `message`). `code` is SageMaker's `ErrorCode`: `ModelInvocationTimeExceeded` or
/// `StreamBroken`.
pub fn model_stream_error(code: &str, message_text: &str) -> Vec<u8> {
    let payload = json!({"Message": message_text, "ErrorCode": code}).to_string();
    message(
        &[
            (":exception-type", "ModelStreamError"),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        payload.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Messages from botocore's own decoder tests (tests/unit/test_eventstream.py: EMPTY_MESSAGE,
    /// PAYLOAD_NO_HEADERS, PAYLOAD_ONE_STR_HEADER and the initial-response event).
    #[test]
    fn encodes_botocores_test_messages() {
        assert_eq!(
            message(&[], b""),
            b"\x00\x00\x00\x10\x00\x00\x00\x00\x05\xc2H\xeb}\x98\xc8\xff"
        );
        assert_eq!(
            message(&[], b"{'foo':'bar'}"),
            b"\x00\x00\x00\x1d\x00\x00\x00\x00\xfdR\x8cZ{'foo':'bar'}\xc3e96"
        );
        assert_eq!(
            message(&[("content-type", "application/json")], b"{'foo':'bar'}"),
            b"\x00\x00\x00=\x00\x00\x00 \x07\xfd\x83\x96\x0ccontent-type\x07\x00\x10application/json{'foo':'bar'}\x8d\x9c\x08\xb1"
        );
        assert_eq!(
            message(
                &[
                    (":message-type", "event"),
                    (":event-type", "initial-response"),
                    (":content-type", "text/json"),
                ],
                br#"{"InitialResponse": "sometext"}"#
            ),
            [
                &b"\x00\x00\x00~\x00\x00\x00O\xc5\xa3\xdd\xc6\r:message-type\x07\x00"[..],
                b"\x05event\x0b:event-type\x07\x00\x10initial-response\r:content-type",
                b"\x07\x00\ttext/json{\"InitialResponse\": \"sometext\"}\xf6\x98$\x83",
            ]
            .concat()
        );
    }

    /// Our two events: bytes assembled by hand (Python's `struct` and `binascii.crc32`) and
    /// decoded by botocore's `EventStreamBuffer` to these headers and payloads.
    #[test]
    fn payload_parts_and_stream_errors_decode_in_botocore() {
        assert_eq!(
            payload_part(b"data:{\"index\":0}\n\n"),
            hex(
                "0000007b00000059f997e7e70b3a6576656e742d7479706507000b5061796c6f61645061727\
                 40d3a636f6e74656e742d747970650700186170706c69636174696f6e2f6f637465742d737\
                 47265616d0d3a6d6573736167652d747970650700056576656e74646174613a7b22696e646\
                 578223a307d0a0a9c5fd686"
            )
        );
        assert_eq!(
            model_stream_error("StreamBroken", "boom"),
            hex(
                "0000009b0000005e4f27b59b0f3a657863657074696f6e2d747970650700104d6f64656c5\
                 3747265616d4572726f720d3a636f6e74656e742d747970650700106170706c69636174696\
                 f6e2f6a736f6e0d3a6d6573736167652d74797065070009657863657074696f6e7b224d657\
                 373616765223a22626f6f6d222c224572726f72436f6465223a2253747265616d42726f6b6\
                 56e227def94b034"
            )
        );
    }
}
