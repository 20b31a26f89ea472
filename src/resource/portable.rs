//! The portable readers, through `sysinfo` with targeted refreshes (never a full refresh):
//! the only readers off Linux, and a choice on Linux ([`Backend::Portable`]).

use std::path::Path;
use std::time::SystemTime;

use sysinfo::{ProcessRefreshKind, ProcessesToUpdate};

use super::{CpuUsage, MemoryUsage, ProcessUsage, ResourceMonitor, ResourceSnapshot, gpu};

#[derive(Debug)]
pub(crate) struct State {
    sys: sysinfo::System,
    pid: Option<sysinfo::Pid>,
    primed: bool,
}

impl State {
    pub(crate) fn new() -> Self {
        Self {
            sys: sysinfo::System::new(),
            pid: sysinfo::get_current_pid().ok(),
            primed: false,
        }
    }
}

fn open_fds() -> Option<u64> {
    #[cfg(unix)]
    {
        let n = std::fs::read_dir("/dev/fd").ok()?.count() as u64;
        Some(n.saturating_sub(1))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

fn fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(soft, _)| soft)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

pub(crate) fn snapshot(monitor: &ResourceMonitor, paths: &[&Path]) -> ResourceSnapshot {
    let (rss, process_cpu, system_cpu, total, available, cgroup_total) = {
        let mut st = monitor
            .portable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let pid = st.pid;
        st.sys.refresh_memory();
        st.sys.refresh_cpu_usage();
        if let Some(pid) = pid {
            st.sys.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                false,
                ProcessRefreshKind::nothing().with_memory().with_cpu(),
            );
        }
        // sysinfo's rates need two refreshes; the first has no baseline.
        let primed = st.primed;
        st.primed = true;
        let process = pid.and_then(|p| st.sys.process(p));
        let total = st.sys.total_memory();
        let cgroup_total = st.sys.cgroup_limits().map(|c| c.total_memory);
        (
            process.map(|p| p.memory()),
            process.filter(|_| primed).map(|p| f64::from(p.cpu_usage())),
            primed.then(|| f64::from(st.sys.global_cpu_usage())),
            (total > 0).then_some(total),
            Some(st.sys.available_memory()),
            cgroup_total,
        )
    };
    let effective_total = match (total, cgroup_total) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (m, c) => m.or(c),
    };
    ResourceSnapshot {
        taken_at: SystemTime::now(),
        process: ProcessUsage {
            rss_bytes: rss,
            cpu_percent: process_cpu,
            open_fds: open_fds(),
            fd_limit: fd_limit(),
        },
        memory: MemoryUsage {
            machine_total: total,
            machine_available: available,
            #[cfg(target_os = "linux")]
            cgroup: None,
            effective_total,
            effective_available: match (available, effective_total) {
                (Some(a), Some(t)) => Some(a.min(t)),
                (a, _) => a,
            },
        },
        cpu: CpuUsage {
            system_percent: system_cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            quota_cores: None,
        },
        disks: paths.iter().map(|p| monitor.disk_usage(p)).collect(),
        gpu: gpu::read(),
    }
}
