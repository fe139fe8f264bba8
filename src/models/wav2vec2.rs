//! Wav2Vec2, HuBERT, Data2VecAudio, WavLM, UniSpeech and UniSpeechSat with their CTC heads
//! (`transformers`' `Wav2Vec2ForCTC`, `HubertForCTC`, `Data2VecAudioForCTC`, `WavLMForCTC`,
//! `UniSpeechForCTC`, `UniSpeechSatForCTC`: the same network under the `wav2vec2.`, `hubert.`,
//! `data2vec_audio.`, `wavlm.`, `unispeech.` or `unispeech_sat.` prefix, with the differences
//! below; WavLM's attention adds gated relative position biases, `wavlm`): a convolutional feature
//! encoder over the raw waveform (seven GELU convolutions, 320 samples per frame in the
//! published shapes; a group norm on the first one, or a layer norm on each with
//! `feat_extract_norm: "layer"`), a layer norm (HuBERT: unless `feat_proj_layer_norm` is false)
//! and projection to the hidden size, grouped positional convolutions added to the frames
//! (`wav2vec2_positions`: Data2VecAudio's are a chain, and its feature encoder always has layer
//! norms),
//! the transformer layers (post-norm, or pre-norm with a final norm when
//! `do_stable_layer_norm`), and `lm_head` to the CTC vocabulary.
//!
//! It runs on the CPU in f32 on our kernels: convolutions on packed panels read channels-last
//! (`kernels::PackedConv1d`), the transformer layers on the fused encoder path that the image
//! encoders use (`VitEncoder`, whose dense layers follow `SERVER_QUANTIZE` / `SERVER_DTYPE` as
//! theirs do). One waveform per forward: the pipeline runs each request (and each chunk) alone,
//! and padding would change an unmasked model's answer.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::config::{Activation, ModelConfig};
use super::encoder::DenseForm;
use super::layers::{LayerNorm, Linear};
use super::vision::{LayerNames, VitConfig, VitEncoder};
use super::wav2vec2_positions::{Positions, PositionsShape, TORCH_NORM_EPS};
use super::wavlm::RelativePositions;
use super::weights::WeightStore;
use crate::device::Placement;
use crate::kernels::{self, FeatureMaps, GroupNorm, PackedConv1d};
use crate::source::ModelFiles;

/// `Wav2Vec2Config` (or `HubertConfig` / `Data2VecAudioConfig`, their extra fields below), with
/// `transformers`' defaults where config.json may omit a field.
#[derive(Debug, Clone, Deserialize)]
pub struct Wav2Vec2Config {
    #[serde(default = "default_hidden")]
    pub hidden_size: usize,
    #[serde(default = "default_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_norm")]
    pub feat_extract_norm: String,
    #[serde(default = "default_act")]
    pub feat_extract_activation: String,
    #[serde(default = "default_conv_dim")]
    pub conv_dim: Vec<usize>,
    #[serde(default = "default_conv_stride")]
    pub conv_stride: Vec<usize>,
    #[serde(default = "default_conv_kernel")]
    pub conv_kernel: Vec<usize>,
    #[serde(default)]
    pub conv_bias: bool,
    #[serde(default = "default_pos_kernel")]
    pub num_conv_pos_embeddings: usize,
    #[serde(default = "default_pos_groups")]
    pub num_conv_pos_embedding_groups: usize,
    #[serde(default)]
    pub do_stable_layer_norm: bool,
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    #[serde(default)]
    pub add_adapter: bool,
    #[serde(default)]
    pub adapter_attn_dim: Option<usize>,
    /// HuBERT: a layer norm before the feature projection (Wav2Vec2 always has one).
    #[serde(default = "default_true")]
    pub feat_proj_layer_norm: bool,
    /// HuBERT: a batch norm before the positional convolution, which is then not weight-normed.
    #[serde(default)]
    pub conv_pos_batch_norm: bool,
    /// Data2VecAudio: the kernel of its chained positional convolutions (whose number is then
    /// `num_conv_pos_embeddings`).
    #[serde(default = "default_chain_kernel")]
    pub conv_pos_kernel_size: usize,
    /// WavLM: relative position buckets and the distance the last one starts at.
    #[serde(default = "default_buckets")]
    pub num_buckets: usize,
    #[serde(default = "default_bucket_distance")]
    pub max_bucket_distance: usize,
}

fn default_buckets() -> usize {
    320
}

fn default_bucket_distance() -> usize {
    800
}

fn default_chain_kernel() -> usize {
    19
}

fn default_true() -> bool {
    true
}

fn default_hidden() -> usize {
    768
}
fn default_layers() -> usize {
    12
}
fn default_heads() -> usize {
    12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_norm() -> String {
    "group".into()
}
fn default_conv_dim() -> Vec<usize> {
    vec![512; 7]
}
fn default_conv_stride() -> Vec<usize> {
    vec![5, 2, 2, 2, 2, 2, 2]
}
fn default_conv_kernel() -> Vec<usize> {
    vec![10, 3, 3, 3, 3, 2, 2]
}
fn default_pos_kernel() -> usize {
    128
}
fn default_pos_groups() -> usize {
    16
}
fn default_vocab() -> usize {
    32
}

impl Wav2Vec2Config {
    /// Waveform samples per output frame (`inputs_to_logits_ratio`: the strides' product).
    pub fn inputs_to_logits_ratio(&self) -> usize {
        self.conv_stride.iter().product()
    }
}

/// The norm after a feature-encoder convolution: `nn.GroupNorm(C, C)` (each channel over time;
/// the first layer of `feat_extract_norm: "group"`) or `nn.LayerNorm(C)` (each frame; every
/// layer of `"layer"`). Both with PyTorch's default eps.
enum ConvNorm {
    None,
    Group(GroupNorm),
    Layer(LayerNorm),
}

struct ConvLayer {
    conv: PackedConv1d,
    norm: ConvNorm,
}

pub struct Wav2Vec2 {
    config: Wav2Vec2Config,
    conv_layers: Vec<ConvLayer>,
    conv_activation: Activation,
    projection_norm: Option<LayerNorm>,
    projection: Linear,
    positions: Positions,
    encoder_norm: LayerNorm,
    encoder: VitEncoder,
    /// WavLM's relative position biases.
    relative: Option<RelativePositions>,
    lm_head: Linear,
}

impl Wav2Vec2 {
    /// On the CPU whatever `placement` says; its dtype and quantization apply to the
    /// transformer layers' dense products, as for the image encoders.
    pub fn load(files: &ModelFiles, model: &ModelConfig, placement: &Placement) -> Result<Self> {
        let mut config: Wav2Vec2Config = model.family()?;
        let (prefix, chained_positions) = match model.model_type.as_str() {
            "hubert" => ("hubert", false),
            "data2vec-audio" => {
                // Data2VecAudioConfig has no such fields: every convolution has a layer norm,
                // and the layers are post-norm (whatever a stray key in config.json says).
                config.feat_extract_norm = "layer".into();
                config.do_stable_layer_norm = false;
                ("data2vec_audio", true)
            }
            "wavlm" => ("wavlm", false),
            // pre-training's extras (quantizer, masked frames) aside, Wav2Vec2's network
            "unispeech" => ("unispeech", false),
            "unispeech-sat" => ("unispeech_sat", false),
            _ => ("wav2vec2", false),
        };
        if config.add_adapter || config.adapter_attn_dim.is_some() {
            bail!("Wav2Vec2 adapters (`add_adapter`, `adapter_attn_dim`) are not supported");
        }
        let layers = config.conv_dim.len();
        if layers == 0 || config.conv_stride.len() != layers || config.conv_kernel.len() != layers {
            bail!("conv_dim, conv_stride and conv_kernel must be lists of the same length");
        }
        if !placement.device.is_cpu() {
            tracing::warn!("wav2vec2 runs on the CPU here (its convolutions are CPU kernels)");
        }
        let mut store = WeightStore::load(&files.weights, &Device::Cpu)?
            .in_dtype(DType::F32)
            .with_dense_dtype(placement.dtype)
            .with_quantize(placement.quantize);
        store.detect_base_prefix(prefix, "feature_projection.projection.weight");
        let conv_layers =
            load_feature_encoder(&store, &config, DenseForm::choose(&store, &Device::Cpu))?;
        let hidden = config.hidden_size;
        let positions = Positions::load(
            &store,
            &PositionsShape {
                hidden: config.hidden_size,
                kernel: if chained_positions {
                    config.conv_pos_kernel_size
                } else {
                    config.num_conv_pos_embeddings
                },
                groups: config.num_conv_pos_embedding_groups,
                batch_norm: config.conv_pos_batch_norm,
                chain: chained_positions.then_some(config.num_conv_pos_embeddings),
            },
        )?;
        let vit = VitConfig {
            hidden_size: hidden,
            num_hidden_layers: config.num_hidden_layers,
            num_attention_heads: config.num_attention_heads,
            hidden_act: config.hidden_act.clone(),
            layer_norm_eps: config.layer_norm_eps,
            image_size: 0,
            patch_size: 0,
            num_channels: 0,
            mlp_ratio: None,
            use_swiglu_ffn: false,
            qkv_bias: true,
        };
        let encoder = VitEncoder::load_at(&vit, &store, LayerNames::Wav2Vec2, "encoder.layers")?;
        if prefix == "wavlm" && kernels::generic_kernels_forced() {
            bail!("WavLM's biased attention runs on this server's CPU kernels only: unset SAGEMAKER_HF_GENERIC_KERNELS");
        }
        let relative = (prefix == "wavlm")
            .then(|| {
                RelativePositions::load(
                    &store,
                    "encoder.layers",
                    config.num_hidden_layers,
                    config.num_attention_heads,
                    hidden,
                    (config.num_buckets, config.max_bucket_distance),
                )
            })
            .transpose()?;
        let encoder = if config.do_stable_layer_norm {
            encoder
        } else {
            encoder.post_norm()
        };
        let eps = config.layer_norm_eps;
        let model = Wav2Vec2 {
            conv_layers,
            conv_activation: Activation::parse(&config.feat_extract_activation)
                .context("feat_extract_activation")?,
            projection_norm: if config.feat_proj_layer_norm {
                Some(LayerNorm::load(
                    &store,
                    "feature_projection.layer_norm",
                    eps,
                )?)
            } else {
                None
            },
            projection: Linear::load(&store, "feature_projection.projection", true)?,
            positions,
            encoder_norm: LayerNorm::load(&store, "encoder.layer_norm", eps)?,
            encoder,
            relative,
            lm_head: Linear::load(&store, "lm_head", false)
                .context("Wav2Vec2 for speech recognition needs its CTC head (`lm_head`)")?,
            config,
        };
        tracing::info!(
            "speech network: {prefix} (CTC), {} feature-encoder convolutions ({} samples a frame), {} layers ({}), hidden {}, vocabulary {}",
            model.conv_layers.len(),
            model.config.inputs_to_logits_ratio(),
            model.config.num_hidden_layers,
            if model.config.do_stable_layer_norm { "pre-norm" } else { "post-norm" },
            hidden,
            model.config.vocab_size
        );
        Ok(model)
    }

    pub fn config(&self) -> &Wav2Vec2Config {
        &self.config
    }

    /// The CTC logits ([frames][vocabulary], row-major) of one waveform, as the feature
    /// extractor normalised it; no frames when it is shorter than the convolutions' reach.
    pub fn logits(&self, input_values: &[f32]) -> Result<(Vec<f32>, usize)> {
        let mut x = input_values.to_vec();
        let mut frames = input_values.len();
        for layer in &self.conv_layers {
            let out_frames = layer.conv.output_frames(frames);
            if out_frames == 0 {
                return Ok((Vec::new(), 0));
            }
            x = layer.conv.forward(&x, frames);
            frames = out_frames;
            match &layer.norm {
                ConvNorm::None => {}
                ConvNorm::Group(norm) => {
                    let maps = FeatureMaps::new(1, 1, frames, layer.conv.outputs(), x);
                    x = norm.forward(&maps, false).data;
                }
                ConvNorm::Layer(norm) => norm.apply(&mut x),
            }
            kernels::activate(&mut x, self.conv_activation);
        }
        if let Some(norm) = &self.projection_norm {
            norm.apply(&mut x);
        }
        let mut x = self.projection.forward_slice(&x, frames)?;
        let position = self.positions.forward(&x, frames, self.conv_activation);
        kernels::add(&mut x, &position);
        if !self.config.do_stable_layer_norm {
            self.encoder_norm.apply(&mut x);
        }
        let hidden = self.config.hidden_size;
        let states = Tensor::from_vec(x, (1, frames, hidden), &Device::Cpu)?;
        let encoded = match &self.relative {
            Some(relative) => self
                .encoder
                .forward_biased(states, &relative.for_sequence(frames))?,
            None => self.encoder.forward(states)?,
        };
        let mut x = encoded.flatten_all()?.to_vec1::<f32>()?;
        if self.config.do_stable_layer_norm {
            self.encoder_norm.apply(&mut x);
        }
        Ok((self.lm_head.forward_slice(&x, frames)?, frames))
    }
}

/// The convolutional feature encoder: `feature_extractor.conv_layers.N.{conv, layer_norm}`, its
/// convolutions after the first in bf16 where `form` (the transformer's dense form) is: they
/// are about a third of a request's multiply-adds. The first reads one
/// channel through 10 taps and stays f32, as all of them do in int8: on the tiny Wav2Vec2 int8
/// convolutions moved 13-31% of three files' characters, where bf16 moves under 5%
/// (`tests/parity_speech.rs`).
fn load_feature_encoder(
    store: &WeightStore,
    config: &Wav2Vec2Config,
    form: DenseForm,
) -> Result<Vec<ConvLayer>> {
    let host = |name: &str| store.base_host(name);
    let mut conv_layers = Vec::with_capacity(config.conv_dim.len());
    let mut inputs = 1;
    for (i, ((&outputs, &kernel), &stride)) in config
        .conv_dim
        .iter()
        .zip(&config.conv_kernel)
        .zip(&config.conv_stride)
        .enumerate()
    {
        let p = format!("feature_extractor.conv_layers.{i}");
        let bias = if config.conv_bias {
            host(&format!("{p}.conv.bias"))?
        } else {
            vec![0.0; outputs]
        };
        let conv = PackedConv1d::pack(
            &host(&format!("{p}.conv.weight"))
                .with_context(|| format!("feature encoder layer {i}"))?,
            &bias,
            inputs,
            kernel,
            stride,
            0,
            1,
        );
        let conv = if inputs > 1 && form == DenseForm::Bf16 {
            conv.map_layers(|layer| form.convert_packed(layer))
        } else {
            conv
        };
        let norm = match (config.feat_extract_norm.as_str(), i) {
            ("group", 0) => ConvNorm::Group(GroupNorm::new(
                outputs,
                host(&format!("{p}.layer_norm.weight"))?,
                host(&format!("{p}.layer_norm.bias"))?,
                TORCH_NORM_EPS,
            )),
            ("group", _) => ConvNorm::None,
            ("layer", _) => ConvNorm::Layer(LayerNorm::load(
                store,
                &format!("{p}.layer_norm"),
                TORCH_NORM_EPS,
            )?),
            (other, _) => {
                bail!("`feat_extract_norm` is {other}, but has to be one of ['group', 'layer']")
            }
        };
        conv_layers.push(ConvLayer { conv, norm });
        inputs = outputs;
    }
    Ok(conv_layers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The arrays of an uncompressed `.npz` (a stored zip of `.npy` files, little-endian f32).
    fn read_npz(path: &std::path::Path) -> HashMap<String, Vec<f32>> {
        let bytes = std::fs::read(path).unwrap();
        let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]) as usize;
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
        let mut arrays = HashMap::new();
        let mut at = 0;
        while u32_at(at) == 0x0403_4b50 {
            assert_eq!(u16_at(at + 8), 0, "stored entries only");
            let (size, name_len, extra) = (u32_at(at + 18), u16_at(at + 26), u16_at(at + 28));
            let name = std::str::from_utf8(&bytes[at + 30..at + 30 + name_len]).unwrap();
            let npy = &bytes[at + 30 + name_len + extra..][..size];
            let header = u16::from_le_bytes([npy[8], npy[9]]) as usize;
            assert!(std::str::from_utf8(&npy[10..10 + header])
                .unwrap()
                .contains("'<f4'"));
            let values = npy[10 + header..]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            arrays.insert(name.trim_end_matches(".npy").to_string(), values);
            at += 30 + name_len + extra + size;
        }
        arrays
    }

    /// The tiny models (Wav2Vec2 with group norm and post-norm layers, and with layer norms,
    /// pre-norm layers and the legacy weight-norm names; HuBERT as hubert-large-ls960-ft, and
    /// with a batch-normed positional convolution and no projection norm; Data2VecAudio, chained
    /// positional convolutions; WavLM in base-plus's and large's layouts, gated relative position
    /// biases) give transformers' logits from its input values
    /// (models/make_ctc_fixtures.py, speech16k.wav): within 5e-4 on logits of about ±75.
    #[test]
    fn logits_match_transformers() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let golden = read_npz(&root.join("golden/automatic-speech-recognition/ctc-speech16k.npz"));
        for (prefix, folder) in [
            ("base", "asr-wav2vec2"),
            ("lv60", "asr-wav2vec2-lv60"),
            ("hubert", "asr-hubert"),
            ("hubertbn", "asr-hubert-bn"),
            ("data2vec", "asr-data2vec-audio"),
            ("wavlm", "asr-wavlm"),
            ("wavlmlarge", "asr-wavlm-large"),
            ("unispeech", "asr-unispeech"),
            ("unispeechsat", "asr-unispeech-sat"),
        ] {
            let files = crate::source::from_dir(&root.join("tiny").join(folder)).unwrap();
            let config = ModelConfig::from_json(files.config_json().unwrap()).unwrap();
            let model = Wav2Vec2::load(&files, &config, &Placement::cpu()).unwrap();
            let (logits, frames) = model
                .logits(&golden[&format!("{prefix}_input_values")])
                .unwrap();
            let want = &golden[&format!("{prefix}_logits")];
            assert_eq!(logits.len(), want.len(), "{prefix}: {frames} frames");
            let worst = logits
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            eprintln!("{prefix}: {frames} frames, logits within {worst:e}");
            assert!(worst < 5e-4, "{prefix}: {worst}");
        }
    }
}
