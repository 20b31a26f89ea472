//! `guardrails json`

use std::io::Read;
use std::path::PathBuf;

use clap::Args;
use guardrails::GuardrailError;
use guardrails::config::read_text_bounded;
use guardrails::json_guard::{JsonGuardConfig, JsonHardGuard};

use crate::Status;
use crate::output::Output;

/// The largest schema file read: schemas are kilobytes; a path to the wrong file must not
/// fill memory.
const MAX_SCHEMA_BYTES: u64 = 4 << 20;

#[derive(Debug, Args)]
pub(crate) struct JsonArgs {
    /// A JSON Schema file the value must match (at most 4 MiB).
    #[arg(long, value_name = "FILE")]
    schema: Option<PathBuf>,
    /// No repair: only valid JSON passes, though it is still extracted from fences or
    /// prose and text after it is dropped (see --exact).
    #[arg(long)]
    strict: bool,
    /// Exactly one JSON text and nothing else: no extraction, no repair, no trailing text,
    /// and input that is not UTF-8 fails.
    #[arg(long)]
    exact: bool,
    /// Every JSON value in the input, as one array (empty ones dropped), instead of the
    /// first; the reading json_repair gives several values.
    #[arg(long)]
    all_values: bool,
    /// Deepest nesting accepted.
    #[arg(long, value_name = "N", default_value_t = JsonGuardConfig::new().max_depth)]
    max_depth: usize,
    /// Largest input accepted, bytes.
    #[arg(long, value_name = "N", default_value_t = JsonGuardConfig::new().max_bytes)]
    max_bytes: usize,
    /// Print each fix applied on stderr.
    #[arg(long)]
    explain: bool,
}

fn guard(args: &JsonArgs) -> Result<JsonHardGuard, GuardrailError> {
    let config = JsonGuardConfig::new()
        .with_repair(!args.strict)
        .with_exact(args.exact)
        .with_all_values(args.all_values)
        .with_max_depth(args.max_depth)
        .with_max_bytes(args.max_bytes);
    let guard = JsonHardGuard::new(config)?;
    match &args.schema {
        Some(path) => {
            let text = read_text_bounded(path, MAX_SCHEMA_BYTES, "schema", "schema file")?;
            let schema: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                GuardrailError::config("schema", format!("{} is not JSON: {e}", path.display()))
            })?;
            guard.with_schema(&schema)
        }
        None => Ok(guard),
    }
}

pub(crate) fn run(args: JsonArgs, out: &Output) -> Status {
    let guard = match guard(&args) {
        Ok(g) => g,
        Err(e) => {
            out.problem("json", &e);
            return Status::Usage;
        }
    };
    // One byte over the limit is enough to know the input is too large.
    let mut input = Vec::new();
    let limit = u64::try_from(args.max_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    if let Err(e) = std::io::stdin().lock().take(limit).read_to_end(&mut input) {
        out.problem("stdin", &GuardrailError::from(e));
        return Status::Usage;
    }
    // Bytes that are not UTF-8 are not text: exact mode refuses them; otherwise each is
    // replaced by U+FFFD, and the replacement is reported like any other fix.
    let replaced = match std::str::from_utf8(&input) {
        Ok(_) => None,
        Err(e) if args.exact => {
            out.note(&format!(
                "error: the input is not UTF-8 (first bad byte at {})",
                e.valid_up_to()
            ));
            return Status::CheckFailed;
        }
        Err(e) => Some(e.valid_up_to()),
    };
    let text = String::from_utf8_lossy(&input);
    match guard.parse_value(&text) {
        Ok(parsed) => {
            if let Some(at) = replaced {
                out.note(&format!(
                    "fix: replaced bytes that are not UTF-8 with U+FFFD, the first at byte {at}"
                ));
            }
            if args.explain {
                for fix in &parsed.fixes {
                    out.note(&fix.to_string());
                }
                for w in &parsed.warnings {
                    out.note(&format!("warning: {w}"));
                }
            }
            // The text, not the `Value`: numbers come back exactly as written.
            out.text(&format!("{}\n", parsed.to_compact_json()));
            Status::Ok
        }
        Err(problems) => {
            for p in &problems {
                out.note(&format!("error: {p}"));
            }
            Status::CheckFailed
        }
    }
}
