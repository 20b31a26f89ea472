//! The CLI's exit codes and output formats are a contract scripts rely on.

use std::path::Path;
use std::process::{Command, Output};

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
