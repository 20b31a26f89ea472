//! The `unique` check holds at most its memory limit whatever the row count: 10 million
//! distinct ids are checked within a 16 MiB limit, sorted runs going to a temporary file.
//! Memory is read from the allocator (every byte the process holds), sampled while the check
//! runs; the same check with a limit large enough to hold everything shows what the sampler
//! would see without the bound.
#![cfg(feature = "data")]

use std::alloc::System;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow_array::{ArrayRef, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use guardrails::integrity::{DataIntegrityChecker, Report, TableCheck};
use parquet::basic::Encoding;
use parquet::file::properties::WriterProperties;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const ROWS: i64 = 10_000_000;
const LIMIT: usize = 16 << 20;

fn held() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

/// Runs `f` and returns its result with the most bytes held above the start while it ran.
fn peak_while<T>(f: impl FnOnce() -> T) -> (T, i64) {
    let start = held();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(held() - start);
                std::thread::sleep(Duration::from_micros(200));
            }
            peak
        })
    };
    let out = f();
    done.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    (out, peak.max(held() - start))
}

/// 10 M distinct ids, then the first one again in the last row: delta-encoded and in row
/// groups of 256 Ki rows, so the file is small and the reader holds little.
fn write_table(path: &std::path::Path) {
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let props = WriterProperties::builder()
        .set_dictionary_enabled(false)
        .set_encoding(Encoding::DELTA_BINARY_PACKED)
        .set_max_row_group_row_count(Some(1 << 18))
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
    let mut start = 0;
    while start < ROWS {
        let end = (start + (1 << 16)).min(ROWS);
        // A scrambled order, so no run is sorted already.
        let ids: Vec<i64> = (start..end)
            .map(|i| (i * 7_919) % ROWS)
            .chain((end == ROWS).then_some(0))
            .collect();
        let col: ArrayRef = Arc::new(Int64Array::from(ids));
        w.write(&RecordBatch::try_new(schema.clone(), vec![col]).unwrap())
            .unwrap();
        start = end;
    }
    w.close().unwrap();
}

fn check(path: &std::path::Path, limit: usize) -> (Report, i64) {
    let check = TableCheck::new()
        .with_unique(["id"])
        .with_max_examples(1)
        .with_memory_limit(limit);
    peak_while(|| {
        DataIntegrityChecker::new()
            .validate_metadata_file(path, &check)
            .unwrap()
    })
}

#[test]
fn ten_million_distinct_ids_stay_under_the_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ids.parquet");
    write_table(&path);

    let (report, peak) = check(&path, LIMIT);
    assert_eq!(report.info["rows"], ROWS + 1);
    assert_eq!(
        report.findings[0].message,
        format!("column id has 1 duplicate value(s), e.g. row {ROWS}: 0")
    );
    let spilled = &report.info["unique_spilled_runs.id"];
    assert_eq!(spilled["values"], ROWS + 1, "{spilled}");
    // The limit, plus what the Parquet reader holds for one row group and one batch.
    assert!(
        peak < (LIMIT + (12 << 20)) as i64,
        "peak {} MiB over a {} MiB limit",
        peak >> 20,
        LIMIT >> 20
    );

    // Unbounded, the same check holds every key: 24 bytes × 10 M.
    let (report, unbounded) = check(&path, 1 << 30);
    assert!(!report.ok);
    assert!(!report.info.contains_key("unique_spilled_runs.id"));
    assert!(unbounded > 200 << 20, "{} MiB", unbounded >> 20);
    eprintln!(
        "peak held: {} MiB with a {} MiB limit, {} MiB without",
        peak >> 20,
        LIMIT >> 20,
        unbounded >> 20
    );
}
