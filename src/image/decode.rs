//! Image bytes to 8-bit RGB, as the DLC sees them: `PIL.Image.open(...)`, `exif_transpose`, then
//! `.convert("RGB")` (the toolkit's decoder for `image/*` bodies and `load_image` for base64
//! strings both end there). JPEG pixels are libjpeg-turbo's, as Pillow's ([`super::jpeg`]);
//! other formats are the `image` crate's. Decoding is bounded: at most Pillow's
//! `MAX_IMAGE_PIXELS` pixels and a fixed allocation budget, checked from the header before any
//! pixel is decoded, so a "decompression bomb" is a 400 and not an out-of-memory.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use super::resample::Rgb8;
use crate::error::{cut, ServerError};

/// Pillow's `Image.MAX_IMAGE_PIXELS` (`1024 * 1024 * 1024 // 4 // 3`): above it Pillow warns
/// (and refuses above twice it); we refuse.
pub const MAX_PIXELS: u64 = 1024 * 1024 * 1024 / 4 / 3;

/// What the decoder may allocate for one image (RGBA16 of `MAX_PIXELS` fits).
const MAX_ALLOC: u64 = 1 << 30;

fn bad_image(message: impl std::fmt::Display) -> ServerError {
    ServerError::bad_request(format!(
        "cannot identify or decode the image: {}",
        cut(&message.to_string(), 200)
    ))
}

/// Decodes PNG, JPEG, GIF (first frame), BMP, WebP or TIFF bytes (the format is read from the
/// bytes, as Pillow does, whatever the `Content-Type` said) to RGB with the EXIF orientation
/// applied.
pub fn decode_rgb(bytes: &[u8]) -> Result<Rgb8, ServerError> {
    if bytes.is_empty() {
        return Err(ServerError::bad_request(
            "the image is empty: send the bytes of a PNG, JPEG, GIF, BMP, WebP or TIFF image",
        ));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(bad_image)?;
    let Some(format) = reader.format() else {
        return Err(bad_image(
            "the bytes are not a PNG, JPEG, GIF, BMP, WebP or TIFF image",
        ));
    };
    let mut reader = reader;
    let mut limits = Limits::default();
    limits.max_image_width = Some(65_535);
    limits.max_image_height = Some(65_535);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(bad_image)?;
    let (width, height) = decoder.dimensions();
    let pixels = width as u64 * height as u64;
    if pixels > MAX_PIXELS {
        return Err(ServerError::bad_request(format!(
            "the image is {width} x {height} = {pixels} pixels, more than the {MAX_PIXELS} allowed (Pillow's decompression-bomb limit)"
        )));
    }
    if pixels == 0 {
        return Err(bad_image("the image has no pixels"));
    }
    let orientation = decoder.orientation().map_err(bad_image)?;
    let mut image = match format {
        ImageFormat::Jpeg => {
            let jpeg = super::jpeg::decode(bytes).map_err(bad_image)?;
            let data = match jpeg.channels {
                1 => grey_of(&jpeg.data, 1, |v| v),
                _ => jpeg.data,
            };
            let buffer = RgbImage::from_raw(jpeg.width as u32, jpeg.height as u32, data)
                .ok_or_else(|| bad_image("the JPEG decoded to fewer pixels than its size"))?;
            DynamicImage::ImageRgb8(buffer)
        }
        _ => DynamicImage::from_decoder(decoder).map_err(bad_image)?,
    };
    image.apply_orientation(orientation);
    to_rgb_as_pillow(image)
}

/// `.convert("RGB")` with Pillow's rules: alpha dropped (not composited), grey replicated,
/// 16-bit colour channels cut to their high byte (Pillow reads 16-bit RGB PNGs as 8-bit
/// `RGB;16B`), 16-bit grey clipped at 255 (Pillow's `I;16` → `L` conversion).
fn to_rgb_as_pillow(image: DynamicImage) -> Result<Rgb8, ServerError> {
    let (width, height) = (image.width() as usize, image.height() as usize);
    let data: Vec<u8> = match image {
        DynamicImage::ImageRgb8(buffer) => buffer.into_raw(),
        DynamicImage::ImageRgba8(buffer) => rgb_of(buffer.as_raw(), 4, |v| v),
        DynamicImage::ImageLuma8(buffer) => grey_of(buffer.as_raw(), 1, |v| v),
        DynamicImage::ImageLumaA8(buffer) => grey_of(buffer.as_raw(), 2, |v| v),
        DynamicImage::ImageRgb16(buffer) => rgb_of(buffer.as_raw(), 3, |v| (v >> 8) as u8),
        DynamicImage::ImageRgba16(buffer) => rgb_of(buffer.as_raw(), 4, |v| (v >> 8) as u8),
        DynamicImage::ImageLuma16(buffer) => grey_of(buffer.as_raw(), 1, |v| v.min(255) as u8),
        DynamicImage::ImageLumaA16(buffer) => grey_of(buffer.as_raw(), 2, |v| (v >> 8) as u8),
        other => other.to_rgb8().into_raw(),
    };
    Ok(Rgb8 {
        width,
        height,
        data,
    })
}

fn rgb_of<T: Copy>(raw: &[T], stride: usize, to_u8: impl Fn(T) -> u8) -> Vec<u8> {
    raw.chunks_exact(stride)
        .flat_map(|px| [to_u8(px[0]), to_u8(px[1]), to_u8(px[2])])
        .collect()
}

fn grey_of<T: Copy>(raw: &[T], stride: usize, to_u8: impl Fn(T) -> u8) -> Vec<u8> {
    raw.chunks_exact(stride)
        .flat_map(|px| {
            let v = to_u8(px[0]);
            [v, v, v]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_bad_requests() {
        for bytes in [
            &b""[..],
            b"hello, not an image",
            &[0x89, b'P', b'N', b'G', 13, 10, 26, 10, 0, 0],
        ] {
            match decode_rgb(bytes) {
                Err(ServerError::BadRequest(message)) => assert!(!message.is_empty()),
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
    }

    /// A CMYK JPEG (Adobe's inverted samples, as Pillow writes and reads them) gives exactly
    /// Pillow's `convert("RGB")` of it (models/make_vision_fixtures.py saved both).
    #[test]
    fn cmyk_jpegs_decode_to_pillows_rgb() {
        let fixture = |name: &str| {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            std::fs::read(dir.join("models/fixtures/images").join(name)).unwrap()
        };
        let ours = decode_rgb(&fixture("cmyk-40x30.jpg")).unwrap();
        let pillow = decode_rgb(&fixture("cmyk-40x30.pillow-rgb.png")).unwrap();
        assert_eq!((ours.width, ours.height), (40, 30));
        assert_eq!((pillow.width, pillow.height), (40, 30));
        let differing = ours.data.iter().zip(&pillow.data).filter(|(a, b)| a != b);
        assert_eq!(differing.count(), 0);
    }
}
