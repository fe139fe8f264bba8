//! The image inputs of the vision pipelines, as the DLC takes them: a raw `image/*` body (the
//! toolkit's decoder opens it with Pillow), or JSON `inputs` holding a base64 string, a
//! `data:image/...;base64,` URL, or a list of them (`load_image` decodes each). URLs and server
//! paths, which `load_image` would fetch or open, are refused: an endpoint does not fetch what a
//! request names.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use serde_json::Value;

use super::params::json_type;
use crate::error::{cut, ServerError};
use crate::image::decode::decode_rgb;
use crate::image::resample::Rgb8;

/// Python's `base64.decodebytes`: padding optional, characters outside the alphabet skipped.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Python's `base64.b64decode` as `load_image` calls it: characters outside the alphabet
/// skipped, padding optional.
pub(super) fn decode_base64(payload: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let filtered: Vec<u8> = payload
        .bytes()
        .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/'))
        .collect();
    LENIENT.decode(&filtered)
}

/// The images of JSON `inputs`: `(is_list, images)`.
pub fn parse_images(inputs: Value, task: &str) -> Result<(bool, Vec<Rgb8>), ServerError> {
    match inputs {
        Value::String(text) => Ok((false, vec![image_of_string(&text)?])),
        Value::Array(items) if !items.is_empty() => {
            let images = items
                .into_iter()
                .map(|item| match item {
                    Value::String(text) => image_of_string(&text),
                    other => Err(bad_inputs(
                        task,
                        &format!("a list holding {}", json_type(&other)),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((true, images))
        }
        Value::Array(_) => Err(bad_inputs(task, "an empty list")),
        other => Err(bad_inputs(task, json_type(&other))),
    }
}

fn bad_inputs(task: &str, got: &str) -> ServerError {
    ServerError::bad_request(format!(
        "{task} takes `inputs` as a base64-encoded image (or a data:image/...;base64, URL), or a list of them, or the image itself as the body with Content-Type image/png, image/jpeg, ...; got {got}"
    ))
}

fn image_of_string(text: &str) -> Result<Rgb8, ServerError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
        return Err(ServerError::bad_request(format!(
            "image URLs are not fetched by this server ({}): send the image itself, base64-encoded in `inputs` or as the request body",
            cut(trimmed, 80)
        )));
    }
    let payload = if text.starts_with("data:image/") {
        // `load_image` keeps what follows the first comma.
        text.split(',').nth(1).unwrap_or("")
    } else {
        text
    };
    let bytes = decode_base64(payload).map_err(|e| incorrect_source(text, e))?;
    decode_rgb(&bytes).map_err(|e| incorrect_source(text, e))
}

/// `load_image`'s message (with the input cut short).
fn incorrect_source(text: &str, error: impl std::fmt::Display) -> ServerError {
    ServerError::bad_request(format!(
        "Incorrect image source. Must be a base64 encoded string (or a data URL) of an image. Got {}. Failed with {}",
        cut(text, 60),
        cut(&error.to_string(), 300)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn non_images_and_urls_are_refused() {
        for inputs in [
            json!(1),
            json!([]),
            json!(["aGVsbG8="]),
            json!("https://x/y.png"),
            json!(""),
        ] {
            assert!(
                matches!(
                    parse_images(inputs.clone(), "image-classification"),
                    Err(ServerError::BadRequest(_))
                ),
                "{inputs}"
            );
        }
    }
}
