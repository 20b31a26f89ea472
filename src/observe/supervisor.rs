//! A supervisor: runs a task, and when it fails runs the recovery actions registered for
//! that kind of failure, in order until one succeeds, then restarts the task with backoff —
//! at most `max_restarts` times within `within` (Erlang/OTP's restart intensity), after
//! which it gives up with a fatal error.
//!
//! A task is a closure run on the caller's thread ([`Supervisor::run`]), a future
//! ([`Supervisor::run_async`], feature `async`), or a child process
//! ([`Supervisor::run_process`]: exit 0 is success, a non-zero exit or a signal a
//! [`ChildFailed`]). Each recovery action has its own timeout and runs on the crate's
//! deadline pool, so a hung action costs its timeout, not the supervisor. Every step —
//! failure, action tried, restart, give-up — goes to `tracing`, to the
//! [`Supervisor::on_step`] callback and out as a [guard event](crate::events)
//! (`GuardKind::Supervisor`: `task_failed`, `recovery_action`, `restart`, `gave_up`), so
//! the metrics, the alert hooks (`SupervisorGaveUp`) and the history see it.
//!
//! ```
//! use std::time::Duration;
//! use guardrails::{ErrorClass, GuardrailError, ManualClock};
//! use guardrails::observe::supervisor::{RecoveryAction, Supervisor, SupervisorConfig};
//!
//! let clock = ManualClock::new();
//! let sup = Supervisor::new("trainer", SupervisorConfig::default())?
//!     .with_clock(clock.clone())
//!     .recover("resource_exhausted", RecoveryAction::new("release caches", Duration::from_secs(5), |_| Ok(())));
//! let mut runs = 0;
//! let out = sup.run(|_attempt| {
//!     runs += 1;
//!     if runs < 3 {
//!         Err(GuardrailError::ResourceExhausted { resource: "memory".into(), used: 9.0, limit: 8.0, unit: "GiB".into() })
//!     } else {
//!         Ok("trained")
//!     }
//! })?;
//! assert_eq!((out, runs), ("trained", 3));
//! # Ok::<(), GuardrailError>(())
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::clock::{Clock, SharedClock, SystemClock};
use crate::error::{ErrorClass, GuardrailError, Result};
use crate::events::{Decision, GuardEvent, GuardKind};
use crate::process::{CommandOutput, ProcessLimits};

/// Restart policy.
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorConfig {
    /// Restarts allowed within `within`; one more gives up.
    pub max_restarts: u32,
    /// The window of the restart intensity.
    pub within: Duration,
    /// Waits before restarts (the n-th restart within the window waits `delay(n - 1)`).
    pub backoff: Backoff,
    /// Whether a fatal error gives up at once (a person must fix it) instead of restarting.
    pub give_up_on_fatal: bool,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            within: Duration::from_secs(60),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(10), 2.0),
            give_up_on_fatal: true,
        }
    }
}

type ActionFn = Arc<dyn Fn(&GuardrailError) -> Result<()> + Send + Sync>;

/// One recovery step: clear a stale lock, release caches, fall back to a checkpoint, …
#[derive(Clone)]
pub struct RecoveryAction {
    name: String,
    timeout: Duration,
    run: ActionFn,
}

impl std::fmt::Debug for RecoveryAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryAction")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RecoveryAction {
    /// An action named `name` that may take `timeout`; `run` gets the failure.
    pub fn new<F>(name: impl Into<String>, timeout: Duration, run: F) -> Self
    where
        F: Fn(&GuardrailError) -> Result<()> + Send + Sync + 'static,
    {
        Self {
            name: name.into(),
            timeout,
            run: Arc::new(run),
        }
    }
}

/// One step the supervisor took.
#[derive(Debug, Clone, PartialEq)]
pub enum SupervisorStep {
    /// The task failed.
    Failed {
        /// The attempt (1 = the first run).
        attempt: u32,
        /// The failure kind the actions are looked up by.
        kind: String,
        /// The error, in words.
        error: String,
    },
    /// A recovery action ran.
    Action {
        /// Its name.
        action: String,
        /// Whether it succeeded (the later actions for this failure are skipped then).
        ok: bool,
        /// Its error, when it failed or timed out.
        error: Option<String>,
    },
    /// The task is restarted after `delay`.
    Restart {
        /// The attempt about to run.
        attempt: u32,
        /// The wait before it.
        delay: Duration,
    },
    /// The supervisor gave up.
    GaveUp {
        /// Why, in words.
        reason: String,
    },
}

/// Why a supervisor gave up; the source of the fatal [`GuardrailError::External`] it returns.
#[derive(Debug, thiserror::Error)]
#[error("supervisor {name}: {reason}")]
pub struct SupervisorGaveUp {
    /// The supervisor.
    pub name: String,
    /// Why, with the figures.
    pub reason: String,
    /// The task's last error.
    #[source]
    pub last: GuardrailError,
}

type Classifier = Arc<dyn Fn(&GuardrailError) -> String + Send + Sync>;
type StepSink = Arc<dyn Fn(&SupervisorStep) + Send + Sync>;

/// The default failure kind: a [`ChildFailed`]'s `"child_signal"` or `"child_exit"`,
/// otherwise the error's [`ErrorKind`](crate::ErrorKind) (`"resource_exhausted"`,
/// `"timeout"`, …).
fn default_kind(e: &GuardrailError) -> String {
    match ChildFailed::of(e) {
        Some(c) if c.signal.is_some() => "child_signal".into(),
        Some(_) => "child_exit".into(),
        None => e.kind().as_str().to_string(),
    }
}

/// Runs a task with restarts and recovery; see the [module docs](self).
pub struct Supervisor {
    name: String,
    config: SupervisorConfig,
    actions: Vec<(String, RecoveryAction)>,
    classify: Classifier,
    clock: SharedClock,
    on_step: Option<StepSink>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("actions", &self.actions)
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// A supervisor named `name`. Failures are kinded `"child_exit"` / `"child_signal"`
    /// for a [`ChildFailed`], otherwise by [`ErrorKind`](crate::ErrorKind)
    /// (`"resource_exhausted"`, `"timeout"`, `"external"`, …), unless
    /// [`classify_with`](Self::classify_with) says otherwise.
    ///
    /// # Errors
    /// [`GuardrailError::Config`] for a zero window.
    pub fn new(name: impl Into<String>, config: SupervisorConfig) -> Result<Self> {
        if config.within.is_zero() {
            return Err(GuardrailError::config(
                "supervisor.within",
                "must be above zero",
            ));
        }
        Ok(Self {
            name: name.into(),
            config,
            actions: Vec::new(),
            classify: Arc::new(default_kind),
            clock: Arc::new(SystemClock),
            on_step: None,
        })
    }

    /// Kinds failures with `f` (e.g. `"training"`, `"memory_exhaustion"`).
    pub fn classify_with(
        mut self,
        f: impl Fn(&GuardrailError) -> String + Send + Sync + 'static,
    ) -> Self {
        self.classify = Arc::new(f);
        self
    }

    /// Adds `action` for failures of `kind`, after the ones added before.
    pub fn recover(mut self, kind: impl Into<String>, action: RecoveryAction) -> Self {
        self.actions.push((kind.into(), action));
        self
    }

    /// Calls `f` with every step.
    pub fn on_step(mut self, f: impl Fn(&SupervisorStep) + Send + Sync + 'static) -> Self {
        self.on_step = Some(Arc::new(f));
        self
    }

    /// Reads and waits time on `clock` (a [`ManualClock`](crate::ManualClock) waits by
    /// advancing).
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Runs `task(attempt)` on this thread until it succeeds or the supervisor gives up.
    ///
    /// # Errors
    /// A fatal [`GuardrailError::External`] holding [`SupervisorGaveUp`] (with the task's
    /// last error as its source) when the restart intensity is exceeded or, with
    /// `give_up_on_fatal`, the task failed fatally.
    pub fn run<T>(&self, mut task: impl FnMut(u32) -> Result<T>) -> Result<T> {
        let mut restarts = VecDeque::new();
        let mut attempt = 1;
        loop {
            let error = match task(attempt) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let (kind, error) = self.judge_failure(&mut restarts, attempt, error)?;
            recover(&self.recovery(&kind), &error);
            attempt += 1;
            let delay = self.restart(&mut restarts, attempt);
            self.clock.sleep(delay);
        }
    }

    /// Runs the program `command(attempt)` builds as a child process (in its own process
    /// group, under `limits`, output captured up to them) until it exits 0 or the
    /// supervisor gives up. A non-zero exit or a death by signal is a retryable
    /// [`ChildFailed`], kinded `"child_exit"` or `"child_signal"` by the default classifier.
    ///
    /// # Errors
    /// As [`Supervisor::run`]; a program that cannot start counts as a failed attempt
    /// ([`GuardrailError::Io`]).
    pub fn run_process(
        &self,
        mut command: impl FnMut(u32) -> std::process::Command,
        limits: &ProcessLimits,
    ) -> Result<CommandOutput> {
        self.run(|attempt| {
            let mut cmd = command(attempt);
            let out = crate::process::run(&mut cmd, limits)?;
            if out.status.success() {
                return Ok(out);
            }
            Err(ChildFailed::from_output(&cmd, &out).into_error())
        })
    }

    /// Runs the future `task(attempt)` makes until it succeeds or the supervisor gives up:
    /// restarts wait on the clock's async sleep (tokio's paused time works), recovery
    /// actions run on tokio's blocking pool.
    ///
    /// # Errors
    /// As [`Supervisor::run`].
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub async fn run_async<T, F, Fut>(&self, mut task: F) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut restarts = VecDeque::new();
        let mut attempt = 1;
        loop {
            let error = match task(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let (kind, error) = self.judge_failure(&mut restarts, attempt, error)?;
            let recovery = self.recovery(&kind);
            if !recovery.actions.is_empty() {
                // The actions block (each waits out its timeout at worst): not on a runtime
                // thread.
                let joined = tokio::task::spawn_blocking(move || recover(&recovery, &error)).await;
                if let Err(e) = joined {
                    return Err(GuardrailError::external_with_class(
                        std::io::Error::other(format!(
                            "supervisor {}: the recovery actions could not run: {e}",
                            self.name
                        )),
                        ErrorClass::Fatal,
                    ));
                }
            }
            attempt += 1;
            let delay = self.restart(&mut restarts, attempt);
            self.clock.sleep_async(delay).await;
        }
    }

    /// Records a failure and decides: the failure kind (and the error back) to recover
    /// and restart, or the give-up error.
    fn judge_failure(
        &self,
        restarts: &mut VecDeque<Instant>,
        attempt: u32,
        error: GuardrailError,
    ) -> Result<(String, GuardrailError)> {
        let kind = (self.classify)(&error);
        tracing::warn!(supervisor = %self.name, attempt, %kind, error = %error.report(), "task failed");
        self.step(SupervisorStep::Failed {
            attempt,
            kind: kind.clone(),
            error: error.report().to_string(),
        });
        if self.config.give_up_on_fatal && error.class() == ErrorClass::Fatal {
            return Err(self.give_up(format!("attempt {attempt} failed fatally"), error));
        }
        let now = self.clock.now();
        while restarts
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) > self.config.within)
        {
            restarts.pop_front();
        }
        if restarts.len() >= self.config.max_restarts as usize {
            let reason = format!(
                "restart intensity exceeded: {} restarts within {:?}",
                restarts.len(),
                self.config.within
            );
            return Err(self.give_up(reason, error));
        }
        Ok((kind, error))
    }

    /// Counts a restart and says how long to wait before it.
    fn restart(&self, restarts: &mut VecDeque<Instant>, attempt: u32) -> Duration {
        let delay = self.config.backoff.delay(restarts.len() as u32);
        restarts.push_back(self.clock.now());
        tracing::info!(supervisor = %self.name, attempt, ?delay, "restarting task");
        self.step(SupervisorStep::Restart { attempt, delay });
        delay
    }

    /// The actions for `kind`, in order, with what they report to.
    fn recovery(&self, kind: &str) -> Recovery {
        Recovery {
            name: self.name.clone(),
            actions: self
                .actions
                .iter()
                .filter(|(k, _)| k == kind)
                .map(|(_, a)| a.clone())
                .collect(),
            on_step: self.on_step.clone(),
        }
    }

    fn give_up(&self, reason: String, last: GuardrailError) -> GuardrailError {
        tracing::error!(supervisor = %self.name, %reason, "supervisor gave up");
        self.step(SupervisorStep::GaveUp {
            reason: reason.clone(),
        });
        GuardrailError::external_with_class(
            SupervisorGaveUp {
                name: self.name.clone(),
                reason,
                last,
            },
            ErrorClass::Fatal,
        )
    }

    fn step(&self, step: SupervisorStep) {
        report(&self.name, self.on_step.as_ref(), &step);
    }
}

/// What the recovery of one failure needs, owned (it may run on another thread).
struct Recovery {
    name: String,
    actions: Vec<RecoveryAction>,
    on_step: Option<StepSink>,
}

/// Runs the actions in order until one succeeds, each on the crate's deadline pool under
/// its own timeout.
fn recover(recovery: &Recovery, error: &GuardrailError) {
    if recovery.actions.is_empty() {
        return;
    }
    // The actions get the failure as text (the error itself cannot cross to the pool).
    let shared = Arc::new(GuardrailError::external_with_class(
        std::io::Error::other(error.report().to_string()),
        error.class(),
    ));
    for action in &recovery.actions {
        let run = Arc::clone(&action.run);
        let failure = Arc::clone(&shared);
        let result = crate::worker::start(
            &format!("recovery action {} of {}", action.name, recovery.name),
            None,
            action.timeout,
            move || run(&failure),
        )
        .and_then(|p| p.wait());
        let ok = result.is_ok();
        let err = result.err().map(|e| e.report().to_string());
        tracing::info!(supervisor = %recovery.name, action = %action.name, ok, error = ?err, "recovery action");
        report(
            &recovery.name,
            recovery.on_step.as_ref(),
            &SupervisorStep::Action {
                action: action.name.clone(),
                ok,
                error: err,
            },
        );
        if ok {
            return;
        }
    }
}

/// A step to the callback and as a guard event.
fn report(name: &str, on_step: Option<&StepSink>, step: &SupervisorStep) {
    crate::events::emit(|| GuardEvent {
        guard: GuardKind::Supervisor,
        name,
        decision: match step {
            SupervisorStep::Failed { attempt, kind, .. } => Decision::TaskFailed {
                attempt: *attempt,
                kind,
            },
            SupervisorStep::Action { action, ok, .. } => {
                Decision::RecoveryAction { action, ok: *ok }
            }
            SupervisorStep::Restart { attempt, delay } => Decision::Restart {
                attempt: *attempt,
                delay: *delay,
            },
            SupervisorStep::GaveUp { .. } => Decision::GaveUp,
        },
    });
    if let Some(f) = on_step {
        f(step);
    }
}

/// A supervised child process that exited non-zero or was killed by a signal; the source
/// of the retryable [`GuardrailError::External`] of a failed attempt of
/// [`Supervisor::run_process`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("{program} {}{}", exit_words(*.code, *.signal), stderr_words(.stderr_tail))]
pub struct ChildFailed {
    /// The program.
    pub program: String,
    /// Its exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that killed it (Unix), when one did (9 is also how the kernel's OOM
    /// killer ends a process).
    pub signal: Option<i32>,
    /// The end of its standard error (at most 2 KiB, cut at a character boundary).
    pub stderr_tail: String,
}

const STDERR_TAIL: usize = 2048;

fn exit_words(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (_, Some(sig)) => format!("was killed by signal {sig}"),
        (Some(code), None) => format!("exited with code {code}"),
        (None, None) => "ended without an exit code".to_string(),
    }
}

fn stderr_words(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", tail.trim())
    }
}

impl ChildFailed {
    fn from_output(cmd: &std::process::Command, out: &CommandOutput) -> Self {
        #[cfg(unix)]
        let signal = std::os::unix::process::ExitStatusExt::signal(&out.status);
        #[cfg(not(unix))]
        let signal = None;
        let text = String::from_utf8_lossy(&out.stderr);
        let mut start = text.len().saturating_sub(STDERR_TAIL);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        Self {
            program: cmd.get_program().to_string_lossy().into_owned(),
            code: out.status.code(),
            signal,
            stderr_tail: text[start..].to_string(),
        }
    }

    fn into_error(self) -> GuardrailError {
        GuardrailError::external_with_class(self, ErrorClass::Retryable)
    }

    /// The `ChildFailed` in `error` (under any context attached to it), for a classifier.
    pub fn of(error: &GuardrailError) -> Option<&ChildFailed> {
        match error {
            GuardrailError::External(e) => e.get_ref().downcast_ref::<ChildFailed>(),
            GuardrailError::Context(c) => Self::of(c.inner()),
            _ => None,
        }
    }
}
