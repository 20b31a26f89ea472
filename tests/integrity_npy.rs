//! NPY feature files written by numpy (tests/fixtures/npy/make_npy.py): every damaged file
//! fails with the right check, every good one passes with its facts in the report, and
//! every prefix of a good file fails without panicking.
#![cfg(feature = "data")]

mod common;

use std::path::PathBuf;

use common::failed_checks;

use guardrails::integrity::{DataIntegrityChecker, FeatureCheck, FindingSeverity, Format, Report};
use guardrails::prelude::*;

fn fixture(name: &str) -> PathBuf {
    common::fixture("npy", name)
}

fn check(name: &str, check: &FeatureCheck) -> Report {
    DataIntegrityChecker::new()
        .validate_feature_file(fixture(name), check)
        .unwrap()
}

#[test]
fn good_files_pass_with_their_facts() {
    let r = check(
        "f32_2d.npy",
        &FeatureCheck::new()
            .with_dtypes(["float32"])
            .with_rank(2)
            .with_min_rows(64),
    );
    assert!(r.ok, "{:?}", r.findings);
    assert_eq!(r.format, Format::Npy);
    assert_eq!(r.info["dtype"], "float32");
    assert_eq!(r.info["shape"], serde_json::json!([64, 16]));
    assert_eq!(r.info["non_finite"], 0);
    assert_eq!(r.info["npy_version"], "1.0");
    for (name, dtype) in [
        ("int64.npy", "int64"),
        ("bool.npy", "bool"),
        ("scalar.npy", "float32"),
        ("v2.npy", "float32"),
        ("v3.npy", "float64"),
    ] {
        let r = check(name, &FeatureCheck::new());
        assert!(r.ok, "{name}: {:?}", r.findings);
        assert_eq!(r.info["dtype"], dtype, "{name}");
    }
    assert_eq!(
        check("v2.npy", &FeatureCheck::new()).info["npy_version"],
        "2.0"
    );
    assert_eq!(
        check("v3.npy", &FeatureCheck::new()).info["npy_version"],
        "3.0"
    );
    assert!(r_ok(check("scalar.npy", &FeatureCheck::new())));
}

fn r_ok(r: Report) -> bool {
    r.ok && r.info["shape"] == serde_json::json!([])
}

#[test]
fn non_finite_values_are_counted_and_located() {
    let r = check("f64_nan_inf.npy", &FeatureCheck::new());
    assert_eq!(failed_checks(&r), ["finite"]);
    assert_eq!(r.info["non_finite"], 2);
    // NaN at [3, 2] of a 10×4 array: flat index 14.
    assert!(
        r.findings[0].message.contains("flat index 14"),
        "{}",
        r.findings[0].message
    );
    let f16 = check("f16.npy", &FeatureCheck::new());
    assert_eq!(f16.info["non_finite"], 1);
    let c = check("complex64.npy", &FeatureCheck::new());
    assert_eq!(c.info["non_finite"], 1);
    assert!(check("f64_nan_inf.npy", &FeatureCheck::new().with_finite(false)).ok);
}

#[test]
fn byte_order_and_fortran_order_are_reported() {
    let r = check("f4_big_endian.npy", &FeatureCheck::new());
    assert!(r.ok);
    assert_eq!(r.info["byte_order"], "big");
    assert!(
        r.findings
            .iter()
            .any(|f| f.check == "byte_order" && f.severity == FindingSeverity::Warning)
    );
    let r = check("fortran.npy", &FeatureCheck::new());
    assert!(r.ok && r.info["fortran_order"] == true);
    let r = check(
        "fortran.npy",
        &FeatureCheck::new().with_fortran_order(false),
    );
    assert_eq!(failed_checks(&r), ["fortran_order"]);
}

#[test]
fn damaged_and_hostile_files_fail_with_the_right_check() {
    let cases = [
        ("truncated.npy", "file_length"),
        ("trailing.npy", "file_length"),
        ("object.npy", "dtype"),
        ("structured.npy", "header"),
        ("csv_named.npy", "format"),
    ];
    for (name, failing) in cases {
        let r = check(name, &FeatureCheck::new());
        assert!(!r.ok, "{name} passed");
        assert!(
            failed_checks(&r).contains(&failing),
            "{name}: {:?}",
            r.findings
        );
    }
    let r = check("truncated.npy", &FeatureCheck::new());
    let f = r
        .findings
        .iter()
        .find(|f| f.check == "file_length")
        .unwrap();
    assert_eq!(f.expected.as_deref(), Some("4224 bytes"));
    assert_eq!(f.found.as_deref(), Some("4124 bytes"));
    let lying = check("lying_shape.npy", &FeatureCheck::new());
    assert!(!lying.ok, "{:?}", lying.findings);
    // The CSV named .npy is also a format warning about the extension.
    let csv = check("csv_named.npy", &FeatureCheck::new());
    assert!(
        csv.findings
            .iter()
            .any(|f| f.check == "format" && f.severity == FindingSeverity::Warning)
    );
}

#[test]
fn caller_expectations_are_checked() {
    let r = check(
        "f32_2d.npy",
        &FeatureCheck::new()
            .with_dtypes(["float16"])
            .with_rank(3)
            .with_shape([None, Some(32)])
            .with_min_rows(1000),
    );
    let mut failed = failed_checks(&r);
    failed.sort();
    assert_eq!(failed, ["dtype", "min_rows", "rank", "shape"]);
    let err = r.into_result().unwrap_err();
    match err {
        GuardrailError::DataIntegrity {
            path,
            check,
            expected,
            found,
        } => {
            assert!(path.ends_with("f32_2d.npy"));
            assert_eq!(
                (check.as_str(), expected.as_str(), found.as_str()),
                ("dtype", "float16", "float32")
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        check(
            "f32_2d.npy",
            &FeatureCheck::new().with_shape([Some(64), None])
        )
        .ok
    );
}

#[test]
fn every_prefix_of_a_good_file_fails_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let checker = DataIntegrityChecker::new();
    // Every good file; the finite scan is off, so each prefix must fail on structure alone.
    for name in [
        "f32_2d.npy",
        "v2.npy",
        "v3.npy",
        "f4_big_endian.npy",
        "fortran.npy",
        "int64.npy",
        "bool.npy",
        "f16.npy",
        "complex64.npy",
        "scalar.npy",
    ] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let step = (bytes.len() / 400).max(1);
        for cut in (0..bytes.len()).step_by(step).chain([bytes.len() - 1]) {
            let path = dir.path().join("cut.npy");
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let r = checker
                .validate_feature_file(&path, &FeatureCheck::new().with_finite(false))
                .unwrap();
            assert!(!r.ok, "{name} cut at {cut} of {} passed", bytes.len());
        }
    }
}

#[test]
fn random_bytes_and_empty_files_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let checker = DataIntegrityChecker::new();
    let mut rng = fastrand::Rng::with_seed(11);
    for i in 0..200 {
        let mut bytes: Vec<u8> = (0..rng.usize(0..300)).map(|_| rng.u8(..)).collect();
        if i % 2 == 0 {
            // Half of them start like an NPY so the header parser sees garbage.
            let mut head = b"\x93NUMPY\x01\x00".to_vec();
            head.extend(bytes);
            bytes = head;
        }
        let path = dir.path().join("random.npy");
        std::fs::write(&path, &bytes).unwrap();
        let r = checker
            .validate_feature_file(&path, &FeatureCheck::new())
            .unwrap();
        assert!(!r.ok);
    }
    let missing = checker.validate_feature_file(dir.path().join("none.npy"), &FeatureCheck::new());
    assert_eq!(missing.unwrap_err().kind(), ErrorKind::Io);
}
