//! `guardrails runs …`: read a pipeline's run registry.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use guardrails::GuardrailError;
use guardrails::durable::{DEFAULT_REGISTRY, RunId, RunRegistry};
use serde_json::json;

use crate::Status;
use crate::output::{Format, Output};

#[derive(Debug, Subcommand)]
pub(crate) enum RunsCommand {
    /// List the runs, newest first. Exit 0, or 2 when the registry cannot be read.
    List(RegistryArg),
    /// Show one run: its stage attempts and artifacts. Exit 0, 2 unknown run or unreadable
    /// registry.
    Show {
        /// The run's id, as `runs list` prints it.
        run: String,
        #[command(flatten)]
        registry: RegistryArg,
    },
    /// Compare a run's registry records with the filesystem: missing or changed artifacts,
    /// leftover temporary files, files no committed stage wrote. Exit 0 consistent, 1
    /// inconsistencies found, 2 usage or unreadable registry.
    Verify {
        /// The run's id.
        run: String,
        #[command(flatten)]
        registry: RegistryArg,
    },
}

#[derive(Debug, Args)]
pub(crate) struct RegistryArg {
    /// The registry database.
    #[arg(long, default_value = DEFAULT_REGISTRY)]
    registry: PathBuf,
}

pub(crate) fn run(cmd: RunsCommand, out: &Output) -> Status {
    let (registry_path, result) = match &cmd {
        RunsCommand::List(r) => (&r.registry, list(&r.registry, out)),
        RunsCommand::Show { run, registry } => (
            &registry.registry,
            show(&registry.registry, &RunId::new(run.as_str()), out),
        ),
        RunsCommand::Verify { run, registry } => (
            &registry.registry,
            verify(&registry.registry, &RunId::new(run.as_str()), out),
        ),
    };
    match result {
        Ok(status) => status,
        Err(e) => {
            match out.format() {
                Format::Json => out.json(&json!({
                    "registry": registry_path.display().to_string(),
                    "error": e.to_json(),
                })),
                Format::Human => out.problem(&registry_path.display().to_string(), &e),
            }
            Status::Usage
        }
    }
}

fn open(path: &Path) -> Result<RunRegistry, GuardrailError> {
    RunRegistry::open_read_only(path)
}

fn list(path: &Path, out: &Output) -> Result<Status, GuardrailError> {
    let runs = open(path)?.runs()?;
    match out.format() {
        Format::Json => out.json(&json!({
            "registry": path.display().to_string(),
            "runs": runs,
        })),
        Format::Human => {
            let mut text = String::new();
            for r in &runs {
                text.push_str(&format!(
                    "{}  {:<11}  {}  started {}\n",
                    r.id,
                    r.status.as_str(),
                    r.pipeline,
                    stamp(r.started_ms)
                ));
            }
            if runs.is_empty() {
                text.push_str("no runs\n");
            }
            out.text(&text);
        }
    }
    Ok(Status::Ok)
}

fn show(path: &Path, run: &RunId, out: &Output) -> Result<Status, GuardrailError> {
    let registry = open(path)?;
    let info = registry.run(run)?.ok_or_else(|| unknown(path, run))?;
    let attempts = registry.attempts(run)?;
    let artifacts = registry.artifacts(run)?;
    match out.format() {
        Format::Json => out.json(&json!({
            "run": info,
            "attempts": attempts,
            "artifacts": artifacts,
        })),
        Format::Human => {
            let mut text = format!(
                "run {}  {}  pipeline {}  config {}  started {}\n",
                info.id,
                info.status.as_str(),
                info.pipeline,
                info.config_hash,
                stamp(info.started_ms)
            );
            for a in &attempts {
                text.push_str(&format!(
                    "  stage {} attempt {}: {}{}{}\n",
                    a.stage,
                    a.attempt,
                    a.status.as_str(),
                    a.duration_ms
                        .map(|d| format!(" in {d} ms"))
                        .unwrap_or_default(),
                    a.error_message
                        .as_deref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default()
                ));
            }
            for a in &artifacts {
                text.push_str(&format!(
                    "  artifact {} ({}, {} bytes, xxh3 {})\n",
                    a.path.display(),
                    a.stage,
                    a.size,
                    a.checksum
                ));
            }
            out.text(&text);
        }
    }
    Ok(Status::Ok)
}

fn verify(path: &Path, run: &RunId, out: &Output) -> Result<Status, GuardrailError> {
    let report = open(path)?.verify(run)?;
    match out.format() {
        Format::Json => out.json(&json!({
            "run": report.run,
            "consistent": report.is_consistent(),
            "artifacts_checked": report.artifacts_checked,
            "problems": report.problems,
        })),
        Format::Human if report.is_consistent() => out.ok(&format!(
            "run {run}: {} artifact(s) as recorded, no leftovers",
            report.artifacts_checked
        )),
        Format::Human => {
            for p in &report.problems {
                out.note(&format!(
                    "inconsistent: {}",
                    serde_json::to_string(p).unwrap_or_default()
                ));
            }
        }
    }
    Ok(if report.is_consistent() {
        Status::Ok
    } else {
        Status::CheckFailed
    })
}

fn unknown(path: &Path, run: &RunId) -> GuardrailError {
    GuardrailError::Store {
        store: path.display().to_string(),
        operation: "show".into(),
        reason: format!("the registry has no run {run}"),
        class: guardrails::ErrorClass::Fatal,
        source: None,
    }
}

/// Milliseconds since the epoch as RFC 3339 (UTC, seconds).
fn stamp(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}
