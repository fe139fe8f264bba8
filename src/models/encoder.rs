//! One transformer encoder for the BERT family (BERT, RoBERTa, XLM-RoBERTa, DistilBERT): they
//! differ only in weight names, position ids and the presence of token types, so one set of
//! explicit tensors serves them all. Post-LN layers, as in the original models.
//!
//! Performance choices (CPU): Q, K and V are one fused matmul; weights are stored transposed
//! ([in, out], contiguous) so every linear layer is a plain row-major GEMM; the 1/sqrt(d) attention
//! scale is folded into the query weights at load time; no mask work for unpadded batches.

use std::sync::Arc;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};

use super::check;
use super::config::EncoderConfig;
use super::layers::{activate, LayerNorm, Linear};
use super::quantized::Quantize;
use super::weights::WeightStore;
use crate::kernels::{self, PackedLinear};
use crate::registry::EncoderFamily;

struct Layer {
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    ffn_in: Linear,
    ffn_out: Linear,
    ffn_norm: LayerNorm,
}

/// Where one layer of a BERT-family checkpoint keeps its tensors: `{prefix}.{name}.weight` /
/// `.bias`, inside the base model.
pub struct LayerNames {
    /// `encoder.layer.3`, `transformer.layer.3`, `encoder.albert_layer_groups.0.albert_layers.0`.
    pub prefix: String,
    pub query: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub attention_out: &'static str,
    pub attention_norm: &'static str,
    pub ffn_in: &'static str,
    pub ffn_out: &'static str,
    pub ffn_norm: &'static str,
}

/// A BERT-family checkpoint's layout (see `models::encoders`): the layers the encoder runs, in
/// order (layers that share weights repeat the same names), and the name of the projection of
/// narrower embeddings to the hidden size, used when the checkpoint has it.
pub struct EncoderLayout {
    pub layers: Vec<LayerNames>,
    pub embeddings_project: &'static str,
}

impl Layer {
    /// One layer's tensors; the 1/sqrt(d) attention `scale` folded into the query.
    fn load(store: &WeightStore, names: &LayerNames, scale: f64, eps: f64) -> Result<Layer> {
        let name = |n: &str| format!("{}.{n}", names.prefix);
        let w = |n: &str, part: &str| store.base(&format!("{}.{part}", name(n)));
        let projection =
            |n: &str| -> Result<(Tensor, Tensor)> { Ok((w(n, "weight")?, w(n, "bias")?)) };
        Ok(Layer {
            qkv: Linear::fused_qkv(
                [
                    projection(names.query)?,
                    projection(names.key)?,
                    projection(names.value)?,
                ],
                scale,
            )?,
            attention_out: Linear::load(store, &name(names.attention_out), true)?,
            attention_norm: LayerNorm::load(store, &name(names.attention_norm), eps)?,
            ffn_in: Linear::load(store, &name(names.ffn_in), true)?,
            ffn_out: Linear::load(store, &name(names.ffn_out), true)?,
            ffn_norm: LayerNorm::load(store, &name(names.ffn_norm), eps)?,
        })
    }

    fn dense_in(self, form: DenseForm) -> Layer {
        Layer {
            qkv: form.convert(self.qkv),
            attention_out: form.convert(self.attention_out),
            ffn_in: form.convert(self.ffn_in),
            ffn_out: form.convert(self.ffn_out),
            ..self
        }
    }

    fn is_packed(&self) -> bool {
        [&self.qkv, &self.attention_out, &self.ffn_in, &self.ffn_out]
            .iter()
            .all(|l| l.is_packed())
    }
}

/// What the dense layers of the fused CPU path run in (the BERT-family encoders' and
/// Whisper's encoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DenseForm {
    /// As loaded: f32 panels on the CPU, candle tensors in the store's dtype elsewhere.
    AsLoaded,
    /// f32 panels from a bfloat16 store: a CPU without bf16 kernels that pay (candle's generic
    /// bf16 path there is several times slower than our f32 one, and less accurate).
    F32,
    /// bfloat16 on a CPU with AVX512-BF16 where that pays: weights and inputs in bf16 (f32
    /// sums), everything else (embeddings, norms, attention) in f32.
    Bf16,
    /// `SERVER_QUANTIZE=int8` on the CPU (from f32, whatever the dtype): everything else as
    /// without it.
    Int8,
}

impl DenseForm {
    pub(crate) fn choose(store: &WeightStore, device: &Device) -> DenseForm {
        let fused = matches!(device, Device::Cpu) && !kernels::generic_kernels_forced();
        if fused && store.quantize() == Some(Quantize::Int8) {
            return DenseForm::Int8;
        }
        if fused && store.dense_dtype() == DType::BF16 {
            if !kernels::bf16_available() {
                tracing::warn!("dtype bf16: this CPU has no AVX512-BF16: the encoder runs in f32 (scores as in float32)");
                return DenseForm::F32;
            }
            if kernels::bf16_pays() {
                return DenseForm::Bf16;
            }
            tracing::warn!("dtype bf16: this CPU's bf16 dense kernels are slower than its f32 ones: the encoder runs in f32 (scores as in float32)");
            return DenseForm::F32;
        }
        DenseForm::AsLoaded
    }

    /// Whether the layers are loaded from an f32 view of the store (the fused path's kernels
    /// start from f32 weights).
    pub(crate) fn loads_f32(self, store: &WeightStore) -> bool {
        self != DenseForm::AsLoaded && store.dtype() != DType::F32
    }

    /// What a converted layer runs in, for the start-up log (`dtype`: an unconverted one's).
    pub(crate) fn describe(layer: Option<&Linear>, dtype: DType) -> String {
        match (
            layer.and_then(Linear::bf16_kernel),
            layer.and_then(Linear::int8_kernel),
        ) {
            (Some(kernel), _) => format!("bfloat16 ({kernel})"),
            (_, Some(kernel)) => format!("int8 ({kernel})"),
            _ => format!("{dtype:?}"),
        }
    }

    /// A packed f32 layer in this form (as it was where the CPU lacks the form's kernels).
    pub(crate) fn convert_packed(self, layer: PackedLinear) -> PackedLinear {
        let converted = match self {
            DenseForm::AsLoaded | DenseForm::F32 => None,
            DenseForm::Bf16 => layer.to_bf16(),
            DenseForm::Int8 => layer.to_int8(),
        };
        converted.unwrap_or(layer)
    }

    /// A layer loaded from the (f32 view of the) store, in this form.
    pub(crate) fn convert(self, layer: Linear) -> Linear {
        match self {
            DenseForm::AsLoaded | DenseForm::F32 => layer,
            DenseForm::Bf16 => layer.into_bf16(),
            DenseForm::Int8 => layer.into_int8(),
        }
    }
}

/// The layers in the order they run, each converted to `form`; shared layers (ALBERT) are
/// loaded, and converted, once.
fn load_layers(
    config: &EncoderConfig,
    layout: &EncoderLayout,
    store: &WeightStore,
    form: DenseForm,
) -> Result<Vec<Arc<Layer>>> {
    let eps = config.layer_norm_eps;
    let head_dim = config.hidden_size / config.num_heads;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let mut unique: Vec<(String, Arc<Layer>)> = Vec::new();
    for names in &layout.layers {
        if !unique.iter().any(|(prefix, _)| *prefix == names.prefix) {
            let layer = Layer::load(store, names, scale, eps)?.dense_in(form);
            unique.push((names.prefix.clone(), Arc::new(layer)));
        }
    }
    Ok(layout
        .layers
        .iter()
        .map(|names| {
            let (_, layer) = unique
                .iter()
                .find(|(prefix, _)| *prefix == names.prefix)
                .expect("every layer was loaded above");
            layer.clone()
        })
        .collect())
}

/// Host-side description of a padded batch (right padding).
pub struct EncoderInput<'a> {
    pub input_ids: &'a [u32],
    pub type_ids: &'a [u32],
    pub lengths: &'a [usize],
    /// Padded length: every row of `input_ids` has this many entries.
    pub seq_len: usize,
}

pub struct Encoder {
    config: EncoderConfig,
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Option<Tensor>,
    embedding_norm: LayerNorm,
    /// ELECTRA's / ALBERT's projection when the embeddings are narrower than the hidden size.
    embeddings_project: Option<Linear>,
    /// The layers in the order they run (ALBERT's shared ones more than once).
    layers: Vec<Arc<Layer>>,
    device: Device,
}

impl Encoder {
    /// `store` must already have its base prefix detected; `layout` names its tensors.
    pub fn load(
        config: &EncoderConfig,
        layout: &EncoderLayout,
        store: &WeightStore,
        device: &Device,
    ) -> Result<Self> {
        let form = DenseForm::choose(store, device);
        let f32_view;
        let store = if form.loads_f32(store) {
            f32_view = store.in_dtype(DType::F32);
            &f32_view
        } else {
            store
        };
        check::heads(config.hidden_size, config.num_heads)?;
        let layers = load_layers(config, layout, store, form)?;
        let int8_kernel = layers.first().and_then(|layer| layer.qkv.int8_kernel());
        if store.quantize() == Some(Quantize::Int8) && int8_kernel.is_none() {
            tracing::warn!("SERVER_QUANTIZE=int8 applies to the fused CPU kernels: this encoder runs unquantized on {device:?}");
        }
        let token_type_embeddings = if config.uses_token_type_ids() {
            Some(store.base("embeddings.token_type_embeddings.weight")?)
        } else {
            None
        };
        let fused = matches!(device, Device::Cpu) && layers.iter().all(|l| l.is_packed());
        tracing::info!(
            "encoder kernels: {}",
            match (fused, form == DenseForm::Bf16, int8_kernel) {
                (true, _, Some(kernel)) => format!("fused CPU (dense layers in int8: {kernel})"),
                (true, true, None) => format!(
                    "fused CPU (packed GEMM panels, dense layers in bfloat16: {})",
                    layers
                        .first()
                        .and_then(|layer| layer.qkv.bf16_kernel())
                        .unwrap_or("f32 fallback")
                ),
                (true, false, None) => "fused CPU (packed GEMM panels)".to_string(),
                _ => "device-generic (candle tensor ops)".to_string(),
            }
        );
        let word_embeddings = store.base("embeddings.word_embeddings.weight")?;
        let position_embeddings = store.base("embeddings.position_embeddings.weight")?;
        check::rows(
            &word_embeddings,
            "embeddings.word_embeddings.weight",
            "vocab_size",
            config.vocab_size,
        )?;
        check::width(
            &word_embeddings,
            "embeddings.word_embeddings.weight",
            "the embedding size",
            config.embedding_size.unwrap_or(config.hidden_size),
        )?;
        check::rows(
            &position_embeddings,
            "embeddings.position_embeddings.weight",
            "max_position_embeddings",
            config.max_position_embeddings,
        )?;
        if let Some(table) = &token_type_embeddings {
            check::rows(
                table,
                "embeddings.token_type_embeddings.weight",
                "type_vocab_size",
                config.type_vocab_size,
            )?;
        }
        Ok(Encoder {
            config: config.clone(),
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            embedding_norm: LayerNorm::load(store, "embeddings.LayerNorm", config.layer_norm_eps)?,
            embeddings_project: if store
                .contains_base(&format!("{}.weight", layout.embeddings_project))
            {
                Some(Linear::load(store, layout.embeddings_project, true)?)
            } else {
                None
            },
            layers,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// Hidden states of the last layer, [batch, seq_len, hidden]; with `first_token_only`, just
    /// the first token's, [batch, 1, hidden] (all a sequence-level head reads: the last layer then
    /// skips the other rows' queries, projections and feed-forward work on CPU).
    pub fn forward(&self, input: &EncoderInput, first_token_only: bool) -> Result<Tensor> {
        let embedded = self.embed(input)?; // [tokens, hidden]
        if matches!(self.device, Device::Cpu) && self.layers.iter().all(|l| l.is_packed()) {
            self.forward_cpu(embedded, input, first_token_only)
        } else {
            let hidden = self.forward_candle(embedded, input)?;
            Ok(if first_token_only {
                hidden.narrow(1, 0, 1)?
            } else {
                hidden
            })
        }
    }

    /// Word + position (+ token type) embeddings, normalised: [tokens, hidden].
    fn embed(&self, input: &EncoderInput) -> Result<Tensor> {
        let tokens = input.lengths.len() * input.seq_len;
        let ids = Tensor::from_slice(input.input_ids, tokens, &self.device)?;
        let positions = Tensor::from_vec(self.position_ids(input), tokens, &self.device)?;
        let mut x = self.word_embeddings.index_select(&ids, 0)?;
        x = (x + self.position_embeddings.index_select(&positions, 0)?)?;
        if let Some(types) = &self.token_type_embeddings {
            let type_ids = Tensor::from_slice(input.type_ids, tokens, &self.device)?;
            x = (x + types.index_select(&type_ids, 0)?)?;
        }
        let x = self.embedding_norm.forward(&x)?;
        match &self.embeddings_project {
            Some(project) => project.forward(&x),
            None => Ok(x),
        }
    }

    /// The fused CPU path: packed dense layers and slice kernels, no intermediate tensors.
    fn forward_cpu(
        &self,
        embedded: Tensor,
        input: &EncoderInput,
        first_token_only: bool,
    ) -> Result<Tensor> {
        let batch = input.lengths.len();
        let (seq_len, hidden) = (input.seq_len, self.config.hidden_size);
        let mut rows = seq_len; // rows kept per sequence
        let mut x: Vec<f32> = embedded.flatten_all()?.to_vec1()?;
        for (i, layer) in self.layers.iter().enumerate() {
            let qkv = layer.qkv.forward_slice(&x, batch * seq_len)?;
            if first_token_only && i + 1 == self.layers.len() {
                // Keys and values of every token, but only the first token goes on.
                rows = 1;
                x = x
                    .chunks_exact(seq_len * hidden)
                    .flat_map(|s| s[..hidden].iter().copied())
                    .collect();
            }
            let tokens = batch * rows;
            let context = kernels::attention(
                &qkv,
                input.lengths,
                seq_len,
                rows,
                hidden,
                self.config.num_heads,
                layer.qkv.bf16_kernel().is_some(),
            );
            let mut attended = layer.attention_out.forward_slice(&context, tokens)?;
            kernels::add(&mut attended, &x);
            layer.attention_norm.apply(&mut attended);
            let inner = layer.ffn_in.forward_slice_activated(
                &attended,
                tokens,
                Some(self.config.activation),
            )?;
            let mut out = layer.ffn_out.forward_slice(&inner, tokens)?;
            kernels::add(&mut out, &attended);
            layer.ffn_norm.apply(&mut out);
            x = out;
        }
        Ok(Tensor::from_vec(x, (batch, rows, hidden), &self.device)?)
    }

    /// The device-generic path, in candle tensors.
    fn forward_candle(&self, embedded: Tensor, input: &EncoderInput) -> Result<Tensor> {
        let batch = input.lengths.len();
        let seq_len = input.seq_len;
        let hidden = self.config.hidden_size;
        let heads = self.config.num_heads;
        let head_dim = hidden / heads;
        let tokens = batch * seq_len;
        let mut x = embedded;

        // Additive mask over keys, only when some row is padded.
        let padded = input.lengths.iter().any(|&l| l < seq_len);
        let mask = if padded {
            let mut values = vec![0f32; tokens];
            for (row, &len) in input.lengths.iter().enumerate() {
                for v in &mut values[row * seq_len + len..(row + 1) * seq_len] {
                    *v = f32::MIN;
                }
            }
            // f32::MIN becomes -inf in f16, which softmax also turns into 0.
            Some(
                Tensor::from_vec(values, (batch, 1, 1, seq_len), &self.device)?
                    .to_dtype(x.dtype())?,
            )
        } else {
            None
        };

        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?; // [tokens, 3 * hidden]
            let qkv = qkv
                .reshape((batch, seq_len, 3, heads, head_dim))?
                .permute((2, 0, 3, 1, 4))?;
            let q = qkv.get(0)?.contiguous()?; // [batch, heads, seq, head_dim], pre-scaled
            let k = qkv.get(1)?.contiguous()?;
            let v = qkv.get(2)?.contiguous()?;
            let mut scores = q.matmul(&k.t()?)?; // [batch, heads, seq, seq]
            if let Some(mask) = &mask {
                scores = scores.broadcast_add(mask)?;
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let context = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((tokens, hidden))?;
            let attended = layer.attention_out.forward(&context)?;
            x = layer.attention_norm.forward(&(attended + &x)?)?;

            let inner = layer.ffn_in.forward(&x)?;
            let inner = activate(&inner, self.config.activation)?;
            let out = layer.ffn_out.forward(&inner)?;
            x = layer.ffn_norm.forward(&(out + &x)?)?;
        }
        Ok(x.reshape((batch, seq_len, hidden))?)
    }

    /// BERT and DistilBERT count from 0; RoBERTa from `padding_idx + 1`, with padding at `padding_idx`.
    fn position_ids(&self, input: &EncoderInput) -> Vec<u32> {
        let mut positions = Vec::with_capacity(input.lengths.len() * input.seq_len);
        for &len in input.lengths {
            for i in 0..input.seq_len {
                let p = match self.config.family {
                    EncoderFamily::Roberta if i < len => self.config.pad_token_id + 1 + i as u32,
                    EncoderFamily::Roberta => self.config.pad_token_id,
                    _ => i as u32,
                };
                positions.push(p);
            }
        }
        positions
    }
}

/// The first token's hidden state of every row: [batch, hidden].
pub fn first_token(hidden: &Tensor) -> Result<Tensor> {
    Ok(hidden.narrow(D::Minus2, 0, 1)?.squeeze(D::Minus2)?)
}
