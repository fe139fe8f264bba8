//! Reading candle tensors' host memory in place, for our CPU kernels (shared by the layers,
//! the quantized layers and the decoder's host attention; imports nothing else of `models`).

use anyhow::{bail, Result};
use candle_core::{CpuStorage, Storage, Tensor};

/// `f` on the values of a contiguous f32 tensor in host memory, read in place (no copy); `what`
/// names the caller in the error otherwise.
pub fn on_host_f32<T>(x: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    if !x.is_contiguous() {
        bail!("{what} take contiguous tensors");
    }
    let (storage, layout) = x.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        bail!("{what} take f32 CPU tensors");
    };
    let start = layout.start_offset();
    Ok(f(&data[start..start + x.elem_count()]))
}
