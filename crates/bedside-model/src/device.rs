//! `--device auto|cpu|cuda[:N]|metal`.

use candle_core::Device;

use crate::error::{ModelError, Result};

/// Parse a device spec. `auto` picks CUDA, then Metal, then CPU, among what this build supports.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim().to_ascii_lowercase();
    match spec.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                if let Ok(d) = Device::new_cuda(0) {
                    return Ok(d);
                }
            }
            if candle_core::utils::metal_is_available() {
                if let Ok(d) = Device::new_metal(0) {
                    return Ok(d);
                }
            }
            Ok(Device::Cpu)
        }
        "metal" => {
            if !candle_core::utils::metal_is_available() {
                return Err(ModelError::Device(
                    "metal requested but this build has no Metal support (build with --features metal on macOS)".into(),
                ));
            }
            Device::new_metal(0).map_err(|e| ModelError::Device(format!("metal: {e}")))
        }
        s if s == "cuda" || s.starts_with("cuda:") => {
            let n = match s.strip_prefix("cuda:") {
                None => 0,
                Some(n) => n.parse::<usize>().map_err(|_| ModelError::Device(format!("'{spec}': expected cuda:N with N a GPU index")))?,
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(ModelError::Device("cuda requested but this build has no CUDA support (build with --features cuda)".into()));
            }
            Device::new_cuda(n).map_err(|e| ModelError::Device(format!("cuda:{n}: {e}")))
        }
        _ => Err(ModelError::Device(format!("unknown device '{spec}' (expected auto, cpu, cuda, cuda:N or metal)"))),
    }
}

/// A short human name for a device.
pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}
