//! The metrics history: the recording call (lookup + enqueue) against the in-memory ring
//! and a bare `Mutex<Vec>` push, and ingest into SQLite (record + batched writes until
//! flushed) against the same rows inserted by hand with rusqlite in one transaction.
//!
//! `cargo bench --bench history --features history`. Files go under `target/` (a real
//! disk).

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use guardrails::observe::history::{
    HistoryConfig, MetricsHistory, SqliteHistory, SqliteHistoryConfig,
};
use parking_lot::Mutex;
use rusqlite::params;

fn scratch() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-scratch");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

/// Calls timed in chunks this long, the queue drained between them (untimed), so every
/// timed call takes the enqueue path rather than the full-queue drop.
const CHUNK: u64 = 100_000;

/// Times `iters` calls of `call(i)` in chunks of [`CHUNK`], running `between` untimed after
/// each chunk.
fn chunked(iters: u64, mut call: impl FnMut(u64), mut between: impl FnMut()) -> Duration {
    let mut spent = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK);
        let start = Instant::now();
        for i in 0..n {
            call(i);
        }
        spent += start.elapsed();
        between();
        left -= n;
    }
    spent
}

fn record(c: &mut Criterion) {
    let dir = scratch();
    let config = SqliteHistoryConfig {
        max_pending: 2 * CHUNK as usize,
        batch_size: CHUNK as usize,
        ..SqliteHistoryConfig::default()
    };
    let history = SqliteHistory::open(dir.path().join("h.db"), config).unwrap();
    let handle = history.series("stage", "latency_seconds", &[("stage", "train")]);
    let ring = MetricsHistory::new(HistoryConfig::default());
    let bare: Mutex<Vec<(u32, i64, f64)>> = Mutex::new(Vec::with_capacity(CHUNK as usize));

    let mut g = c.benchmark_group("history_record");
    g.throughput(Throughput::Elements(1));
    g.bench_function("guardrails/record_metric", |b| {
        b.iter_custom(|iters| {
            chunked(
                iters,
                |i| {
                    history.record_metric(
                        "stage",
                        "latency_seconds",
                        black_box(i as f64),
                        &[("stage", "train")],
                    )
                },
                || history.flush().unwrap(),
            )
        })
    });
    g.bench_function("guardrails/series_handle", |b| {
        b.iter_custom(|iters| {
            chunked(
                iters,
                |i| handle.record(black_box(i as f64)),
                || history.flush().unwrap(),
            )
        })
    });
    g.bench_function("in_memory_ring/record_metric", |b| {
        let mut i = 0.0;
        b.iter(|| {
            i += 1.0;
            ring.record_metric(
                "stage",
                "latency_seconds",
                black_box(i),
                &[("stage", "train")],
            )
        })
    });
    g.bench_function("mutex_vec/push", |b| {
        b.iter_custom(|iters| {
            chunked(
                iters,
                |i| bare.lock().push((0, i as i64, black_box(i as f64))),
                || bare.lock().clear(),
            )
        })
    });
    g.finish();
}

const INGEST: u64 = 200_000;

fn ingest(c: &mut Criterion) {
    let mut g = c.benchmark_group("history_ingest");
    g.sample_size(10);
    g.throughput(Throughput::Elements(INGEST));
    g.bench_function("guardrails/200k_samples_64_series", |b| {
        let dir = scratch();
        let history =
            SqliteHistory::open(dir.path().join("h.db"), SqliteHistoryConfig::default()).unwrap();
        let series: Vec<_> = (0..64)
            .map(|s| history.series("worker", "queue_depth", &[("worker", &s.to_string())]))
            .collect();
        b.iter(|| {
            for i in 0..INGEST {
                series[(i % 64) as usize].record(i as f64);
            }
            history.flush().unwrap();
        })
    });
    g.bench_function("rusqlite_by_hand/200k_samples_64_series", |b| {
        let dir = scratch();
        let mut conn = rusqlite::Connection::open(dir.path().join("raw.db")).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             CREATE TABLE samples (series INTEGER NOT NULL, at_ms INTEGER NOT NULL, value REAL NOT NULL);
             CREATE INDEX samples_by_series ON samples (series, at_ms);
             CREATE INDEX samples_by_time ON samples (at_ms);",
        )
        .unwrap();
        let mut at = 0i64;
        b.iter(|| {
            let tx = conn.transaction().unwrap();
            {
                let mut insert = tx
                    .prepare_cached("INSERT INTO samples (series, at_ms, value) VALUES (?1, ?2, ?3)")
                    .unwrap();
                for i in 0..INGEST {
                    at += 1;
                    insert.execute(params![(i % 64) as i64, at, i as f64]).unwrap();
                }
            }
            tx.commit().unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, record, ingest);
criterion_main!(benches);
