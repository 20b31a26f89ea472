//! Resource snapshot cost. The psutil peer runs from `benches/peers/resource.sh`, which runs
//! this bench and the Python loop one after the other on the same machine.

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use guardrails::resource::{ResourceLimits, ResourceMonitor};

fn snapshot(c: &mut Criterion) {
    let monitor = ResourceMonitor::new(ResourceLimits::new())
        .unwrap()
        .with_paths([std::env::temp_dir()]);
    let mut g = c.benchmark_group("resource_snapshot");
    // rss, process and system CPU, system memory, cgroup, fds, rlimit, disk of one path, GPU.
    g.bench_function("guardrails_full", |b| {
        b.iter(|| black_box(monitor.snapshot()))
    });
    let bare = ResourceMonitor::new(ResourceLimits::new()).unwrap();
    g.bench_function("guardrails_without_disk", |b| {
        b.iter(|| black_box(bare.snapshot()))
    });
    g.bench_function("guardrails_health", |b| {
        b.iter(|| black_box(monitor.health()))
    });
    g.finish();
}

criterion_group!(benches, snapshot);
criterion_main!(benches);
