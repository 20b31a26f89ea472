//! The five-stage video pipeline, guarded: augment → features → scale videos (more than
//! 3 000 rows or the run stops) → scaled features → training prerequisites for three model
//! types, declared in `examples/pipeline.toml`.
//!
//! It builds its own data in a temporary folder (the committed test videos, NPY feature
//! files and Parquet tables it writes) and runs three times:
//!
//! 1. clean: every stage commits;
//! 2. with a damaged clip: it is skipped into quarantine and the run still succeeds;
//! 3. with too few rows: the mandatory gate of `scale_videos` stops it, naming the stage,
//!    the gate and the figures; the stages downstream are blocked, `features` still runs.
//!
//! ```text
//! cargo run --example pipeline
//! cargo run --example pipeline -- --keep runs   # keep each run's folder, then:
//! cargo run --features cli -- preflight runs/clean/pipeline.toml
//! ```
//!
//! The registry is a SQLite file under each run's folder; nothing to install or start.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, Float32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use guardrails::integrity::{DataIntegrityChecker, VideoCheck};
use guardrails::pipeline::{
    PipelineGuardrails, PipelineOutcome, PipelinePlan, StageBody, StageContext, StageStatus,
};
use guardrails::{GuardrailError, Result};

/// The good clips the example starts from (committed test fixtures, made with ffmpeg).
const CLIPS: [&str; 4] = ["h264.mp4", "mpeg4.mp4", "hevc.mp4", "h264.mov"];
/// Width of each feature row.
const FEATURES: usize = 4;
/// The models `training_prereqs` checks, with the rows each needs.
const MODELS: [(&str, u64); 3] = [("linear", 1_000), ("gbdt", 2_000), ("mlp", 3_000)];

/// What a run is fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// Four good clips, 800 windows each: 3 200 rows.
    Clean,
    /// The same plus a clip cut before its end.
    CorruptClip,
    /// Four good clips, 500 windows each: 2 000 rows, under the gate's 3 001.
    TooFewRows,
}

impl Scenario {
    fn windows(self) -> u64 {
        match self {
            Self::TooFewRows => 500,
            _ => 800,
        }
    }
}

fn fixture_video(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/video")
        .join(name)
}

/// Lays out `root` for `scenario`: the config and the raw clips.
pub(crate) fn prepare(root: &Path, scenario: Scenario) -> Result<PathBuf> {
    let raw = root.join("raw");
    fs::create_dir_all(&raw)?;
    for clip in CLIPS {
        fs::copy(fixture_video(clip), raw.join(clip))?;
    }
    if scenario == Scenario::CorruptClip {
        fs::copy(fixture_video("cut_end.mp4"), raw.join("damaged.mp4"))?;
    }
    let config = root.join("pipeline.toml");
    fs::write(&config, include_str!("pipeline.toml"))?;
    Ok(config)
}

/// Runs the whole pipeline once over `root` (made by [`prepare`]).
pub(crate) fn run(root: &Path, scenario: Scenario) -> Result<PipelineOutcome> {
    let config = prepare(root, scenario)?;
    let plan = PipelinePlan::from_path(&config)?;
    let mut pipeline = PipelineGuardrails::open(plan)?;
    let windows = scenario.windows();
    let mut bodies: BTreeMap<String, StageBody<'_>> = BTreeMap::new();
    bodies.insert("augment".into(), Box::new(augment));
    bodies.insert(
        "features".into(),
        Box::new(move |ctx| features(ctx, windows)),
    );
    bodies.insert(
        "scale_videos".into(),
        Box::new(move |ctx| scale_videos(ctx, windows)),
    );
    bodies.insert("scaled_features".into(), Box::new(scaled_features));
    bodies.insert("training_prereqs".into(), Box::new(training_prereqs));
    pipeline.run(bodies)
}

fn clip_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| GuardrailError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Stage 1: each raw clip that passes its container check is copied; a damaged one is
/// quarantined (a validation error per item).
fn augment(ctx: &mut StageContext<'_, '_>) -> Result<()> {
    let out = ctx.output("clips")?;
    let checker = DataIntegrityChecker::new();
    for clip in clip_files(ctx.input("raw")?)? {
        ctx.item(file_name(&clip), || {
            checker
                .validate_video_file(&clip, &VideoCheck::new())?
                .into_result()?;
            fs::copy(&clip, out.join(file_name(&clip)))?;
            Ok(())
        })?;
    }
    Ok(())
}

/// Stage 2: one `windows × 4` float32 NPY matrix per clip, derived from its bytes.
fn features(ctx: &mut StageContext<'_, '_>, windows: u64) -> Result<()> {
    let out = ctx.output("features")?;
    for clip in clip_files(ctx.input("clips")?)? {
        let bytes = fs::read(&clip)?;
        let values: Vec<f32> = (0..windows as usize * FEATURES)
            .map(|i| f32::from(bytes[i % bytes.len()]))
            .collect();
        // `h264.mp4.npy`: the clip's whole name, since h264.mp4 and h264.mov both exist.
        let name = format!("{}.npy", file_name(&clip));
        fs::write(out.join(name), npy_f32(&values, windows as usize, FEATURES))?;
    }
    Ok(())
}

/// An NPY version 1.0 file of a C-order float32 matrix.
pub(crate) fn npy_f32(values: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + length (2) + header + newline, padded to 64 bytes.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// The matrix of an NPY file written by [`npy_f32`].
fn read_npy_f32(path: &Path) -> Result<Vec<f32>> {
    let bytes = fs::read(path)?;
    let bad = || GuardrailError::DataIntegrity {
        path: path.to_path_buf(),
        check: "npy_header".into(),
        expected: "an NPY 1.0 float32 file".into(),
        found: "something else".into(),
    };
    let len = bytes.get(8..10).ok_or_else(bad)?;
    let start = 10 + usize::from(u16::from_le_bytes([len[0], len[1]]));
    let body = bytes.get(start..).ok_or_else(bad)?;
    Ok(body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<()> {
    let file = fs::File::create(path)?;
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None)
        .map_err(GuardrailError::external)?;
    writer.write(batch).map_err(GuardrailError::external)?;
    writer.close().map_err(GuardrailError::external)?;
    Ok(())
}

fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>> {
    let file = fs::File::open(path).map_err(|e| GuardrailError::io(path, e))?;
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(GuardrailError::external)?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(GuardrailError::external)
}

/// Stage 3: the metadata table, one row per window of each clip.
fn scale_videos(ctx: &mut StageContext<'_, '_>, windows: u64) -> Result<()> {
    let (mut ids, mut clips, mut window, mut split) = (vec![], vec![], vec![], vec![]);
    for clip in clip_files(ctx.input("clips")?)? {
        let name = file_name(&clip);
        for w in 0..windows {
            ids.push(format!("{name}#{w}"));
            clips.push(format!("clips/{name}"));
            window.push(w as i64);
            split.push(if w % 5 == 0 { "val" } else { "train" });
        }
    }
    ctx.add_items(ids.len() as u64);
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("clip", DataType::Utf8, false),
        Field::new("window", DataType::Int64, false),
        Field::new("split", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(StringArray::from(clips)),
            Arc::new(Int64Array::from(window)),
            Arc::new(StringArray::from(split)),
        ],
    )
    .map_err(GuardrailError::external)?;
    write_parquet(&ctx.output("metadata")?, &batch)
}

/// Stage 4: each metadata row's feature window, min-max scaled to [0, 1].
fn scaled_features(ctx: &mut StageContext<'_, '_>) -> Result<()> {
    let features_dir = ctx.input("features")?.to_path_buf();
    let mut matrices: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let (mut ids, mut columns) = (Vec::new(), vec![Vec::new(); FEATURES]);
    for batch in read_parquet(ctx.input("metadata")?)? {
        let (Some(id), Some(clip), Some(window)) = (
            batch
                .column_by_name("id")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>()),
            batch
                .column_by_name("clip")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>()),
            batch
                .column_by_name("window")
                .and_then(|c| c.as_any().downcast_ref::<Int64Array>()),
        ) else {
            return Err(GuardrailError::config(
                "metadata",
                "unexpected column types",
            ));
        };
        for row in 0..batch.num_rows() {
            ctx.check_deadline()?;
            let stem = file_name(Path::new(clip.value(row)));
            if !matrices.contains_key(&stem) {
                let m = read_npy_f32(&features_dir.join(format!("{stem}.npy")))?;
                matrices.insert(stem.clone(), m);
            }
            let m = &matrices[&stem];
            let w = usize::try_from(window.value(row)).unwrap_or(0);
            ids.push(id.value(row).to_string());
            for (f, col) in columns.iter_mut().enumerate() {
                col.push(m.get(w * FEATURES + f).copied().unwrap_or(0.0) / 255.0);
            }
        }
    }
    let mut fields = vec![Field::new("id", DataType::Utf8, false)];
    let mut arrays: Vec<Arc<dyn Array>> = vec![Arc::new(StringArray::from(ids))];
    for (f, col) in columns.into_iter().enumerate() {
        fields.push(Field::new(format!("f{f}"), DataType::Float32, false));
        arrays.push(Arc::new(Float32Array::from(col)));
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(GuardrailError::external)?;
    write_parquet(&ctx.output("scaled")?, &batch)
}

/// Stage 5: whether each model type has the rows it needs.
fn training_prereqs(ctx: &mut StageContext<'_, '_>) -> Result<()> {
    let rows: u64 = read_parquet(ctx.input("scaled")?)?
        .iter()
        .map(|b| b.num_rows() as u64)
        .sum();
    let mut text = String::from("model,ready,rows\n");
    let mut ready = 0.0;
    for (model, needs) in MODELS {
        let ok = rows >= needs;
        ready += f64::from(u8::from(ok));
        text.push_str(&format!("{model},{ok},{rows}\n"));
    }
    ctx.record("models", MODELS.len() as f64);
    ctx.record("models_ready", ready);
    fs::write(ctx.output("prereqs")?, text)?;
    Ok(())
}

fn describe(outcome: &PipelineOutcome) {
    for (stage, status) in &outcome.stages {
        match status {
            StageStatus::Committed(o) => {
                let rows = o
                    .figures
                    .values
                    .iter()
                    .filter(|(k, _)| k.ends_with(".rows") || k.ends_with(".files"))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                println!("  {stage:<17} committed  {rows}");
                for q in &o.quarantine {
                    println!("  {:<17} quarantined {}: {}", "", q.item, q.error);
                }
            }
            StageStatus::Skipped { reason } => println!("  {stage:<17} skipped    {reason}"),
            StageStatus::Failed { error, .. } => println!("  {stage:<17} FAILED     {error}"),
            StageStatus::Blocked { by } => println!("  {stage:<17} blocked    by {by}"),
            other => println!("  {stage:<17} {other:?}"),
        }
    }
}

fn main() -> Result<()> {
    // `-- --keep DIR`: each run's folder is kept under DIR, to look at with the CLI.
    let args: Vec<String> = std::env::args().collect();
    let keep = match args.iter().position(|a| a == "--keep") {
        Some(i) => Some(PathBuf::from(args.get(i + 1).ok_or_else(|| {
            GuardrailError::config("--keep", "names the folder to keep the runs in")
        })?)),
        None => None,
    };
    for (title, folder, scenario) in [
        ("1. a clean run", "clean", Scenario::Clean),
        ("2. a damaged clip", "damaged_clip", Scenario::CorruptClip),
        ("3. too few rows", "too_few_rows", Scenario::TooFewRows),
    ] {
        let temp = tempfile::tempdir()?;
        let root = match &keep {
            Some(dir) => {
                let root = dir.join(folder);
                if root.exists() {
                    return Err(GuardrailError::config(
                        "--keep",
                        format!("{} exists already; name a new folder", root.display()),
                    ));
                }
                fs::create_dir_all(&root)?;
                root
            }
            None => temp.path().to_path_buf(),
        };
        println!("{title} (in {})", root.display());
        let outcome = run(&root, scenario)?;
        describe(&outcome);
        println!(
            "  run {}: {}\n",
            outcome.run,
            if outcome.is_success() {
                "succeeded"
            } else {
                "stopped"
            }
        );
    }
    Ok(())
}
