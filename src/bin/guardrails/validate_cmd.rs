//! `guardrails validate …`

use std::path::{Path, PathBuf};

use clap::Subcommand;
use guardrails::integrity::{
    DataIntegrityChecker, FeatureCheck, FindingSeverity, Report, TableCheck, Verdict, VideoCheck,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::Status;
use crate::output::{Format, Output};

#[derive(Debug, Subcommand)]
pub(crate) enum ValidateCommand {
    /// Check metadata tables (Parquet, Arrow IPC, CSV). Exit 0 when every file passes, 1
    /// when any fails, 3 when none fails but some could not be verified (unsupported).
    Table {
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Columns that must be present (comma-separated, repeatable).
        #[arg(long = "require", value_name = "COLS", value_delimiter = ',')]
        require: Vec<String>,
        /// Fewest rows.
        #[arg(long, value_name = "N")]
        min_rows: Option<u64>,
        /// Most rows.
        #[arg(long, value_name = "N")]
        max_rows: Option<u64>,
        /// A table with no rows passes (by default an empty table fails).
        #[arg(long)]
        allow_empty: bool,
        /// A CSV whose last line has no line terminator fails (by default it is a warning:
        /// RFC 4180 allows it, though it is also what a cut file looks like).
        #[arg(long)]
        require_final_newline: bool,
        /// Columns that must hold no null (comma-separated, repeatable).
        #[arg(long = "not-null", value_name = "COLS", value_delimiter = ',')]
        not_null: Vec<String>,
        /// Columns whose values must all differ (comma-separated, repeatable).
        #[arg(long = "unique", value_name = "COLS", value_delimiter = ',')]
        unique: Vec<String>,
        /// A column of file paths that must exist (repeatable).
        #[arg(long = "paths-exist", value_name = "COL")]
        paths_exist: Vec<String>,
        /// The folder relative paths are resolved against (default: each table's folder).
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// Trust Parquet footer statistics for row and null counts instead of reading pages.
        #[arg(long)]
        quick: bool,
    },
    /// Check videos (MP4/MOV, MKV/WebM, AVI) for truncation and damage. Exit 0 when every
    /// file passes, 1 when any fails, 3 when none fails but some could not be verified.
    Video {
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also decode every frame with ffmpeg (when it is on PATH; the report says if not).
        #[arg(long)]
        decode: bool,
    },
    /// Check feature files (NPY, Parquet). Exit 0 when every file passes, 1 when any fails,
    /// 3 when none fails but some could not be verified.
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

pub(crate) fn run(cmd: ValidateCommand, out: &Output) -> Status {
    let checker = DataIntegrityChecker::new();
    match cmd {
        ValidateCommand::Table {
            files,
            require,
            min_rows,
            max_rows,
            allow_empty,
            require_final_newline,
            not_null,
            unique,
            paths_exist,
            root,
            quick,
        } => {
            let mut check = TableCheck::new()
                .with_allow_empty(allow_empty)
                .with_csv_final_newline(require_final_newline)
                .with_required_columns(require)
                .with_not_null(not_null)
                .with_unique(unique)
                .with_quick(quick);
            if let Some(n) = min_rows {
                check = check.with_min_rows(n);
            }
            if let Some(n) = max_rows {
                check = check.with_max_rows(n);
            }
            for column in paths_exist {
                check = check.with_paths_exist(column);
            }
            if let Some(root) = root {
                check = check.with_root(root);
            }
            each_file(&files, "table", out, |f| {
                checker.validate_metadata_file(f, &check)
            })
        }
        ValidateCommand::Video { files, decode } => {
            let check = VideoCheck::new().with_decode(decode);
            each_file(&files, "video", out, |f| {
                checker.validate_video_file(f, &check)
            })
        }
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
            each_file(&files, "feature", out, |f| {
                checker.validate_feature_file(f, &check)
            })
        }
    }
}

/// Checks each file in turn, with a progress bar on a terminal, and shows the reports.
/// A file that cannot be opened gets a failing report of its own, so the JSON array still
/// holds one report per file.
fn each_file(
    files: &[PathBuf],
    kind: &'static str,
    out: &Output,
    check: impl Fn(&Path) -> guardrails::Result<Report>,
) -> Status {
    let bar = progress(files.len(), out);
    let mut reports = Vec::with_capacity(files.len());
    for file in files {
        bar.set_message(file.display().to_string());
        let report = check(file).unwrap_or_else(|e| Report::unreadable(file, kind, &e));
        reports.push(report);
        bar.inc(1);
    }
    bar.finish_and_clear();
    show(&reports, out);
    match reports.iter().map(|r| r.verdict).max() {
        None | Some(Verdict::Pass) => Status::Ok,
        Some(Verdict::Unsupported) => Status::Unsupported,
        Some(Verdict::Failed) => Status::CheckFailed,
    }
}

/// On a terminal's stderr: a bar for several files, a spinner with the elapsed time for a
/// single (possibly long) scan. Hidden otherwise, so pipes and CI logs stay clean.
pub(crate) fn progress(files: usize, out: &Output) -> ProgressBar {
    if files == 0 || !out.progress_allowed() {
        return ProgressBar::hidden();
    }
    if files == 1 {
        let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed} {wide_msg}") {
            spinner.set_style(style);
        }
        spinner.enable_steady_tick(std::time::Duration::from_millis(120));
        return spinner;
    }
    let bar = ProgressBar::with_draw_target(Some(files as u64), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} files, {elapsed} {wide_msg}")
    {
        bar.set_style(style);
    }
    bar
}

fn show(reports: &[Report], out: &Output) {
    match out.format() {
        Format::Json => out.json(&serde_json::to_value(reports).unwrap_or_default()),
        Format::Human => {
            for r in reports {
                let verdict = match r.verdict {
                    Verdict::Pass => "ok",
                    Verdict::Unsupported => "UNVERIFIED",
                    Verdict::Failed => "FAILED",
                };
                let mut text = format!("{verdict}: {} ({:?})\n", r.path.display(), r.format);
                for f in &r.findings {
                    let level = match f.severity {
                        FindingSeverity::Error => "error",
                        FindingSeverity::Warning => "warning",
                        FindingSeverity::Unsupported => "unsupported",
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
