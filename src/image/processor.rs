//! The image processor of `preprocessor_config.json`, as `transformers` 4.51's slow (Pillow)
//! processors compute `pixel_values`: resize (Pillow, the configured filter), center crop,
//! rescale and normalize in numpy's dtypes. The pipelines load the slow processors unless the
//! saved one is a `...Fast` class; we compute as the slow ones do in every case.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;

use super::decode::MAX_PIXELS;
use super::resample::{resize, Filter, Rgb8};
use super::Pixels;
use crate::error::ServerError;

/// How the processor class resizes (and crops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// ViT, DeiT, SigLIP: `size` is `{height, width}` (DeiT also crops).
    Fixed,
    /// CLIP, BiT (DINOv2's): the shortest edge to `size.shortest_edge`, then crop.
    ShortestEdge,
    /// ConvNeXt (and ResNet's): below 384, the shortest edge to `shortest_edge / crop_pct`, then a
    /// square crop of `shortest_edge`; from 384, a warp to the square.
    ConvNext,
    /// DETR: the shortest edge to `shortest_edge` unless the longest would pass `longest_edge`
    /// (aspect kept, DETR's rounding), or within `max_height` x `max_width`; no crop.
    Detr,
    /// YOLOS: DETR's, but `{shortest_edge, longest_edge}` sizes floored to multiples of 16.
    Yolos,
}

impl Kind {
    /// DETR's sizes, normalisation and padding rules (DETR, YOLOS).
    fn is_detr(self) -> bool {
        matches!(self, Kind::Detr | Kind::Yolos)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Size {
    Exact {
        height: usize,
        width: usize,
    },
    ShortestEdge(usize),
    /// DETR's `{shortest_edge, longest_edge}`.
    ShortestLongest {
        shortest: usize,
        longest: usize,
    },
    /// DETR's `{max_height, max_width}`.
    MaxHeightWidth {
        height: usize,
        width: usize,
    },
}

#[derive(Debug, Clone)]
pub struct ImageProcessor {
    pub class: String,
    kind: Kind,
    do_resize: bool,
    size: Size,
    filter: Filter,
    crop: Option<(usize, usize)>,
    crop_pct: f64,
    do_rescale: bool,
    rescale_factor: f64,
    normalize: Option<([f32; 3], [f32; 3])>,
}

#[derive(Deserialize)]
struct Raw {
    image_processor_type: Option<String>,
    feature_extractor_type: Option<String>,
    do_resize: Option<bool>,
    size: Option<Value>,
    resample: Option<u64>,
    do_center_crop: Option<bool>,
    crop_size: Option<Value>,
    crop_pct: Option<f64>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<Value>,
    image_std: Option<Value>,
    /// DETR: pad every image to this size (a pixel mask then marks the padding).
    pad_size: Option<Value>,
    do_pad: Option<bool>,
}

/// The classes whose computation this module reproduces, with the kind and class defaults.
const CLASSES: &[(&str, Kind)] = &[
    ("ViT", Kind::Fixed),
    ("DeiT", Kind::Fixed),
    ("Siglip", Kind::Fixed),
    ("Blip", Kind::Fixed),
    ("CLIP", Kind::ShortestEdge),
    ("Bit", Kind::ShortestEdge),
    ("ConvNext", Kind::ConvNext),
    ("Detr", Kind::Detr),
    ("Yolos", Kind::Yolos),
];

const IMAGENET_STANDARD: [f32; 3] = [0.5, 0.5, 0.5];
const IMAGENET_DEFAULT_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_DEFAULT_STD: [f32; 3] = [0.229, 0.224, 0.225];
const OPENAI_CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
// As transformers writes them (the same f32 values as the shorter spellings clippy suggests).
#[allow(clippy::excessive_precision)]
const OPENAI_CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// DetrImageProcessor's `size`: an int is the shortest edge (longest 1333), or a dict of
/// `{shortest_edge, longest_edge}`, `{max_height, max_width}` or `{height, width}`.
fn parse_detr_size(value: &Value) -> Result<Size> {
    let get = |key: &str| value.get(key).and_then(Value::as_u64).map(|v| v as usize);
    if let Some(n) = value.as_u64() {
        return Ok(Size::ShortestLongest {
            shortest: n as usize,
            longest: 1333,
        });
    }
    if let (Some(shortest), Some(longest)) = (get("shortest_edge"), get("longest_edge")) {
        return Ok(Size::ShortestLongest { shortest, longest });
    }
    if let (Some(height), Some(width)) = (get("max_height"), get("max_width")) {
        return Ok(Size::MaxHeightWidth { height, width });
    }
    if let (Some(height), Some(width)) = (get("height"), get("width")) {
        return Ok(Size::Exact { height, width });
    }
    bail!("DETR / YOLOS image processor size {value}: expected {{shortest_edge, longest_edge}}, {{max_height, max_width}} or {{height, width}}")
}

/// The size and resampling filter a class uses when `preprocessor_config.json` names none.
fn class_defaults(base: &str) -> (Size, Filter) {
    match base {
        "ViT" => (
            Size::Exact {
                height: 224,
                width: 224,
            },
            Filter::Bilinear,
        ),
        "DeiT" => (
            Size::Exact {
                height: 256,
                width: 256,
            },
            Filter::Bicubic,
        ),
        "Siglip" => (
            Size::Exact {
                height: 224,
                width: 224,
            },
            Filter::Bicubic,
        ),
        "Blip" => (
            Size::Exact {
                height: 384,
                width: 384,
            },
            Filter::Bicubic,
        ),
        "ConvNext" => (Size::ShortestEdge(384), Filter::Bilinear),
        "Detr" | "Yolos" => (
            Size::ShortestLongest {
                shortest: 800,
                longest: 1333,
            },
            Filter::Bilinear,
        ),
        _ => (Size::ShortestEdge(224), Filter::Bicubic),
    }
}

/// `get_size_dict`: an int is a square, or a shortest edge for the classes that resize by it.
fn parse_size(value: &Value, square: bool) -> Result<Size> {
    let get = |key: &str| value.get(key).and_then(Value::as_u64).map(|v| v as usize);
    if let Some(n) = value.as_u64() {
        let n = n as usize;
        return Ok(if square {
            Size::Exact {
                height: n,
                width: n,
            }
        } else {
            Size::ShortestEdge(n)
        });
    }
    if let (Some(height), Some(width)) = (get("height"), get("width")) {
        return Ok(Size::Exact { height, width });
    }
    if let Some(edge) = get("shortest_edge") {
        return Ok(Size::ShortestEdge(edge));
    }
    bail!("unsupported image size {value}: expected an int, {{height, width}} or {{shortest_edge}}")
}

fn triple(value: Option<&Value>, default: [f32; 3]) -> Result<[f32; 3]> {
    match value {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => {
            let v = n.as_f64().unwrap_or(0.0) as f32;
            Ok([v; 3])
        }
        Some(Value::Array(items)) if items.len() == 3 => {
            let mut out = [0f32; 3];
            for (slot, item) in out.iter_mut().zip(items) {
                *slot = item
                    .as_f64()
                    .context("image_mean / image_std hold numbers")? as f32;
            }
            Ok(out)
        }
        Some(other) => bail!("image_mean / image_std must be 3 numbers, got {other}"),
    }
}

impl ImageProcessor {
    pub fn from_json(json: Value) -> Result<Self> {
        let raw: Raw = serde_json::from_value(json).context("reading preprocessor_config.json")?;
        let class = raw
            .image_processor_type
            .or(raw.feature_extractor_type)
            .context("preprocessor_config.json names no image_processor_type")?;
        let base = class
            .trim_end_matches("Fast")
            .trim_end_matches("ImageProcessor")
            .trim_end_matches("FeatureExtractor");
        let Some(&(_, kind)) = CLASSES.iter().find(|(name, _)| *name == base) else {
            bail!(
                "image processor `{class}` is not supported; supported: {}",
                CLASSES
                    .iter()
                    .map(|(n, _)| format!("{n}ImageProcessor"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        let clip_like = matches!(base, "CLIP" | "Bit");
        let (default_size, default_filter) = class_defaults(base);
        let size = match &raw.size {
            Some(v) if !v.is_null() && kind.is_detr() => parse_detr_size(v)?,
            Some(v) if !v.is_null() => parse_size(v, kind == Kind::Fixed)?,
            _ => default_size,
        };
        let filter = match raw.resample {
            Some(v) => Filter::from_pil(v).with_context(|| format!("unknown resample {v}"))?,
            None => default_filter,
        };
        let crop_default = matches!(base, "DeiT" | "CLIP" | "Bit");
        let crop = if !matches!(kind, Kind::ConvNext)
            && !kind.is_detr()
            && raw.do_center_crop.unwrap_or(crop_default)
        {
            let crop_size = match &raw.crop_size {
                Some(v) if !v.is_null() => parse_size(v, true)?,
                _ if base == "DeiT" || clip_like => Size::Exact {
                    height: 224,
                    width: 224,
                },
                _ => bail!("do_center_crop is set but crop_size is missing"),
            };
            match crop_size {
                Size::Exact { height, width } => Some((height, width)),
                _ => bail!("crop_size must be {{height, width}} or an int"),
            }
        } else {
            None
        };
        let (mean, std) = if clip_like || base == "Blip" {
            (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        } else if kind.is_detr() {
            (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
        } else {
            (IMAGENET_STANDARD, IMAGENET_STANDARD)
        };
        let normalize = if raw.do_normalize.unwrap_or(true) {
            Some((
                triple(raw.image_mean.as_ref(), mean)?,
                triple(raw.image_std.as_ref(), std)?,
            ))
        } else {
            None
        };
        let pads_to_size =
            raw.do_pad.unwrap_or(true) && raw.pad_size.as_ref().is_some_and(|v| !v.is_null());
        if kind.is_detr() && pads_to_size {
            bail!("{class} with pad_size is not supported (the padded pixels are not modelled here): set pad_size to null");
        }
        if kind == Kind::ConvNext && !matches!(size, Size::ShortestEdge(_)) {
            bail!("ConvNextImageProcessor needs size {{shortest_edge}}");
        }
        Ok(ImageProcessor {
            class,
            kind,
            do_resize: raw.do_resize.unwrap_or(true),
            size,
            filter,
            crop,
            crop_pct: raw.crop_pct.unwrap_or(224.0 / 256.0),
            do_rescale: raw.do_rescale.unwrap_or(true),
            rescale_factor: raw.rescale_factor.unwrap_or(1.0 / 255.0),
            normalize,
        })
    }

    /// `pixel_values` of one RGB image. A resize to more than [`MAX_PIXELS`] (a 1 x 100000
    /// image whose short side goes to 224) is refused rather than allocated.
    pub fn process(&self, image: &Rgb8) -> Result<Pixels, ServerError> {
        let resize = |image: &Rgb8, width: usize, height: usize| {
            if (width as u64) * (height as u64) > MAX_PIXELS {
                return Err(ServerError::bad_request(format!(
                    "the {} x {} image would be resized to {width} x {height}, more than {MAX_PIXELS} pixels",
                    image.width, image.height
                )));
            }
            Ok(resize(image, width, height, self.filter))
        };
        let mut image = std::borrow::Cow::Borrowed(image);
        if self.do_resize {
            match (self.kind, self.size) {
                (Kind::ConvNext, Size::ShortestEdge(edge)) if edge < 384 => {
                    let resize_edge = (edge as f64 / self.crop_pct) as usize;
                    let (h, w) = shortest_edge_size(image.height, image.width, resize_edge);
                    let resized = resize(&image, w, h)?;
                    image = std::borrow::Cow::Owned(center_crop(&resized, edge, edge));
                }
                (Kind::ConvNext, Size::ShortestEdge(edge)) => {
                    image = std::borrow::Cow::Owned(resize(&image, edge, edge)?);
                }
                (Kind::Yolos, Size::ShortestLongest { shortest, longest }) => {
                    let (h, w) = yolos_size(image.height, image.width, shortest, longest);
                    if h == 0 || w == 0 {
                        return Err(smaller_than_a_patch(w, h));
                    }
                    image = std::borrow::Cow::Owned(resize(&image, w, h)?);
                }
                (_, Size::ShortestLongest { shortest, longest }) => {
                    let (h, w) = detr_size(image.height, image.width, shortest, longest);
                    image = std::borrow::Cow::Owned(resize(&image, w, h)?);
                }
                (_, Size::MaxHeightWidth { height, width }) => {
                    let scale = (height as f64 / image.height as f64)
                        .min(width as f64 / image.width as f64);
                    let h = (image.height as f64 * scale) as usize;
                    let w = (image.width as f64 * scale) as usize;
                    image = std::borrow::Cow::Owned(resize(&image, w, h)?);
                }
                (_, Size::ShortestEdge(edge)) => {
                    let (h, w) = shortest_edge_size(image.height, image.width, edge);
                    image = std::borrow::Cow::Owned(resize(&image, w, h)?);
                }
                (_, Size::Exact { height, width }) => {
                    image = std::borrow::Cow::Owned(resize(&image, width, height)?);
                }
            }
        }
        if let Some((height, width)) = self.crop {
            image = std::borrow::Cow::Owned(center_crop(&image, height, width));
        }
        // YOLOS cuts the image into 16 x 16 patches: a side shorter than one leaves none (the
        // DLC's PIL fails to resize to a zero size, or the model on an empty grid).
        if self.kind == Kind::Yolos && (image.height < 16 || image.width < 16) {
            return Err(smaller_than_a_patch(image.width, image.height));
        }
        Ok(self.to_pixels(&image))
    }

    /// Rescale (f64 product, stored as f32) and normalize (f32), channels first.
    fn to_pixels(&self, image: &Rgb8) -> Pixels {
        let plane = image.width * image.height;
        let mut data = vec![0f32; plane * 3];
        let mut table = [[0f32; 256]; 3];
        for (c, row) in table.iter_mut().enumerate() {
            for (v, slot) in row.iter_mut().enumerate() {
                let mut x = if self.do_rescale {
                    (v as f64 * self.rescale_factor) as f32
                } else {
                    v as f32
                };
                if let Some((mean, std)) = &self.normalize {
                    x = (x - mean[c]) / std[c];
                }
                *slot = x;
            }
        }
        for (i, px) in image.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                data[c * plane + i] = table[c][px[c] as usize];
            }
        }
        Pixels {
            channels: 3,
            height: image.height,
            width: image.width,
            data,
        }
    }
}

/// `get_resize_output_image_size(default_to_square=False)`: (height, width) with the short side
/// at `edge` and the long one `int(edge * long / short)`.
fn shortest_edge_size(height: usize, width: usize, edge: usize) -> (usize, usize) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    if short == edge {
        return (height, width);
    }
    let new_long = (edge as f64 * long as f64 / short as f64) as usize;
    if width <= height {
        (new_long, edge)
    } else {
        (edge, new_long)
    }
}

/// The 400 for an image that YOLOS's processing leaves without a whole patch.
fn smaller_than_a_patch(width: usize, height: usize) -> ServerError {
    ServerError::bad_request(format!(
        "the image would be processed to {width} x {height} pixels, smaller than YOLOS's 16-pixel patches (its sizes are multiples of 16)"
    ))
}

/// The short side `get_size_with_aspect_ratio` aims at, and the (unrounded) length it scales the
/// long side from: `shortest`, or less (Python's `round`, ties to even) when the long side would
/// pass `longest`.
fn short_side(height: usize, width: usize, shortest: usize, longest: usize) -> (usize, f64) {
    let (h, w) = (height as f64, width as f64);
    let (min_side, max_side) = (h.min(w), h.max(w));
    if max_side / min_side * shortest as f64 > longest as f64 {
        let raw = longest as f64 * min_side / max_side;
        return (raw.round_ties_even() as usize, raw);
    }
    (shortest, shortest as f64)
}

/// DETR's `get_size_with_aspect_ratio((height, width), shortest, longest)`: (height, width) with
/// the short side at [`short_side`]'s, the other side truncated.
fn detr_size(height: usize, width: usize, shortest: usize, longest: usize) -> (usize, usize) {
    let (h, w) = (height as f64, width as f64);
    let (size, scale) = short_side(height, width, shortest, longest);
    if (height <= width && height == size) || (width <= height && width == size) {
        return (height, width);
    }
    if width < height {
        ((scale * h / w) as usize, size)
    } else {
        (size, (scale * w / h) as usize)
    }
}

/// YOLOS's `get_size_with_aspect_ratio(..., mod_size=16)`: DETR's sizes, except that a portrait
/// image's sides are computed before the no-resize check, and both are then floored to a
/// multiple of 16.
fn yolos_size(height: usize, width: usize, shortest: usize, longest: usize) -> (usize, usize) {
    let (h, w) = (height as f64, width as f64);
    let (size, scale) = short_side(height, width, shortest, longest);
    let (oh, ow) = if width < height {
        ((scale * h / w) as usize, size)
    } else if (height <= width && height == size) || (width <= height && width == size) {
        (height, width)
    } else {
        (size, (scale * w / h) as usize)
    };
    (oh - oh % 16, ow - ow % 16)
}

/// `image_transforms.center_crop`: offsets `(orig - crop) // 2` (floor), zero padding where the
/// crop is larger than the image.
fn center_crop(image: &Rgb8, height: usize, width: usize) -> Rgb8 {
    let floor_half = |orig: usize, crop: usize| (orig as i64 - crop as i64).div_euclid(2);
    let top = floor_half(image.height, height);
    let left = floor_half(image.width, width);
    let mut data = vec![0u8; height * width * 3];
    for y in 0..height {
        let sy = top + y as i64;
        if sy < 0 || sy >= image.height as i64 {
            continue;
        }
        for x in 0..width {
            let sx = left + x as i64;
            if sx < 0 || sx >= image.width as i64 {
                continue;
            }
            let from = (sy as usize * image.width + sx as usize) * 3;
            data[(y * width + x) * 3..][..3].copy_from_slice(&image.data[from..from + 3]);
        }
    }
    Rgb8 {
        width,
        height,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes_follow_get_resize_output_image_size() {
        assert_eq!(shortest_edge_size(480, 640, 256), (256, 341));
        assert_eq!(shortest_edge_size(640, 480, 256), (341, 256));
        assert_eq!(shortest_edge_size(256, 300, 256), (256, 300));
    }

    #[test]
    fn detr_sizes_follow_get_size_with_aspect_ratio() {
        // (h, w) = (200, 300) into 48..64: the short side is 42.67 rounded (43), the long one
        // computed from the unrounded 42.67 (64, not 43 * 1.5).
        assert_eq!(detr_size(200, 300, 48, 64), (43, 64));
        assert_eq!(detr_size(48, 64, 48, 64), (48, 64));
        assert_eq!(detr_size(27, 19, 48, 64), (64, 45));
        assert_eq!(detr_size(480, 640, 800, 1333), (800, 1066));
    }

    /// transformers' `image_processing_yolos.get_size_with_aspect_ratio(..., mod_size=16)`.
    #[test]
    fn yolos_sizes_are_multiples_of_16() {
        assert_eq!(yolos_size(30, 50, 64, 96), (48, 96));
        assert_eq!(yolos_size(27, 19, 64, 96), (80, 64));
        assert_eq!(yolos_size(100, 64, 64, 200), (96, 64));
        assert_eq!(yolos_size(64, 100, 64, 200), (64, 96));
        assert_eq!(yolos_size(480, 640, 800, 1333), (800, 1056));
        assert_eq!(yolos_size(1000, 10, 64, 96), (96, 0));
        assert_eq!(yolos_size(333, 1000, 512, 864), (288, 864));
    }

    #[test]
    fn crops_pad_with_zeros_when_the_image_is_smaller() {
        let image = Rgb8 {
            width: 2,
            height: 1,
            data: vec![1, 1, 1, 2, 2, 2],
        };
        let out = center_crop(&image, 3, 3);
        // Padding: ceil((3 - 1) / 2) = 1 row above, ceil((3 - 2) / 2) = 1 column left.
        assert_eq!(out.data[(3 + 1) * 3], 1);
        assert_eq!(out.data[(3 + 2) * 3], 2);
        assert_eq!(out.data.iter().map(|&v| v as u32).sum::<u32>(), 9);
    }

    #[test]
    fn detr_padding_to_a_size_is_refused() {
        let config = |pad_size: Value| json!({"image_processor_type": "DetrImageProcessor", "pad_size": pad_size});
        assert!(ImageProcessor::from_json(config(Value::Null)).is_ok());
        let e = ImageProcessor::from_json(config(json!({"height": 64, "width": 64})))
            .unwrap_err()
            .to_string();
        assert!(e.contains("pad_size"), "{e}");
    }

    #[test]
    fn unknown_processors_are_refused_by_name() {
        let e =
            ImageProcessor::from_json(json!({"image_processor_type": "LayoutLMv3ImageProcessor"}))
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("LayoutLMv3ImageProcessor") && e.contains("YolosImageProcessor"),
            "{e}"
        );
    }
}
