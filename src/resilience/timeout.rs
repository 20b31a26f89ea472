//! Deadlines: a cooperative [`TimeoutHandler`] for long loops, [`run_with_timeout`] for
//! blocking closures, and [`run_command_with_timeout`] for child processes, which is the only
//! one that truly stops the work.
//!
//! # What can and cannot be stopped
//!
//! - A child process can be killed. [`run_command_with_timeout`] starts it in a process group
//!   of its own and, at the deadline, signals the whole group, so grandchildren (a shell's
//!   `ffmpeg`, a `torchrun` worker) die with it.
//! - A Rust thread cannot be killed: there is no safe way to stop code that does not check
//!   for it. [`run_with_timeout`] runs the closure on a bounded pool of threads and returns
//!   [`GuardrailError::Timeout`] to the caller as soon as the limit passes, but the closure
//!   keeps running in the background until it returns on its own; its result is then
//!   dropped. Memory, files and locks it holds stay held until then. Use it to keep a caller
//!   responsive, not to reclaim resources; for work that must really stop, check a
//!   [`TimeoutHandler`] inside the loop or move the work into a child process.
//!
//! Every timeout is logged at ERROR with the operation, the elapsed time and the limit.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::clock::{Clock, SharedClock, SystemClock};
use crate::error::{GuardrailError, Result};
use crate::process::ProcessLimits;

fn timeout_error(operation: &str, elapsed: Duration, limit: Duration) -> GuardrailError {
    GuardrailError::timeout(operation, elapsed, limit)
}

/// A deadline that long-running code checks cooperatively.
///
/// ```
/// use guardrails::prelude::*;
/// use guardrails::resilience::TimeoutHandler;
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let deadline = TimeoutHandler::new("epoch", Duration::from_secs(60)).with_clock(clock.clone());
/// for batch in 0..10 {
///     clock.advance(Duration::from_secs(10)); // stands in for real work
///     if let Err(e) = deadline.check() {
///         assert_eq!(batch, 5);
///         assert_eq!(e.kind(), ErrorKind::Timeout);
///         break;
///     }
/// }
/// assert_eq!(deadline.remaining(), Duration::ZERO);
/// ```
#[derive(Debug, Clone)]
pub struct TimeoutHandler {
    operation: String,
    limit: Duration,
    start: Instant,
    clock: SharedClock,
}

impl TimeoutHandler {
    /// Starts a deadline of `limit` for `operation` now, on the system clock.
    pub fn new(operation: impl Into<String>, limit: Duration) -> Self {
        Self {
            operation: operation.into(),
            limit,
            start: Instant::now(),
            clock: std::sync::Arc::new(SystemClock),
        }
    }

    /// Measures on `clock` instead, restarting the deadline at the clock's now.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.start = clock.now();
        self.clock = std::sync::Arc::new(clock);
        self
    }

    /// What the deadline guards.
    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// When it started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// The limit.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.clock.now().saturating_duration_since(self.start)
    }

    /// Time left; zero once expired.
    pub fn remaining(&self) -> Duration {
        self.limit.saturating_sub(self.elapsed())
    }

    /// Whether the limit has passed.
    pub fn is_expired(&self) -> bool {
        self.elapsed() >= self.limit
    }

    /// `Ok` while time is left; [`GuardrailError::Timeout`] (logged at ERROR) once it is not.
    pub fn check(&self) -> Result<()> {
        let elapsed = self.elapsed();
        if elapsed >= self.limit {
            Err(timeout_error(&self.operation, elapsed, self.limit))
        } else {
            Ok(())
        }
    }
}

/// Runs `f` on the crate's bounded pool of deadline threads and waits at most `limit` for it.
///
/// On timeout the caller gets [`GuardrailError::Timeout`] at once while `f` runs on
/// unattended; see the [module docs](self) for what that means. Work that never returns keeps
/// its thread: the pool holds at most 64, and once all are stuck a call is refused with
/// [`GuardrailError::BulkheadFull`] rather than leaking more. A panic in `f` is resumed on
/// the caller's thread, as `std::thread::scope` does.
///
/// ```
/// use guardrails::resilience::run_with_timeout;
/// use std::time::Duration;
///
/// let sum = run_with_timeout("sum", Duration::from_secs(5), || Ok((1..=10u32).sum::<u32>()))?;
/// assert_eq!(sum, 55);
/// # Ok::<(), guardrails::GuardrailError>(())
/// ```
pub fn run_with_timeout<T, F>(operation: &str, limit: Duration, f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    crate::worker::run(operation, None, limit, f)
}

/// Awaits `fut` for at most `limit`; on timeout the future is dropped (cancelled, unlike a
/// thread) and the caller gets [`GuardrailError::Timeout`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use guardrails::prelude::*;
/// use guardrails::resilience::run_with_timeout_async;
/// use std::time::Duration;
///
/// let slow = async {
///     tokio::time::sleep(Duration::from_secs(60)).await;
///     Ok(())
/// };
/// let err = run_with_timeout_async("fetch", Duration::from_secs(5), slow).await.unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Timeout);
/// # }
/// ```
#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub async fn run_with_timeout_async<T, Fut>(operation: &str, limit: Duration, fut: Fut) -> Result<T>
where
    Fut: std::future::Future<Output = Result<T>>,
{
    let start = tokio::time::Instant::now();
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_) => Err(timeout_error(operation, start.elapsed(), limit)),
    }
}

/// The old name of [`run_with_timeout_async`].
#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
#[deprecated(
    since = "0.1.0",
    note = "use `run_with_timeout_async`: async functions end in `_async` throughout"
)]
pub async fn with_timeout<T, Fut>(operation: &str, limit: Duration, fut: Fut) -> Result<T>
where
    Fut: std::future::Future<Output = Result<T>>,
{
    run_with_timeout_async(operation, limit, fut).await
}

pub use crate::process::CommandOutput;

/// Runs `command` with a time limit, capturing its stdout and stderr (at most
/// [`DEFAULT_MAX_OUTPUT`](crate::process::DEFAULT_MAX_OUTPUT) bytes each).
///
/// The child is made the leader of a new process group. At the deadline the whole group gets
/// `SIGKILL` and the call returns [`GuardrailError::Timeout`]. When the child exits first,
/// what it wrote comes back and whatever it left running in its group is killed. A non-zero
/// exit is not an error here: the status is in the output for the caller to judge.
/// [`crate::process::run`] takes the limits in full.
///
/// ```
/// # #[cfg(unix)] {
/// use guardrails::resilience::run_command_with_timeout;
/// use std::process::Command;
/// use std::time::Duration;
///
/// let out = run_command_with_timeout(Command::new("echo").arg("hi"), Duration::from_secs(10))?;
/// assert!(out.status.success());
/// assert_eq!(out.stdout, b"hi\n");
/// # }
/// # Ok::<(), guardrails::GuardrailError>(())
/// ```
pub fn run_command_with_timeout(command: &mut Command, limit: Duration) -> Result<CommandOutput> {
    crate::process::run(command, &ProcessLimits::new(limit))
}

/// Like [`run_command_with_timeout`], with `grace` between `SIGTERM` and `SIGKILL` so the
/// group can flush and clean up.
pub fn run_command_with_grace(
    command: &mut Command,
    limit: Duration,
    grace: Duration,
) -> Result<CommandOutput> {
    crate::process::run(command, &ProcessLimits::new(limit).with_grace(grace))
}
