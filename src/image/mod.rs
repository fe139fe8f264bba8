//! Images as the vision pipelines take them: decoded as Pillow decodes them for the DLC
//! ([`decode`]), resized exactly as Pillow resizes ([`resample`]), and turned into the model's
//! `pixel_values` by the image processor that `preprocessor_config.json` describes
//! ([`processor`]).

pub mod decode;
pub mod jpeg;
pub mod processor;
pub mod resample;

/// One image's `pixel_values`: `channels` planes of `height` x `width` f32 values (CHW).
#[derive(Debug, Clone, PartialEq)]
pub struct Pixels {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl Pixels {
    /// What the batcher counts an image as, in tokens: about one ViT patch (16 x 16 x 3 values)
    /// per token, so that a token budget bounds image batches by their compute as well.
    pub fn cost(&self) -> usize {
        (self.data.len() / 768).max(1)
    }
}
