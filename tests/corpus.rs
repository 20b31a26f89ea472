//! The public conformance corpora others built to break readers (apache/parquet-testing,
//! apache/arrow-testing, mozilla/mp4parse-rust; see tests/fixtures/external/README.md):
//! every vendored file gets the verdict tests/fixtures/external/verdicts.txt names, and
//! none panics or hangs. Memory per file is measured outside the tests (the issue note).
#![cfg(feature = "data")]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use guardrails::integrity::{
    DataIntegrityChecker, FeatureCheck, FindingSeverity, Report, TableCheck, Verdict, VideoCheck,
};

fn external() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/external")
}

struct Expectation {
    verdict: Verdict,
    kind: String,
    path: String,
}

fn manifest() -> Vec<Expectation> {
    let text = std::fs::read_to_string(external().join("verdicts.txt")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let entry = l.split("  #").next().unwrap();
            let mut parts = entry.split_whitespace();
            let verdict = match parts.next().unwrap() {
                "pass" => Verdict::Pass,
                "failed" => Verdict::Failed,
                "unsupported" => Verdict::Unsupported,
                other => panic!("unknown verdict {other} in {l}"),
            };
            Expectation {
                verdict,
                kind: parts.next().unwrap().to_string(),
                path: parts.next().unwrap().to_string(),
            }
        })
        .collect()
}

fn check(kind: &str, path: &Path) -> Report {
    let checker = DataIntegrityChecker::new();
    let report = match kind {
        "table" => checker.validate_metadata_file(path, &TableCheck::new()),
        "features" => checker.validate_feature_file(path, &FeatureCheck::new().with_finite(false)),
        "video" => checker.validate_video_file(path, &VideoCheck::new()),
        other => panic!("unknown kind {other}"),
    };
    report.unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_corpus_file_gets_its_verdict() {
    let mut wrong = Vec::new();
    let entries = manifest();
    for e in &entries {
        let report = check(&e.kind, &external().join(&e.path));
        if report.verdict != e.verdict {
            wrong.push(format!(
                "{} {}: expected {:?}, got {:?}: {:?}",
                e.kind,
                e.path,
                e.verdict,
                report.verdict,
                report
                    .findings
                    .iter()
                    .filter(|f| f.severity != FindingSeverity::Warning)
                    .map(|f| &f.message)
                    .collect::<Vec<_>>()
            ));
        }
        // `ok` is the old boolean: true exactly for a verified pass.
        assert_eq!(report.ok, report.verdict == Verdict::Pass, "{}", e.path);
    }
    assert!(
        wrong.is_empty(),
        "{} of {} wrong:\n{}",
        wrong.len(),
        entries.len(),
        wrong.join("\n")
    );
    assert!(entries.len() > 400, "{}", entries.len());
}

/// Nothing vendored is left out of the manifest.
#[test]
fn the_manifest_names_every_vendored_file() {
    let named: BTreeSet<String> = manifest().into_iter().map(|e| e.path).collect();
    let mut missing = Vec::new();
    for corpus in ["parquet-testing", "arrow-testing", "mp4parse-rust"] {
        let mut stack = vec![external().join(corpus)];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = path
                    .strip_prefix(external())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if !rel.contains("LICENSE") && !named.contains(&rel) {
                    missing.push(rel);
                }
            }
        }
    }
    assert!(missing.is_empty(), "not in verdicts.txt: {missing:#?}");
}

/// Every big-endian integration file (file and stream) says what it is; none is read as
/// if its bytes were little-endian.
#[test]
fn big_endian_ipc_is_unsupported_and_named() {
    let dir = external().join("arrow-testing/data/arrow-ipc-stream/integration/1.0.0-bigendian");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let r = check("table", &path);
        assert_eq!(r.verdict, Verdict::Unsupported, "{}", path.display());
        let f = r
            .findings
            .iter()
            .find(|f| f.severity == FindingSeverity::Unsupported)
            .unwrap();
        assert_eq!(
            (f.check.as_str(), f.found.as_deref()),
            ("endianness", Some("big-endian Arrow IPC"))
        );
        seen += 1;
    }
    assert_eq!(seen, 18);
}

/// Streams written before Arrow 1.0 (no 0xFFFFFFFF continuation) are read, and hold the
/// rows their file-format twins hold.
#[test]
fn pre_1_0_streams_read_like_their_files() {
    let dir = external().join("arrow-testing/data/arrow-ipc-stream/integration/0.14.1");
    let check = TableCheck::new().with_allow_empty(true);
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let stream = entry.unwrap().path();
        if stream.extension().and_then(|e| e.to_str()) != Some("stream") {
            continue;
        }
        let file = stream.with_extension("arrow_file");
        let checker = DataIntegrityChecker::new();
        let s = checker.validate_metadata_file(&stream, &check).unwrap();
        let f = checker.validate_metadata_file(&file, &check).unwrap();
        assert_eq!(
            s.verdict,
            Verdict::Pass,
            "{}: {:#?}",
            stream.display(),
            s.findings
        );
        assert_eq!(s.info["rows"], f.info["rows"], "{}", stream.display());
        assert_eq!(s.info["columns"], f.info["columns"], "{}", stream.display());
        seen += 1;
    }
    assert_eq!(seen, 9);
    // Cut inside its last message, a legacy stream is no longer complete.
    let bytes = std::fs::read(dir.join("generated_primitive.stream")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cut = tmp.path().join("cut.stream");
    std::fs::write(&cut, &bytes[..bytes.len() - 40]).unwrap();
    assert_eq!(
        DataIntegrityChecker::new()
            .validate_metadata_file(&cut, &TableCheck::new())
            .unwrap()
            .verdict,
        Verdict::Failed
    );
}

/// The valid files that fail only for being empty pass once empty tables are allowed
/// (the CLI's `--allow-empty`).
#[test]
fn corpus_empty_tables_pass_when_allowed() {
    let mut seen = 0;
    for e in manifest() {
        if e.kind != "table" || e.verdict != Verdict::Failed {
            continue;
        }
        let path = external().join(&e.path);
        let r = check("table", &path);
        if common::failed_checks(&r) != ["rows"] {
            continue;
        }
        let allowed = DataIntegrityChecker::new()
            .validate_metadata_file(&path, &TableCheck::new().with_allow_empty(true))
            .unwrap();
        assert_eq!(
            allowed.verdict,
            Verdict::Pass,
            "{}: {:#?}",
            e.path,
            allowed.findings
        );
        seen += 1;
    }
    assert_eq!(seen, 11);
}

/// parquet-testing's large_string_map holds two 1 GiB strings: their column is not
/// decoded (it would take gigabytes), its page headers are walked, and a check that needs
/// its values says the file could not be verified.
#[test]
fn a_gigabyte_value_is_walked_not_decoded() {
    let path = external().join("parquet-testing/data/large_string_map.brotli.parquet");
    let r = check("table", &path);
    assert_eq!(r.verdict, Verdict::Pass, "{:#?}", r.findings);
    assert_eq!(common::warnings(&r), ["decode"]);
    let unique = DataIntegrityChecker::new()
        .validate_metadata_file(&path, &TableCheck::new().with_unique(["arr"]))
        .unwrap();
    assert_eq!(
        unique.verdict,
        Verdict::Unsupported,
        "{:#?}",
        unique.findings
    );
    // A cut page shows in the walk: the file is damaged, not unverifiable.
    let bytes = std::fs::read(&path).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let patched = tmp.path().join("short.parquet");
    let mut short = bytes;
    // Flip the first page header's type byte region: the header no longer parses.
    short[4] ^= 0xFF;
    short[5] ^= 0xFF;
    std::fs::write(&patched, &short).unwrap();
    assert_eq!(check("table", &patched).verdict, Verdict::Failed);
}

/// Dolby Vision's AV1 sample entry (`dav1`) holds an `av1C` box that mp4parse accepts
/// only inside `av01`: an unknown codec, not damage. Made from mp4parse-rust's
/// tiny_av1.mp4 by renaming its sample entry.
#[test]
fn an_unknown_sample_entry_is_an_unsupported_codec() {
    let bytes = std::fs::read(external().join("mp4parse-rust/tiny_av1.mp4")).unwrap();
    // The sample entry, not the ftyp brand of the same name.
    let stsd = bytes.windows(4).position(|w| w == b"stsd").unwrap();
    let at = stsd + bytes[stsd..].windows(4).position(|w| w == b"av01").unwrap();
    let mut renamed = bytes;
    renamed[at..at + 4].copy_from_slice(b"dav1");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("dolby_vision.mp4");
    std::fs::write(&path, &renamed).unwrap();
    let r = check("video", &path);
    assert_eq!(r.verdict, Verdict::Unsupported, "{:#?}", r.findings);
    let f = r.findings.iter().find(|f| f.check == "codec").unwrap();
    assert_eq!(f.found.as_deref(), Some("sample entry 'dav1'"));
    // The original is a video that passes.
    assert_eq!(
        check("video", &external().join("mp4parse-rust/tiny_av1.mp4")).verdict,
        Verdict::Pass
    );
}
