//! `guardrails config …`

use std::path::PathBuf;

use clap::Subcommand;
use guardrails::GuardrailsConfig;
use serde_json::json;

use crate::Status;
use crate::output::{Format, Output};

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Parse and validate a config file; print every problem. Exit 0 valid, 2 invalid.
    Check {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Print the default configuration as TOML, every key written out.
    Default,
}

pub(crate) fn run(cmd: ConfigCommand, out: &Output) -> Status {
    match cmd {
        ConfigCommand::Check { file } => check(&file, out),
        ConfigCommand::Default => match GuardrailsConfig::new().to_toml_string() {
            Ok(text) => {
                out.text(&text);
                Status::Ok
            }
            Err(e) => {
                out.problem("default config", &e);
                Status::Usage
            }
        },
    }
}

fn check(file: &std::path::Path, out: &Output) -> Status {
    let shown = file.display().to_string();
    let problems = match GuardrailsConfig::diagnose_path(file) {
        Ok(_) => Vec::new(),
        Err(problems) => problems,
    };
    tracing::info!(file = %shown, problems = problems.len(), "config checked");
    match out.format() {
        Format::Json => out.json(&json!({
            "file": shown,
            "ok": problems.is_empty(),
            "problems": problems.iter().map(|p| p.to_json()).collect::<Vec<_>>(),
        })),
        Format::Human if problems.is_empty() => out.ok(&format!("{shown} is a valid config")),
        Format::Human => {
            for p in &problems {
                out.problem(&shown, p);
            }
        }
    }
    if problems.is_empty() {
        Status::Ok
    } else {
        Status::Usage
    }
}
