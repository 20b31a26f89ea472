//! The resource monitor: a health report, a guarded scope, and what the background sampler
//! costs.
//!
//! Run with `cargo run --release --example resources [-- PATH]`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use guardrails::prelude::*;
use guardrails::resource::{ResourceSampler, SamplerConfig};

fn cpu_seconds() -> f64 {
    #[cfg(unix)]
    {
        use nix::sys::resource::{UsageWho, getrusage};
        match getrusage(UsageWho::RUSAGE_SELF) {
            Ok(u) => {
                let t =
                    |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
                t(u.user_time()) + t(u.system_time())
            }
            Err(_) => 0.0,
        }
    }
    #[cfg(not(unix))]
    {
        0.0
    }
}

fn main() -> guardrails::Result<()> {
    let path = std::env::args()
        .nth(1)
        .map_or_else(std::env::temp_dir, Into::into);
    let monitor = Arc::new(ResourceMonitor::new(ResourceLimits::new())?.with_paths([&path]));
    let report = monitor.health();
    println!("{}: {}", report.status, report.message);
    println!(
        "{}",
        serde_json::to_string_pretty(&report.snapshot).unwrap_or_default()
    );

    let guard = resource_guard(&monitor, Some(path.as_path()))?;
    let scratch = std::hint::black_box(vec![1u8; 64 << 20]);
    let delta = guard.finish();
    println!(
        "a 64 MiB buffer moved RSS by {:?} bytes",
        delta.memory_bytes
    );
    drop(scratch);

    // The sampler's cost: sample at 20 Hz for 2 s and scale the CPU time to 1 Hz.
    let hz = 20.0;
    let sampler = ResourceSampler::start(
        Arc::clone(&monitor),
        SamplerConfig::new().with_interval(Duration::from_secs_f64(1.0 / hz)),
    )?;
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    drop(sampler);
    println!(
        "sampler: {:.4} % of one core at {hz} Hz, so about {:.5} % at 1 Hz",
        cpu / wall * 100.0,
        cpu / wall * 100.0 / hz
    );
    Ok(())
}
