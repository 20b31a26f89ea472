//! Exactly-once effects across processes on the embedded SQLite store: two workers race
//! for the same ledger rows, one of them is killed (`SIGKILL`) half-way through an effect,
//! and the survivor takes the killed worker's key over once its lease runs out, with a
//! higher fence that the ledger checks.
//!
//! ```text
//! cargo run --example exactly_once --features durable
//! # the same on a Redis shared by machines:
//! GUARDRAILS_REDIS_URL=redis://127.0.0.1:6379/0 cargo run --example exactly_once --features durable,redis
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use guardrails::state::{Fence, Idempotency, IdempotencyConfig, Outcome, SqliteStore};
use guardrails::{GuardrailError, Result};

const ROWS: usize = 20;

/// The ledger the effects write to: it refuses a write whose fence is lower than one it
/// accepted for the same row, so a worker that lost its lease cannot write after the one
/// that took over.
fn write_ledger(dir: &Path, row: usize, fence: Fence, worker: &str) -> Result<()> {
    let fences = dir.join(format!("fence-{row}"));
    let last: u64 = fs::read_to_string(&fences)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if fence.0 < last {
        return Err(GuardrailError::external(std::io::Error::other(format!(
            "row {row}: fence {fence} is older than {last}"
        ))));
    }
    fs::write(&fences, fence.0.to_string())?;
    let mut ledger = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("ledger"))?;
    writeln!(ledger, "row {row} by {worker} with fence {fence}")?;
    Ok(())
}

fn effects(dir: &Path) -> Result<Idempotency> {
    // A short lease, so the survivor takes over soon after the kill.
    let config = IdempotencyConfig::new().with_lease(Duration::from_secs(2));
    #[cfg(feature = "redis")]
    if let Ok(url) = std::env::var("GUARDRAILS_REDIS_URL") {
        use guardrails::state::{RedisConfig, RedisStore};
        // Keys of this run only: the temporary directory's name tells runs apart.
        let run = dir.file_name().and_then(|n| n.to_str()).unwrap_or("run");
        let store = Arc::new(RedisStore::connect(&url, RedisConfig::default())?);
        return Idempotency::with_config(store, config.with_prefix(format!("example-{run}")));
    }
    let store = Arc::new(SqliteStore::open(dir.join("state.db"))?);
    Idempotency::with_config(store, config)
}

/// One worker: every row once; `stall_at` makes it hang inside that row's effect (to be
/// killed there).
fn worker(dir: &Path, name: &str, stall_at: Option<usize>) -> Result<()> {
    let fx = effects(dir)?;
    for row in 0..ROWS {
        let key = fx.key("ledger", &row.to_string());
        loop {
            let outcome = fx.run(&key, "credit 10", |fence| {
                if stall_at == Some(row) {
                    println!("{name}: claimed row {row} (fence {fence}) and hangs");
                    std::thread::sleep(Duration::from_secs(3600));
                }
                write_ledger(dir, row, fence, name)?;
                Ok(fence.0)
            })?;
            match outcome {
                Outcome::InProgress { retry_after } => {
                    println!("{name}: row {row} is another worker's for {retry_after:?}");
                    std::thread::sleep(retry_after.min(Duration::from_millis(500)));
                }
                Outcome::Executed(f) => {
                    println!("{name}: row {row} written (fence {f})");
                    break;
                }
                _ => break,
            }
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, role, dir, name, rest @ ..] = args.as_slice()
        && role == "--worker"
    {
        let stall = rest.first().and_then(|s| s.parse().ok());
        return worker(Path::new(dir), name, stall);
    }
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let spawn = |name: &str, stall: Option<usize>| -> Result<std::process::Child> {
        let mut cmd = Command::new(&exe);
        cmd.arg("--worker").arg(dir.path()).arg(name);
        if let Some(s) = stall {
            cmd.arg(s.to_string());
        }
        Ok(cmd.stdout(Stdio::inherit()).spawn()?)
    };
    // A stalls inside row 5; kill it once it said so.
    let mut a = spawn("A", Some(5))?;
    let claimed = PathBuf::from(dir.path()).join("fence-4");
    while !claimed.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut b = spawn("B", None)?;
    std::thread::sleep(Duration::from_millis(300));
    a.kill()?;
    a.wait()?;
    println!("-- A killed with SIGKILL inside row 5");
    b.wait()?;

    let ledger = fs::read_to_string(dir.path().join("ledger"))?;
    let lines: Vec<&str> = ledger.lines().collect();
    println!("-- the ledger holds {} rows for {ROWS} keys:", lines.len());
    for l in &lines {
        println!("   {l}");
    }
    let fx = effects(dir.path())?;
    let again = fx.run(&fx.key("ledger", "5"), "credit 10", |_| Ok(0u64))?;
    println!("-- row 5 asked again: {again:?}");
    Ok(())
}
