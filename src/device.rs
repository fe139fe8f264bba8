//! Which device runs the model: `--device` / `SERVER_DEVICE` = `auto` (default), `cpu`, `cuda` or
//! `cuda:N`. `auto` takes CUDA device 0 when the binary is built with the `cuda` feature, a GPU is
//! visible (`CUDA_VISIBLE_DEVICES` is honoured by the driver) and `SM_NUM_GPUS` is not 0; otherwise
//! the CPU, with a log line that says why. An explicit `cuda` that cannot be had is a start-up error.

use anyhow::{bail, Result};
use candle_core::Device;

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
