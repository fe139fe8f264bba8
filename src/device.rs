//! Which device runs the model: `--device` / `SERVER_DEVICE` = `auto` (default), `cpu`, `cuda` or
//! `cuda:N`. `auto` takes CUDA device 0 when the binary is built with the `cuda` feature, a GPU is
//! visible (`CUDA_VISIBLE_DEVICES` is honoured by the driver) and `SM_NUM_GPUS` is not 0; otherwise
//! the CPU, with a log line that says why. An explicit `cuda` that cannot be had is a start-up error.
//!
//! And in which precision: `--dtype` / `SERVER_DTYPE` = `auto` (default), `float32`, `float16` or
//! `bfloat16`. `auto` is float32 on the CPU (our fused kernels are f32) and half precision on a
//! GPU: bfloat16 when the checkpoint says it was trained in it (`torch_dtype`), float16 otherwise
//! (more mantissa bits, and every CUDA GPU has fast f16). The dtype applies to the encoder's
//! weights and activations; heads, pooling and softmax run in f32 on its f32-converted output.

use anyhow::{bail, Result};
use candle_core::{DType, Device};

use crate::models::config::ModelConfig;

/// Where a model runs and in which precision.
#[derive(Debug, Clone)]
pub struct Placement {
    pub device: Device,
    /// The encoder's weights and activations.
    pub dtype: DType,
    /// `SERVER_QUANTIZE`: decoders' dense weights quantized at load.
    pub quantize: Option<crate::models::quantized::Quantize>,
    /// `SERVER_QUANTIZED_ACTIVATIONS`: what our GGUF block kernels multiply.
    pub block_activations: crate::models::quantized::BlockActivations,
}

impl Placement {
    pub fn cpu() -> Self {
        Placement {
            device: Device::Cpu,
            dtype: DType::F32,
            quantize: None,
            block_activations: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DTypeChoice {
    Auto,
    Exact(DType),
}

impl std::str::FromStr for DTypeChoice {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(match value.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => DTypeChoice::Auto,
            "float32" | "f32" | "fp32" => DTypeChoice::Exact(DType::F32),
            "float16" | "f16" | "fp16" | "half" => DTypeChoice::Exact(DType::F16),
            "bfloat16" | "bf16" => DTypeChoice::Exact(DType::BF16),
            _ => {
                return Err(format!(
                    "expected auto, float32, float16 or bfloat16, got `{value}`"
                ))
            }
        })
    }
}

/// The dtype for `device`: the explicit choice, or `auto`'s rule (see the module comment).
pub fn select_dtype(choice: DTypeChoice, device: &Device, config: &ModelConfig) -> DType {
    match choice {
        DTypeChoice::Exact(dtype) => {
            if device.is_cpu() && dtype != DType::F32 {
                tracing::warn!("dtype {dtype:?} on the CPU: encoders (text, Whisper's, ViT-family images) run their dense layers on our bfloat16 kernels where the CPU has them; everything else runs on candle's generic kernels, slower than our f32 ones");
            }
            dtype
        }
        DTypeChoice::Auto if device.is_cpu() => DType::F32,
        DTypeChoice::Auto => match config.torch_dtype.as_deref() {
            Some("bfloat16") => DType::BF16,
            _ => DType::F16,
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(ordinal)) => Ok(DeviceChoice::Cuda(ordinal)),
                _ => Err(format!("expected auto, cpu, cuda or cuda:N, got `{value}`")),
            },
        }
    }
}

/// A short name for logs and the `X-Device` header: `cpu`, `cuda:0`.
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

pub fn select(choice: DeviceChoice, sm_num_gpus: Option<&str>) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(ordinal) => {
            if !cfg!(feature = "cuda") {
                bail!("device cuda:{ordinal} was asked for, but this binary is built without CUDA support (cargo build --features cuda)");
            }
            Device::new_cuda(ordinal)
                .map_err(|e| anyhow::anyhow!("device cuda:{ordinal} is not usable: {e}"))
        }
        DeviceChoice::Auto => {
            if !cfg!(feature = "cuda") {
                tracing::info!("device: cpu (this binary is built without CUDA support)");
                return Ok(Device::Cpu);
            }
            if sm_num_gpus.map(str::trim) == Some("0") {
                tracing::info!("device: cpu (SM_NUM_GPUS=0)");
                return Ok(Device::Cpu);
            }
            match Device::new_cuda(0) {
                Ok(device) => Ok(device),
                Err(e) => {
                    tracing::info!("device: cpu (no usable CUDA device: {e})");
                    Ok(Device::Cpu)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse() {
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert_eq!("CPU".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "cuda".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert_eq!(
            "cuda:3".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(3)
        );
        assert!("tpu".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn dtypes_parse_and_auto_follows_the_device() {
        let parse = |s: &str| s.parse::<DTypeChoice>().unwrap();
        assert_eq!(parse("auto"), DTypeChoice::Auto);
        assert_eq!(parse("BF16"), DTypeChoice::Exact(DType::BF16));
        assert_eq!(parse("float16"), DTypeChoice::Exact(DType::F16));
        assert_eq!(parse("fp32"), DTypeChoice::Exact(DType::F32));
        assert!("int8".parse::<DTypeChoice>().is_err());
        let bf16_config =
            ModelConfig::from_json(serde_json::json!({"torch_dtype": "bfloat16"})).unwrap();
        assert_eq!(
            select_dtype(DTypeChoice::Auto, &Device::Cpu, &bf16_config),
            DType::F32
        );
        assert_eq!(
            select_dtype(DTypeChoice::Exact(DType::F16), &Device::Cpu, &bf16_config),
            DType::F16
        );
    }

    #[test]
    fn auto_without_cuda_is_the_cpu() {
        if !cfg!(feature = "cuda") {
            assert!(select(DeviceChoice::Auto, None).unwrap().is_cpu());
            assert!(select(DeviceChoice::Cuda(0), None)
                .unwrap_err()
                .to_string()
                .contains("without CUDA support"));
        }
    }
}
