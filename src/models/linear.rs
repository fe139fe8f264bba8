//! Dense layers `y = x W^T + b`, the bulk of an encoder's work.
//!
//! On CPU we own this hot path. A plain GEMM call on these shapes (a few tokens x hundreds of
//! features) spends its time on strided weight reads: each step of the inner product touches a
//! new page of the weight matrix. So the weights are packed once at load time into column-major
//! panels of `PANEL` output rows; each panel is one small GEMM whose operands stream sequentially,
//! the bias is fused (the output starts as the bias, then accumulates), and panels are shared out
//! across threads when the product is large enough to pay for it. Other devices use candle.

use anyhow::{bail, Result};
use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::cpu_kernels::SharedPtr;
use super::linear_bf16::{self, Bf16Panels};

/// Output rows per packed panel: 4 microkernel strips of 16; a panel of a 384-wide input is
/// 96 KiB, comfortably inside L2.
const PANEL: usize = 64;
/// Below this many multiply-adds a product runs on one thread (thread hand-off costs more).
const PARALLEL_MIN_MACS: usize = 1 << 21;

/// `SAGEMAKER_HF_GENERIC_KERNELS=1` keeps every layer on the device-generic candle path even on
/// CPU: the path GPUs take, so that its results can be checked against the goldens on any machine.
pub fn generic_kernels_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| {
        std::env::var("SAGEMAKER_HF_GENERIC_KERNELS").is_ok_and(|v| v == "1" || v == "true")
    })
}

pub enum Linear {
    Packed(PackedLinear),
    Candle { weight_t: Tensor, bias: Tensor },
}

impl Linear {
    /// `weight`: [out, in] as stored by PyTorch; `bias`: [out].
    pub fn new(weight: &Tensor, bias: &Tensor) -> Result<Self> {
        if matches!(weight.device(), Device::Cpu)
            && weight.dtype() == DType::F32
            && !generic_kernels_forced()
        {
            let (out, inp) = weight.dims2()?;
            let w = weight.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            let b = bias.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            Ok(Linear::Packed(PackedLinear::pack(&w, &b, out, inp)))
        } else {
            Ok(Linear::Candle {
                weight_t: weight.t()?.contiguous()?,
                bias: bias.clone(),
            })
        }
    }

    /// Loads `{name}.weight` and `{name}.bias`; `base` names are inside the base model.
    pub fn load(store: &super::weights::WeightStore, name: &str, base: bool) -> Result<Self> {
        let get = |suffix: &str| {
            let full = format!("{name}.{suffix}");
            if base {
                store.base(&full)
            } else {
                store.get(&full)
            }
        };
        Linear::new(&get("weight")?, &get("bias")?)
    }

    /// `{name}.weight` of a layer built with `bias=False`.
    pub fn load_no_bias(store: &super::weights::WeightStore, name: &str) -> Result<Self> {
        Linear::no_bias(&store.get(&format!("{name}.weight"))?)
    }

    /// A layer without bias (a zero bias keeps one kernel).
    pub fn no_bias(weight: &Tensor) -> Result<Self> {
        let bias = Tensor::zeros(weight.dim(0)?, weight.dtype(), weight.device())?;
        Linear::new(weight, &bias)
    }

    /// The packed CPU kernel on a host slice: n rows of `in` → n rows of `out`.
    pub fn forward_slice(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        match self {
            Linear::Packed(packed) if x.len() == n * packed.inp => Ok(packed.forward(x, n)),
            Linear::Packed(packed) => bail!(
                "linear layer expects {} x {} inputs, got {}",
                n,
                packed.inp,
                x.len()
            ),
            Linear::Candle { .. } => {
                bail!("this linear layer lives on a device, not in host memory")
            }
        }
    }

    /// A packed layer with its weights in bfloat16 (when the CPU can); others unchanged.
    pub fn into_bf16(self) -> Linear {
        match &self {
            Linear::Packed(packed) => packed.to_bf16().map_or(self, Linear::Packed),
            Linear::Candle { .. } => self,
        }
    }

    /// `x`: [n, in] → [n, out].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Packed(packed) => {
                let (n, inp) = x.dims2()?;
                if inp != packed.inp {
                    bail!("linear layer expects {} inputs, got {inp}", packed.inp);
                }
                let x = x.contiguous()?;
                let y = {
                    let (storage, layout) = x.storage_and_layout();
                    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
                        bail!("packed linear layers take f32 CPU tensors");
                    };
                    let start = layout.start_offset();
                    packed.forward(&data[start..start + n * inp], n)
                };
                Ok(Tensor::from_vec(y, (n, packed.out), x.device())?)
            }
            Linear::Candle { weight_t, bias } => Ok(x.matmul(weight_t)?.broadcast_add(bias)?),
        }
    }
}

pub struct PackedLinear {
    out: usize,
    inp: usize,
    weights: PackedWeights,
    bias: Vec<f32>,
}

enum PackedWeights {
    /// Panel p holds output rows [p*PANEL, p*PANEL + width) as [in][width], column-major.
    F32(Vec<f32>),
    /// The weights rounded to bfloat16 (linear_bf16.rs).
    Bf16(Bf16Panels),
}

impl PackedLinear {
    pub fn pack(weight: &[f32], bias: &[f32], out: usize, inp: usize) -> Self {
        assert_eq!(weight.len(), out * inp);
        assert_eq!(bias.len(), out);
        let mut panels = Vec::with_capacity(out * inp);
        for start in (0..out).step_by(PANEL) {
            let width = PANEL.min(out - start);
            for k in 0..inp {
                for r in start..start + width {
                    panels.push(weight[r * inp + k]);
                }
            }
        }
        PackedLinear {
            out,
            inp,
            weights: PackedWeights::F32(panels),
            bias: bias.to_vec(),
        }
    }

    /// The same layer with its weights rounded to bfloat16 (None: already, or no AVX512-BF16).
    pub fn to_bf16(&self) -> Option<PackedLinear> {
        let PackedWeights::F32(panels) = &self.weights else {
            return None;
        };
        if !linear_bf16::available() {
            return None;
        }
        let (out, inp) = (self.out, self.inp);
        let mut weight = vec![0f32; out * inp];
        for start in (0..out).step_by(PANEL) {
            let width = PANEL.min(out - start);
            let panel = &panels[start * inp..(start + width) * inp];
            for k in 0..inp {
                for (i, &w) in panel[k * width..(k + 1) * width].iter().enumerate() {
                    weight[(start + i) * inp + k] = w;
                }
            }
        }
        Some(PackedLinear {
            out,
            inp,
            weights: PackedWeights::Bf16(Bf16Panels::pack(&weight, out, inp)),
            bias: self.bias.clone(),
        })
    }

    /// `x`: n rows of `in` features → n rows of `out` features.
    pub fn forward(&self, x: &[f32], n: usize) -> Vec<f32> {
        let (out, inp) = (self.out, self.inp);
        let mut y = Vec::with_capacity(n * out);
        for _ in 0..n {
            y.extend_from_slice(&self.bias);
        }
        let parallel = n * out * inp >= PARALLEL_MIN_MACS && rayon::current_num_threads() > 1;
        let panels = match &self.weights {
            PackedWeights::F32(panels) => panels,
            PackedWeights::Bf16(bf16) => {
                bf16.accumulate(x, n, &mut y, parallel);
                return y;
            }
        };
        let y_ptr = SharedPtr(y.as_mut_ptr());
        let panel = |p: usize| {
            let start = p * PANEL;
            let width = PANEL.min(out - start);
            let lhs = &panels[start * inp..(start + width) * inp];
            // Computes y^T[start..start+width, 0..n] += panel · x^T, written through y's strides.
            unsafe {
                gemm::gemm(
                    width,
                    n,
                    inp,
                    y_ptr.get().add(start),
                    out as isize, // dst column (token) stride
                    1,            // dst row (feature) stride
                    true,
                    lhs.as_ptr(),
                    width as isize, // lhs column (k) stride
                    1,
                    x.as_ptr(),
                    inp as isize, // rhs column (token) stride
                    1,            // rhs row (k) stride
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        };
        let panels = out.div_ceil(PANEL);
        if parallel {
            (0..panels).into_par_iter().for_each(panel);
        } else {
            (0..panels).for_each(panel);
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_matches_naive_for_odd_shapes() {
        for &(n, inp, out) in &[(1, 3, 5), (6, 384, 1152), (7, 33, 130), (96, 64, 200)] {
            let w: Vec<f32> = (0..out * inp)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let b: Vec<f32> = (0..out).map(|i| i as f32 / 10.0).collect();
            let x: Vec<f32> = (0..n * inp)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 7.0)
                .collect();
            let y = PackedLinear::pack(&w, &b, out, inp).forward(&x, n);
            for t in 0..n {
                for o in 0..out {
                    let want: f32 = b[o]
                        + (0..inp)
                            .map(|k| x[t * inp + k] * w[o * inp + k])
                            .sum::<f32>();
                    let got = y[t * out + o];
                    assert!(
                        (got - want).abs() <= 1e-3 * want.abs().max(1.0),
                        "n{n} in{inp} out{out} [{t},{o}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}
