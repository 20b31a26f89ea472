//! `guardrails preflight …` and `guardrails gates …`: a declared pipeline, from its config.

use std::path::PathBuf;

use clap::Args;
use guardrails::GuardrailError;
use guardrails::durable::{RunId, RunRegistry};
use guardrails::pipeline::{GateResult, PipelinePlan, PreflightReport};
use serde_json::json;

use crate::Status;
use crate::output::{Format, Output};

#[derive(Debug, Args)]
pub(crate) struct PreflightArgs {
    /// The pipeline's config (TOML with `[pipeline]` and `[stages.NAME]`).
    config: PathBuf,
    /// Only these stages (repeatable); default every stage, upstream first.
    #[arg(long = "stage")]
    stages: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct GatesArgs {
    /// The pipeline's config.
    config: PathBuf,
    /// The run whose gate results to show, as `guardrails runs list` prints it.
    #[arg(long)]
    run: String,
}

/// Exit 0 every stage ready, 1 a stage is not, 2 the config or a stage name is wrong.
pub(crate) fn preflight(args: PreflightArgs, out: &Output) -> Status {
    let result = PipelinePlan::from_path(&args.config).and_then(|plan| {
        let names: Vec<&str> = if args.stages.is_empty() {
            plan.order.iter().map(String::as_str).collect()
        } else {
            args.stages.iter().map(String::as_str).collect()
        };
        // The bar moves stage by stage while inputs are validated.
        let bar = crate::validate_cmd::progress(names.len().max(2), out);
        let mut started = false;
        let reports = plan.preflight_with_progress(&names, |name| {
            if std::mem::replace(&mut started, true) {
                bar.inc(1);
            }
            bar.set_message(format!("stage {name}"));
        });
        bar.finish_and_clear();
        reports
    });
    let reports = match result {
        Ok(r) => r,
        Err(e) => return usage(&args.config, &e, out),
    };
    let ready = reports.iter().all(|r| r.ok);
    match out.format() {
        Format::Json => out.json(&json!({
            "config": args.config.display().to_string(),
            "ok": ready,
            "stages": reports,
        })),
        Format::Human => out.text(&human_preflight(&reports)),
    }
    if ready {
        Status::Ok
    } else {
        Status::CheckFailed
    }
}

fn human_preflight(reports: &[PreflightReport]) -> String {
    let mut text = String::new();
    for r in reports {
        text.push_str(&format!(
            "{:<20} {}\n",
            r.stage,
            if r.ok { "ready" } else { "NOT READY" }
        ));
        for e in &r.errors {
            text.push_str(&format!(
                "  error   {} {}: {}\n",
                e.check, e.subject, e.message
            ));
        }
        for w in &r.warnings {
            text.push_str(&format!(
                "  warning {} {}: {}\n",
                w.check, w.subject, w.message
            ));
        }
    }
    text
}

/// Exit 0 no mandatory gate failed in any stage's latest attempt, 1 one did, 2 the config,
/// the registry or the run cannot be read.
pub(crate) fn gates(args: GatesArgs, out: &Output) -> Status {
    let run = RunId::new(args.run.as_str());
    let result = PipelinePlan::from_path(&args.config).and_then(|plan| {
        let registry = RunRegistry::open_read_only(&plan.registry)?;
        if registry.run(&run)?.is_none() {
            return Err(GuardrailError::Store {
                store: plan.registry.display().to_string(),
                operation: "read gate results".into(),
                reason: format!("the registry has no run {run}"),
                class: guardrails::ErrorClass::Fatal,
                source: None,
            });
        }
        // Per stage, the gates of its latest attempt that judged any.
        let mut latest: Vec<(String, u32, Vec<GateResult>)> = Vec::new();
        for a in registry.attempts(&run)? {
            let Some(value) = a.metrics.get("gates") else {
                continue;
            };
            // A record this build cannot read is reported, not shown as "no gates".
            let gates: Vec<GateResult> =
                serde_json::from_value(value.clone()).map_err(|e| GuardrailError::Store {
                    store: plan.registry.display().to_string(),
                    operation: format!(
                        "read the gate results of {} attempt {}",
                        a.stage, a.attempt
                    ),
                    reason: format!("the recorded gate results do not parse: {e}"),
                    class: guardrails::ErrorClass::Fatal,
                    source: None,
                })?;
            latest.retain(|(s, _, _)| *s != a.stage);
            latest.push((a.stage, a.attempt, gates));
        }
        Ok(latest)
    });
    let latest = match result {
        Ok(l) => l,
        Err(e) => return usage(&args.config, &e, out),
    };
    let failed = latest
        .iter()
        .flat_map(|(_, _, g)| g)
        .any(|g| g.mandatory && !g.passed);
    match out.format() {
        Format::Json => out.json(&json!({
            "run": run.as_str(),
            "ok": !failed,
            "stages": latest.iter().map(|(stage, attempt, gates)| json!({
                "stage": stage, "attempt": attempt, "gates": gates,
            })).collect::<Vec<_>>(),
        })),
        Format::Human => {
            let mut text = String::new();
            for (stage, attempt, gates) in &latest {
                text.push_str(&format!("{stage} (attempt {attempt})\n"));
                for g in gates {
                    let verdict = match (g.passed, g.mandatory) {
                        (true, _) => "passed",
                        (false, true) => "FAILED",
                        (false, false) => "failed (advisory)",
                    };
                    text.push_str(&format!("  {:<20} {verdict:<18} {}\n", g.gate, g.message));
                }
            }
            if latest.is_empty() {
                text.push_str("no gate results recorded\n");
            }
            out.text(&text);
        }
    }
    if failed {
        Status::CheckFailed
    } else {
        Status::Ok
    }
}

fn usage(config: &std::path::Path, e: &GuardrailError, out: &Output) -> Status {
    match out.format() {
        Format::Json => out.json(&json!({
            "config": config.display().to_string(),
            "error": e.to_json(),
        })),
        Format::Human => out.problem(&config.display().to_string(), e),
    }
    Status::Usage
}
