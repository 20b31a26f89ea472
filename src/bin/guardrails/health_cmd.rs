//! `guardrails health`

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use guardrails::GuardrailsConfig;
use guardrails::resource::{DiskUsage, HealthStatus, ResourceMonitor};

use crate::Status;
use crate::output::{Format, Output};

/// The lowest status that fails the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum FailOn {
    /// Degraded or worse.
    Degraded,
    /// Unhealthy or worse.
    Unhealthy,
    /// Critical only.
    Critical,
}

impl FailOn {
    fn threshold(self) -> HealthStatus {
        match self {
            Self::Degraded => HealthStatus::Degraded,
            Self::Unhealthy => HealthStatus::Unhealthy,
            Self::Critical => HealthStatus::Critical,
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct HealthArgs {
    /// A path whose filesystem is checked (repeatable).
    #[arg(long = "path", value_name = "P")]
    paths: Vec<PathBuf>,
    /// A config file whose [resources] section sets the limits.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Exit 1 when the status is at or above this.
    #[arg(long, value_enum, default_value_t = FailOn::Unhealthy)]
    fail_on: FailOn,
}

fn bytes(b: Option<u64>) -> String {
    match b {
        Some(b) => format!("{:.2} GB", b as f64 / 1e9),
        None => "unknown".into(),
    }
}

pub(crate) fn run(args: HealthArgs, out: &Output) -> Status {
    let limits = match &args.config {
        Some(path) => match GuardrailsConfig::from_path(path) {
            Ok(cfg) => cfg.resources,
            Err(e) => {
                out.problem(&path.display().to_string(), &e);
                return Status::Usage;
            }
        },
        None => GuardrailsConfig::new().resources,
    };
    let monitor = match ResourceMonitor::new(limits) {
        Ok(m) => m.with_paths(args.paths.iter().cloned()),
        Err(e) => {
            out.problem("limits", &e);
            return Status::Usage;
        }
    };
    // A first snapshot gives the CPU figures a baseline; the report is the second.
    let _ = monitor.snapshot();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let report = monitor.health();
    match out.format() {
        Format::Json => out.json(&serde_json::to_value(&report).unwrap_or_default()),
        Format::Human => {
            let s = &report.snapshot;
            let mut text = format!("status: {}\n{}\n", report.status, report.message);
            text.push_str(&format!(
                "memory: rss {}, available {} of {}\n",
                bytes(s.process.rss_bytes),
                bytes(s.memory.effective_available),
                bytes(s.memory.effective_total)
            ));
            text.push_str(&format!(
                "cpu: system {}, process {}\n",
                s.cpu
                    .system_percent
                    .map_or("unknown".into(), |p| format!("{p:.1} %")),
                s.process
                    .cpu_percent
                    .map_or("unknown".into(), |p| format!("{p:.1} %"))
            ));
            text.push_str(&format!(
                "files: {} open, limit {}\n",
                s.process
                    .open_fds
                    .map_or("unknown".into(), |n| n.to_string()),
                s.process
                    .fd_limit
                    .map_or("unknown".into(), |n| n.to_string())
            ));
            for d in &s.disks {
                match d {
                    DiskUsage::Available {
                        path, total, free, ..
                    } => text.push_str(&format!(
                        "disk {}: {} free of {}\n",
                        path.display(),
                        bytes(Some(*free)),
                        bytes(Some(*total))
                    )),
                    DiskUsage::Unavailable { path, reason } => text.push_str(&format!(
                        "disk {}: unavailable ({reason})\n",
                        path.display()
                    )),
                }
            }
            text.push_str(&format!("gpu: {}\n", s.gpu));
            for v in &report.violations {
                text.push_str(&format!(
                    "{:?}: {} at {} {} (limit {})\n",
                    v.severity, v.resource, v.used, v.unit, v.limit
                ));
            }
            out.text(&text);
        }
    }
    if report.status >= args.fail_on.threshold() {
        Status::CheckFailed
    } else {
        Status::Ok
    }
}
