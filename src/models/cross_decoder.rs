//! What the image-to-text decoders share: the trait the captioner drives its decoder through
//! ([`ImageTextDecoder`]: GPT-2's, TrOCR's, BLIP's), and the post-norm layer that BLIP's text
//! decoder and TrOCR's decoder both are (BART's layout): self-attention, cross-attention to the
//! image, a feed-forward block, each added to its input and normalised. Sequences are cached and
//! stepped as seq2seq.rs describes.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use super::config::Activation;
use super::encoder::DenseForm;
use super::layers::{activate, LayerNorm, Linear};
use super::seq2seq::{self, Heads, SourceCache, Span};
use super::StepInput;

/// A decoder that cross-attends to an encoded image.
pub(super) trait ImageTextDecoder: Send + Sync {
    fn layers(&self) -> usize;
    fn vocab_size(&self) -> usize;
    /// Positions a caption may fill (its start token included).
    fn max_positions(&self) -> usize;
    /// Every layer's cross-attention keys and values of one image's encoded rows.
    fn encoded_keys_values(&self, encoded: &Tensor) -> Result<Vec<(Tensor, Tensor)>>;
    /// One pass over every sequence's new tokens; the logits after each one's last.
    fn decode(&self, inputs: &mut [StepInput<SourceCache>]) -> Result<Vec<Vec<f32>>>;
    /// The first tokens for the model's `start` token and a request's prompt (tokenized with
    /// special tokens); `None` where the model takes no prompt (a VisionEncoderDecoder's
    /// pipeline refuses one).
    fn start_tokens(&self, start: u32, prompt: Option<&[u32]>) -> Option<Vec<u32>> {
        prompt.is_none().then(|| vec![start])
    }
    /// The end token `generate` is given whatever the generation config says.
    fn end_token(&self) -> Option<u32> {
        None
    }
}

/// One post-norm decoder layer with cross-attention.
pub(super) struct PostNormLayer {
    /// Queries (the 1/sqrt(head_dim) scale folded in), keys and values of the text.
    pub qkv: Linear,
    pub out: Linear,
    pub norm: LayerNorm,
    /// The cross-attention's queries (scale folded in) and its keys and values of the image.
    pub cross_q: Linear,
    pub cross_k: Linear,
    pub cross_v: Linear,
    pub cross_out: Linear,
    pub cross_norm: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub final_norm: LayerNorm,
}

impl PostNormLayer {
    /// The layer with its dense layers in `form`.
    pub fn dense_in(self, form: DenseForm) -> PostNormLayer {
        let c = |layer| form.convert(layer);
        PostNormLayer {
            qkv: c(self.qkv),
            out: c(self.out),
            cross_q: c(self.cross_q),
            cross_k: c(self.cross_k),
            cross_v: c(self.cross_v),
            cross_out: c(self.cross_out),
            fc1: c(self.fc1),
            fc2: c(self.fc2),
            ..self
        }
    }

    /// Layer `l` over a pass's rows `x` (every sequence's new tokens, placed by `spans`): each
    /// sequence's cache grows by its rows' keys and values.
    pub fn forward(
        &self,
        x: Tensor,
        inputs: &mut [StepInput<SourceCache>],
        l: usize,
        spans: &[Span],
        heads: &Heads,
        activation: Activation,
    ) -> Result<Tensor> {
        let hidden = heads.count * heads.dim;
        let qkv = self.qkv.forward(&x)?;
        let part = |i: usize| qkv.narrow(1, i * hidden, hidden);
        let caches = inputs.iter_mut().map(|i| &mut i.cache.inner);
        let context = heads.attend_spans(caches, l, spans, (&part(0)?, &part(1)?, &part(2)?))?;
        let x = self.norm.forward(&(x + self.out.forward(&context)?)?)?;

        let q = self.cross_q.forward(&x)?;
        let caches = inputs.iter().map(|i| &i.cache.inner);
        let context = heads.attend_encoded_spans(caches, l, spans, &q)?;
        let x = self
            .cross_norm
            .forward(&(x + self.cross_out.forward(&context)?)?)?;

        let inner = activate(&self.fc1.forward(&x)?, activation)?;
        self.final_norm.forward(&(x + self.fc2.forward(&inner)?)?)
    }
}

/// Every layer's cross-attention keys and values of one image's encoded rows.
pub(super) fn encoded_keys_values(
    layers: &[PostNormLayer],
    heads: &Heads,
    encoded: &Tensor,
) -> Result<Vec<(Tensor, Tensor)>> {
    heads.encoded_keys_values(layers.iter().map(|l| (&l.cross_k, &l.cross_v)), encoded)
}

/// One decoder pass over every sequence's new tokens (at most `limit` positions a sequence),
/// the frame every [`ImageTextDecoder`] shares: `embed(ids, positions)` gives the pass's rows,
/// `layers(rows, inputs, spans)` runs the layers (each sequence's cache grows by its rows), then
/// each sequence's length advances and `head` turns its last row into the logits.
pub(super) fn decode_pass(
    inputs: &mut [StepInput<SourceCache>],
    limit: usize,
    device: &Device,
    embed: impl FnOnce(&[u32], Vec<u32>) -> Result<Tensor>,
    layers: impl FnOnce(Tensor, &mut [StepInput<SourceCache>], &[Span]) -> Result<Tensor>,
    head: impl FnOnce(Tensor) -> Result<Tensor>,
) -> Result<Vec<Vec<f32>>> {
    let (ids, positions, spans) =
        seq2seq::spans(inputs.iter().map(|i| (i.cache.inner.len, i.tokens)), limit)?;
    let x = layers(embed(&ids, positions)?, inputs, &spans)?;
    for (input, span) in inputs.iter_mut().zip(&spans) {
        input.cache.inner.len += span.n;
    }
    let last = seq2seq::last_rows(&spans, device)?;
    Ok(head(x.index_select(&last, 0)?)?
        .to_dtype(DType::F32)?
        .to_vec2()?)
}

/// [`PostNormLayer::forward`] through every layer.
pub(super) fn forward_layers(
    layers: &[PostNormLayer],
    mut x: Tensor,
    inputs: &mut [StepInput<SourceCache>],
    spans: &[Span],
    heads: &Heads,
    activation: Activation,
) -> Result<Tensor> {
    for (l, layer) in layers.iter().enumerate() {
        x = layer.forward(x, inputs, l, spans, heads, activation)?;
    }
    Ok(x)
}
