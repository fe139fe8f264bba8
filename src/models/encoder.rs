//! One transformer encoder for the BERT family (BERT, RoBERTa, XLM-RoBERTa, DistilBERT): they
//! differ only in weight names, position ids and the presence of token types, so one set of
//! explicit tensors serves them all. Post-LN layers, as in the original models.
//!
//! Performance choices (CPU): Q, K and V are one fused matmul; weights are stored transposed
//! ([in, out], contiguous) so every linear layer is a plain row-major GEMM; the 1/sqrt(d) attention
//! scale is folded into the query weights at load time; no mask work for unpadded batches.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};

use super::config::EncoderConfig;
use super::layers::{activate, LayerNorm, Linear};
use super::weights::WeightStore;
use crate::kernels;
use crate::registry::EncoderFamily;

struct Layer {
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    ffn_in: Linear,
    ffn_out: Linear,
    ffn_norm: LayerNorm,
}

impl Layer {
    fn dense_in_bf16(self) -> Layer {
        Layer {
            qkv: self.qkv.into_bf16(),
            attention_out: self.attention_out.into_bf16(),
            ffn_in: self.ffn_in.into_bf16(),
            ffn_out: self.ffn_out.into_bf16(),
            ..self
        }
    }

    fn is_packed(&self) -> bool {
        [&self.qkv, &self.attention_out, &self.ffn_in, &self.ffn_out]
            .iter()
            .all(|l| matches!(l, Linear::Packed(_)))
    }
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
    /// ELECTRA's `embeddings_project` when its embeddings are narrower than its hidden size.
    embeddings_project: Option<Linear>,
    layers: Vec<Layer>,
    device: Device,
}

impl Encoder {
    /// `store` must already have its base prefix detected.
    pub fn load(config: &EncoderConfig, store: &WeightStore, device: &Device) -> Result<Self> {
        if !config.is_bert_like() {
            anyhow::bail!("{:?} is not a BERT-family encoder", config.family);
        }
        // bfloat16 on a CPU with AVX512-BF16: the dense layers' weights and inputs in bf16
        // (f32 sums), everything else (embeddings, norms, attention) in f32 on the fused path.
        let bf16_dense = matches!(device, Device::Cpu)
            && store.dtype() == DType::BF16
            && !kernels::generic_kernels_forced()
            && kernels::bf16_available();
        let f32_view;
        let store = if bf16_dense {
            f32_view = store.in_dtype(DType::F32);
            &f32_view
        } else {
            store
        };
        let eps = config.layer_norm_eps;
        let head_dim = config.hidden_size / config.num_heads;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let layer = match config.family {
                EncoderFamily::Bert | EncoderFamily::Roberta | EncoderFamily::Electra => {
                    let p = format!("encoder.layer.{i}");
                    let w = |n: &str| store.base(&format!("{p}.{n}"));
                    Layer {
                        qkv: fused_qkv(
                            [
                                (
                                    w("attention.self.query.weight")?,
                                    w("attention.self.query.bias")?,
                                ),
                                (
                                    w("attention.self.key.weight")?,
                                    w("attention.self.key.bias")?,
                                ),
                                (
                                    w("attention.self.value.weight")?,
                                    w("attention.self.value.bias")?,
                                ),
                            ],
                            scale,
                        )?,
                        attention_out: Linear::load(
                            store,
                            &format!("{p}.attention.output.dense"),
                            true,
                        )?,
                        attention_norm: LayerNorm::load(
                            store,
                            &format!("{p}.attention.output.LayerNorm"),
                            eps,
                        )?,
                        ffn_in: Linear::load(store, &format!("{p}.intermediate.dense"), true)?,
                        ffn_out: Linear::load(store, &format!("{p}.output.dense"), true)?,
                        ffn_norm: LayerNorm::load(store, &format!("{p}.output.LayerNorm"), eps)?,
                    }
                }
                EncoderFamily::DebertaV2 | EncoderFamily::ModernBert => {
                    unreachable!("refused above")
                }
                EncoderFamily::DistilBert => {
                    let p = format!("transformer.layer.{i}");
                    let w = |n: &str| store.base(&format!("{p}.{n}"));
                    Layer {
                        qkv: fused_qkv(
                            [
                                (w("attention.q_lin.weight")?, w("attention.q_lin.bias")?),
                                (w("attention.k_lin.weight")?, w("attention.k_lin.bias")?),
                                (w("attention.v_lin.weight")?, w("attention.v_lin.bias")?),
                            ],
                            scale,
                        )?,
                        attention_out: Linear::load(
                            store,
                            &format!("{p}.attention.out_lin"),
                            true,
                        )?,
                        attention_norm: LayerNorm::load(store, &format!("{p}.sa_layer_norm"), eps)?,
                        ffn_in: Linear::load(store, &format!("{p}.ffn.lin1"), true)?,
                        ffn_out: Linear::load(store, &format!("{p}.ffn.lin2"), true)?,
                        ffn_norm: LayerNorm::load(store, &format!("{p}.output_layer_norm"), eps)?,
                    }
                }
            };
            layers.push(layer);
        }
        let token_type_embeddings = if config.uses_token_type_ids() {
            Some(store.base("embeddings.token_type_embeddings.weight")?)
        } else {
            None
        };
        if bf16_dense {
            layers = layers.into_iter().map(Layer::dense_in_bf16).collect();
        }
        let fused = matches!(device, Device::Cpu) && layers.iter().all(Layer::is_packed);
        tracing::info!(
            "encoder kernels: {}",
            match (fused, bf16_dense) {
                (true, true) => "fused CPU (packed GEMM panels, dense layers in bfloat16)",
                (true, false) => "fused CPU (packed GEMM panels)",
                _ => "device-generic (candle tensor ops)",
            }
        );
        Ok(Encoder {
            config: config.clone(),
            word_embeddings: store.base("embeddings.word_embeddings.weight")?,
            position_embeddings: store.base("embeddings.position_embeddings.weight")?,
            token_type_embeddings,
            embedding_norm: LayerNorm::load(store, "embeddings.LayerNorm", eps)?,
            embeddings_project: if store.contains_base("embeddings_project.weight") {
                Some(Linear::load(store, "embeddings_project", true)?)
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
        if matches!(self.device, Device::Cpu) && self.layers.iter().all(Layer::is_packed) {
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
            );
            let mut attended = layer.attention_out.forward_slice(&context, tokens)?;
            kernels::add(&mut attended, &x);
            layer.attention_norm.apply(&mut attended);
            let mut inner = layer.ffn_in.forward_slice(&attended, tokens)?;
            kernels::activate(&mut inner, self.config.activation);
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

fn fused_qkv(parts: [(Tensor, Tensor); 3], query_scale: f64) -> Result<Linear> {
    let [(qw, qb), (kw, kb), (vw, vb)] = parts;
    let qw = (qw * query_scale)?;
    let qb = (qb * query_scale)?;
    let weight = Tensor::cat(&[&qw, &kw, &vw], 0)?;
    let bias = Tensor::cat(&[&qb, &kb, &vb], 0)?;
    Linear::new(&weight, &bias)
}
