//! Durable outputs: `atomic_write` against the same syscalls written by hand and against a
//! plain write + fsync; a three-output stage commit against three `atomic_write`s;
//! checkpoint save/load against raw rusqlite with the same pragmas; `resume` over 10 000
//! artifacts.
//!
//! `cargo bench --bench durable --features durable`. Files go under `target/` (a real
//! disk: on tmpfs `fsync` is free and the ratios mean nothing).

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use std::fs::{self, File};
use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use guardrails::durable::{ResumeOptions, RunRegistry, atomic_write_bytes};
use rusqlite::params;

fn scratch() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-scratch");
    fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

/// The atomic write by hand: temp file in the same directory, write, fsync, rename,
/// directory fsync.
fn by_hand(path: &Path, bytes: &[u8], n: u64) {
    let temp = path.with_file_name(format!(".{n}.tmp"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::rename(&temp, path).unwrap();
    File::open(path.parent().unwrap())
        .unwrap()
        .sync_all()
        .unwrap();
}

fn plain(path: &Path, bytes: &[u8]) {
    let mut f = File::create(path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

fn atomic_writes(c: &mut Criterion) {
    let dir = scratch();
    let mut g = c.benchmark_group("atomic_write");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    for (label, size) in [
        ("4KiB", 4usize << 10),
        ("1MiB", 1 << 20),
        ("64MiB", 64 << 20),
    ] {
        let bytes = vec![0x42u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        if size > 1 << 20 {
            g.sample_size(10);
        }
        let target = dir.path().join(format!("out-{label}"));
        g.bench_with_input(BenchmarkId::new("guardrails", label), &bytes, |b, bytes| {
            b.iter(|| atomic_write_bytes(&target, black_box(bytes)).unwrap())
        });
        let mut n = 0u64;
        g.bench_with_input(BenchmarkId::new("by_hand", label), &bytes, |b, bytes| {
            b.iter(|| {
                n += 1;
                by_hand(&target, black_box(bytes), n)
            })
        });
        g.bench_with_input(
            BenchmarkId::new("write_fsync", label),
            &bytes,
            |b, bytes| b.iter(|| plain(&target, black_box(bytes))),
        );
    }
    g.finish();
}

fn stage_commit(c: &mut Criterion) {
    let dir = scratch();
    let registry = RunRegistry::open(dir.path().join("reg.db")).unwrap();
    let run = registry.start_run("bench", "h").unwrap();
    let bytes = vec![0x42u8; 64 << 10];
    let names: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("a{i}"))).collect();
    let mut g = c.benchmark_group("stage_commit_3x64KiB");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    g.bench_function("atomic_stage", |b| {
        b.iter(|| {
            registry
                .run_stage(&run, "s", |s| {
                    for p in &names {
                        s.write(p, |w| Ok(w.write_all(&bytes)?))?;
                    }
                    Ok(())
                })
                .unwrap()
        })
    });
    g.bench_function("three_atomic_writes", |b| {
        b.iter(|| {
            for p in &names {
                atomic_write_bytes(p, &bytes).unwrap();
            }
        })
    });
    g.finish();
}

#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    epoch: u32,
    lr: f64,
    seen: Vec<u64>,
}

fn checkpoints(c: &mut Criterion) {
    let dir = scratch();
    let registry = RunRegistry::open(dir.path().join("reg.db")).unwrap();
    let run = registry.start_run("bench", "h").unwrap();
    // About 1 KiB of JSON.
    let state = State {
        epoch: 7,
        lr: 3e-4,
        seen: (0..100).map(|i| i * 1_000_003).collect(),
    };
    let text = serde_json::to_string(&state).unwrap();
    assert!((900..1300).contains(&text.len()), "{}", text.len());
    // Two raw peers with the registry's pragmas: `rusqlite` stores and reads the same row a
    // checkpoint is (run, stage, version, value, the stage's artifact list, time) under the same
    // key; `rusqlite_value_only` keeps just the value, the least any checkpoint store can do.
    let raw = rusqlite::Connection::open(dir.path().join("raw.db")).unwrap();
    raw.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE cp (run_id TEXT, stage TEXT, version INTEGER, value TEXT, artifacts TEXT,
                          saved_ms INTEGER, PRIMARY KEY (run_id, stage, version));
         CREATE TABLE cpv (stage TEXT, version INTEGER, value TEXT, PRIMARY KEY (stage, version));",
    )
    .unwrap();
    let mut g = c.benchmark_group("checkpoint_1KiB");
    g.sample_size(30).measurement_time(Duration::from_secs(8));
    g.bench_function("save/guardrails", |b| {
        b.iter(|| registry.save_checkpoint(&run, "train", &state).unwrap())
    });
    let mut v = 0i64;
    g.bench_function("save/rusqlite", |b| {
        b.iter(|| {
            v += 1;
            let tx = raw.unchecked_transaction().unwrap();
            tx.prepare_cached(
                "INSERT INTO cp (run_id, stage, version, value, artifacts, saved_ms) VALUES (?1, 'train', ?2, ?3, '[]', ?4)",
            )
            .unwrap()
            .execute(params![run.as_str(), v, serde_json::to_string(&state).unwrap(), v])
            .unwrap();
            tx.commit().unwrap();
        })
    });
    let mut v = 0i64;
    g.bench_function("save/rusqlite_value_only", |b| {
        b.iter(|| {
            v += 1;
            let tx = raw.unchecked_transaction().unwrap();
            tx.prepare_cached("INSERT INTO cpv (stage, version, value) VALUES ('train', ?1, ?2)")
                .unwrap()
                .execute(params![v, serde_json::to_string(&state).unwrap()])
                .unwrap();
            tx.commit().unwrap();
        })
    });
    g.bench_function("load/guardrails", |b| {
        b.iter(|| {
            registry
                .load_checkpoint::<State>(&run, "train")
                .unwrap()
                .unwrap()
        })
    });
    g.bench_function("load/rusqlite", |b| {
        b.iter(|| {
            let (text, artifacts): (String, String) = raw
                .prepare_cached(
                    "SELECT version, value, artifacts, saved_ms FROM cp WHERE run_id = ?1 AND stage = 'train' ORDER BY version DESC LIMIT 1",
                )
                .unwrap()
                .query_row(params![run.as_str()], |r| Ok((r.get(1)?, r.get(2)?)))
                .unwrap();
            let artifacts: Vec<serde_json::Value> = serde_json::from_str(&artifacts).unwrap();
            (serde_json::from_str::<State>(&text).unwrap(), artifacts)
        })
    });
    g.bench_function("load/rusqlite_value_only", |b| {
        b.iter(|| {
            let text: String = raw
                .prepare_cached(
                    "SELECT value FROM cpv WHERE stage = 'train' ORDER BY version DESC LIMIT 1",
                )
                .unwrap()
                .query_row([], |r| r.get(0))
                .unwrap();
            serde_json::from_str::<State>(&text).unwrap()
        })
    });
    g.finish();
}

fn resume(c: &mut Criterion) {
    let dir = scratch();
    let registry = RunRegistry::open(dir.path().join("reg.db")).unwrap();
    let run = registry.start_run("bench", "h").unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    for chunk in 0..10 {
        registry
            .run_stage(&run, &format!("stage-{chunk}"), |s| {
                for i in 0..1000 {
                    s.write(out.join(format!("{chunk}-{i}.bin")), |w| {
                        Ok(w.write_all(b"x")?)
                    })?;
                }
                Ok(())
            })
            .unwrap();
    }
    assert_eq!(registry.artifacts(&run).unwrap().len(), 10_000);
    let mut g = c.benchmark_group("resume_10k_artifacts");
    g.sample_size(10);
    g.bench_function("size_mtime", |b| {
        b.iter(|| {
            let plan = registry.resume(&run, &ResumeOptions::new()).unwrap();
            assert!(plan.is_done("stage-9"));
            plan
        })
    });
    g.finish();
}

criterion_group!(benches, atomic_writes, stage_commit, checkpoints, resume);
criterion_main!(benches);
