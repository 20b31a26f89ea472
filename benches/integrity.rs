//! Integrity benches. The NPY finite scan reads a 1 GB float32 file; the numpy peer
//! (`np.isfinite(np.load(f, mmap_mode='r')).all()`) runs from `benches/peers/npy.sh` on the
//! same file in the same run.

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::io::Write;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use guardrails::integrity::{DataIntegrityChecker, FeatureCheck};

const ROWS: u64 = 1 << 20;
const COLS: u64 = 256; // 1 Mi rows × 256 float32 = 1 GiB of data

/// Writes (once) a 1 GiB float32 NPY of finite values, at `GUARDRAILS_NPY_BENCH` or in the
/// system temp folder.
fn big_npy() -> PathBuf {
    let path = std::env::var_os("GUARDRAILS_NPY_BENCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("guardrails_bench_1g.npy"));
    let data_bytes = ROWS * COLS * 4;
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > data_bytes) {
        return path;
    }
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({ROWS}, {COLS}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    f.write_all(b"\x93NUMPY\x01\x00").unwrap();
    f.write_all(&(header.len() as u16).to_le_bytes()).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    let row: Vec<u8> = (0..COLS)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    for _ in 0..ROWS {
        f.write_all(&row).unwrap();
    }
    f.flush().unwrap();
    path
}

fn npy_finite(c: &mut Criterion) {
    let path = big_npy();
    let checker = DataIntegrityChecker::new();
    let check = FeatureCheck::new().with_dtypes(["float32"]);
    assert!(checker.validate_feature_file(&path, &check).unwrap().ok);
    let mut g = c.benchmark_group("npy_finite_scan_1gib_float32");
    g.sample_size(10)
        .throughput(Throughput::Bytes(ROWS * COLS * 4));
    g.bench_function("guardrails", |b| {
        b.iter(|| black_box(checker.validate_feature_file(&path, &check).unwrap().ok))
    });
    g.finish();
}

criterion_group!(benches, npy_finite);
criterion_main!(benches);
