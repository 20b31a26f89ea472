//! `guardrails validate …`

use std::path::PathBuf;

use clap::Subcommand;
use guardrails::integrity::{DataIntegrityChecker, FeatureCheck, FindingSeverity, Report};

use crate::Status;
use crate::output::{Format, Output};

#[derive(Debug, Subcommand)]
pub enum ValidateCommand {
    /// Check feature files (NPY). Exit 0 when every file passes, 1 when any fails.
    Features {
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Scan float data for NaN and infinities.
        #[arg(long)]
        finite: bool,
        /// Accepted dtype (repeatable), e.g. float32.
        #[arg(long = "dtype", value_name = "DTYPE")]
        dtypes: Vec<String>,
        /// Fewest rows (first dimension).
        #[arg(long, value_name = "N")]
        min_rows: Option<u64>,
    },
}

pub fn run(cmd: ValidateCommand, out: &Output) -> Status {
    match cmd {
        ValidateCommand::Features {
            files,
            finite,
            dtypes,
            min_rows,
        } => {
            let mut check = FeatureCheck::new().with_finite(finite).with_dtypes(dtypes);
            if let Some(n) = min_rows {
                check = check.with_min_rows(n);
            }
            let checker = DataIntegrityChecker::new();
            let mut reports = Vec::new();
            let mut status = Status::Ok;
            for file in &files {
                match checker.validate_feature_file(file, &check) {
                    Ok(report) => {
                        if !report.ok {
                            status = Status::CheckFailed;
                        }
                        reports.push(report);
                    }
                    // A file that cannot be opened fails like a damaged one.
                    Err(e) => {
                        status = Status::CheckFailed;
                        out.problem(&file.display().to_string(), &e);
                    }
                }
            }
            show(&reports, out);
            status
        }
    }
}

fn show(reports: &[Report], out: &Output) {
    match out.format() {
        Format::Json => out.json(&serde_json::to_value(reports).unwrap_or_default()),
        Format::Human => {
            for r in reports {
                let verdict = if r.ok { "ok" } else { "FAILED" };
                let mut text = format!("{verdict}: {} ({:?})\n", r.path.display(), r.format);
                for f in &r.findings {
                    let level = match f.severity {
                        FindingSeverity::Error => "error",
                        FindingSeverity::Warning => "warning",
                    };
                    text.push_str(&format!("  {level} {}: {}", f.check, f.message));
                    if let (Some(e), Some(found)) = (&f.expected, &f.found) {
                        text.push_str(&format!(" (expected {e}, found {found})"));
                    }
                    text.push('\n');
                }
                out.text(&text);
            }
        }
    }
}
