//! Integrity benches. The NPY finite scan reads a 1 GB float32 file; the numpy peer
//! (`np.isfinite(np.load(f, mmap_mode='r')).all()`) runs from `benches/peers/npy.sh` on the
//! same file in the same run. The 1M-row Parquet metadata check reads the tables that
//! `benches/peers/make_parquet_1m.py` writes (pyarrow); its pandas peer, with peak memory,
//! runs as whole processes from `benches/peers/parquet.sh`. The video probe times an
//! `ffprobe -show_format -show_streams` process per file in the same group.

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::io::Write;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use guardrails::integrity::{DataIntegrityChecker, FeatureCheck, TableCheck, VideoCheck};

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

/// The bench tables, made by the pyarrow script if they are not there yet.
fn parquet_tables() -> Option<Vec<PathBuf>> {
    let dir = std::env::var_os("GUARDRAILS_PARQUET_BENCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("guardrails_bench"));
    let mut tables = Vec::new();
    for (name, flag) in [
        ("meta_1m.parquet", None),
        ("meta_1m_unique.parquet", Some("--unique")),
    ] {
        let path = dir.join(name);
        if !path.exists() {
            let mut cmd = std::process::Command::new("python3");
            cmd.arg("benches/peers/make_parquet_1m.py").arg(&dir);
            cmd.args(flag);
            if !cmd.status().is_ok_and(|s| s.success()) {
                eprintln!(
                    "skipping the parquet bench: python3 with pyarrow is needed to make {name}"
                );
                return None;
            }
        }
        tables.push(path);
    }
    Some(tables)
}

fn parquet_metadata(c: &mut Criterion) {
    let Some(tables) = parquet_tables() else {
        return;
    };
    let checker = DataIntegrityChecker::new();
    let check = TableCheck::new()
        .with_required_columns(["id", "path", "label"])
        .with_min_rows(1_000_000)
        .with_not_null(["id", "path", "label"])
        .with_paths_exist("path");
    let mut g = c.benchmark_group("parquet_metadata_1m_rows");
    g.sample_size(10)
        .throughput(Throughput::Elements(1_000_000));
    for (table, label) in tables.iter().zip(["10k_files", "1m_files"]) {
        assert!(checker.validate_metadata_file(table, &check).unwrap().ok);
        g.bench_function(format!("full_scan_{label}"), |b| {
            b.iter(|| black_box(checker.validate_metadata_file(table, &check).unwrap().ok))
        });
        let quick = check.clone().with_quick(true);
        g.bench_function(format!("quick_{label}"), |b| {
            b.iter(|| black_box(checker.validate_metadata_file(table, &quick).unwrap().ok))
        });
    }
    g.finish();
}

/// The bench videos, made with ffmpeg if they are not there yet.
fn bench_videos() -> Option<PathBuf> {
    let out = std::process::Command::new("bash")
        .arg("benches/peers/make_videos.sh")
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn video_probe(c: &mut Criterion) {
    let Some(dir) = bench_videos() else {
        eprintln!("skipping the video bench: ffmpeg is needed to make the clips");
        return;
    };
    let checker = DataIntegrityChecker::new();
    let check = VideoCheck::new();
    let mut g = c.benchmark_group("video_probe_60s_720p");
    for name in ["clip.mp4", "clip.mkv", "clip.avi"] {
        let path = dir.join(name);
        assert!(checker.validate_video_file(&path, &check).unwrap().ok);
        g.bench_function(format!("guardrails/{name}"), |b| {
            b.iter(|| black_box(checker.validate_video_file(&path, &check).unwrap().ok))
        });
        g.bench_function(format!("ffprobe_process/{name}"), |b| {
            b.iter(|| {
                let out = std::process::Command::new("ffprobe")
                    .args(["-v", "error", "-show_format", "-show_streams"])
                    .arg(&path)
                    .output()
                    .unwrap();
                black_box(out.status.success())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, npy_finite, parquet_metadata, video_probe);
criterion_main!(benches);
