//! Exactly-once effects: a claim + complete on the SQLite store (WAL, `synchronous=FULL`)
//! and on the memory store, and a completed key answered from the local cache.
//!
//! `cargo bench --bench state --features durable`. The SQLite file goes under `target/` (a
//! real disk: on tmpfs `fsync` is free).

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use guardrails::state::{Idempotency, IdempotencyConfig, MemoryStore, SqliteStore};

fn claims(c: &mut Criterion) {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-scratch");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(base).unwrap();
    let config = IdempotencyConfig::new().with_local_cache(0);
    let sqlite = Idempotency::with_config(
        Arc::new(SqliteStore::open(dir.path().join("state.db")).unwrap()),
        config.clone(),
    )
    .unwrap();
    let memory = Idempotency::with_config(Arc::new(MemoryStore::new()), config).unwrap();
    let cached = Idempotency::new(Arc::new(MemoryStore::new()));
    let next = AtomicU64::new(0);

    let mut g = c.benchmark_group("idempotency");
    g.sample_size(30).measurement_time(Duration::from_secs(8));
    g.bench_function("claim_complete/sqlite", |b| {
        b.iter(|| {
            let key = sqlite.key("bench", &next.fetch_add(1, Ordering::Relaxed).to_string());
            black_box(sqlite.run(&key, "p", |f| Ok(f.0)).unwrap())
        })
    });
    g.bench_function("claim_complete/memory", |b| {
        b.iter(|| {
            let key = memory.key("bench", &next.fetch_add(1, Ordering::Relaxed).to_string());
            black_box(memory.run(&key, "p", |f| Ok(f.0)).unwrap())
        })
    });
    let key = cached.key("bench", "hot");
    cached.run(&key, "p", |f| Ok(f.0)).unwrap();
    g.bench_function("local_cache_hit", |b| {
        b.iter(|| black_box(cached.run(&key, "p", |f| Ok(f.0)).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, claims);
criterion_main!(benches);
