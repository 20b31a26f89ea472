//! `guardrails once --key KEY -- COMMAND [ARGS]...`: a command run once per key across
//! every worker sharing the store.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use guardrails::state::{
    Idempotency, IdempotencyConfig, Outcome, RedisConfig, RedisStore, SqliteStore, StateStore,
    fingerprint,
};
use guardrails::{ErrorClass, GuardrailError};
use serde::{Deserialize, Serialize};

/// EX_TEMPFAIL: another worker holds the key, or the store cannot be reached; try later.
const TEMPFAIL: u8 = 75;
/// The most stdout kept to replay; past it the command's output still streams through.
const MAX_STORED_STDOUT: usize = 128 << 10;

#[derive(Debug, Args)]
pub(crate) struct OnceArgs {
    /// The effect's key: a later call with the same key replays the first one's result.
    #[arg(long)]
    key: String,
    /// The store: a SQLite file path (or `sqlite://PATH`; default `.guardrails/state.db`),
    /// or a Redis shared by machines (`redis://[:password@]host:port/db`, `rediss://…`).
    #[arg(long)]
    store: Option<String>,
    /// How long the result is replayed (e.g. `72h`, the default).
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// Run the command even when the store cannot be reached.
    #[arg(long)]
    fail_open: bool,
    /// The command and its arguments (after `--`); it gets the claim's fence in
    /// `GUARDRAILS_FENCE`.
    #[arg(last = true, required = true, num_args = 1..)]
    command: Vec<String>,
}

/// What a run leaves for the calls after it.
#[derive(Debug, Serialize, Deserialize)]
struct Recorded {
    code: u8,
    stdout: Vec<u8>,
    truncated: bool,
}

/// Exit: the command's code (run now or replayed), 75 another worker holds the key or the
/// store is unreachable, 2 usage, a store that cannot be opened, or a key used with another
/// command, 1 a failure recorded for the key.
pub(crate) fn run(args: OnceArgs) -> ExitCode {
    match once(&args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("guardrails once: {}", e.report());
            ExitCode::from(if e.class() == ErrorClass::Retryable {
                TEMPFAIL
            } else {
                2
            })
        }
    }
}

fn once(args: &OnceArgs) -> guardrails::Result<u8> {
    let store = match open_store(args) {
        Ok(s) => s,
        Err(e) if args.fail_open && e.class() == ErrorClass::Retryable => {
            eprintln!(
                "guardrails once: {}: the store is unreachable ({}); running unguarded (--fail-open)",
                args.key,
                e.report()
            );
            return execute(&args.command, 0).map(|r| r.code);
        }
        Err(e) => return Err(e),
    };
    run_once(args, store)
}

/// The store `--store` names.
fn open_store(args: &OnceArgs) -> guardrails::Result<Arc<dyn StateStore>> {
    Ok(match args.store.as_deref() {
        None => Arc::new(SqliteStore::open(PathBuf::from(".guardrails/state.db"))?),
        Some(s) if s.starts_with("redis://") || s.starts_with("rediss://") => {
            Arc::new(RedisStore::connect(s, RedisConfig::default())?)
        }
        Some(s) => Arc::new(SqliteStore::open(PathBuf::from(
            s.strip_prefix("sqlite://").unwrap_or(s),
        ))?),
    })
}

fn run_once(args: &OnceArgs, store: Arc<dyn StateStore>) -> guardrails::Result<u8> {
    let mut config = IdempotencyConfig::new()
        .with_fail_open(args.fail_open)
        .with_local_cache(0);
    if let Some(ttl) = args.ttl {
        config = config.with_ttl(ttl);
    }
    let effects = Idempotency::with_config(store, config)?;
    let print = &fingerprint(&serde_json::json!(args.command));
    let outcome = effects.run(&args.key, print, |fence| execute(&args.command, fence.0))?;
    match outcome {
        Outcome::Executed(r) => Ok(r.code),
        Outcome::Cached(r) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&r.stdout).and_then(|()| out.flush());
            if r.truncated {
                eprintln!(
                    "guardrails once: {}: replayed the first {MAX_STORED_STDOUT} bytes of the output",
                    args.key
                );
            }
            Ok(r.code)
        }
        Outcome::InProgress { retry_after } => {
            eprintln!(
                "guardrails once: {}: running in another worker; retry after {:.1} s",
                args.key,
                retry_after.as_secs_f64()
            );
            Ok(TEMPFAIL)
        }
        Outcome::Mismatch { .. } => Err(GuardrailError::config(
            "--key",
            format!("{} was used with another command", args.key),
        )),
        Outcome::Failed { message } => {
            eprintln!("guardrails once: {}: failed before: {message}", args.key);
            Ok(1)
        }
        _ => Ok(1),
    }
}

/// Runs the command with its stdout streamed through and kept (up to the bound).
fn execute(command: &[String], fence: u64) -> guardrails::Result<Recorded> {
    let (program, rest) = command
        .split_first()
        .ok_or_else(|| GuardrailError::config("COMMAND", "no command given"))?;
    let mut child = std::process::Command::new(program)
        .args(rest)
        .env("GUARDRAILS_FENCE", fence.to_string())
        .stdout(Stdio::piped())
        .spawn()
        // It did not run: the claim is released (recoverable), not recorded as done.
        .map_err(|e| {
            GuardrailError::external_with_class(
                std::io::Error::new(e.kind(), format!("cannot run {program}: {e}")),
                ErrorClass::Recoverable,
            )
        })?;
    let mut kept = Vec::new();
    let mut truncated = false;
    if let Some(mut pipe) = child.stdout.take() {
        let mut out = std::io::stdout().lock();
        let mut buf = [0u8; 16 << 10];
        loop {
            let n = match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(GuardrailError::io("stdout of the command", e)),
            };
            let _ = out.write_all(&buf[..n]);
            let room = MAX_STORED_STDOUT.saturating_sub(kept.len());
            truncated |= n > room;
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        let _ = out.flush();
    }
    let status = child
        .wait()
        .map_err(|e| GuardrailError::io("the command", e))?;
    let Some(code) = status.code() else {
        // Killed, not finished: the effect may be half done, so the next call runs it again.
        use std::os::unix::process::ExitStatusExt;
        return Err(GuardrailError::external_with_class(
            std::io::Error::other(format!(
                "{program} was killed by signal {}; the key is released",
                status.signal().unwrap_or(0)
            )),
            ErrorClass::Retryable,
        ));
    };
    let code = u8::try_from(code).unwrap_or(1);
    Ok(Recorded {
        code,
        stdout: kept,
        truncated,
    })
}
