//! Checks the repository's own fixtures the way a pipeline checks its inputs before a
//! stage: a metadata table (and the files it names), a feature file and a video, then a
//! cut copy of the video. Run with `cargo run --example integrity --features data`.

use std::path::Path;

use guardrails::integrity::{
    AllowedValues, ConsistencyCheck, DataIntegrityChecker, FeatureCheck, Report, TableCheck,
    VideoCheck,
};

fn show(report: &Report) {
    let verdict = if report.ok { "ok" } else { "FAILED" };
    println!("{verdict}: {} ({:?})", report.path.display(), report.format);
    for f in &report.findings {
        println!("  {:?} {}: {}", f.severity, f.check, f.message);
    }
}

fn main() -> guardrails::Result<()> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let checker = DataIntegrityChecker::new();

    let table = TableCheck::new()
        .with_required_columns(["id", "path", "label"])
        .with_min_rows(100)
        .with_not_null(["id", "path"])
        .with_unique(["id"])
        .with_allowed("label", AllowedValues::one_of(["cat", "dog", "bird"]))
        .with_paths_exist("path");
    let (report, batches) =
        checker.load_metadata_file(fixtures.join("table/good_zstd.parquet"), &table)?;
    show(&report);
    println!(
        "  {} batches loaded, {} rows",
        batches.len(),
        report.info["rows"]
    );
    show(&checker.validate_metadata_file(fixtures.join("table/missing_files.parquet"), &table)?);

    let ids = ConsistencyCheck::new().with_ids_subset_of(
        "id",
        fixtures.join("table/good_zstd.parquet"),
        "id",
    );
    show(&checker.validate_data_consistency(fixtures.join("table/ids_not_subset.parquet"), &ids)?);

    let features = FeatureCheck::new().with_dtypes(["float32"]).with_rank(2);
    show(&checker.validate_feature_file(fixtures.join("npy/f32_2d.npy"), &features)?);

    let video = VideoCheck::new().with_codecs(["h264"]).with_min_frames(12);
    show(&checker.validate_video_file(fixtures.join("video/h264.mp4"), &video)?);
    let cut = checker.validate_video_file(fixtures.join("video/cut_end.mp4"), &video)?;
    show(&cut);
    // In a pipeline, the first error becomes a GuardrailError of class validation.
    if let Err(e) = cut.into_result() {
        println!("as an error: {e} (class {:?})", e.class());
    }
    Ok(())
}
