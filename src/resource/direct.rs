//! The direct readers (Linux): /proc, cgroup files, statvfs and getrlimit.

use std::path::Path;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use super::linux;
use super::{
    CpuSample, CpuUsage, MemoryUsage, ProcessUsage, ResourceMonitor, ResourceSnapshot, gpu,
};

fn sysconf_u64(var: nix::unistd::SysconfVar, fallback: u64) -> u64 {
    // Cached: sysconf values do not change while the process runs.
    static CACHE: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
    let slot = match var {
        nix::unistd::SysconfVar::PAGE_SIZE => &CACHE[0],
        _ => &CACHE[1],
    };
    match slot.load(Ordering::Relaxed) {
        0 => {
            let v = nix::unistd::sysconf(var)
                .ok()
                .flatten()
                .and_then(|v| u64::try_from(v).ok())
                .filter(|v| *v > 0)
                .unwrap_or(fallback);
            slot.store(v, Ordering::Relaxed);
            v
        }
        v => v,
    }
}

pub(super) fn snapshot(monitor: &ResourceMonitor, paths: &[&Path]) -> ResourceSnapshot {
    let page = sysconf_u64(nix::unistd::SysconfVar::PAGE_SIZE, 4096);
    let tck = sysconf_u64(nix::unistd::SysconfVar::CLK_TCK, 100);
    let now = Instant::now();
    let (rss, ticks, system, meminfo, cgroup) = {
        let mut files = monitor.files.lock().unwrap_or_else(PoisonError::into_inner);
        (
            files.statm().and_then(|t| linux::parse_statm_rss(&t, page)),
            files.stat().and_then(|t| linux::parse_stat_cpu_ticks(&t)),
            files
                .system_stat()
                .and_then(|t| linux::parse_proc_stat_cpu(&t)),
            files.meminfo().and_then(|t| linux::parse_meminfo(&t)),
            files.cgroup(),
        )
    };
    let fd_limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _hard)| soft);

    let (process_cpu, system_cpu) = {
        let mut prev = monitor
            .previous_cpu
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let rates = prev.and_then(|p| {
            let wall = now.saturating_duration_since(p.at).as_secs_f64();
            let process = ticks
                .filter(|_| wall > 0.0)
                .map(|t| t.saturating_sub(p.process_ticks) as f64 / tck as f64 / wall * 100.0);
            let system = system.and_then(|(busy, total)| {
                let dt = total.saturating_sub(p.system_total);
                (dt > 0).then(|| busy.saturating_sub(p.system_busy) as f64 / dt as f64 * 100.0)
            });
            Some((process, system))
        });
        if let (Some(t), Some((busy, total))) = (ticks, system) {
            *prev = Some(CpuSample {
                at: now,
                process_ticks: t,
                system_busy: busy,
                system_total: total,
            });
        }
        rates.unwrap_or((None, None))
    };

    let cg_limit = cgroup.and_then(|c| c.memory_limit);
    let machine_total = meminfo.map(|m| m.total);
    let effective_total = match (machine_total, cg_limit) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (m, c) => m.or(c),
    };
    let cg_left = cgroup.and_then(|c| Some(c.memory_limit?.saturating_sub(c.memory_usage?)));
    let machine_available = meminfo.map(|m| m.available);
    let effective_available = match (machine_available, cg_left) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (m, c) => m.or(c),
    };

    ResourceSnapshot {
        taken_at: SystemTime::now(),
        process: ProcessUsage {
            rss_bytes: rss,
            cpu_percent: process_cpu,
            open_fds: linux::count_open_fds(),
            fd_limit,
        },
        memory: MemoryUsage {
            machine_total,
            machine_available,
            cgroup,
            effective_total,
            effective_available,
        },
        cpu: CpuUsage {
            system_percent: system_cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            quota_cores: cgroup.and_then(|c| c.cpu_quota),
        },
        disks: paths.iter().map(|p| monitor.disk_usage(p)).collect(),
        gpu: gpu::read(),
    }
}
