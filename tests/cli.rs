//! The CLI's exit codes and output formats are a contract scripts rely on.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::redis::RedisServer;

fn guardrails(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_guardrails"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the guardrails binary runs")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn good_config_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "ok.toml", "[retry]\nmax_retries = 2\n");
    let out = guardrails(&["config", "check", &file]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with("ok: "), "{stdout}");
    // Not a terminal: no colour codes.
    assert!(!stdout.contains('\x1b'), "{stdout:?}");
}

#[test]
fn bad_config_exits_2_and_names_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "bad.toml",
        "[retry]\nbase = 0.5\nmax_retires = 1\n",
    );
    let out = guardrails(&["config", "check", &file]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("retry.base: must be a finite number >= 1.0"),
        "{stderr}"
    );
    assert!(
        stderr.contains("retry.max_retires: unknown key"),
        "{stderr}"
    );
}

#[test]
fn json_format_is_one_parsable_document() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "bad.toml", "[retry]\nmax_delay = \"soon\"\n");
    let out = guardrails(&["--format", "json", "config", "check", &file]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json on stdout");
    assert_eq!(v["ok"], false);
    assert_eq!(v["file"], file.as_str());
    assert_eq!(v["problems"][0]["kind"], "config");
    assert_eq!(v["problems"][0]["fields"]["field"], "retry.max_delay");

    let good = write(dir.path(), "good.toml", "");
    let out = guardrails(&["config", "check", &good, "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["problems"], serde_json::json!([]));
}

#[test]
fn missing_config_file_exits_2() {
    let out = guardrails(&["config", "check", "/definitely/not/here.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("/definitely/not/here.toml"), "{stderr}");
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    assert_eq!(guardrails(&["--bogus"]).status.code(), Some(2));
    assert_eq!(guardrails(&[]).status.code(), Some(2));
    assert_eq!(guardrails(&["config", "check"]).status.code(), Some(2));
    assert_eq!(
        guardrails(&["--format", "yaml", "config", "default"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        guardrails(&["-v", "-q", "config", "default"]).status.code(),
        Some(2)
    );
    let help = guardrails(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("config"));
}

#[test]
fn default_config_is_itself_valid() {
    let out = guardrails(&["config", "default"]);
    assert_eq!(out.status.code(), Some(0));
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "default.toml",
        &String::from_utf8(out.stdout).unwrap(),
    );
    assert_eq!(
        guardrails(&["-q", "config", "check", &file]).status.code(),
        Some(0)
    );
}

#[test]
fn verbose_flag_emits_tracing_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "ok.toml", "");
    let out = guardrails(&["-v", "config", "check", &file]);
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("config checked"), "{stderr}");
    let quiet = guardrails(&["config", "check", &file]);
    assert!(
        !String::from_utf8(quiet.stderr)
            .unwrap()
            .contains("config checked")
    );
}

#[test]
fn health_reports_and_exits_by_fail_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    // Limits this machine meets whatever else runs on it (CI builds in parallel, small disks).
    let relaxed = write(
        dir.path(),
        "relaxed.toml",
        "[resources]\nmax_cpu_percent = 1000.0\nmin_free_disk_bytes = 1\n",
    );
    let out = guardrails(&[
        "--format", "json", "health", "--path", path, "--config", &relaxed,
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "HEALTHY");
    assert_eq!(v["snapshot"]["disks"][0]["path"], path);

    // A memory limit of 1 kB is passed by far: critical, which fails at any --fail-on.
    let strict = write(
        dir.path(),
        "strict.toml",
        "[resources]\nmax_memory_bytes = 1000\n",
    );
    for fail_on in ["degraded", "unhealthy", "critical"] {
        let out = guardrails(&["-q", "health", "--config", &strict, "--fail-on", fail_on]);
        assert_eq!(out.status.code(), Some(1), "--fail-on {fail_on}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("status: CRITICAL"));
    }
    // Just over the limit: degraded, which fails only --fail-on degraded.
    let rss_now = v["snapshot"]["process"]["rss_bytes"].as_u64().unwrap();
    let near = write(
        dir.path(),
        "near.toml",
        &format!(
            "[resources]\nmax_cpu_percent = 1000.0\nmax_memory_bytes = {}\n",
            rss_now * 95 / 100
        ),
    );
    let out = guardrails(&["-q", "--format", "json", "health", "--config", &near]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    if v["status"] == "DEGRADED" {
        assert_eq!(out.status.code(), Some(0));
        let out = guardrails(&["-q", "health", "--config", &near, "--fail-on", "degraded"]);
        assert_eq!(out.status.code(), Some(1));
    }

    let bad = write(
        dir.path(),
        "bad.toml",
        "[resources]\nwarning_fraction = 2.0\n",
    );
    assert_eq!(
        guardrails(&["health", "--config", &bad]).status.code(),
        Some(2)
    );
    assert_eq!(
        guardrails(&["health", "--fail-on", "sometimes"])
            .status
            .code(),
        Some(2)
    );
}

fn guardrails_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_guardrails"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A command that fails on its arguments exits without reading: a broken pipe is fine.
    if let Some(mut pipe) = child.stdin.take() {
        let _ = pipe.write_all(stdin.as_bytes());
    }
    child.wait_with_output().unwrap()
}

#[test]
fn json_prints_the_repaired_value_and_explains_fixes() {
    let out = guardrails_stdin(
        &["json", "--explain"],
        "Here:\n```json\n{'a': True, b: [1 2,]}\n```",
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "{\"a\":true,\"b\":[1,2]}\n"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("quoted a bare key"), "{stderr}");
    assert!(stderr.contains("removed a trailing comma"), "{stderr}");

    // Valid JSON comes back as it is, with nothing to explain.
    let out = guardrails_stdin(&["json", "--explain"], "[1, 2]");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "[1,2]\n");
    assert!(out.stderr.is_empty());
}

#[test]
fn json_exit_codes() {
    assert_eq!(
        guardrails_stdin(&["json"], "no json at all").status.code(),
        Some(1)
    );
    assert_eq!(
        guardrails_stdin(&["json", "--strict"], "{'a': 1}")
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        guardrails_stdin(&["json", "--max-depth", "2"], "[[[1]]]")
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        guardrails_stdin(&["json", "--max-bytes", "4"], "[1, 2, 3]")
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        guardrails_stdin(&["json", "--max-depth", "x"], "[]")
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        guardrails_stdin(&["json", "--schema", "/no/such.json"], "[]")
            .status
            .code(),
        Some(2)
    );

    let dir = tempfile::tempdir().unwrap();
    let schema = write(
        dir.path(),
        "s.json",
        r#"{"type": "object", "required": ["id"]}"#,
    );
    let out = guardrails_stdin(&["json", "--schema", &schema], r#"{"name": "x"}"#);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("id"));
    let ok = guardrails_stdin(&["json", "--schema", &schema], r#"{"id": 3}"#);
    assert_eq!(ok.status.code(), Some(0));
    let bad_schema = write(dir.path(), "bad.json", "{not json");
    assert_eq!(
        guardrails_stdin(&["json", "--schema", &bad_schema], "{}")
            .status
            .code(),
        Some(2)
    );
    // A schema path pointed at an endless file is refused after 4 MiB, not read to the end.
    let out = guardrails_stdin(&["json", "--schema", "/dev/zero"], "{}");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("larger than 4194304 bytes"), "{stderr}");
}

#[test]
fn validate_features_reports_every_file_and_exits_by_result() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/npy/");
    let good = format!("{fixtures}f32_2d.npy");
    let nan = format!("{fixtures}f64_nan_inf.npy");
    let out = guardrails(&["-q", "validate", "features", &good]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // Without --finite the NaN file passes; with it, it fails.
    assert_eq!(
        guardrails(&["-q", "validate", "features", &nan])
            .status
            .code(),
        Some(0)
    );
    let out = guardrails(&[
        "-q", "--format", "json", "validate", "features", "--finite", &good, &nan,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "one report per file");
    assert_eq!(v[0]["ok"], true);
    assert_eq!(v[1]["ok"], false);
    assert_eq!(v[1]["findings"][0]["check"], "finite");

    let out = guardrails(&[
        "-q",
        "validate",
        "features",
        "--dtype",
        "int64",
        "--min-rows",
        "1000",
        &good,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("error dtype") && text.contains("error min_rows"),
        "{text}"
    );

    assert_eq!(guardrails(&["validate", "features"]).status.code(), Some(2));
    assert_eq!(
        guardrails(&["validate", "features", "--min-rows", "x", &good])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        guardrails(&["-q", "validate", "features", "/no/such.npy"])
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn validate_table_applies_every_option() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/table/");
    let good = format!("{fixtures}good_zstd.parquet");
    let csv = format!("{fixtures}good.csv");
    let nulls = format!("{fixtures}nulls.parquet");
    let missing = format!("{fixtures}missing_files.parquet");
    let all = [
        "-q",
        "validate",
        "table",
        "--require",
        "id,path",
        "--require",
        "label",
        "--min-rows",
        "200",
        "--max-rows",
        "200",
        "--not-null",
        "id,path",
        "--unique",
        "id",
        "--paths-exist",
        "path",
    ];
    let mut args = all.to_vec();
    args.extend([good.as_str(), csv.as_str()]);
    let out = guardrails(&args);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    let mut args = vec!["--format", "json"];
    args.extend(all);
    args.extend([
        "--quick",
        good.as_str(),
        nulls.as_str(),
        missing.as_str(),
        "/no/such.parquet",
    ]);
    let out = guardrails(&args);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reports = v.as_array().unwrap();
    assert_eq!(
        reports.len(),
        4,
        "one report per file, the unreadable one too"
    );
    assert_eq!(reports[0]["ok"], true);
    assert_eq!(reports[0]["info"]["rows"], 200);
    assert_eq!(reports[1]["findings"][0]["check"], "not_null");
    assert_eq!(reports[2]["findings"][0]["check"], "paths_exist");
    assert_eq!(reports[3]["findings"][0]["check"], "open");
    assert_eq!(reports[3]["ok"], false);

    // --root moves where relative paths are looked for.
    let elsewhere = tempfile::tempdir().unwrap();
    let root = elsewhere.path().to_str().unwrap();
    let out = guardrails(&[
        "-q",
        "validate",
        "table",
        "--paths-exist",
        "path",
        "--root",
        root,
        &good,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("error paths_exist"));

    assert_eq!(guardrails(&["validate", "table"]).status.code(), Some(2));
    assert_eq!(
        guardrails(&["validate", "table", "--max-rows", "-1", &good])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn validate_video_reports_each_file() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/video/");
    let good = format!("{fixtures}h264.mp4");
    let mkv = format!("{fixtures}h264.mkv");
    let cut = format!("{fixtures}cut_half.mp4");
    let out = guardrails(&["-q", "validate", "video", &good, &mkv]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = guardrails(&[
        "-q", "--format", "json", "validate", "video", "--decode", &good, &cut,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["ok"], true);
    assert_eq!(v[0]["info"]["frame_count"], 12);
    // --decode ran ffmpeg, or the report says it is not installed.
    let decoded = &v[0]["info"]["decoded"];
    assert!(decoded.is_boolean(), "{v}");
    assert_eq!(v[1]["ok"], false);
    assert_eq!(v[1]["findings"][0]["check"], "truncated");
    assert_eq!(guardrails(&["validate", "video"]).status.code(), Some(2));
}

/// In human mode each finding is printed once, in the report on stdout; the library's log
/// event for it is not echoed on stderr unless asked for with -v.
#[test]
fn validate_prints_each_finding_once() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/table/duplicate_ids.parquet"
    );
    let out = guardrails(&["validate", "table", "--unique", "id", file]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stdout.contains("unique"), "{stdout}");
    assert!(!stderr.contains("data integrity check failed"), "{stderr}");
    let out = guardrails(&["-v", "validate", "table", "--unique", "id", file]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("data integrity check failed"), "{stderr}");
}

/// `--strict` still extracts and drops trailing text; `--exact` takes one JSON text only.
#[test]
fn json_exact_mode_refuses_anything_but_one_json_text() {
    for (text, strict, exact) in [
        ("[1]x", 0, 1),
        ("[1]]", 0, 1),
        ("{\"a\":\"b\"}#", 0, 1),
        (" [1] ", 0, 0),
    ] {
        assert_eq!(
            guardrails_stdin(&["json", "--strict"], text).status.code(),
            Some(strict),
            "{text}"
        );
        assert_eq!(
            guardrails_stdin(&["json", "--exact"], text).status.code(),
            Some(exact),
            "{text}"
        );
    }
    let out = guardrails_stdin(&["json"], r#"{"b": 1, "a": 2}"#);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "{\"b\":1,\"a\":2}\n");
    // Several values: the first, or all of them with --all-values.
    let two = "{\"a\": 1}\n{\"b\": 2.50}";
    let out = guardrails_stdin(&["json"], two);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "{\"a\":1}\n");
    let out = guardrails_stdin(&["json", "--all-values"], two);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "[{\"a\":1},{\"b\":2.50}]\n"
    );
}

/// `validate` exits 3 when nothing failed but a file could not be verified, and its JSON
/// says which with `verdict`; `--allow-empty` accepts an empty table.
#[test]
fn validate_tells_unsupported_from_damaged() {
    let big = "tests/fixtures/external/arrow-testing/data/arrow-ipc-stream/integration/1.0.0-bigendian/generated_primitive.arrow_file";
    let little = big.replace("bigendian", "littleendian");
    let out = guardrails(&["--format", "json", "validate", "table", big, &little]);
    assert_eq!(out.status.code(), Some(3));
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reports[0]["verdict"], "unsupported");
    assert_eq!(reports[0]["findings"][0]["severity"], "unsupported");
    assert_eq!(reports[1]["verdict"], "pass");
    let cut = "tests/fixtures/table/cut.arrow";
    assert_eq!(
        guardrails(&["validate", "table", big, cut]).status.code(),
        Some(1)
    );
    let empty = "tests/fixtures/external/arrow-testing/data/arrow-ipc-stream/integration/1.0.0-littleendian/generated_primitive_no_batches.arrow_file";
    assert_eq!(
        guardrails(&["validate", "table", empty]).status.code(),
        Some(1)
    );
    assert_eq!(
        guardrails(&["validate", "table", "--allow-empty", empty])
            .status
            .code(),
        Some(0)
    );
}

/// `runs list|show|verify` over a registry a pipeline wrote: JSON shapes and exit codes
/// (0 consistent, 1 inconsistent, 2 unreadable registry or unknown run).
#[test]
fn runs_commands_read_the_registry_and_exit_by_consistency() {
    use guardrails::durable::RunRegistry;
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("reg.db");
    let registry = RunRegistry::open(&db).unwrap();
    let run = registry.start_run("video", "cfg-7").unwrap();
    registry
        .run_stage(&run, "decode", |s| {
            s.write(dir.path().join("frames.npy"), |w| {
                Ok(w.write_all(b"frames")?)
            })?;
            s.record("clips", 12);
            Ok(())
        })
        .unwrap();
    drop(registry);
    let db_arg = db.to_str().unwrap();
    let json = |args: &[&str]| {
        let out = guardrails(args);
        let value: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        (out.status.code(), value)
    };

    let (code, list) = json(&["runs", "list", "--registry", db_arg, "--format", "json"]);
    assert_eq!(code, Some(0));
    assert_eq!(list["runs"][0]["id"], run.as_str());
    assert_eq!(list["runs"][0]["pipeline"], "video");
    // Its writer (this test) is alive and has not finished it.
    assert_eq!(list["runs"][0]["status"], "running");

    let (code, show) = json(&[
        "runs",
        "show",
        run.as_str(),
        "--registry",
        db_arg,
        "--format",
        "json",
    ]);
    assert_eq!(code, Some(0));
    assert_eq!(show["attempts"][0]["status"], "committed");
    assert_eq!(show["attempts"][0]["metrics"]["clips"], 12);
    assert_eq!(show["artifacts"][0]["size"], 6);

    let (code, ok) = json(&[
        "runs",
        "verify",
        run.as_str(),
        "--registry",
        db_arg,
        "--format",
        "json",
    ]);
    assert_eq!((code, ok["consistent"].as_bool()), (Some(0), Some(true)));
    std::fs::write(dir.path().join("frames.npy"), b"other!!").unwrap();
    let (code, bad) = json(&[
        "runs",
        "verify",
        run.as_str(),
        "--registry",
        db_arg,
        "--format",
        "json",
    ]);
    assert_eq!(code, Some(1));
    assert_eq!(bad["problems"][0]["kind"], "changed");

    let (code, err) = json(&[
        "runs",
        "show",
        "nope",
        "--registry",
        db_arg,
        "--format",
        "json",
    ]);
    assert_eq!(code, Some(2));
    assert_eq!(err["error"]["kind"], "store");
    let junk = write(dir.path(), "junk.db", "not a database at all, just text");
    let (code, err) = json(&["runs", "list", "--registry", &junk, "--format", "json"]);
    assert_eq!(code, Some(2));
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("junk.db"),
        "{err}"
    );
    let out = guardrails(&["runs", "list", "--registry", "/nonexistent/reg.db"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no registry file"));
}

const PIPELINE: &str = r#"
[pipeline]
name = "rows"
registry = "state/registry.db"

[resources]
min_free_disk_bytes = 1048576
max_disk_bytes = 4611686018427387903
max_memory_bytes = 4611686018427387903

[stages.extract]
outputs.rows = { path = "out/rows.csv", required_columns = ["id", "score"] }
gates.enough = { figure = "rows.rows", min = 3 }
gates.plenty = { figure = "rows.rows", min = 100, level = "advisory" }

[stages.score]
depends_on = ["extract"]
inputs.rows = { path = "out/rows.csv", required_columns = ["id"] }
outputs.scored = { path = "out/scored.csv" }
"#;

/// Runs the `extract` stage of [`PIPELINE`] writing `rows` rows, as a pipeline would.
fn run_extract(config: &Path, rows: usize) -> String {
    let plan = guardrails::pipeline::PipelinePlan::from_path(config).unwrap();
    let mut run = guardrails::pipeline::PipelineGuardrails::open(plan).unwrap();
    let outcome = run.run_stage("extract", |ctx| {
        let mut text = String::from("id,score\n");
        for i in 0..rows {
            text.push_str(&format!("{i},0.5\n"));
        }
        std::fs::write(ctx.output("rows")?, text)?;
        Ok(())
    });
    // A failed gate is the stage's error; what the CLI reads is what was recorded.
    assert_eq!(outcome.is_ok(), rows >= 3, "{outcome:?}");
    run.run_id().to_string()
}

#[test]
fn preflight_reports_every_stage_and_exits_by_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "pipeline.toml", PIPELINE);

    // Nothing has run: extract is ready, score waits for extract and its input.
    let out = guardrails(&["--format", "json", "preflight", &cfg]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json on stdout");
    assert_eq!(v["ok"], false);
    assert_eq!(v["config"], cfg.as_str());
    assert_eq!(v["stages"][0]["stage"], "extract");
    assert_eq!(v["stages"][0]["ok"], true);
    assert_eq!(v["stages"][1]["stage"], "score");
    assert_eq!(v["stages"][1]["ok"], false);
    let errors = v["stages"][1]["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e["check"] == "prerequisite" && e["subject"] == "extract"),
        "{errors:?}"
    );

    let out = guardrails(&["--format", "json", "preflight", &cfg, "--stage", "extract"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["stages"].as_array().unwrap().len(), 1);

    // Once extract committed in the newest run, score is ready too.
    run_extract(Path::new(&cfg), 5);
    let out = guardrails(&["preflight", &cfg]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("score") && text.contains("ready"), "{text}");
}

#[test]
fn preflight_refuses_a_bad_config_or_stage_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "pipeline.toml", PIPELINE);
    let out = guardrails(&["--format", "json", "preflight", &cfg, "--stage", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"].to_string().contains("nope"), "{v}");

    let typo = write(
        dir.path(),
        "typo.toml",
        &PIPELINE.replace("depends_on", "depend_on"),
    );
    let out = guardrails(&["--format", "json", "preflight", &typo]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["error"].to_string().contains("stages.score.depend_on"),
        "{v}"
    );

    let out = guardrails(&["preflight", "/definitely/not/here.toml"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn gates_shows_the_latest_results_and_exits_1_on_a_failed_mandatory_gate() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), "pipeline.toml", PIPELINE);

    let failed = run_extract(Path::new(&cfg), 2);
    let out = guardrails(&["--format", "json", "gates", &cfg, "--run", &failed]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["run"], failed.as_str());
    assert_eq!(v["ok"], false);
    assert_eq!(v["stages"][0]["stage"], "extract");
    let gates = v["stages"][0]["gates"].as_array().unwrap();
    let enough = gates.iter().find(|g| g["gate"] == "enough").unwrap();
    assert_eq!(enough["passed"], false);
    assert_eq!(enough["mandatory"], true);

    // Only the advisory gate fails: exit 0, and the failure is still shown.
    let passed = run_extract(Path::new(&cfg), 5);
    let out = guardrails(&["gates", &cfg, "--run", &passed]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("failed (advisory)"), "{text}");
    assert!(text.contains("enough") && text.contains("passed"), "{text}");

    let out = guardrails(&["gates", &cfg, "--run", "no-such-run"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

fn once(dir: &Path, key: &str, script: &str) -> Output {
    let store = dir.join("state.db");
    Command::new(env!("CARGO_BIN_EXE_guardrails"))
        .current_dir(dir)
        .args([
            "once",
            "--key",
            key,
            "--store",
            store.to_str().unwrap(),
            "--",
        ])
        .args(["sh", "-c", script])
        .env_remove("RUST_LOG")
        .output()
        .expect("the guardrails binary runs")
}

#[test]
fn once_runs_a_command_once_per_key_and_replays_its_output_and_code() {
    let dir = tempfile::tempdir().unwrap();
    let script = "echo ran >> runs.log; echo \"fence $GUARDRAILS_FENCE\"; exit 3";
    let first = once(dir.path(), "report:2026-12-07", script);
    assert_eq!(first.status.code(), Some(3), "{first:?}");
    assert_eq!(String::from_utf8_lossy(&first.stdout), "fence 1\n");
    for _ in 0..2 {
        let again = once(dir.path(), "report:2026-12-07", script);
        assert_eq!(again.status.code(), Some(3), "{again:?}");
        assert_eq!(String::from_utf8_lossy(&again.stdout), "fence 1\n");
    }
    let runs = std::fs::read_to_string(dir.path().join("runs.log")).unwrap();
    assert_eq!(runs, "ran\n", "the command ran once");

    // Another key runs; the same key with another command is refused.
    let other = once(dir.path(), "report:2026-12-08", script);
    assert_eq!(String::from_utf8_lossy(&other.stdout), "fence 2\n");
    let mismatch = once(dir.path(), "report:2026-12-07", "echo different");
    assert_eq!(mismatch.status.code(), Some(2), "{mismatch:?}");
    assert!(String::from_utf8_lossy(&mismatch.stderr).contains("another command"));

    // A command that cannot start did not run: usage error, and the key stays free.
    let store = dir.path().join("state.db");
    let missing = Command::new(env!("CARGO_BIN_EXE_guardrails"))
        .args([
            "once",
            "--key",
            "k",
            "--store",
            store.to_str().unwrap(),
            "--",
        ])
        .arg("/definitely/not/a/program")
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
    let ok = once(dir.path(), "k", "echo now");
    assert_eq!(ok.status.code(), Some(0), "k was released: {ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "now\n");
}

#[test]
fn once_exits_75_while_another_worker_holds_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("state.db");
    let script = "touch started; i=0; while [ ! -e go ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; echo done";
    let first = Command::new(env!("CARGO_BIN_EXE_guardrails"))
        .current_dir(dir.path())
        .args([
            "once",
            "--key",
            "train",
            "--store",
            store.to_str().unwrap(),
            "--",
        ])
        .args(["sh", "-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded wait for the first worker's command to start (it claimed the key before).
    for _ in 0..400 {
        if dir.path().join("started").exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let second = once(dir.path(), "train", script);
    assert_eq!(second.status.code(), Some(75), "{second:?}");
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("retry after"),
        "{second:?}"
    );
    std::fs::write(dir.path().join("go"), "").unwrap();
    let first = first.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&first.stdout), "done\n");
    let replay = once(dir.path(), "train", script);
    assert_eq!(String::from_utf8_lossy(&replay.stdout), "done\n");
}

#[test]
fn redis_check_exits_0_on_a_safe_server_1_on_an_unsafe_one_2_when_unreachable() {
    let safe = RedisServer::with_args(&["--appendonly", "yes", "--appendfsync", "everysec"]);
    let out = guardrails(&["redis", "check", &safe.url(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["level"], "OK", "{report}");
    assert_eq!(report["safe"], true);
    let checks: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        checks,
        ["persistence", "maxmemory_policy", "memory_headroom", "role"]
    );

    let secret = "pw-never-printed";
    let unsafe_server = RedisServer::with_args(&[
        "--save",
        "",
        "--appendonly",
        "no",
        "--maxmemory-policy",
        "allkeys-lru",
        "--requirepass",
        secret,
    ]);
    let url = unsafe_server.url_with(Some(secret));
    let out = guardrails(&["redis", "check", &url, "--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(secret), "{text}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["level"], "ERROR", "{report}");
    assert_eq!(report["checks"][0]["level"], "ERROR");
    assert_eq!(report["checks"][1]["level"], "ERROR");
    // Acknowledged, both ERRORs are WARNINGs and the check passes.
    let out = guardrails(&[
        "redis",
        "check",
        &url,
        "--acknowledge",
        "persistence",
        "--acknowledge",
        "maxmemory_policy",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("WARNING"));

    // A wrong password and a closed port: 2, and the password is not printed.
    let out = guardrails(&["redis", "check", &unsafe_server.url_with(Some("wrong-pw"))]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("wrong-pw"),
        "{out:?}"
    );
    let closed = format!("redis://127.0.0.1:{}/0", common::redis::free_port());
    let out = guardrails(&["redis", "check", &closed]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = guardrails(&["redis", "check", "http://nope"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn once_on_redis_runs_once_across_workers_and_fails_closed_or_open_when_it_is_down() {
    let mut server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let run = |url: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_guardrails"))
            .current_dir(dir.path())
            .args(["once", "--key", "nightly", "--store", url])
            .args(extra)
            .args([
                "--",
                "sh",
                "-c",
                "echo ran >> runs.log; echo \"fence $GUARDRAILS_FENCE\"; exit 4",
            ])
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let first = run(&server.url(), &[]);
    assert_eq!(first.status.code(), Some(4), "{first:?}");
    let again = run(&server.url(), &[]);
    assert_eq!(again.status.code(), Some(4), "{again:?}");
    assert_eq!(first.stdout, again.stdout);
    assert!(String::from_utf8_lossy(&first.stdout).starts_with("fence "));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("runs.log")).unwrap(),
        "ran\n"
    );
    let url = server.url();
    server.kill();
    let closed = run(&url, &[]);
    assert_eq!(closed.status.code(), Some(75), "fail closed: {closed:?}");
    let open = run(&url, &["--fail-open"]);
    assert_eq!(open.status.code(), Some(4), "fail open: {open:?}");
    assert!(
        String::from_utf8_lossy(&open.stderr).contains("unguarded"),
        "{open:?}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("runs.log")).unwrap(),
        "ran\nran\n"
    );
}

#[test]
fn redis_check_speaks_tls_to_a_rediss_url_and_refuses_an_unknown_certificate() {
    let server = RedisServer::tls();
    let url = format!("rediss://127.0.0.1:{}/0", server.port);
    let run = |ca: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_guardrails"));
        cmd.args(["redis", "check", &url, "--format", "json"])
            .env_remove("RUST_LOG")
            .env_remove("SSL_CERT_DIR");
        match ca {
            // rustls-native-certs trusts the CAs of SSL_CERT_FILE.
            Some(ca) => cmd.env("SSL_CERT_FILE", ca),
            None => cmd.env("SSL_CERT_FILE", "/nonexistent"),
        };
        cmd.output().unwrap()
    };
    let ca = RedisServer::tls_ca();
    let out = run(Some(&ca));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["server"],
        format!("rediss://127.0.0.1:{}/0", server.port)
    );
    assert_eq!(report["checks"][0]["level"], "OK", "{report}");
    // A certificate no trusted CA signed: refused, exit 2.
    let out = run(None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn serve_answers_health_and_metrics_until_sigterm_and_refuses_a_bad_config_with_2() {
    use std::io::BufRead;
    use std::process::Stdio;

    use common::http::{Answer, FakeHttp};

    let model = FakeHttp::start(|req| match req.path.as_str() {
        "/ok" => Answer::json(200, r#"{"ok": true}"#),
        _ => Answer::json(500, "{}"),
    });
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "serve.toml",
        &format!(
            "[server]\ntoken_env = \"GUARDRAILS_TEST_TOKEN\"\n\
             [[models]]\nname = \"good\"\n[models.probe]\nurl = \"{}\"\njson_answer = true\n\
             [[models]]\nname = \"down\"\nrequired = false\n[models.probe]\nurl = \"{}\"\n",
            model.url("/ok"),
            model.url("/fail")
        ),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_guardrails"))
        .args([
            "serve",
            "--config",
            &config,
            "--bind",
            "127.0.0.1:0",
            "--format",
            "json",
        ])
        .env("GUARDRAILS_TEST_TOKEN", "tok")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    // The address comes as one JSON line; its closing brace ends the document.
    while !first.trim_end().ends_with('}') {
        assert!(
            stdout.read_line(&mut first).unwrap() > 0,
            "serve exited early"
        );
    }
    let listening: serde_json::Value = serde_json::from_str(&first).unwrap();
    let base = format!("http://{}", listening["listening"].as_str().unwrap());
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build(),
    );
    let get = |path: &str, token: Option<&str>| {
        let mut req = agent.get(&format!("{base}{path}"));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let mut resp = req.call().unwrap();
        let code = resp.status().as_u16();
        (code, resp.body_mut().read_to_string().unwrap())
    };
    let (code, body) = get("/health/llm?model=good", None);
    assert_eq!(code, 200, "{body}");
    let (code, body) = get("/health/llm?model=down", Some("tok"));
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("probe_failed") && body.contains("status 500"),
        "{body}"
    );
    // The failing model is optional: ready, but degraded.
    assert_eq!(get("/health/ready", None).0, 200);
    let (code, body) = get("/health", None);
    assert_eq!(code, 200);
    assert!(body.contains("DEGRADED"), "{body}");
    let (code, body) = get("/metrics", None);
    assert_eq!(code, 200);
    assert!(
        body.contains("llm_health_status{model=\"down\"} 0"),
        "{body}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));

    let bad = write(dir.path(), "bad.toml", "[server]\nbind = 7\n");
    let out = guardrails(&["serve", "--config", &bad]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("server.bind"),
        "{out:?}"
    );
}

#[test]
fn history_commands_read_points_and_anomalies_and_exit_by_state() {
    use guardrails::observe::detect::{DetectorConfig, Direction};
    use guardrails::observe::history::{SqliteHistory, SqliteHistoryConfig};

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.db");
    let db_arg = db.to_str().unwrap();
    {
        let history = SqliteHistory::open(&db, SqliteHistoryConfig::default()).unwrap();
        let detector = DetectorConfig {
            warmup: 20,
            direction: Direction::Above,
            ..DetectorConfig::default()
        };
        history.watch("training", "loss", detector).unwrap();
        for i in 0..20 {
            history.record_metric(
                "training",
                "loss",
                1.0 + (i % 4) as f64 * 0.1,
                &[("run", "r1")],
            );
        }
        history.flush().unwrap();
        // Writing is done; now the calm series is read back before the spike.
        let out = guardrails(&["history", "anomalies", "--db", db_arg, "--format", "json"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["anomalous_now"], 0);
        assert_eq!(doc["series"][0]["state"], "normal");
        assert_eq!(doc["series"][0]["count"], 20);
        history.record_metric("training", "loss", 9.0, &[("run", "r1")]);
    } // dropped: the writer writes the spike and closes the file

    let out = guardrails(&[
        "history",
        "query",
        "--db",
        db_arg,
        "--component",
        "training",
        "--metric",
        "loss",
        "--since",
        "10m",
        "--format",
        "json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let points = doc["points"].as_array().unwrap();
    assert_eq!(points.len(), 21);
    assert_eq!(points[20]["value"], 9.0);
    assert_eq!(points[20]["tags"]["run"], "r1");
    assert_eq!(points[0]["resolution"], "raw");
    assert_eq!(doc["since_seconds"], 600.0);

    let out = guardrails(&["history", "anomalies", "--db", db_arg, "--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "a series is anomalous now");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["anomalous_now"], 1);
    assert_eq!(doc["anomalies"][0]["state"], "anomalous");
    assert_eq!(doc["anomalies"][0]["value"], 9.0);
    assert!(doc["anomalies"][0]["z"].as_f64().unwrap() > 3.0);

    let out = guardrails(&["history", "anomalies", "--db", db_arg]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("raised  training/loss run=r1 value 9"),
        "{text}"
    );

    let out = guardrails(&[
        "history",
        "query",
        "--db",
        db_arg,
        "--component",
        "training",
        "--metric",
        "loss",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 21);

    let missing = dir.path().join("absent.db");
    let out = guardrails(&[
        "history",
        "query",
        "--db",
        missing.to_str().unwrap(),
        "--component",
        "c",
        "--metric",
        "m",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        doc["error"].to_string().contains("no metrics history file"),
        "{doc}"
    );
    let out = guardrails(&[
        "history",
        "query",
        "--db",
        db_arg,
        "--component",
        "c",
        "--metric",
        "m",
        "--since",
        "soon",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad duration is a usage error"
    );
}
