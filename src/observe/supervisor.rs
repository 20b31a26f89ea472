//! A supervisor: runs a task, and when it fails runs the recovery actions registered for
//! that kind of failure, in order until one succeeds, then restarts the task with backoff —
//! at most `max_restarts` times within `within` (Erlang/OTP's restart intensity), after
//! which it gives up with a fatal error.
//!
//! A task is a closure (it may run a thread's work, or start and wait for a child process;
//! see `tests/self_healing.rs`). Each recovery action has its own timeout and runs on the
//! crate's deadline pool, so a hung action costs its timeout, not the supervisor. Every
//! step — failure, action tried, restart, give-up — goes to `tracing` and to the
//! [`Supervisor::on_step`] callback.
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
    /// A supervisor named `name`. Failures are kinded by [`ErrorKind`](crate::ErrorKind)
    /// (`"resource_exhausted"`, `"timeout"`, `"external"`, …) unless
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
            classify: Arc::new(|e| e.kind().as_str().to_string()),
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

    /// Runs `task(attempt)` until it succeeds or the supervisor gives up.
    ///
    /// # Errors
    /// A fatal [`GuardrailError::External`] holding [`SupervisorGaveUp`] (with the task's
    /// last error as its source) when the restart intensity is exceeded or, with
    /// `give_up_on_fatal`, the task failed fatally.
    pub fn run<T>(&self, mut task: impl FnMut(u32) -> Result<T>) -> Result<T> {
        let mut restarts: VecDeque<Instant> = VecDeque::new();
        let mut attempt = 1;
        loop {
            let error = match task(attempt) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
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
            self.recover_from(&kind, &error);
            let delay = self.config.backoff.delay(restarts.len() as u32);
            restarts.push_back(now);
            attempt += 1;
            tracing::info!(supervisor = %self.name, attempt, ?delay, "restarting task");
            self.step(SupervisorStep::Restart { attempt, delay });
            self.clock.sleep(delay);
        }
    }

    /// Runs the actions for `kind` in order until one succeeds.
    fn recover_from(&self, kind: &str, error: &GuardrailError) {
        // The actions get the failure as text (the error itself cannot cross to the pool).
        let shared = Arc::new(GuardrailError::external_with_class(
            std::io::Error::other(error.report().to_string()),
            error.class(),
        ));
        for (_, action) in self.actions.iter().filter(|(k, _)| k == kind) {
            let run = Arc::clone(&action.run);
            let failure = Arc::clone(&shared);
            let result = crate::worker::start(
                &format!("recovery action {} of {}", action.name, self.name),
                None,
                action.timeout,
                move || run(&failure),
            )
            .and_then(|p| p.wait());
            let ok = result.is_ok();
            let err = result.err().map(|e| e.report().to_string());
            tracing::info!(supervisor = %self.name, action = %action.name, ok, error = ?err, "recovery action");
            self.step(SupervisorStep::Action {
                action: action.name.clone(),
                ok,
                error: err,
            });
            if ok {
                return;
            }
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
        if let Some(f) = &self.on_step {
            f(&step);
        }
    }
}
