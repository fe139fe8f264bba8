//! Whisper (`transformers`' `modeling_whisper`): a pre-LN encoder over log-mel features (two
//! GELU convolutions, the second of stride 2, then sinusoidal positions stored as weights) and a
//! pre-LN decoder with learned positions, whose output projection is tied to its embeddings.
//!
//! On the generation scheduler a sequence's cache holds its features until its first step,
//! which encodes them (every new sequence of the step in one batch) and feeds the decoder its
//! first tokens (start of transcript, language, task, no timestamps); later steps feed one
//! token. The decoder runs all sequences' rows at once; attention is per sequence.

use anyhow::{bail, Result};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor, TensorId};
use serde::Deserialize;

use super::config::{Activation, ModelConfig};
use super::encoder::DenseForm;
use super::layers::{activate, LayerNorm, Linear};
use super::seq2seq::{self, Heads, SourceCache};
use super::weights::WeightStore;
use super::{StepInput, StepModel};
use crate::device::Placement;
use crate::source::ModelFiles;

/// Whisper's `config.json`, with `transformers`' defaults where it may omit a field.
#[derive(Debug, Clone, Deserialize)]
pub struct WhisperConfig {
    pub d_model: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub decoder_attention_heads: usize,
    pub num_mel_bins: usize,
    pub max_source_positions: usize,
    pub max_target_positions: usize,
    pub vocab_size: usize,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default)]
    pub scale_embedding: bool,
    pub decoder_start_token_id: Option<u32>,
    /// The width of word timestamps' median filter over audio positions (odd).
    #[serde(default = "default_median_filter_width")]
    pub median_filter_width: usize,
}

fn default_median_filter_width() -> usize {
    7
}

fn default_activation() -> String {
    "gelu".into()
}

struct Attention {
    /// The 1/sqrt(head_dim) query scale folded in.
    q: Linear,
    /// (Whisper's key projections have no bias.)
    k: Linear,
    v: Linear,
    out: Linear,
}

struct Layer {
    attention: Attention,
    /// Encoder layers on the CPU: Q, K and V as one layer (the query scale folded in), for the
    /// fused attention kernel.
    fused_qkv: Option<Linear>,
    attention_norm: LayerNorm,
    /// Decoder layers only.
    cross: Option<(Attention, LayerNorm)>,
    fc1: Linear,
    fc2: Linear,
    final_norm: LayerNorm,
}

impl Layer {
    /// An encoder layer with its packed dense layers in `form` (the fused path's).
    fn dense_in(self, form: DenseForm) -> Layer {
        let Layer {
            attention,
            fused_qkv,
            attention_norm,
            cross,
            fc1,
            fc2,
            final_norm,
        } = self;
        Layer {
            attention: Attention {
                out: form.convert(attention.out),
                ..attention
            },
            fused_qkv: fused_qkv.map(|qkv| form.convert(qkv)),
            attention_norm,
            cross,
            fc1: form.convert(fc1),
            fc2: form.convert(fc2),
            final_norm,
        }
    }
}

pub struct Whisper {
    conv1: (Tensor, Tensor),
    conv2: (Tensor, Tensor),
    encoder_positions: Tensor,
    encoder: Vec<Layer>,
    encoder_norm: LayerNorm,
    embeddings: Tensor,
    decoder_positions: Tensor,
    decoder: Vec<Layer>,
    decoder_norm: LayerNorm,
    proj_out: Linear,
    activation: Activation,
    embed_scale: f64,
    heads: Heads,
    config: WhisperConfig,
    device: Device,
    dtype: DType,
    /// Encodings asked to be kept ([`Whisper::keep_encoding`]), by their features' tensor.
    kept: Mutex<Vec<(TensorId, Option<CrossKeysValues>)>>,
}

/// Every decoder layer's keys and values of one encoded input.
type CrossKeysValues = Vec<(Tensor, Tensor)>;

/// One sequence's state: its features until its first step, then its caches.
pub type WhisperCache = SourceCache;

struct Weights<'a> {
    store: &'a WeightStore,
    scale: f64,
    /// The decoder's cross-attention keys and values are projected once per window, from its
    /// 1500 positions: encoder-sized products, in the encoder's dense form.
    cross_form: DenseForm,
}

impl Weights<'_> {
    fn get(&self, name: &str) -> Result<Tensor> {
        self.store.get(&format!("model.{name}"))
    }

    fn linear(&self, name: &str) -> Result<Linear> {
        Linear::new(
            &self.get(&format!("{name}.weight"))?,
            &self.get(&format!("{name}.bias"))?,
        )
    }

    fn norm(&self, name: &str) -> Result<LayerNorm> {
        LayerNorm::load_named(self.store, &format!("model.{name}"), 1e-5, false)
    }

    fn attention(&self, p: &str) -> Result<Attention> {
        let q_weight = (self.get(&format!("{p}.q_proj.weight"))? * self.scale)?;
        let q_bias = (self.get(&format!("{p}.q_proj.bias"))? * self.scale)?;
        Ok(Attention {
            q: Linear::new(&q_weight, &q_bias)?,
            k: Linear::no_bias(&self.get(&format!("{p}.k_proj.weight"))?)?,
            v: self.linear(&format!("{p}.v_proj"))?,
            out: self.linear(&format!("{p}.out_proj"))?,
        })
    }

    fn layer(&self, p: &str, decoder: bool) -> Result<Layer> {
        let cross = if decoder {
            let Attention { q, k, v, out } = self.attention(&format!("{p}.encoder_attn"))?;
            let (k, v) = (self.cross_form.convert(k), self.cross_form.convert(v));
            Some((
                Attention { q, k, v, out },
                self.norm(&format!("{p}.encoder_attn_layer_norm"))?,
            ))
        } else {
            None
        };
        let fused_qkv = if decoder {
            None
        } else {
            let part = |name: &str, bias: bool| -> Result<(Tensor, Tensor)> {
                let weight = self.get(&format!("{p}.self_attn.{name}.weight"))?;
                let bias = if bias {
                    self.get(&format!("{p}.self_attn.{name}.bias"))?
                } else {
                    Tensor::zeros(weight.dim(0)?, weight.dtype(), weight.device())?
                };
                Ok((weight, bias))
            };
            let fused = Linear::fused_qkv(
                [
                    part("q_proj", true)?,
                    part("k_proj", false)?,
                    part("v_proj", true)?,
                ],
                self.scale,
            )?;
            fused.is_packed().then_some(fused)
        };
        Ok(Layer {
            fused_qkv,
            attention: self.attention(&format!("{p}.self_attn"))?,
            attention_norm: self.norm(&format!("{p}.self_attn_layer_norm"))?,
            cross,
            fc1: self.linear(&format!("{p}.fc1"))?,
            fc2: self.linear(&format!("{p}.fc2"))?,
            final_norm: self.norm(&format!("{p}.final_layer_norm"))?,
        })
    }
}

impl Whisper {
    pub fn load(files: &ModelFiles, model: &ModelConfig, placement: &Placement) -> Result<Self> {
        let config: WhisperConfig = model.family()?;
        if config.encoder_attention_heads != config.decoder_attention_heads {
            bail!("encoder and decoder with different head counts are not supported");
        }
        let head_dim = config.d_model / config.encoder_attention_heads;
        let store = WeightStore::load(&files.weights, &placement.device)?.in_dtype(placement.dtype);
        // On the CPU, bfloat16 and int8 are forms of the encoder's packed dense layers (where
        // the work is), loaded from f32; everything else stays in f32 there.
        let form = DenseForm::choose(&store, &placement.device);
        let store = if form.loads_f32(&store) {
            store.in_dtype(DType::F32)
        } else {
            store
        };
        let dtype = store.dtype();
        let w = Weights {
            store: &store,
            scale: 1.0 / (head_dim as f64).sqrt(),
            cross_form: form,
        };
        let conv = |name: &str| -> Result<(Tensor, Tensor)> {
            let bias = w.get(&format!("encoder.{name}.bias"))?;
            let channels = bias.dim(0)?;
            Ok((
                w.get(&format!("encoder.{name}.weight"))?,
                bias.reshape((1, channels, 1))?,
            ))
        };
        let encoder = (0..config.encoder_layers)
            .map(|i| {
                Ok(w.layer(&format!("encoder.layers.{i}"), false)?
                    .dense_in(form))
            })
            .collect::<Result<Vec<_>>>()?;
        let decoder = (0..config.decoder_layers)
            .map(|i| w.layer(&format!("decoder.layers.{i}"), true))
            .collect::<Result<Vec<_>>>()?;
        let embeddings = w.get("decoder.embed_tokens.weight")?;
        let proj_out = match store.get("proj_out.weight") {
            Ok(weight) => Linear::no_bias(&weight)?,
            Err(_) => Linear::no_bias(&embeddings)?,
        };
        let activation = Activation::parse(&config.activation_function)?;
        let dense = encoder.first().map(|layer| &layer.fc1);
        let encoder_dense = DenseForm::describe(dense, dtype);
        tracing::info!(
            "speech network: whisper, {} encoder / {} decoder layers, d_model {}, {} mel bins, vocabulary {}; encoder dense layers in {encoder_dense}",
            encoder.len(),
            decoder.len(),
            config.d_model,
            config.num_mel_bins,
            embeddings.dim(0)?
        );
        Ok(Whisper {
            conv1: conv("conv1")?,
            conv2: conv("conv2")?,
            encoder_positions: w.get("encoder.embed_positions.weight")?,
            encoder,
            encoder_norm: w.norm("encoder.layer_norm")?,
            decoder_positions: w.get("decoder.embed_positions.weight")?,
            embeddings,
            decoder,
            decoder_norm: w.norm("decoder.layer_norm")?,
            proj_out,
            activation,
            embed_scale: if config.scale_embedding {
                (config.d_model as f64).sqrt()
            } else {
                1.0
            },
            heads: Heads {
                count: config.encoder_attention_heads,
                dim: head_dim,
                dtype,
            },
            config,
            device: placement.device.clone(),
            dtype,
            kept: Mutex::new(Vec::new()),
        })
    }

    pub fn config(&self) -> &WhisperConfig {
        &self.config
    }

    /// Features (f32 [mels, frames]) as a tensor the encoder takes.
    pub fn features_tensor(&self, features: Vec<f32>, frames: usize) -> Result<Tensor> {
        let mels = self.config.num_mel_bins;
        if features.len() != mels * frames {
            bail!(
                "expected {mels} x {frames} features, got {}",
                features.len()
            );
        }
        Ok(Tensor::from_vec(features, (mels, frames), &self.device)?.to_dtype(self.dtype)?)
    }

    /// Encodes a batch of features [b, mels, frames]: each item's cross-attention keys and
    /// values, per decoder layer.
    fn encode(&self, features: &Tensor) -> Result<Vec<Vec<(Tensor, Tensor)>>> {
        let conv = |x: &Tensor, (w, b): &(Tensor, Tensor), stride: usize| -> Result<Tensor> {
            Ok(x.conv1d(w, 1, stride, 1, 1)?.broadcast_add(b)?)
        };
        let x = activate(&conv(features, &self.conv1, 1)?, self.activation)?;
        let x = activate(&conv(&x, &self.conv2, 2)?, self.activation)?;
        let (batch, d_model, positions) = x.dims3()?;
        if positions > self.encoder_positions.dim(0)? {
            bail!(
                "{positions} encoder positions, past the model's {}",
                self.encoder_positions.dim(0)?
            );
        }
        let table = self.encoder_positions.narrow(0, 0, positions)?;
        let x = x.transpose(1, 2)?.broadcast_add(&table)?;
        let mut x = x.reshape((batch * positions, d_model))?.contiguous()?;
        let h = &self.heads;
        for layer in &self.encoder {
            let normed = layer.attention_norm.forward(&x)?;
            let a = &layer.attention;
            let context = match &layer.fused_qkv {
                // The CPU's fused kernel: both products per (item, head) read Q, K, V in place.
                Some(qkv) => {
                    let bf16 = qkv.bf16_kernel().is_some();
                    let qkv = qkv.forward(&normed)?.flatten_all()?.to_vec1::<f32>()?;
                    let context = crate::kernels::attention(
                        &qkv,
                        &vec![positions; batch],
                        positions,
                        positions,
                        d_model,
                        h.count,
                        bf16,
                    );
                    Tensor::from_vec(context, (batch * positions, d_model), &self.device)?
                }
                None => {
                    let (q, k, v) = (
                        a.q.forward(&normed)?,
                        a.k.forward(&normed)?,
                        a.v.forward(&normed)?,
                    );
                    let mut context = Vec::with_capacity(batch);
                    for b in 0..batch {
                        let rows = |t: &Tensor| h.split(&t.narrow(0, b * positions, positions)?);
                        context.push(h.attend(&rows(&q)?, &rows(&k)?, &rows(&v)?, None)?);
                    }
                    Tensor::cat(&context, 0)?
                }
            };
            x = (x + a.out.forward(&context)?)?;
            x = (&x + self.feed_forward(layer, &x)?)?;
        }
        let x = self.encoder_norm.forward(&x)?;
        (0..batch)
            .map(|b| {
                let encoded = x.narrow(0, b * positions, positions)?;
                h.encoded_keys_values(
                    self.decoder.iter().map(|l| {
                        let (cross, _) = l.cross.as_ref().expect("decoder layers cross-attend");
                        (&cross.k, &cross.v)
                    }),
                    &encoded,
                )
            })
            .collect()
    }

    fn feed_forward(&self, layer: &Layer, x: &Tensor) -> Result<Tensor> {
        let hidden = activate(
            &layer.fc1.forward(&layer.final_norm.forward(x)?)?,
            self.activation,
        )?;
        layer.fc2.forward(&hidden)
    }

    /// One decoder pass over every sequence's new tokens; the logits after each one's last.
    /// `record`: cross-attention probabilities to note (a pass of one sequence).
    fn decode(
        &self,
        inputs: &mut [StepInput<WhisperCache>],
        mut record: Option<&mut CrossRecord>,
    ) -> Result<Vec<Vec<f32>>> {
        let limit = self.decoder_positions.dim(0)?;
        let (ids, positions, spans) =
            seq2seq::spans(inputs.iter().map(|i| (i.cache.inner.len, i.tokens)), limit)?;
        let total = ids.len();
        let ids = Tensor::from_vec(ids, total, &self.device)?;
        let positions = Tensor::from_vec(positions, total, &self.device)?;
        let mut x = self.embeddings.index_select(&ids, 0)?;
        if self.embed_scale != 1.0 {
            x = (x * self.embed_scale)?;
        }
        let mut x = (x + self.decoder_positions.index_select(&positions, 0)?)?;
        let h = &self.heads;
        for (l, layer) in self.decoder.iter().enumerate() {
            let normed = layer.attention_norm.forward(&x)?;
            let a = &layer.attention;
            let qkv = (
                &a.q.forward(&normed)?,
                &a.k.forward(&normed)?,
                &a.v.forward(&normed)?,
            );
            let caches = inputs.iter_mut().map(|i| &mut i.cache.inner);
            let context = h.attend_spans(caches, l, &spans, qkv)?;
            x = (x + a.out.forward(&context)?)?;

            let (cross, cross_norm) = layer.cross.as_ref().expect("decoder layers cross-attend");
            let q = cross.q.forward(&cross_norm.forward(&x)?)?;
            if let (Some(record), [input]) = (record.as_deref_mut(), &*inputs) {
                record.note(l, h, &q, &input.cache.inner.cross[l].0)?;
            }
            let caches = inputs.iter().map(|i| &i.cache.inner);
            let context = h.attend_encoded_spans(caches, l, &spans, &q)?;
            x = (x + cross.out.forward(&context)?)?;
            x = (&x + self.feed_forward(layer, &x)?)?;
        }
        for (input, span) in inputs.iter_mut().zip(&spans) {
            input.cache.inner.len += span.n;
        }
        let last = seq2seq::last_rows(&spans, &self.device)?;
        let x = self.decoder_norm.forward(&x.index_select(&last, 0)?)?;
        Ok(self.proj_out.forward(&x)?.to_dtype(DType::F32)?.to_vec2()?)
    }
}

impl Whisper {
    /// Keeps the encoding of `features` (once a sequence has encoded them) for the later
    /// sequences and passes that read them, until the guard is dropped: a transcription after
    /// its language detection, the alignment pass of word timestamps. The audio is encoded once.
    pub fn keep_encoding(self: &Arc<Self>, features: &Tensor) -> KeptEncoding {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= KEPT_ENCODINGS {
            kept.remove(0);
        }
        kept.push((features.id(), None));
        KeptEncoding {
            model: self.clone(),
            features: features.clone(),
        }
    }

    fn keep_if_asked(&self, features: &Tensor, cross: &[(Tensor, Tensor)]) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = kept.iter_mut().find(|(id, _)| *id == features.id()) {
            slot.1 = Some(cross.to_vec());
        }
    }

    /// The kept encoding of `features`, if it is ready (its tensors shared, not copied).
    fn kept(&self, features: &Tensor) -> Option<CrossKeysValues> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter()
            .find(|(id, cross)| *id == features.id() && cross.is_some())
            .and_then(|(_, cross)| cross.clone())
    }

    /// The cross-attention probabilities of `heads` ((layer, head) pairs) over the kept
    /// encoding's audio positions, for `tokens` fed at once: the rows a generation's steps
    /// computed one token at a time (a causal pass gives the same). One row-major
    /// [tokens x positions] matrix per head.
    pub fn cross_attention_weights(
        &self,
        encoding: &KeptEncoding,
        tokens: &[u32],
        heads: &[(usize, usize)],
    ) -> Result<Vec<Vec<f32>>> {
        if let Some(&(layer, head)) = heads
            .iter()
            .find(|(l, h)| *l >= self.decoder.len() || *h >= self.heads.count)
        {
            bail!(
                "alignment head ({layer}, {head}) is not in the model's {} decoder layers of {} heads",
                self.decoder.len(),
                self.heads.count
            );
        }
        Ok(self.forced_pass(encoding, tokens, heads)?.1)
    }

    /// The logits after `tokens` fed at once over the kept encoding (the no-speech probability
    /// is read after the start token).
    pub fn logits_after(&self, encoding: &KeptEncoding, tokens: &[u32]) -> Result<Vec<f32>> {
        Ok(self.forced_pass(encoding, tokens, &[])?.0)
    }

    /// One decoder pass over `tokens` and the kept encoding (encoded again if it was let go):
    /// the logits after the last token, and the cross-attention of `heads`.
    fn forced_pass(
        &self,
        encoding: &KeptEncoding,
        tokens: &[u32],
        heads: &[(usize, usize)],
    ) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let cross = match self.kept(&encoding.features) {
            Some(cross) => cross,
            None => self.encode(&encoding.features.unsqueeze(0)?)?.remove(0),
        };
        let mut cache = WhisperCache::default();
        cache.inner.cross = cross;
        cache.inner.own = vec![None; self.decoder.len()];
        let mut record = CrossRecord {
            heads,
            weights: vec![Vec::new(); heads.len()],
        };
        let mut input = [StepInput {
            tokens,
            cache: &mut cache,
        }];
        let logits = self.decode(&mut input, Some(&mut record))?.remove(0);
        Ok((logits, record.weights))
    }
}

/// An encoding kept while this lives ([`Whisper::keep_encoding`]).
pub struct KeptEncoding {
    model: Arc<Whisper>,
    features: Tensor,
}

impl Drop for KeptEncoding {
    fn drop(&mut self) {
        let mut kept = self.model.kept.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = kept.iter().position(|(id, _)| *id == self.features.id()) {
            kept.remove(at);
        }
    }
}

/// What a decoder pass notes of its cross-attention ([`Whisper::cross_attention_weights`]).
struct CrossRecord<'a> {
    heads: &'a [(usize, usize)],
    weights: Vec<Vec<f32>>,
}

impl CrossRecord<'_> {
    /// Notes layer `layer`'s probabilities for the heads asked: queries `q` [rows, d_model]
    /// (scale folded in) over keys [heads, positions, head_dim].
    fn note(&mut self, layer: usize, h: &Heads, q: &Tensor, keys: &Tensor) -> Result<()> {
        let q = h.split(q)?;
        for (&(l, head), weights) in self.heads.iter().zip(&mut self.weights) {
            if l == layer {
                let scores = q.get(head)?.matmul(&keys.get(head)?.t()?)?;
                let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?;
                *weights = probs.flatten_all()?.to_vec1()?;
            }
        }
        Ok(())
    }
}

/// Encodings kept at most (oldest dropped first: a guard that outlives many requests must not
/// hold memory; a pass that finds its encoding gone encodes again).
const KEPT_ENCODINGS: usize = 64;

impl StepModel for Whisper {
    type Cache = WhisperCache;

    fn new_cache(&self) -> WhisperCache {
        WhisperCache::default()
    }

    fn cache_with_source(&self, source: &Tensor) -> WhisperCache {
        let mut cache = SourceCache::default();
        if let Some(cross) = self.kept(source) {
            cache.inner.cross = cross;
            cache.inner.own = vec![None; self.decoder.len()];
            return cache;
        }
        SourceCache::with_source(source)
    }

    fn step(&self, inputs: &mut [StepInput<WhisperCache>]) -> Result<Vec<Vec<f32>>> {
        seq2seq::start_sequences(inputs, self.decoder.len(), |features| {
            let encoded =
                seq2seq::encode_in_passes(features, &self.device, |batch| self.encode(batch))?;
            for (source, cross) in features.iter().zip(&encoded) {
                self.keep_if_asked(source, cross);
            }
            Ok(encoded)
        })?;
        self.decode(inputs, None)
    }
}
