//! The JSON guard on text nobody here wrote: nst/JSONTestSuite's must-accept (y_) and
//! must-reject (n_) files in exact mode, and the json_repair project's own expectations
//! (tests/fixtures/external/README.md).

use std::collections::BTreeSet;
use std::path::PathBuf;

use guardrails::json_guard::{JsonGuardConfig, JsonHardGuard};
use serde_json::Value;

fn external() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/external")
}

/// Exact mode is RFC 8259's grammar: every y_ file is accepted and every n_ file refused
/// (a file that is not UTF-8 is refused before parsing, as the CLI's `--exact` does).
#[test]
fn json_test_suite_in_exact_mode() {
    let guard = JsonHardGuard::new(JsonGuardConfig::new().with_exact(true)).unwrap();
    let (mut y_rejected, mut n_accepted, mut seen) = (Vec::new(), Vec::new(), 0);
    for entry in std::fs::read_dir(external().join("JSONTestSuite/test_parsing")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        let accepted = std::str::from_utf8(&bytes).is_ok_and(|t| guard.parse_value(t).is_ok());
        match (&name[..2], accepted) {
            ("y_", false) => y_rejected.push(name),
            ("n_", true) => n_accepted.push(name),
            _ => {}
        }
        seen += 1;
    }
    assert_eq!(seen, 283);
    assert!(
        y_rejected.is_empty(),
        "must-accept files refused: {y_rejected:?}"
    );
    assert!(
        n_accepted.is_empty(),
        "must-reject files accepted: {n_accepted:?}"
    );
}

/// Valid JSON keeps the model's key order and its numbers as written.
#[test]
fn valid_json_comes_back_as_written() {
    let guard = JsonHardGuard::new(JsonGuardConfig::new()).unwrap();
    let text = r#"{"z": 1, "a": {"y": -0, "b": 123456789012345678901234567890}, "m": [3, 2]}"#;
    let parsed = guard.parse_value(text).unwrap();
    assert_eq!(
        parsed.to_compact_json(),
        r#"{"z":1,"a":{"y":-0,"b":123456789012345678901234567890},"m":[3,2]}"#
    );
}

/// A depth past what serde_json parses (127 levels) is refused as a config, so a valid document
/// within the configured depth is never called malformed.
#[test]
fn max_depth_is_bounded_by_what_the_parser_reads() {
    assert!(JsonHardGuard::new(JsonGuardConfig::new().with_max_depth(128)).is_err());
    let guard = JsonHardGuard::new(JsonGuardConfig::new().with_max_depth(127)).unwrap();
    let deep = format!("{}{}", "[".repeat(127), "]".repeat(127));
    assert!(guard.parse_value(&deep).is_ok());
    let deeper = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let problems = guard.parse_value(&deeper).unwrap_err();
    assert!(
        problems[0].message.contains("nesting deeper than 127"),
        "{problems:?}"
    );
}

fn keys(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                out.insert(k.clone());
                keys(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| keys(x, out)),
        _ => {}
    }
}

/// json_repair's expectations where it expects a value: how many the guard repairs to the
/// same value (with json_repair's own reading of several values — all of them, as an
/// array — and with the guard's default, the first), and in how many of the others the
/// guard's value holds a key json_repair's does not (a fabricated or shifted member).
#[test]
fn json_repair_expectations() {
    let text = std::fs::read_to_string(external().join("json_repair/cases.json")).unwrap();
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
    let mut report = Vec::new();
    for all_values in [true, false] {
        let guard = JsonHardGuard::new(JsonGuardConfig::new().with_all_values(all_values)).unwrap();
        let (mut agree, mut total, mut refused) = (0, 0, 0);
        let mut fabricated = Vec::new();
        for case in &cases {
            if case["found"] != Value::Bool(true) {
                continue;
            }
            total += 1;
            let input = case["input"].as_str().unwrap();
            match guard.parse_value(input) {
                Ok(p) if p.value == case["expected"] => agree += 1,
                Ok(p) => {
                    let (mut ours, mut theirs) = (BTreeSet::new(), BTreeSet::new());
                    keys(&p.value, &mut ours);
                    keys(&case["expected"], &mut theirs);
                    if !ours.is_subset(&theirs) {
                        fabricated.push((case["source"].clone(), input.to_string(), p.json));
                    }
                }
                Err(_) => refused += 1,
            }
        }
        eprintln!(
            "json_repair (all_values {all_values}): {agree} of {total} agree ({:.1} %), {refused} refused, {} with keys json_repair does not have: {fabricated:#?}",
            100.0 * f64::from(agree) / f64::from(total),
            fabricated.len()
        );
        assert_eq!(total, 186);
        assert!(fabricated.is_empty(), "{fabricated:#?}");
        report.push(agree);
    }
    // The issue's goal, 90 % with json_repair's reading of several values; the guard's
    // default differs from it on the 6 answers holding several values.
    assert!(
        report[0] * 10 >= 186 * 9,
        "agreement fell to {} of 186",
        report[0]
    );
    assert!(
        report[1] >= report[0] - 6,
        "default agreement {} of 186",
        report[1]
    );
}
