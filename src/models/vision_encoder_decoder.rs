//! VisionEncoderDecoder (`transformers`' `modeling_vision_encoder_decoder`, e.g.
//! `nlpconnect/vit-gpt2-image-captioning`, `microsoft/trocr-*`) as a [`Captioner`]: an image
//! network's last hidden state (ViT, DINOv2, DeiT: `encoder.*`), projected to the decoder's
//! width by `enc_to_dec_proj` where the checkpoint has one, read by a decoder with
//! cross-attention: GPT-2's (`decoder.transformer.h.N.crossattention`, `ln_cross_attn`; here)
//! or TrOCR's (`trocr.rs`).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::captioner::Captioner;
use super::config::{Activation, ModelConfig};
use super::cross_decoder::{decode_pass, ImageTextDecoder};
use super::decoders::{conv1d, scale_rows, DecoderConfig};
use super::encoder::DenseForm;
use super::layers::{activate, LayerNorm, Linear};
use super::seq2seq::{Heads, SourceCache, Span};
use super::vision::{load_feature_network, vision_store};
use super::weights::WeightStore;
use super::StepInput;
use crate::device::Placement;
use crate::source::ModelFiles;

/// The top level of a VisionEncoderDecoder `config.json`: its two models' configs.
#[derive(Debug, Clone, Deserialize)]
struct VisionEncoderDecoderConfig {
    encoder: serde_json::Value,
    decoder: serde_json::Value,
    decoder_start_token_id: Option<u32>,
    bos_token_id: Option<u32>,
}

/// The decoder's own start and first tokens (`generate` falls back to them).
#[derive(Debug, Clone, Deserialize)]
struct DecoderTokens {
    model_type: String,
    decoder_start_token_id: Option<u32>,
    bos_token_id: Option<u32>,
}

/// What the GPT-2 decoder's `config.json` adds to [`DecoderConfig`].
#[derive(Debug, Clone, Deserialize)]
struct Gpt2Extras {
    #[serde(default)]
    add_cross_attention: bool,
    n_inner: Option<usize>,
    #[serde(default = "gelu_new")]
    activation_function: String,
    #[serde(default = "yes")]
    scale_attn_weights: bool,
    #[serde(default)]
    scale_attn_by_inverse_layer_idx: bool,
    #[serde(default = "yes")]
    tie_word_embeddings: bool,
}

fn gelu_new() -> String {
    "gelu_new".into()
}

fn yes() -> bool {
    true
}

struct Block {
    ln_1: LayerNorm,
    /// Queries (scale folded in), keys and values.
    qkv: Linear,
    out: Linear,
    ln_cross: LayerNorm,
    /// The cross-attention's queries (scale folded in) and its keys and values of the image.
    cross_q: Linear,
    cross_k: Linear,
    cross_v: Linear,
    cross_out: Linear,
    ln_2: LayerNorm,
    fc: Linear,
    proj: Linear,
}

/// GPT-2 with cross-attention (`add_cross_attention`).
struct Gpt2Decoder {
    embeddings: Tensor,
    positions: Tensor,
    blocks: Vec<Block>,
    final_norm: LayerNorm,
    lm_head: Linear,
    activation: Activation,
    heads: Heads,
    hidden: usize,
    vocab_size: usize,
    device: Device,
}

/// A VisionEncoderDecoder `config.json`'s captioner: the encoder and decoder it names.
pub fn load(files: &ModelFiles, model: &ModelConfig, placement: &Placement) -> Result<Captioner> {
    let config: VisionEncoderDecoderConfig = model.family()?;
    let encoder_config =
        ModelConfig::from_json(config.encoder.clone()).context("the `encoder` of config.json")?;
    let decoder_config =
        ModelConfig::from_json(config.decoder.clone()).context("the `decoder` of config.json")?;
    let tokens: DecoderTokens = decoder_config.family()?;
    // (f32 throughout but the encoder's and decoder's dense layers, in the requested
    // precision on the CPU)
    let store = vision_store(files, placement)?;
    let decoder_store = store.sub("decoder.");
    let device = &placement.device;
    let decoder: Box<dyn ImageTextDecoder> = match tokens.model_type.as_str() {
            "gpt2" => Box::new(Gpt2Decoder::load(&decoder_store, &decoder_config, device)?),
            "trocr" => Box::new(super::trocr::TrocrDecoder::load(
                &decoder_store,
                &decoder_config,
                device,
            )?),
            other => bail!(
                "a VisionEncoderDecoder with a `{other}` decoder is not supported here; supported: gpt2, trocr"
            ),
        };
    let encoder = load_feature_network(&encoder_config, &mut store.sub("encoder."))
        .context("the image encoder")?;
    let enc_to_dec = store
        .contains("enc_to_dec_proj.weight")
        .then(|| Linear::load(&store, "enc_to_dec_proj", false))
        .transpose()?;
    // `generate`'s start: the generation config's decoder start, else its first token (the
    // top level's values, else the decoder's).
    let decoder_start = config
        .decoder_start_token_id
        .or(tokens.decoder_start_token_id)
        .or(config.bos_token_id)
        .or(tokens.bos_token_id)
        .context("config.json names no decoder_start_token_id")?;
    tracing::info!(
            "image-to-text network: vision-encoder-decoder, {} encoder, {} decoder of {} layers, vocabulary {}",
            encoder_config.model_type,
            tokens.model_type,
            decoder.layers(),
            decoder.vocab_size(),
        );
    Ok(Captioner {
        encoder,
        enc_to_dec,
        decoder,
        decoder_start,
        model_type: "vision-encoder-decoder",
        device: placement.device.clone(),
    })
}

impl Gpt2Decoder {
    fn load(decoder: &WeightStore, config: &ModelConfig, device: &Device) -> Result<Self> {
        let dims: DecoderConfig = config.family()?;
        let extras: Gpt2Extras = config.family()?;
        if !extras.add_cross_attention {
            bail!("the GPT-2 decoder has no cross-attention (add_cross_attention is false)");
        }
        dims.check_heads()?;
        // The decoder's dense layers in the requested precision too (each step reads them all:
        // bfloat16 halves what it reads).
        let form = DenseForm::choose(decoder, device);
        let blocks = (0..dims.num_hidden_layers)
            .map(|i| load_block(decoder, &dims, &extras, i).map(|b| b.dense_in(form)))
            .collect::<Result<Vec<_>>>()?;
        let embeddings = decoder.get("transformer.wte.weight")?;
        // `from_pretrained` ties lm_head to the token embeddings unless the config says not to.
        let lm_weight = if extras.tie_word_embeddings {
            embeddings.clone()
        } else {
            decoder.get("lm_head.weight")?
        };
        let lm_head = form.convert(Linear::no_bias(&lm_weight)?);
        let positions = decoder.get("transformer.wpe.weight")?;
        super::check::rows(
            &positions,
            "wpe.weight",
            "n_positions",
            dims.max_position_embeddings,
        )?;
        tracing::info!(
            "GPT-2 decoder dense layers in {}",
            DenseForm::describe(Some(&lm_head), DType::F32)
        );
        Ok(Gpt2Decoder {
            final_norm: LayerNorm::load_named(decoder, "transformer.ln_f", dims.eps(), false)?,
            vocab_size: embeddings.dim(0)?,
            embeddings,
            positions,
            blocks,
            lm_head,
            activation: Activation::parse(&extras.activation_function)?,
            heads: Heads {
                count: dims.num_attention_heads,
                dim: dims.head_dim(),
                dtype: DType::F32,
            },
            hidden: dims.hidden_size,
            device: device.clone(),
        })
    }
}

impl ImageTextDecoder for Gpt2Decoder {
    fn layers(&self) -> usize {
        self.blocks.len()
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn max_positions(&self) -> usize {
        self.positions.dim(0).unwrap_or(0)
    }

    fn encoded_keys_values(&self, encoded: &Tensor) -> Result<Vec<(Tensor, Tensor)>> {
        self.heads.encoded_keys_values(
            self.blocks.iter().map(|b| (&b.cross_k, &b.cross_v)),
            encoded,
        )
    }

    fn decode(&self, inputs: &mut [StepInput<SourceCache>]) -> Result<Vec<Vec<f32>>> {
        let embed = |ids: &[u32], positions: Vec<u32>| -> Result<Tensor> {
            let n = ids.len();
            let ids = Tensor::from_slice(ids, n, &self.device)?;
            let positions = Tensor::from_vec(positions, n, &self.device)?;
            Ok((self.embeddings.index_select(&ids, 0)?
                + self.positions.index_select(&positions, 0)?)?)
        };
        let layers = |mut x: Tensor, inputs: &mut [StepInput<SourceCache>], spans: &[_]| {
            for (l, block) in self.blocks.iter().enumerate() {
                x = self.block_forward(block, l, x, inputs, spans)?;
            }
            Ok(x)
        };
        let head = |x: Tensor| self.lm_head.forward(&self.final_norm.forward(&x)?);
        decode_pass(
            inputs,
            self.max_positions(),
            &self.device,
            embed,
            layers,
            head,
        )
    }
}

impl Gpt2Decoder {
    /// Block `l` (pre-norm) over a pass's rows.
    fn block_forward(
        &self,
        block: &Block,
        l: usize,
        mut x: Tensor,
        inputs: &mut [StepInput<SourceCache>],
        spans: &[Span],
    ) -> Result<Tensor> {
        let (h, hidden) = (&self.heads, self.hidden);
        let qkv = block.qkv.forward(&block.ln_1.forward(&x)?)?;
        let part = |i: usize| qkv.narrow(1, i * hidden, hidden);
        let caches = inputs.iter_mut().map(|i| &mut i.cache.inner);
        let context = h.attend_spans(caches, l, spans, (&part(0)?, &part(1)?, &part(2)?))?;
        x = (x + block.out.forward(&context)?)?;

        let q = block.cross_q.forward(&block.ln_cross.forward(&x)?)?;
        let caches = inputs.iter().map(|i| &i.cache.inner);
        let context = h.attend_encoded_spans(caches, l, spans, &q)?;
        x = (x + block.cross_out.forward(&context)?)?;

        let inner = activate(
            &block.fc.forward(&block.ln_2.forward(&x)?)?,
            self.activation,
        )?;
        Ok((&x + block.proj.forward(&inner)?)?)
    }
}

impl Block {
    /// The block with its dense layers in `form`.
    fn dense_in(self, form: DenseForm) -> Block {
        let c = |layer| form.convert(layer);
        Block {
            qkv: c(self.qkv),
            out: c(self.out),
            cross_q: c(self.cross_q),
            cross_k: c(self.cross_k),
            cross_v: c(self.cross_v),
            cross_out: c(self.cross_out),
            fc: c(self.fc),
            proj: c(self.proj),
            ..self
        }
    }
}

/// Block `i` of the GPT-2 decoder (`transformer.h.{i}`), from the decoder's own store.
fn load_block(
    store: &WeightStore,
    dims: &DecoderConfig,
    extras: &Gpt2Extras,
    i: usize,
) -> Result<Block> {
    let hidden = dims.hidden_size;
    let mut scale = 1.0;
    if extras.scale_attn_weights {
        scale /= (dims.head_dim() as f64).sqrt();
    }
    if extras.scale_attn_by_inverse_layer_idx {
        scale /= (i + 1) as f64;
    }
    let p = format!("transformer.h.{i}");
    let linear = |(weight, bias): (Tensor, Tensor)| Linear::new(&weight, &bias);
    let plain = |name: &str| linear(conv1d(store, &format!("{p}.{name}"))?);
    let norm = |name: &str| LayerNorm::load_named(store, &format!("{p}.{name}"), dims.eps(), false);
    // The cross-attention's c_attn makes keys and values of the image ([2 x hidden, hidden]).
    let (kv_weight, kv_bias) = conv1d(store, &format!("{p}.crossattention.c_attn"))?;
    let half = |t: &Tensor, i: usize| t.narrow(0, i * hidden, hidden)?.contiguous();
    let inner = extras.n_inner.unwrap_or(4 * hidden);
    let fc = conv1d(store, &format!("{p}.mlp.c_fc"))?;
    super::check::rows(&fc.0, "mlp.c_fc.weight", "n_inner", inner)?;
    let block = Block {
        ln_1: norm("ln_1")?,
        qkv: linear(scale_rows(
            conv1d(store, &format!("{p}.attn.c_attn"))?,
            hidden,
            scale,
        )?)?,
        out: plain("attn.c_proj")?,
        ln_cross: norm("ln_cross_attn")?,
        cross_q: linear(scale_rows(
            conv1d(store, &format!("{p}.crossattention.q_attn"))?,
            hidden,
            scale,
        )?)?,
        cross_k: Linear::new(&half(&kv_weight, 0)?, &half(&kv_bias, 0)?)?,
        cross_v: Linear::new(&half(&kv_weight, 1)?, &half(&kv_bias, 1)?)?,
        cross_out: plain("crossattention.c_proj")?,
        ln_2: norm("ln_2")?,
        fc: linear(fc)?,
        proj: plain("mlp.c_proj")?,
    };
    Ok(block)
}
