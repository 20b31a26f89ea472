//! `guardrails history …`: read a metrics history file (also while a process writes it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use guardrails::GuardrailError;
use guardrails::observe::history::{HistoryReader, Point};
use serde_json::json;

use crate::Status;
use crate::output::{Format, Output};

#[derive(Debug, Subcommand)]
pub(crate) enum HistoryCommand {
    /// Print one metric's points from the last --since, oldest first: raw samples, and
    /// one-minute rollups (mean, min, max, count) where old samples were downsampled.
    /// Exit 0, or 2 when the history cannot be read.
    Query {
        #[command(flatten)]
        db: DbArg,
        /// The series' component (`training`, `retry`).
        #[arg(long)]
        component: String,
        /// The series' metric (`accuracy`, `retry`).
        #[arg(long)]
        metric: String,
        /// How far back, e.g. `15m`, `2h`, `7d`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        since: Duration,
    },
    /// Print the alarms the history's detectors raised and cleared in the last --since,
    /// and where each watched series stands now. Exit 0 no series is anomalous now, 1 one
    /// is, 2 the history cannot be read.
    Anomalies {
        #[command(flatten)]
        db: DbArg,
        /// How far back, e.g. `15m`, `2h`, `7d`.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        since: Duration,
    },
}

#[derive(Debug, Args)]
pub(crate) struct DbArg {
    /// The history database (`SqliteHistory`'s file).
    #[arg(long)]
    db: PathBuf,
}

pub(crate) fn run(cmd: HistoryCommand, out: &Output) -> Status {
    let (db, result) = match &cmd {
        HistoryCommand::Query {
            db,
            component,
            metric,
            since,
        } => (&db.db, query(&db.db, component, metric, *since, out)),
        HistoryCommand::Anomalies { db, since } => (&db.db, anomalies(&db.db, *since, out)),
    };
    match result {
        Ok(status) => status,
        Err(e) => {
            match out.format() {
                Format::Json => out.json(&json!({
                    "db": db.display().to_string(),
                    "error": e.to_json(),
                })),
                Format::Human => out.problem(&db.display().to_string(), &e),
            }
            Status::Usage
        }
    }
}

fn query(
    path: &Path,
    component: &str,
    metric: &str,
    since: Duration,
    out: &Output,
) -> Result<Status, GuardrailError> {
    let points = HistoryReader::open(path)?.query(component, metric, since)?;
    match out.format() {
        Format::Json => out.json(&json!({
            "db": path.display().to_string(),
            "component": component,
            "metric": metric,
            "since_seconds": since.as_secs_f64(),
            "points": points.iter().map(point_json).collect::<Vec<_>>(),
        })),
        Format::Human => {
            if points.is_empty() {
                out.note(&format!(
                    "no points of {component}/{metric} in the last {}",
                    humantime::format_duration(since)
                ));
            }
            let mut text = String::new();
            for p in &points {
                let _ = write!(text, "{}  {}", time(p.at_ms), tags_text(&p.tags));
                if p.count == 1 {
                    let _ = writeln!(text, "{}", p.value);
                } else {
                    let _ = writeln!(
                        text,
                        "mean {} min {} max {} count {} ({})",
                        p.value, p.min, p.max, p.count, p.resolution
                    );
                }
            }
            out.text(&text);
        }
    }
    Ok(Status::Ok)
}

fn anomalies(path: &Path, since: Duration, out: &Output) -> Result<Status, GuardrailError> {
    let reader = HistoryReader::open(path)?;
    let alarms = reader.anomalies(since)?;
    let baselines = reader.baselines()?;
    let anomalous = baselines.iter().filter(|b| b.state == "anomalous").count();
    match out.format() {
        Format::Json => out.json(&json!({
            "db": path.display().to_string(),
            "since_seconds": since.as_secs_f64(),
            "anomalous_now": anomalous,
            "anomalies": alarms.iter().map(|a| json!({
                "component": a.component,
                "metric": a.metric,
                "tags": tags_json(&a.tags),
                "at": time(a.at_ms),
                "at_ms": a.at_ms,
                "value": a.value,
                "z": a.z,
                "threshold": a.threshold,
                "state": a.state,
            })).collect::<Vec<_>>(),
            "series": baselines.iter().map(|b| json!({
                "component": b.component,
                "metric": b.metric,
                "tags": tags_json(&b.tags),
                "state": b.state,
                "count": b.count,
                "mean": finite(b.mean),
                "stddev": finite(b.stddev),
                "updated": time(b.updated_ms),
            })).collect::<Vec<_>>(),
        })),
        Format::Human => {
            let mut text = String::new();
            for a in &alarms {
                let what = if a.state == "anomalous" {
                    "raised"
                } else {
                    "cleared"
                };
                let _ = write!(
                    text,
                    "{}  {what}  {}/{} {}value {}",
                    time(a.at_ms),
                    a.component,
                    a.metric,
                    tags_text(&a.tags),
                    a.value
                );
                if let Some(z) = a.z {
                    let _ = write!(text, " z {z:.2}");
                }
                if let Some(t) = a.threshold {
                    let _ = write!(text, " threshold {t}");
                }
                text.push('\n');
            }
            for b in &baselines {
                let _ = writeln!(
                    text,
                    "{}/{} {}{} (n {}, mean {:.4}, stddev {:.4})",
                    b.component,
                    b.metric,
                    tags_text(&b.tags),
                    b.state,
                    b.count,
                    b.mean,
                    b.stddev
                );
            }
            if alarms.is_empty() && baselines.is_empty() {
                text.push_str("no watched series and no anomalies\n");
            }
            out.text(&text);
        }
    }
    Ok(if anomalous > 0 {
        Status::CheckFailed
    } else {
        Status::Ok
    })
}

fn point_json(p: &Point) -> serde_json::Value {
    json!({
        "tags": tags_json(&p.tags),
        "at": time(p.at_ms),
        "at_ms": p.at_ms,
        "value": p.value,
        "min": p.min,
        "max": p.max,
        "count": p.count,
        "resolution": p.resolution,
    })
}

fn tags_json(tags: &[(String, String)]) -> serde_json::Map<String, serde_json::Value> {
    tags.iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect()
}

fn tags_text(tags: &[(String, String)]) -> String {
    tags.iter().map(|(k, v)| format!("{k}={v} ")).collect()
}

fn time(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(
        t.min(SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799)),
    )
    .to_string()
}

/// JSON has no NaN: an unreadable baseline's figures are null.
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}
