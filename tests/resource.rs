//! Real effects on the real machine: memory, file descriptors, disk, limits and health.
#![cfg(target_os = "linux")]

use std::process::Command;

use guardrails::prelude::*;
use guardrails::resource::{DiskUsage, GpuStatus, Severity, Violation, resource_guard};

/// Every test takes this lock: they are threads of one process, and a snapshot taken by one
/// (it reads /proc files) would move the file-descriptor and memory figures of another.
static PROCESS_FIGURES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    PROCESS_FIGURES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A monitor whose limits this machine cannot trip by itself: the seed's 50 GB of free
/// disk and 95 % CPU depend on the machine and its load, not on the code under test
/// (tests about limits set their own).
fn monitor() -> ResourceMonitor {
    ResourceMonitor::new(
        ResourceLimits::new()
            .with_min_free_disk_bytes(0)
            .with_max_cpu_percent(100.0),
    )
    .unwrap()
}

#[test]
fn rss_grows_by_what_is_allocated_and_touched() {
    let _only = exclusive();
    let m = monitor();
    let before = m.snapshot().process.rss_bytes.unwrap();
    let block = vec![7u8; 256 << 20]; // non-zero fill touches every page
    let after = m.snapshot().process.rss_bytes.unwrap();
    let grown = after as i64 - before as i64;
    assert!(
        (230 << 20..=290 << 20).contains(&grown),
        "rss grew by {grown} bytes for 256 MiB"
    );
    assert_eq!(block[block.len() - 1], 7);
}

#[test]
fn open_file_count_follows_opens_and_closes() {
    let _only = exclusive();
    let m = monitor();
    let dir = tempfile::tempdir().unwrap();
    let before = m.snapshot().process.open_fds.unwrap();
    let files: Vec<std::fs::File> = (0..100)
        .map(|i| std::fs::File::create(dir.path().join(format!("f{i}"))).unwrap())
        .collect();
    let during = m.snapshot().process.open_fds.unwrap();
    drop(files);
    let after = m.snapshot().process.open_fds.unwrap();
    assert_eq!(during, before + 100);
    assert_eq!(after, before);
    let limit = m.snapshot().process.fd_limit.unwrap();
    assert!(limit >= during);
}

#[test]
fn free_disk_agrees_with_df() {
    let _only = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let m = monitor().with_paths([dir.path()]);
    let ours = match &m.snapshot().disks[0] {
        DiskUsage::Available { free, total, .. } => (*free, *total),
        other => panic!("unexpected {other:?}"),
    };
    let out = Command::new("df")
        .args(["--block-size=1", "--output=avail,size"])
        .arg(dir.path())
        .output()
        .expect("df runs");
    let text = String::from_utf8(out.stdout).unwrap();
    let nums: Vec<u64> = text
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    // The filesystem is shared with everything else on the machine: allow 8 MiB of drift
    // between the two reads.
    assert!(
        ours.0.abs_diff(nums[0]) <= 8 << 20,
        "free {} vs df {}",
        ours.0,
        nums[0]
    );
    assert_eq!(ours.1, nums[1], "total");
}

#[test]
fn a_missing_path_is_unavailable_in_the_snapshot_and_an_error_when_asked_about() {
    let _only = exclusive();
    let m = monitor().with_paths(["/definitely/not/here"]);
    match &m.snapshot().disks[0] {
        DiskUsage::Unavailable { reason, .. } => assert!(reason.contains("statvfs"), "{reason}"),
        other => panic!("unexpected {other:?}"),
    }
    let err = monitor()
        .full_health_check("/definitely/not/here")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
}

#[test]
fn cpu_has_no_figure_without_a_baseline() {
    let _only = exclusive();
    let m = monitor();
    let first = m.snapshot();
    assert_eq!(first.process.cpu_percent, None);
    assert_eq!(first.cpu.system_percent, None);
    let mut x = 0u64;
    for i in 0..5_000_000u64 {
        x = x.wrapping_mul(31).wrapping_add(i);
    }
    std::hint::black_box(x);
    let second = m.snapshot();
    let cpu = second
        .process
        .cpu_percent
        .expect("a rate once there is a baseline");
    assert!(
        (0.0..=100.0 * second.cpu.cores as f64 + 1.0).contains(&cpu),
        "{cpu}"
    );
}

#[test]
fn memory_view_is_the_smaller_of_machine_and_cgroup() {
    let _only = exclusive();
    let s = monitor().snapshot();
    let machine = s.memory.machine_total.unwrap();
    let effective = s.memory.effective_total.unwrap();
    assert!(effective <= machine);
    if let Some(limit) = s.memory.cgroup.and_then(|c| c.memory_limit) {
        assert_eq!(effective, machine.min(limit));
    }
    assert!(s.memory.effective_available.unwrap() <= effective);
}

#[test]
fn limits_below_current_use_give_the_right_violations_and_status() {
    let _only = exclusive();
    let m = monitor();
    let s = m.snapshot();
    let rss = s.process.rss_bytes.unwrap();
    let fds = s.process.open_fds.unwrap();

    // Just under current use: exceeded (not by half again, so not critical).
    let one = ResourceLimits::new().with_max_memory_bytes(rss * 9 / 10);
    let v = s.check(&one);
    let mem = v.iter().find(|v| v.resource == "memory").unwrap();
    assert_eq!(mem.severity, Severity::Exceeded);
    assert_eq!(HealthStatus::from_violations(&v), HealthStatus::Degraded);

    let two = one.clone().with_max_open_files((fds * 9 / 10).max(1));
    let v = s.check(&two);
    assert_eq!(
        HealthStatus::from_violations(&v),
        HealthStatus::Unhealthy,
        "{v:?}"
    );

    // Far under: critical.
    let crit = ResourceLimits::new().with_max_memory_bytes(rss / 2);
    assert_eq!(
        HealthStatus::from_violations(&s.check(&crit)),
        HealthStatus::Critical
    );

    // Near but under: a warning, which degrades.
    let warn = ResourceLimits::new().with_max_memory_bytes(rss * 105 / 100);
    let v = s.check(&warn);
    assert_eq!(
        v.iter().find(|v| v.resource == "memory").unwrap().severity,
        Severity::Warning
    );
    assert_eq!(HealthStatus::from_violations(&v), HealthStatus::Degraded);

    // The seed defaults hold on a development machine.
    let v = s.check(&ResourceLimits::new());
    assert!(
        v.iter()
            .all(|v| v.resource != "memory" && v.resource != "open_files"),
        "{v:?}"
    );
}

#[test]
fn free_disk_under_half_the_minimum_is_critical() {
    let _only = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let limits = ResourceLimits::new().with_min_free_disk_bytes(u64::MAX / 4);
    let m = ResourceMonitor::new(limits).unwrap();
    let report = m.full_health_check(dir.path()).unwrap();
    assert_eq!(report.status, HealthStatus::Critical);
    let v = report
        .violations
        .iter()
        .find(|v| v.resource.starts_with("disk_free"))
        .unwrap();
    assert_eq!(v.severity, Severity::Critical);
    let err = v.to_error();
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    assert_eq!(err.class(), ErrorClass::Recoverable);
}

#[test]
fn health_levels_follow_the_seed() {
    let _only = exclusive();
    let v = |severity| Violation {
        resource: "x".into(),
        used: 1.0,
        limit: 1.0,
        unit: "bytes",
        severity,
    };
    use HealthStatus::*;
    assert_eq!(HealthStatus::from_violations(&[]), Healthy);
    assert_eq!(
        HealthStatus::from_violations(&[v(Severity::Warning)]),
        Degraded
    );
    assert_eq!(
        HealthStatus::from_violations(&[v(Severity::Exceeded)]),
        Degraded
    );
    assert_eq!(
        HealthStatus::from_violations(&[v(Severity::Exceeded), v(Severity::Exceeded)]),
        Unhealthy
    );
    assert_eq!(
        HealthStatus::from_violations(&[v(Severity::Warning), v(Severity::Critical)]),
        Critical
    );
}

#[test]
fn guard_refuses_entry_past_a_limit_and_reports_what_the_scope_used() {
    let _only = exclusive();
    let m = monitor();
    let dir = tempfile::tempdir().unwrap();
    let guard = resource_guard(&m, Some(dir.path())).unwrap();
    let files: Vec<_> = (0..20)
        .map(|i| std::fs::File::create(dir.path().join(format!("g{i}"))).unwrap())
        .collect();
    let delta = guard.finish();
    assert_eq!(delta.open_fds, Some(20), "{delta:?}");
    assert!(delta.wall > std::time::Duration::ZERO);
    drop(files);

    // The scope's wall time comes from the monitor's clock.
    let clock = ManualClock::new();
    let timed = monitor().with_clock(clock.clone());
    let guard = resource_guard(&timed, None).unwrap();
    clock.advance(std::time::Duration::from_secs(90));
    assert_eq!(guard.finish().wall, std::time::Duration::from_secs(90));

    let strict = ResourceMonitor::new(ResourceLimits::new().with_max_memory_bytes(1)).unwrap();
    let err = resource_guard(&strict, None).unwrap_err();
    match err {
        GuardrailError::ResourceExhausted { resource, unit, .. } => {
            assert_eq!((resource.as_str(), unit.as_str()), ("memory", "bytes"))
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn gpu_without_a_driver_is_unavailable_not_an_error() {
    let _only = exclusive();
    let s = monitor().snapshot();
    match &s.gpu {
        GpuStatus::Unavailable { reason } => {
            assert!(!reason.is_empty());
            assert!(s.gpu.to_string().starts_with("unavailable ("));
        }
        // Where NVML and a GPU exist, the figures must be real.
        GpuStatus::Available { devices } => {
            for d in devices {
                assert!(
                    d.memory_total > 0 && d.memory_used <= d.memory_total,
                    "{d:?}"
                );
                assert!(
                    d.memory_used + d.memory_free <= d.memory_total + (1 << 30),
                    "{d:?}"
                );
            }
        }
    }
}

#[test]
fn resources_section_loads_and_validates() {
    let _only = exclusive();
    let cfg: GuardrailsConfig = "[resources]\nmax_memory_bytes = 1000\nwarning_fraction = 0.8\n"
        .parse()
        .unwrap();
    assert_eq!(cfg.resources.max_memory_bytes, 1000);
    assert_eq!(cfg.resources.min_free_disk_bytes, 50_000_000_000);
    let err = "[resources]\nwarning_fraction = 1.5\n"
        .parse::<GuardrailsConfig>()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid config: resources.warning_fraction: must be in (0, 1], got 1.5"
    );
    let err = "[resources]\nmax_cpu_percent = nan\n"
        .parse::<GuardrailsConfig>()
        .unwrap_err();
    assert!(err.to_string().contains("resources.max_cpu_percent"));
}

#[test]
fn snapshot_serializes_for_reports() {
    let _only = exclusive();
    let v = serde_json::to_value(monitor().with_paths(["/"]).snapshot()).unwrap();
    assert!(v["process"]["rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["disks"][0]["status"], "available");
    assert!(v["gpu"]["status"].is_string());
}

#[test]
fn portable_readers_agree_with_the_direct_ones() {
    let _only = exclusive();
    use guardrails::resource::Backend;
    let direct = monitor();
    let portable = ResourceMonitor::new(ResourceLimits::new())
        .unwrap()
        .with_backend(Backend::Portable)
        .with_paths(["/"]);
    let first = portable.snapshot();
    assert_eq!(
        first.process.cpu_percent, None,
        "no baseline on the first snapshot"
    );
    assert_eq!(first.cpu.system_percent, None);
    let d = direct.snapshot();
    let p = portable.snapshot();
    let (dr, pr) = (
        d.process.rss_bytes.unwrap() as f64,
        p.process.rss_bytes.unwrap() as f64,
    );
    assert!((dr - pr).abs() / dr < 0.1, "rss {dr} vs {pr}");
    assert_eq!(d.memory.machine_total, p.memory.machine_total);
    assert!(p.memory.effective_total.unwrap() <= p.memory.machine_total.unwrap());
    assert!(
        p.process
            .open_fds
            .unwrap()
            .abs_diff(d.process.open_fds.unwrap())
            <= 2
    );
    assert_eq!(p.process.fd_limit, d.process.fd_limit);
    assert!(p.process.cpu_percent.is_some() && p.cpu.system_percent.is_some());
    assert!(matches!(p.disks[0], DiskUsage::Available { .. }));
}
