//! How results reach the user: human lines (coloured on a terminal) or one JSON document.

use std::io::{IsTerminal, Write};

use guardrails::GuardrailError;
use serde_json::Value;

/// The global `--format` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Lines for people.
    Human,
    /// One JSON document on stdout.
    Json,
}

/// Writes results in the chosen format.
pub(crate) struct Output {
    format: Format,
    colour_out: bool,
    colour_err: bool,
}

impl Output {
    pub(crate) fn new(format: Format) -> Self {
        // NO_COLOR (https://no-color.org) turns colour off even on a terminal.
        let allowed = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Self {
            format,
            colour_out: allowed && std::io::stdout().is_terminal(),
            colour_err: allowed && std::io::stderr().is_terminal(),
        }
    }

    pub(crate) fn format(&self) -> Format {
        self.format
    }

    /// Whether a progress bar may draw: stderr is a terminal (the colour test, which also
    /// honours NO_COLOR, is the same question).
    pub(crate) fn progress_allowed(&self) -> bool {
        std::io::stderr().is_terminal()
    }

    /// A success line on stdout (human format only).
    pub(crate) fn ok(&self, message: &str) {
        let label = paint("ok", GREEN, self.colour_out);
        let _ = writeln!(std::io::stdout().lock(), "{label}: {message}");
    }

    /// A problem line on stderr (human format only), with its whole cause chain.
    pub(crate) fn problem(&self, subject: &str, err: &GuardrailError) {
        let label = paint("error", RED, self.colour_err);
        let _ = writeln!(
            std::io::stderr().lock(),
            "{label}: {subject}: {}",
            err.report()
        );
    }

    /// A line on stderr.
    pub(crate) fn note(&self, line: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }

    /// Plain text on stdout.
    pub(crate) fn text(&self, text: &str) {
        let _ = write!(std::io::stdout().lock(), "{text}");
    }

    /// One JSON document on stdout.
    pub(crate) fn json(&self, value: &Value) {
        let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
        let _ = writeln!(std::io::stdout().lock(), "{text}");
    }
}

const RED: &str = "\x1b[1;31m";
const GREEN: &str = "\x1b[1;32m";

fn paint(text: &str, colour: &str, on: bool) -> String {
    if on {
        format!("{colour}{text}\x1b[0m")
    } else {
        text.to_string()
    }
}
