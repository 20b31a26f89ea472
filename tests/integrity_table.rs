//! Metadata tables written by pyarrow (tests/fixtures/table/make_tables.py): Parquet with
//! every codec, data page v2, many row groups, no statistics, page checksums and nested
//! columns; Arrow IPC files and streams; CSV. Every damaged file fails with the right
//! check, and every prefix of a good file fails without panicking.
#![cfg(feature = "data")]

mod common;

use std::path::PathBuf;

use common::{failed_checks, warnings};

use arrow_schema::DataType;
use guardrails::integrity::{
    AllowedValues, ConsistencyCheck, DataIntegrityChecker, FindingSeverity, Format, Report,
    TableCheck, Verdict,
};

fn fixture(name: &str) -> PathBuf {
    common::fixture("table", name)
}

fn run(path: impl Into<PathBuf>, check: &TableCheck) -> Report {
    DataIntegrityChecker::new()
        .validate_metadata_file(path.into(), check)
        .unwrap()
}

fn check(name: &str, check: &TableCheck) -> Report {
    run(fixture(name), check)
}

/// Everything the fixtures' good table satisfies.
fn full_check() -> TableCheck {
    TableCheck::new()
        .with_required_columns(["id", "path", "label", "score", "split"])
        .with_column_type("id", DataType::Int64)
        .with_column_type("label", DataType::Utf8)
        .with_min_rows(200)
        .with_max_rows(200)
        .with_not_null(["id", "path", "label"])
        .with_unique(["id"])
        .with_allowed("label", AllowedValues::one_of(["cat", "dog", "bird"]))
        .with_allowed("score", AllowedValues::range(0.0, 1.0))
        .with_paths_exist("path")
}

const GOOD: &[&str] = &[
    "good_none.parquet",
    "good_snappy.parquet",
    "good_gzip.parquet",
    "good_brotli.parquet",
    "good_zstd.parquet",
    "good_lz4.parquet",
    "good_v2.parquet",
    "many_row_groups.parquet",
    "no_stats.parquet",
    "checksums.parquet",
    "nested.parquet",
    "good.arrow",
    "good_lz4.arrow",
    "good_zstd.arrow",
    "good.arrows",
    "good_lz4.arrows",
    "good.csv",
];

#[test]
fn every_good_table_passes_every_check() {
    for name in GOOD {
        for quick in [false, true] {
            let r = check(name, &full_check().with_quick(quick));
            assert!(r.ok, "{name} quick={quick}: {:#?}", r.findings);
            assert_eq!(r.info["rows"], 200, "{name}");
            assert_eq!(r.info["paths_checked.path"], 200, "{name}");
            assert_eq!(r.kind, "table");
        }
    }
}

#[test]
fn formats_come_from_the_bytes() {
    let expected = [
        ("good_snappy.parquet", Format::Parquet),
        ("good.arrow", Format::ArrowIpc),
        ("good.arrows", Format::ArrowStream),
        ("good.csv", Format::Csv),
        ("csv_named.parquet", Format::Csv),
    ];
    for (name, format) in expected {
        assert_eq!(check(name, &TableCheck::new()).format, format, "{name}");
    }
    // A CSV named .parquet is read as CSV and passes, with a warning about the name.
    let r = check("csv_named.parquet", &full_check());
    assert!(r.ok, "{:#?}", r.findings);
    assert_eq!(warnings(&r), ["format"]);
}

#[test]
fn parquet_footer_facts_are_reported() {
    let r = check("many_row_groups.parquet", &TableCheck::new());
    assert_eq!(r.info["row_groups"], 13); // 200 rows / 16 per group
    assert_eq!(r.info["statistics"], true);
    assert!(
        r.info["created_by"]
            .as_str()
            .unwrap()
            .contains("parquet-cpp")
    );
    let codecs = check("good_zstd.parquet", &TableCheck::new()).info["codecs"].clone();
    assert_eq!(codecs, serde_json::json!(["zstd"]));
    assert_eq!(
        check("no_stats.parquet", &TableCheck::new()).info["statistics"],
        false
    );
    let columns = &check("nested.parquet", &TableCheck::new()).info["columns"];
    let names: Vec<&str> = columns
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["id", "path", "label", "score", "split", "tags", "box"]
    );
}

#[test]
fn quick_mode_reads_no_page_when_statistics_answer() {
    let quick = TableCheck::new()
        .with_not_null(["id", "path"])
        .with_min_rows(10)
        .with_quick(true);
    let r = check("good_snappy.parquet", &quick);
    assert!(r.ok, "{:#?}", r.findings);
    assert_eq!(r.info["pages_scanned"], false);
    // Statistics also find the nulls without a scan.
    let r = check("nulls.parquet", &quick);
    assert_eq!(failed_checks(&r), ["not_null"]);
    assert_eq!(r.info["pages_scanned"], false);
    assert!(
        r.findings[0].message.contains("4 null"),
        "{}",
        r.findings[0].message
    );
    // Without statistics it says so and scans.
    let r = check("no_stats.parquet", &quick);
    assert!(r.ok);
    assert_eq!(warnings(&r), ["statistics"]);
    assert_eq!(r.info["pages_scanned"], true);
}

#[test]
fn damaged_parquet_fails_with_the_right_check() {
    let cases: &[(&str, &str)] = &[
        ("cut_footer.parquet", "footer"),
        ("cut_half.parquet", "footer"),
        ("flipped_checksums.parquet", "page_checksum"),
    ];
    for (name, want) in cases {
        let r = check(name, &TableCheck::new());
        assert!(!r.ok, "{name}");
        assert_eq!(failed_checks(&r), [*want], "{name}: {:#?}", r.findings);
        let err = r.into_result().unwrap_err();
        assert!(err.to_string().contains(name), "{err}");
    }
    // Wrong magic at the start: not recognised as parquet at all.
    let r = check("wrong_magic.parquet", &TableCheck::new());
    assert_eq!(r.format, Format::Unknown);
    assert_eq!(failed_checks(&r), ["format"]);
}

#[test]
fn content_problems_are_each_reported() {
    let r = check("nulls.parquet", &full_check());
    assert_eq!(failed_checks(&r), ["not_null"]);
    assert!(
        r.findings[0]
            .message
            .contains("column path has 4 null(s); first at row 7")
    );

    let r = check("missing_column.parquet", &full_check());
    // Every finding, not only the first: the column is missing, so no path is checked.
    assert_eq!(failed_checks(&r), ["required_columns"]);
    assert_eq!(r.findings[0].expected.as_deref(), Some("columns path"));

    let r = check("few_rows.parquet", &full_check());
    assert_eq!(failed_checks(&r), ["min_rows"]);
    assert_eq!(r.findings[0].found.as_deref(), Some("5 rows"));

    let r = check("empty.parquet", &TableCheck::new());
    assert_eq!(failed_checks(&r), ["rows"]);
    assert!(check("empty.parquet", &TableCheck::new().with_allow_empty(true)).ok);

    let r = check("duplicate_ids.parquet", &full_check());
    assert_eq!(failed_checks(&r), ["unique"]);
    assert!(
        r.findings[0].message.contains("100 duplicate"),
        "{}",
        r.findings[0].message
    );
    assert!(
        r.findings[0].message.contains("row 1: 0"),
        "{}",
        r.findings[0].message
    );

    let r = check("out_of_range.parquet", &full_check());
    assert_eq!(failed_checks(&r), ["allowed_values"]);
    assert!(r.findings[0].message.contains("row 3: 1.5"));
    assert!(r.findings[0].message.contains("row 9: -0.25"));

    let r = check("missing_files.parquet", &full_check());
    assert_eq!(failed_checks(&r), ["paths_exist"]);
    let m = &r.findings[0].message;
    assert!(m.contains("5 of 200"), "{m}");
    assert!(
        m.contains("files/missing_0.txt, files/missing_40.txt"),
        "{m}"
    );

    let r = check(
        "good_snappy.parquet",
        &TableCheck::new()
            .with_max_rows(100)
            .with_column_type("id", DataType::Utf8)
            .with_allowed("label", AllowedValues::one_of(["cat"])),
    );
    assert_eq!(
        failed_checks(&r),
        ["column_type", "max_rows", "allowed_values"]
    );
}

#[test]
fn the_root_moves_relative_paths() {
    let elsewhere = tempfile::tempdir().unwrap();
    let r = check(
        "good_snappy.parquet",
        &TableCheck::new()
            .with_paths_exist("path")
            .with_root(elsewhere.path()),
    );
    assert_eq!(failed_checks(&r), ["paths_exist"]);
    assert!(r.findings[0].message.contains("200 of 200"));
}

#[test]
fn batch_checks_see_every_batch() {
    use arrow_array::cast::AsArray;
    use arrow_array::types::Float64Type;
    let check_fn = |batch: &arrow_array::RecordBatch| {
        let scores = batch
            .column_by_name("score")
            .ok_or("no score")?
            .as_primitive::<Float64Type>();
        if scores.iter().flatten().any(|s| s > 0.985) {
            Err("score above 0.985".to_string())
        } else {
            Ok(())
        }
    };
    let r = check(
        "many_row_groups.parquet",
        &TableCheck::new().with_batch_check("score_cap", check_fn),
    );
    assert_eq!(failed_checks(&r), ["batch_check:score_cap"]);
    assert!(r.findings[0].message.contains("score above 0.985"));
}

#[test]
fn loaded_batches_come_back() {
    let checker = DataIntegrityChecker::new();
    let (report, batches) = checker
        .load_metadata_file(fixture("good_zstd.parquet"), &full_check().with_quick(true))
        .unwrap();
    assert!(report.ok);
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 200);
    assert_eq!(batches[0].num_columns(), 5);
    let (report, batches) = checker
        .load_metadata_file(fixture("cut_footer.parquet"), &TableCheck::new())
        .unwrap();
    assert!(!report.ok);
    assert!(batches.is_empty());
}

#[test]
fn damaged_ipc_fails() {
    let r = check("cut.arrow", &TableCheck::new());
    assert_eq!(failed_checks(&r), ["footer"]);
    let r = check("cut.arrows", &TableCheck::new());
    assert!(
        failed_checks(&r).contains(&"end_of_stream"),
        "{:#?}",
        r.findings
    );
    assert!(failed_checks(&r).contains(&"batches"), "{:#?}", r.findings);
    // Cut exactly between messages: every batch reads, only the marker is missing.
    let r = check("no_eos.arrows", &TableCheck::new());
    assert_eq!(failed_checks(&r), ["end_of_stream"]);
    assert_eq!(r.info["rows"], 200);
}

#[test]
fn csv_structure_problems_are_reported() {
    let r = check("bom.csv", &full_check());
    assert!(r.ok, "{:#?}", r.findings);
    assert_eq!(warnings(&r), ["bom"]);

    let r = check("quoted_newlines.csv", &TableCheck::new().with_min_rows(3));
    assert!(r.ok, "{:#?}", r.findings);
    assert_eq!(r.info["rows"], 3);

    let r = check("ragged.csv", &full_check());
    assert!(
        failed_checks(&r).contains(&"ragged_rows"),
        "{:#?}",
        r.findings
    );
    let ragged = r
        .findings
        .iter()
        .find(|f| f.check == "ragged_rows")
        .unwrap();
    assert!(ragged.message.contains("2 row(s)"), "{}", ragged.message);
    assert!(
        ragged.message.contains("line 6: 6 fields"),
        "{}",
        ragged.message
    );
    assert!(
        ragged.message.contains("line 10: 2 fields"),
        "{}",
        ragged.message
    );

    let r = check("invalid_utf8.csv", &TableCheck::new());
    assert_eq!(failed_checks(&r), ["utf8"]);
    assert!(
        r.findings
            .iter()
            .any(|f| f.message.contains("line 5, field 5"))
    );

    let r = check("unterminated.csv", &TableCheck::new());
    assert_eq!(failed_checks(&r), ["quotes"]);
}

#[test]
fn consistency_checks_paths_and_ids() {
    let checker = DataIntegrityChecker::new();
    let good = ConsistencyCheck::new().with_paths_exist("path");
    let r = checker
        .validate_data_consistency(fixture("good_snappy.parquet"), &good)
        .unwrap();
    assert!(r.ok, "{:#?}", r.findings);
    assert_eq!(r.kind, "consistency");

    let r = checker
        .validate_data_consistency(
            fixture("missing_files.parquet"),
            &good.clone().with_max_examples(2),
        )
        .unwrap();
    assert_eq!(failed_checks(&r), ["paths_exist"]);
    assert!(
        r.findings[0]
            .message
            .ends_with("files/missing_0.txt, files/missing_40.txt")
    );

    let subset =
        ConsistencyCheck::new().with_ids_subset_of("id", fixture("good_snappy.parquet"), "id");
    let r = checker
        .validate_data_consistency(fixture("ids_subset.parquet"), &subset)
        .unwrap();
    assert!(r.ok, "{:#?}", r.findings);
    let r = checker
        .validate_data_consistency(fixture("ids_not_subset.parquet"), &subset)
        .unwrap();
    assert_eq!(failed_checks(&r), ["id_subset"]);
    assert!(
        r.findings[0].message.contains("50 id(s)"),
        "{}",
        r.findings[0].message
    );
    assert!(r.findings[0].message.contains("first: 200, 201"));
}

#[test]
fn a_missing_file_is_an_io_error() {
    let err = DataIntegrityChecker::new()
        .validate_metadata_file(fixture("no_such.parquet"), &TableCheck::new())
        .unwrap_err();
    assert!(err.to_string().contains("no_such.parquet"), "{err}");
}

/// Every prefix of each good file must fail (or, for a CSV cut at a line end, pass with
/// fewer rows than the check demands) without panicking. A CSV cut inside its last line
/// is caught by the final-terminator requirement, which a user whose writers always end
/// their lines turns on (by default it is a warning, see
/// `a_csv_without_a_final_terminator_warns_unless_required`).
#[test]
fn every_prefix_of_a_good_table_fails() {
    let dir = tempfile::tempdir().unwrap();
    let check = TableCheck::new()
        .with_min_rows(200)
        .with_not_null(["id"])
        .with_csv_final_newline(true);
    for name in GOOD
        .iter()
        .copied()
        .chain(["bom.csv", "quoted_newlines.csv"])
    {
        let check = if name == "quoted_newlines.csv" {
            TableCheck::new()
                .with_min_rows(3)
                .with_csv_final_newline(true)
        } else {
            check.clone()
        };
        let bytes = std::fs::read(fixture(name)).unwrap();
        let target = dir.path().join(name);
        // Every length for the small files, a dense sample for the larger ones.
        let step = (bytes.len() / 1500).max(1);
        for len in (0..bytes.len()).step_by(step) {
            std::fs::write(&target, &bytes[..len]).unwrap();
            let r = run(&target, &check);
            assert!(!r.ok, "{name} cut at {len} of {} passed", bytes.len());
        }
    }
    // A Parquet feature table, through the feature check.
    let bytes = std::fs::read(fixture("features_ok.parquet")).unwrap();
    let target = dir.path().join("features_ok.parquet");
    let features = guardrails::integrity::FeatureCheck::new().with_min_rows(50);
    for len in 0..bytes.len() {
        std::fs::write(&target, &bytes[..len]).unwrap();
        let r = DataIntegrityChecker::new()
            .validate_feature_file(&target, &features)
            .unwrap();
        assert!(!r.ok, "features_ok.parquet cut at {len} passed");
    }
}

#[test]
fn random_bytes_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..200 {
        let len = rng.usize(0..4096);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        // Give half of them a real magic so the parsers, not the sniffer, see them.
        let magic: &[u8] = match i % 4 {
            0 => b"PAR1",
            1 => b"ARROW1\0\0",
            2 => &[0xFF, 0xFF, 0xFF, 0xFF],
            _ => b"",
        };
        bytes.splice(0..0, magic.iter().copied());
        if i % 4 == 0 {
            bytes.extend_from_slice(&[8, 0, 0, 0]);
            bytes.extend_from_slice(b"PAR1");
        }
        let target = dir.path().join(format!("r{i}.bin"));
        std::fs::write(&target, &bytes).unwrap();
        let r = run(&target, &TableCheck::new());
        assert!(!r.ok, "random file {i} passed");
    }
}

#[test]
fn parquet_feature_tables_are_scanned() {
    use guardrails::integrity::FeatureCheck;
    let checker = DataIntegrityChecker::new();
    let feature = |name: &str, check: &FeatureCheck| {
        checker.validate_feature_file(fixture(name), check).unwrap()
    };
    let r = feature(
        "features_ok.parquet",
        &FeatureCheck::new()
            .with_dtypes(["float32", "float64", "int64"])
            .with_shape([None, Some(10)])
            .with_min_rows(50),
    );
    assert!(r.ok, "{:#?}", r.findings);
    assert_eq!(r.kind, "feature");
    assert_eq!(r.info["shape"], serde_json::json!([50, 10]));
    assert_eq!(r.info["non_finite"], 0);

    let r = feature("features_nan.parquet", &FeatureCheck::new());
    assert_eq!(failed_checks(&r), ["finite"]);
    assert_eq!(r.info["non_finite"], 3);
    assert!(
        r.findings[0].message.contains("column emb, row 7"),
        "{}",
        r.findings[0].message
    );
    assert!(
        feature(
            "features_nan.parquet",
            &FeatureCheck::new().with_finite(false)
        )
        .ok
    );

    let r = feature("features_nulls.parquet", &FeatureCheck::new());
    assert_eq!(failed_checks(&r), ["nulls"]);
    assert!(
        r.findings[0].message.contains("column emb, near row 5"),
        "{}",
        r.findings[0].message
    );

    let r = feature(
        "features_varlist.parquet",
        &FeatureCheck::new().with_rank(2),
    );
    assert_eq!(r.info["shape"], serde_json::json!([20]));
    assert_eq!(failed_checks(&r), ["rank"]);

    let r = feature(
        "features_ok.parquet",
        &FeatureCheck::new().with_dtypes(["float32"]),
    );
    assert_eq!(failed_checks(&r), ["dtype"]);
    assert_eq!(r.findings[0].found.as_deref(), Some("float64, int64"));

    // A table with no numeric column is not a feature file.
    let r = checker
        .validate_feature_file(fixture("good.arrow"), &FeatureCheck::new())
        .unwrap();
    assert_eq!(failed_checks(&r), ["format"]);
    let r = feature("cut_half.parquet", &FeatureCheck::new());
    assert_eq!(failed_checks(&r), ["footer"]);
}

/// Found by the `integrity_files` fuzz target: an IPC stream on which arrow-buffer panics.
/// The panic is caught and the file fails.
#[test]
fn a_panicking_reader_gives_a_failing_report() {
    let r = check("fuzz_ipc_panic.arrows", &TableCheck::new());
    assert!(!r.ok);
    assert!(
        r.findings.iter().any(|f| f.message.contains("panicked")),
        "{:#?}",
        r.findings
    );
}

/// Found by the fuzz target: an IPC file whose footer lists a message that arrow-ipc reads
/// (it parses past the metadata into the body) and whose compressed buffer declares 40 GiB,
/// which would abort the process. Metadata that does not verify is refused before reading.
#[test]
fn unverifiable_ipc_metadata_is_refused() {
    let r = check("fuzz_ipc_huge_buffer.arrow", &TableCheck::new());
    assert_eq!(failed_checks(&r), ["footer"], "{:#?}", r.findings);
    // Also found by fuzzing: a dictionary batch whose message prefix and body length were
    // damaged (the file reader ignores both) and whose buffer declares 7.3 EiB.
    let r = check("fuzz_ipc_dictionary_size.arrow", &TableCheck::new());
    assert_eq!(failed_checks(&r), ["buffers"], "{:#?}", r.findings);
}

/// A compressed buffer whose length prefix declares more than can be allocated is refused
/// before arrow-ipc allocates it; both in a stream and in a file.
#[test]
fn a_hostile_declared_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["good_lz4.arrows", "good_lz4.arrow"] {
        let mut bytes = std::fs::read(fixture(name)).unwrap();
        // Each lz4-compressed buffer is an 8-byte uncompressed length, then an LZ4 frame.
        let frame = bytes
            .windows(4)
            .position(|w| w == [0x04, 0x22, 0x4D, 0x18])
            .expect("an LZ4 frame");
        bytes[frame - 8..frame].copy_from_slice(&(1i64 << 40).to_le_bytes());
        let target = dir.path().join(name);
        std::fs::write(&target, &bytes).unwrap();
        let r = run(&target, &TableCheck::new());
        assert_eq!(failed_checks(&r), ["buffers"], "{name}: {:#?}", r.findings);
        assert_eq!(r.findings[0].found.as_deref(), Some("1099511627776 bytes"));
    }
}

/// `Default` checks exactly what `new()` checks (it once derived a weaker one: CSV final
/// newline off, no examples kept).
#[test]
fn default_table_check_is_new() {
    assert_eq!(
        format!("{:?}", TableCheck::default()),
        format!("{:?}", TableCheck::new())
    );
}

/// A Parquet file of an Int64 column `id` and a Utf8 column `name`, written in batches of
/// 8 192 rows so a scan sees many batches.
fn write_ids(path: &std::path::Path, ids: impl Iterator<Item = i64>) {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use arrow_schema::{Field, Schema};

    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
    ]));
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, schema.clone(), None).unwrap();
    let ids: Vec<i64> = ids.collect();
    for chunk in ids.chunks(8192) {
        let names: Vec<String> = chunk.iter().map(|i| format!("clip-{i:08}")).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(chunk.to_vec())),
            Arc::new(StringArray::from(names)),
        ];
        w.write(&RecordBatch::try_new(schema.clone(), columns).unwrap())
            .unwrap();
    }
    w.close().unwrap();
}

/// With a memory limit small enough to spill sorted runs to disk, `unique` finds the same
/// duplicates, with the same examples, as when everything fits in memory.
#[test]
fn unique_answers_the_same_after_spilling_to_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ids.parquet");
    // 40 000 rows, 30 000 distinct: rows 30 000.. repeat rows 0..10 000.
    write_ids(&path, (0..40_000).map(|i| i % 30_000));
    let base = TableCheck::new()
        .with_unique(["id", "name"])
        .with_max_examples(3);
    let in_memory = run(&path, &base);
    let spilled = run(&path, &base.clone().with_memory_limit(0));
    for r in [&in_memory, &spilled] {
        assert_eq!(failed_checks(r), ["unique", "unique"], "{:#?}", r.findings);
        assert_eq!(
            r.findings[0].message,
            "column id has 10000 duplicate value(s), e.g. row 30000: 0; row 30001: 1; row 30002: 2"
        );
        assert_eq!(
            r.findings[1].message,
            "column name has 10000 duplicate value(s), e.g. row 30000: the value of row 0; \
             row 30001: the value of row 1; row 30002: the value of row 2"
        );
    }
    assert!(!in_memory.info.contains_key("unique_spilled_runs.id"));
    let runs = &spilled.info["unique_spilled_runs.id"];
    assert!(runs["runs"].as_u64().unwrap() >= 9, "{runs}");
    assert_eq!(runs["values"], 40_000);

    // Distinct values pass both ways.
    let distinct = dir.path().join("distinct.parquet");
    write_ids(&distinct, 0..40_000);
    assert!(run(&distinct, &base.clone().with_memory_limit(0)).ok);
    assert!(run(&distinct, &base).ok);
}

/// The id-subset check merges both sides in key order, in memory or spilled: the same
/// unknown ids, shown by value.
#[test]
fn id_subsets_answer_the_same_after_spilling_to_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (ids, reference) = (
        dir.path().join("ids.parquet"),
        dir.path().join("ref.parquet"),
    );
    write_ids(&ids, (0..20_000).rev());
    write_ids(&reference, 0..15_000);
    let checker = DataIntegrityChecker::new();
    for limit in [guardrails::integrity::DEFAULT_MEMORY_LIMIT, 0] {
        let check = ConsistencyCheck::new()
            .with_ids_subset_of("name", &reference, "name")
            .with_max_examples(2)
            .with_memory_limit(limit);
        let r = checker.validate_data_consistency(&ids, &check).unwrap();
        assert_eq!(failed_checks(&r), ["id_subset"], "limit {limit}");
        // Rows 0 and 1 hold the largest ids, 19 999 and 19 998.
        assert!(
            r.findings[0]
                .message
                .starts_with("5000 id(s) in column name are not in"),
            "{}",
            r.findings[0].message
        );
        assert!(
            r.findings[0]
                .message
                .ends_with("first: clip-00019999, clip-00019998"),
            "{}",
            r.findings[0].message
        );
        assert_eq!(r.info["ids_checked.name"], 20_000);
        let ok = ConsistencyCheck::new()
            .with_ids_subset_of("id", &ids, "id")
            .with_memory_limit(limit);
        assert!(
            checker
                .validate_data_consistency(&reference, &ok)
                .unwrap()
                .ok
        );
    }
}

/// RFC 4180 lets the last record end without a line break (arrow-testing's
/// aggregate_test_100.csv does): a warning by default, a failure on request.
#[test]
fn a_csv_without_a_final_terminator_warns_unless_required() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("open_end.csv");
    std::fs::write(&path, "id,name\n1,a\n2,b").unwrap();
    let r = run(&path, &TableCheck::new());
    assert_eq!(r.verdict, Verdict::Pass, "{:#?}", r.findings);
    assert!(
        r.findings
            .iter()
            .any(|f| f.check == "line_end" && f.severity == FindingSeverity::Warning),
        "{:#?}",
        r.findings
    );
    let r = run(&path, &TableCheck::new().with_csv_final_newline(true));
    assert_eq!(r.verdict, Verdict::Failed);
    assert!(r.findings.iter().any(|f| f.check == "line_end"));
}

/// A one-column CSV has no delimiter to detect: it is read as CSV when its extension or the
/// check's format hint says so, and stays unknown otherwise.
#[test]
fn a_one_column_csv_is_read_by_its_extension_or_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let named = dir.path().join("ids.csv");
    std::fs::write(&named, "id\n1\n2\n3\n").unwrap();
    let report = run(
        named.clone(),
        &TableCheck::new().with_required_columns(["id"]),
    );
    assert!(report.ok, "{report:?}");
    assert_eq!(report.format, Format::Csv);
    assert_eq!(report.info["rows"], 3);
    assert!(warnings(&report).is_empty(), "{report:?}");

    let bare = dir.path().join("ids");
    std::fs::write(&bare, "id\n1\n2\n3\n").unwrap();
    assert_eq!(
        run(bare.clone(), &TableCheck::new()).format,
        Format::Unknown
    );
    let hinted = run(
        bare.clone(),
        &TableCheck::new().with_format_hint(Format::Csv),
    );
    assert!(hinted.ok, "{hinted:?}");

    // A binary file is not made a CSV by its name.
    let binary = dir.path().join("blob.csv");
    std::fs::write(&binary, [0u8, 1, 2, 3]).unwrap();
    assert!(!run(binary, &TableCheck::new()).ok);
}
