//! What the encoder–decoder networks (T5 in t5.rs, BART and Marian in bart.rs) share: the
//! per-sequence cache and multi-head attention over explicit tensors.
//!
//! A sequence's first step encodes its input and keeps, for every decoder layer, the encoder
//! output's keys and values; each step then feeds one decoder token per sequence, and the
//! decoder runs for all running sequences at once (projections and feed-forward layers as one
//! product over the batch, attention per sequence over its own cache).

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use super::host::on_host_f32;
use super::layers::Linear;
use super::{append_keys_values, StepInput, StepModel};

/// One sequence's state in an encoder–decoder model.
#[derive(Clone, Default)]
pub struct Seq2SeqCache {
    /// Per decoder layer, the encoder output's keys and values: [heads, source, head_dim].
    pub(super) cross: Vec<(Tensor, Tensor)>,
    /// Per decoder layer, the decoder's own keys and values so far.
    pub(super) own: Vec<Option<(Tensor, Tensor)>>,
    /// Decoder tokens already in the cache (the position of the next one).
    pub(super) len: usize,
}

impl Seq2SeqCache {
    /// Whether the sequence's input has been encoded (its first step is done).
    pub(super) fn started(&self) -> bool {
        !self.cross.is_empty()
    }
}

/// Multi-head shapes of one network.
#[derive(Debug, Clone, Copy)]
pub(super) struct Heads {
    pub count: usize,
    pub dim: usize,
    /// The activations' dtype (attention probabilities are computed in f32).
    pub dtype: DType,
}

impl Heads {
    /// [n, count * dim] → [count, n, dim]
    pub fn split(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        Ok(x.reshape((n, self.count, self.dim))?
            .transpose(0, 1)?
            .contiguous()?)
    }

    /// Softmax attention of queries [count, n, dim] over keys and values [count, len, dim],
    /// plus an optional bias [count, n, len]: [n, count * dim].
    pub fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        if bias.is_none() {
            if let Some(context) = attend_on_host(q, k, v)? {
                return Ok(context);
            }
        }
        let n = q.dim(1)?;
        let mut scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
        if let Some(bias) = bias {
            scores = scores.broadcast_add(bias)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(self.dtype)?;
        Ok(probs
            .matmul(v)?
            .transpose(0, 1)?
            .reshape((n, self.count * self.dim))?)
    }
}

/// Queries per head up to which [`attend_on_host`] runs (a decoder step has one; an encoder's
/// many are candle's matmul, which pays for packing the keys there).
const HOST_QUERIES: usize = 4;

/// [`Heads::attend`] without bias for a few f32 queries over contiguous f32 keys and values on
/// the CPU: dot products, softmax and weighted sums read the tensors' host slices in place.
/// candle's matmul repacks the keys on every call, which cost more than the products: a fifth
/// of Whisper's time at 8 concurrent transcriptions went to its decoder's cross-attention over
/// 1500 encoder positions. `None` where it does not apply.
fn attend_on_host(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Option<Tensor>> {
    let host_f32 = |t: &Tensor| {
        matches!(t.device(), candle_core::Device::Cpu)
            && t.dtype() == DType::F32
            && t.is_contiguous()
    };
    let (count, n, dim) = q.dims3()?;
    let len = k.dim(1)?;
    if n > HOST_QUERIES || ![q, k, v].into_iter().all(host_f32) || v.dim(1)? != len || len == 0 {
        return Ok(None);
    }
    let what = "host attention";
    let context = on_host_f32(q, what, |q| {
        on_host_f32(k, what, |k| {
            on_host_f32(v, what, |v| attend_rows(q, k, v, [count, n, len, dim]))
        })
    })???;
    Ok(Some(Tensor::from_vec(
        context,
        (n, count * dim),
        &candle_core::Device::Cpu,
    )?))
}

/// `attend_on_host`'s arithmetic: q [count, n, dim], k and v [count, len, dim] → [n, count * dim].
fn attend_rows(q: &[f32], k: &[f32], v: &[f32], [count, n, len, dim]: [usize; 4]) -> Vec<f32> {
    let mut context = vec![0f32; n * count * dim];
    let mut scores = vec![0f32; len];
    for h in 0..count {
        let (keys, values) = (
            &k[h * len * dim..][..len * dim],
            &v[h * len * dim..][..len * dim],
        );
        for i in 0..n {
            let query = &q[(h * n + i) * dim..][..dim];
            for (score, key) in scores.iter_mut().zip(keys.chunks_exact(dim)) {
                *score = crate::kernels::dot(query, key);
            }
            crate::kernels::softmax_in_place(&mut scores);
            let out = &mut context[(i * count + h) * dim..][..dim];
            for (&p, value) in scores.iter().zip(values.chunks_exact(dim)) {
                for (o, &x) in out.iter_mut().zip(value) {
                    *o += p * x;
                }
            }
        }
    }
    context
}

/// The decoder token of each sequence in this step: a sequence's first step encodes its input
/// (`encode`: the cross-attention keys and values of every decoder layer) and feeds the start
/// token; later steps feed the one token they are given. Past `max_length` decoder tokens the
/// step fails.
/// An encoder–decoder network (T5, BART, Marian). The generation scheduler drives it through
/// the one `StepModel` below: a sequence's first step encodes its tokens (the input text) and
/// decodes the start token; later steps decode the one token they are fed; the decoder runs for
/// all sequences at once.
pub trait EncoderDecoder: Send + Sync + 'static {
    fn decoder_layers(&self) -> usize;
    fn decoder_start(&self) -> u32;
    /// Tokens either side may hold (`usize::MAX`: relative positions, no limit of their own).
    fn position_limit(&self) -> usize;
    /// One input's cross-attention keys and values, per decoder layer.
    fn encode_input(&self, ids: &[u32]) -> Result<Vec<(Tensor, Tensor)>>;
    /// One decoder pass over each sequence's token `ids` (their caches grow by one): the f32
    /// logits of each.
    fn decode(&self, inputs: &mut [StepInput<Seq2SeqCache>], ids: &[u32]) -> Result<Vec<Vec<f32>>>;
}

impl<T: EncoderDecoder> StepModel for T {
    type Cache = Seq2SeqCache;

    fn new_cache(&self) -> Seq2SeqCache {
        Seq2SeqCache::default()
    }

    fn step(&self, inputs: &mut [StepInput<Seq2SeqCache>]) -> Result<Vec<Vec<f32>>> {
        let ids = decoder_tokens(
            inputs,
            self.decoder_layers(),
            self.decoder_start(),
            self.position_limit(),
            |tokens| self.encode_input(tokens),
        )?;
        self.decode(inputs, &ids)
    }

    fn context(&self, _prompt: &[u32]) -> Vec<u32> {
        vec![self.decoder_start()]
    }
}

fn decoder_tokens(
    inputs: &mut [StepInput<Seq2SeqCache>],
    layers: usize,
    start: u32,
    max_length: usize,
    encode: impl Fn(&[u32]) -> Result<Vec<(Tensor, Tensor)>>,
) -> Result<Vec<u32>> {
    let mut ids = Vec::with_capacity(inputs.len());
    for input in inputs.iter_mut() {
        if !input.cache.started() {
            input.cache.cross = encode(input.tokens)?;
            input.cache.own = vec![None; layers];
            ids.push(start);
        } else if let [token] = input.tokens {
            if input.cache.len >= max_length {
                bail!("the output would be longer than the model's {max_length} positions");
            }
            ids.push(*token);
        } else {
            bail!("an encoder–decoder sequence takes one new token per step");
        }
    }
    Ok(ids)
}

impl Heads {
    /// What a sequence's cache keeps of its encoded input: every decoder layer's keys and
    /// values of it, from that layer's cross-attention (key, value) projections.
    pub fn encoded_keys_values<'a>(
        &self,
        projections: impl Iterator<Item = (&'a Linear, &'a Linear)>,
        encoded: &Tensor,
    ) -> Result<Vec<(Tensor, Tensor)>> {
        projections
            .map(|(k, v)| {
                Ok((
                    self.split(&k.forward(encoded)?)?,
                    self.split(&v.forward(encoded)?)?,
                ))
            })
            .collect()
    }

    /// Decoder self-attention of layer `layer`: each sequence's new row of `q`, `k`, `v`
    /// ([batch, count * dim]) over its cache, which grows by the row; `biases`: one per sequence.
    pub fn attend_own(
        &self,
        inputs: &mut [StepInput<Seq2SeqCache>],
        layer: usize,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        biases: Option<&[Tensor]>,
    ) -> Result<Tensor> {
        let mut context = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter_mut().enumerate() {
            let row = |t: &Tensor| self.split(&t.narrow(0, i, 1)?);
            let (k, v) = append_keys_values(&mut input.cache.own[layer], (row(k)?, row(v)?), 1)?;
            context.push(self.attend(&row(q)?, &k, &v, biases.map(|b| &b[i]))?);
        }
        Ok(Tensor::cat(&context, 0)?)
    }

    /// Cross-attention of layer `layer`: each sequence's row of `q` over its encoded input.
    pub fn attend_input(
        &self,
        inputs: &[StepInput<Seq2SeqCache>],
        layer: usize,
        q: &Tensor,
    ) -> Result<Tensor> {
        let mut context = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            let (k, v) = &input.cache.cross[layer];
            context.push(self.attend(&self.split(&q.narrow(0, i, 1)?)?, k, v, None)?);
        }
        Ok(Tensor::cat(&context, 0)?)
    }
}

/// Where one sequence's new tokens sit in a decoder pass over several sequences' tokens at once
/// (a first step may feed several: Whisper's start tokens): rows `first..first + n` of the
/// pass, positions `start..start + n` of the sequence.
#[derive(Debug, Clone, Copy)]
pub(super) struct Span {
    pub first: usize,
    pub n: usize,
    pub start: usize,
}

/// One decoder pass's input: every sequence's new tokens (`(tokens already cached, new
/// tokens)` each), their positions and spans; past `limit` positions the pass fails.
pub(super) fn spans<'a>(
    sequences: impl Iterator<Item = (usize, &'a [u32])>,
    limit: usize,
) -> Result<(Vec<u32>, Vec<u32>, Vec<Span>)> {
    let (mut ids, mut positions, mut spans) = (Vec::new(), Vec::new(), Vec::new());
    for (start, tokens) in sequences {
        let n = tokens.len();
        if n == 0 {
            bail!("a sequence was fed no token");
        }
        if start + n > limit {
            bail!("the output would be longer than the model's {limit} positions");
        }
        spans.push(Span {
            first: ids.len(),
            n,
            start,
        });
        ids.extend_from_slice(tokens);
        positions.extend((start..start + n).map(|p| p as u32));
    }
    Ok((ids, positions, spans))
}

/// The rows of a pass that hold each sequence's last token (the logits to return).
pub(super) fn last_rows(spans: &[Span], device: &Device) -> Result<Tensor> {
    let last: Vec<u32> = spans.iter().map(|s| (s.first + s.n - 1) as u32).collect();
    Ok(Tensor::from_vec(last, spans.len(), device)?)
}

/// [n, start + n]: 0 where new row i may see position j (j <= start + i), -inf elsewhere.
pub(super) fn causal_mask(n: usize, start: usize, device: &Device) -> Result<Tensor> {
    let len = start + n;
    let values: Vec<f32> = (0..n)
        .flat_map(|i| {
            (0..len).map(move |j| {
                if j <= start + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(values, (n, len), device)?)
}

impl Heads {
    /// Decoder self-attention of layer `layer` over spans: each sequence's rows of `q`, `k`,
    /// `v` ([rows, count * dim]) over its cache, which grows by them (causal within a span).
    pub fn attend_spans<'c>(
        &self,
        caches: impl Iterator<Item = &'c mut Seq2SeqCache>,
        layer: usize,
        spans: &[Span],
        (q, k, v): (&Tensor, &Tensor, &Tensor),
    ) -> Result<Tensor> {
        let mut context = Vec::with_capacity(spans.len());
        for (cache, span) in caches.zip(spans) {
            let rows = |t: &Tensor| self.split(&t.narrow(0, span.first, span.n)?);
            let (k, v) = append_keys_values(&mut cache.own[layer], (rows(k)?, rows(v)?), 1)?;
            let mask = (span.n > 1)
                .then(|| causal_mask(span.n, span.start, q.device()))
                .transpose()?;
            context.push(self.attend(&rows(q)?, &k, &v, mask.as_ref())?);
        }
        Ok(Tensor::cat(&context, 0)?)
    }

    /// Cross-attention of layer `layer` over spans: each sequence's rows of `q` over its
    /// encoded input.
    pub fn attend_encoded_spans<'c>(
        &self,
        caches: impl Iterator<Item = &'c Seq2SeqCache>,
        layer: usize,
        spans: &[Span],
        q: &Tensor,
    ) -> Result<Tensor> {
        let mut context = Vec::with_capacity(spans.len());
        for (cache, span) in caches.zip(spans) {
            let (k, v) = &cache.cross[layer];
            let rows = self.split(&q.narrow(0, span.first, span.n)?)?;
            context.push(self.attend(&rows, k, v, None)?);
        }
        Ok(Tensor::cat(&context, 0)?)
    }
}

/// The state of a sequence whose encoder reads a tensor (a speech model's features, an image's
/// pixels): the source until its first step encodes it, then the caches.
#[derive(Clone, Default)]
pub struct SourceCache {
    pub(super) source: Option<Tensor>,
    pub(super) inner: Seq2SeqCache,
}

impl SourceCache {
    pub(super) fn with_source(source: &Tensor) -> Self {
        SourceCache {
            source: Some(source.clone()),
            inner: Seq2SeqCache::default(),
        }
    }
}

/// `encode` over the sources in passes: on the CPU one source a pass (1500 audio positions or
/// 197 image patches already make large products, and a batch of sources only added up their
/// activations' memory: Whisper at 16 clients on 2 cores ran faster so, at 0.65 of the memory),
/// elsewhere all in one.
pub(super) fn encode_in_passes<T>(
    sources: &[Tensor],
    device: &Device,
    mut encode: impl FnMut(&Tensor) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    let per_pass = if device.is_cpu() {
        1
    } else {
        sources.len().max(1)
    };
    let mut encoded = Vec::with_capacity(sources.len());
    for group in sources.chunks(per_pass) {
        encoded.extend(encode(&Tensor::stack(group, 0)?)?);
    }
    Ok(encoded)
}

/// Encodes the sources of the sequences that start in this step (`encode([sources])`: per
/// source, every decoder layer's cross keys and values; see [`encode_in_passes`]), and readies
/// their caches for `layers` decoder layers.
pub(super) fn start_sequences(
    inputs: &mut [StepInput<SourceCache>],
    layers: usize,
    encode: impl FnOnce(&[Tensor]) -> Result<Vec<Vec<(Tensor, Tensor)>>>,
) -> Result<()> {
    let starting: Vec<usize> = (0..inputs.len())
        .filter(|&i| !inputs[i].cache.inner.started())
        .collect();
    if starting.is_empty() {
        return Ok(());
    }
    let sources = starting
        .iter()
        .map(|&i| {
            inputs[i]
                .cache
                .source
                .take()
                .ok_or_else(|| anyhow::anyhow!("a sequence without its encoder's input"))
        })
        .collect::<Result<Vec<_>>>()?;
    for (&i, cross) in starting.iter().zip(encode(&sources)?) {
        let cache = &mut inputs[i].cache.inner;
        cache.cross = cross;
        cache.own = vec![None; layers];
    }
    Ok(())
}
