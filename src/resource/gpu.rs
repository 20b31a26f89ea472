//! NVIDIA GPUs through NVML, initialised once and lazily. No driver, no device or no
//! permission is not an error: the snapshot says why the GPU is unavailable.

use serde::Serialize;

/// One GPU's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuDevice {
    /// Index in NVML's order.
    pub index: u32,
    /// Product name.
    pub name: String,
    /// Total memory, bytes.
    pub memory_total: u64,
    /// Memory in use by everyone, bytes.
    pub memory_used: u64,
    /// Free memory, bytes.
    pub memory_free: u64,
    /// GPU utilisation over the last sample period, percent.
    pub utilization_percent: Option<u32>,
    /// Core temperature, °C.
    pub temperature_c: Option<u32>,
    /// This process's memory on the device, bytes, when the driver reports it.
    pub process_memory: Option<u64>,
}

/// The GPUs, or why there are none to report.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum GpuStatus {
    /// NVML answered.
    Available {
        /// Every device.
        devices: Vec<GpuDevice>,
    },
    /// No figures, and why (no driver, no device, built without the `gpu` feature…).
    Unavailable {
        /// The reason.
        reason: String,
    },
}

impl std::fmt::Display for GpuStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Available { devices } => write!(f, "{} device(s)", devices.len()),
            Self::Unavailable { reason } => write!(f, "unavailable ({reason})"),
        }
    }
}

#[cfg(feature = "gpu")]
mod nvml {
    use std::sync::OnceLock;

    use nvml_wrapper::Nvml;
    use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
    use nvml_wrapper::enums::device::UsedGpuMemory;

    use super::{GpuDevice, GpuStatus};

    fn nvml() -> Result<&'static Nvml, String> {
        static NVML: OnceLock<Result<Nvml, String>> = OnceLock::new();
        NVML.get_or_init(|| Nvml::init().map_err(|e| format!("nvml: {e}")))
            .as_ref()
            .map_err(Clone::clone)
    }

    pub(crate) fn read() -> GpuStatus {
        let nvml = match nvml() {
            Ok(n) => n,
            Err(reason) => return GpuStatus::Unavailable { reason },
        };
        let count = match nvml.device_count() {
            Ok(0) => {
                return GpuStatus::Unavailable {
                    reason: "no NVIDIA device".into(),
                };
            }
            Ok(n) => n,
            Err(e) => {
                return GpuStatus::Unavailable {
                    reason: format!("nvml device count: {e}"),
                };
            }
        };
        let pid = std::process::id();
        let devices = (0..count)
            .filter_map(|index| {
                let d = nvml.device_by_index(index).ok()?;
                let mem = d.memory_info().ok()?;
                let process_memory = d.running_compute_processes().ok().and_then(|ps| {
                    ps.into_iter()
                        .filter(|p| p.pid == pid)
                        .find_map(|p| match p.used_gpu_memory {
                            UsedGpuMemory::Used(b) => Some(b),
                            UsedGpuMemory::Unavailable => None,
                        })
                });
                Some(GpuDevice {
                    index,
                    name: d.name().unwrap_or_else(|_| "unknown".into()),
                    memory_total: mem.total,
                    memory_used: mem.used,
                    memory_free: mem.free,
                    utilization_percent: d.utilization_rates().ok().map(|u| u.gpu),
                    temperature_c: d.temperature(TemperatureSensor::Gpu).ok(),
                    process_memory,
                })
            })
            .collect();
        GpuStatus::Available { devices }
    }
}

/// Reads every GPU now.
pub(crate) fn read() -> GpuStatus {
    #[cfg(feature = "gpu")]
    {
        nvml::read()
    }
    #[cfg(not(feature = "gpu"))]
    {
        GpuStatus::Unavailable {
            reason: "built without the gpu feature".into(),
        }
    }
}
