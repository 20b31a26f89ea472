//! The one error type of the crate, its classification and the context helpers.
//!
//! Every fallible function in `guardrails` returns [`Result<T>`], whose error is
//! [`GuardrailError`]. Each variant carries structured fields (which path, which check, what
//! was expected, what was found) rather than a pre-formatted string, so that callers can act
//! on them and logs can index them.
//!
//! [`GuardrailError::class`] sorts every error into one of four [`ErrorClass`]es, which is
//! what retry loops and pipelines act on:
//!
//! | class | meaning | examples |
//! |---|---|---|
//! | [`Retryable`](ErrorClass::Retryable) | the same call may succeed if tried again | timeout, rate limited, bulkhead full, interrupted or reset I/O, a store locked past its busy timeout |
//! | [`Recoverable`](ErrorClass::Recoverable) | do not repeat it now, but the pipeline can go on with a fallback, a smaller batch or after freeing something | resource exhausted, circuit open, retries exhausted, disk full (a store's too) |
//! | [`Fatal`](ErrorClass::Fatal) | stop: a human must change something | configuration, file not found, permission denied, cancelled, a damaged or newer-schema store |
//! | [`Validation`](ErrorClass::Validation) | the input data is wrong; skip or quarantine it | data integrity, invalid or truncated file content, a metric label set the cardinality guard refuses |
//!
//! Context (stage, operation, correlation id, recovery hint) is attached with
//! [`ResultExt`] or [`GuardrailError::with_context`]. It never hides the variant:
//! [`GuardrailError::kind`], [`GuardrailError::class`] and [`GuardrailError::inner`] look
//! through it.
//!
//! ```
//! use guardrails::prelude::*;
//! use std::time::Duration;
//!
//! fn decode() -> guardrails::Result<()> {
//!     Err(GuardrailError::Timeout {
//!         operation: "decode".into(),
//!         elapsed: Duration::from_secs(31),
//!         limit: Duration::from_secs(30),
//!     })
//! }
//!
//! fn stage() -> guardrails::Result<()> {
//!     decode().stage("frames").hint("lower the batch size")?;
//!     Ok(())
//! }
//!
//! let err = stage().unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::Timeout);
//! assert_eq!(err.class(), ErrorClass::Retryable);
//! assert_eq!(err.context().and_then(|c| c.stage.as_deref()), Some("frames"));
//! assert_eq!(err.to_string(), "stage frames: timeout: decode ran 31s, limit 30s");
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// `Result` with [`GuardrailError`] as the error.
pub type Result<T, E = GuardrailError> = std::result::Result<T, E>;

/// How a caller should react to an error. See the [module docs](self) for the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Transient: the same call may succeed if tried again, possibly after a delay.
    Retryable,
    /// Not worth repeating now, but the pipeline can continue another way (fallback,
    /// downshift, smaller batch, after freeing resources).
    Recoverable,
    /// Stop: a person has to change the configuration, the environment or the code.
    Fatal,
    /// The data is wrong: skip, quarantine or report it; retrying gives the same answer.
    Validation,
}

impl ErrorClass {
    /// The lowercase name used in logs and JSON (`"retryable"`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Retryable => "retryable",
            Self::Recoverable => "recoverable",
            Self::Fatal => "fatal",
            Self::Validation => "validation",
        }
    }

    /// Whether a retry loop should try again by default.
    pub const fn is_retryable(self) -> bool {
        matches!(self, Self::Retryable)
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The variant of a [`GuardrailError`] without its fields, seen through any context.
///
/// Match on this when the fields do not matter; it stays the same after context is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// [`GuardrailError::ResourceExhausted`]
    ResourceExhausted,
    /// [`GuardrailError::Timeout`]
    Timeout,
    /// [`GuardrailError::DataIntegrity`]
    DataIntegrity,
    /// [`GuardrailError::CircuitOpen`]
    CircuitOpen,
    /// [`GuardrailError::RetriesExhausted`]
    RetriesExhausted,
    /// [`GuardrailError::RateLimited`]
    RateLimited,
    /// [`GuardrailError::BulkheadFull`]
    BulkheadFull,
    /// [`GuardrailError::Config`]
    Config,
    /// [`GuardrailError::Io`]
    Io,
    /// [`GuardrailError::Cancelled`]
    Cancelled,
    /// [`GuardrailError::External`]
    External,
    /// [`GuardrailError::JsonGuard`]
    JsonGuard,
    /// [`GuardrailError::Store`]
    Store,
    /// [`GuardrailError::Stage`]
    Stage,
    /// [`GuardrailError::Cardinality`]
    Cardinality,
}

impl ErrorKind {
    /// The snake_case name used as `"kind"` in JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ResourceExhausted => "resource_exhausted",
            Self::Timeout => "timeout",
            Self::DataIntegrity => "data_integrity",
            Self::CircuitOpen => "circuit_open",
            Self::RetriesExhausted => "retries_exhausted",
            Self::RateLimited => "rate_limited",
            Self::BulkheadFull => "bulkhead_full",
            Self::Config => "config",
            Self::Io => "io",
            Self::Cancelled => "cancelled",
            Self::External => "external",
            Self::JsonGuard => "json_guard",
            Self::Store => "store",
            Self::Stage => "stage",
            Self::Cardinality => "cardinality",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every failure a guard reports.
///
/// Messages are lowercase without trailing punctuation and do not repeat their cause: a
/// wrapped cause is returned by [`source()`](StdError::source). Use
/// [`GuardrailError::report`] to print the whole chain on one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuardrailError {
    /// A resource is over its limit (memory, disk, CPU, file descriptors, GPU memory).
    #[error("resource exhausted: {resource} at {used} {unit}, limit {limit} {unit}")]
    ResourceExhausted {
        /// Which resource, e.g. `"memory"` or `"disk /data"`.
        resource: String,
        /// How much is in use (for free-space minimums: how much is free).
        used: f64,
        /// The configured limit.
        limit: f64,
        /// Unit of `used` and `limit`, e.g. `"bytes"`, `"percent"`, `"fds"`.
        unit: String,
    },

    /// An operation ran past its time limit.
    #[error("timeout: {operation} ran {}, limit {}", fmt_duration(*.elapsed), fmt_duration(*.limit))]
    Timeout {
        /// What was being done.
        operation: String,
        /// How long it ran before it was given up.
        elapsed: Duration,
        /// The limit it had.
        limit: Duration,
    },

    /// A file or table failed an integrity check.
    #[error("data integrity: {} failed check {check}: expected {expected}, found {found}", .path.display())]
    DataIntegrity {
        /// The file that failed.
        path: PathBuf,
        /// The check that failed, e.g. `"required_columns"`.
        check: String,
        /// What the check expected.
        expected: String,
        /// What it found.
        found: String,
    },

    /// A circuit breaker refused the call.
    #[error("circuit open: {name}{}", fmt_retry_after(*.retry_after))]
    CircuitOpen {
        /// The breaker's name.
        name: String,
        /// When it will let a trial call through; `None` when unknown (forced open).
        retry_after: Option<Duration>,
    },

    /// A retry loop gave up; the last attempt's error is the source.
    #[error("retries exhausted after {attempts} attempts")]
    RetriesExhausted {
        /// Attempts made, the first one included.
        attempts: u32,
        /// The error of the last attempt.
        #[source]
        last: Box<GuardrailError>,
    },

    /// A rate limiter refused the call.
    #[error("rate limited: {name}, retry after {}", fmt_duration(*.retry_after))]
    RateLimited {
        /// The limiter's name.
        name: String,
        /// The earliest time a call would be allowed.
        retry_after: Duration,
    },

    /// A bulkhead had no free slot.
    #[error("bulkhead full: {name} allows {max_concurrent} concurrent calls")]
    BulkheadFull {
        /// The bulkhead's name.
        name: String,
        /// Its concurrency limit.
        max_concurrent: usize,
    },

    /// A configuration value is missing, unknown or out of range.
    #[error("invalid config: {field}: {reason}")]
    Config {
        /// Dotted path of the key, e.g. `"retry.base"`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An I/O operation failed.
    #[error("i/o error{}", .path.as_ref().map(|p| format!(" on {}", p.display())).unwrap_or_default())]
    Io {
        /// The file involved, when there is one.
        path: Option<PathBuf>,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The operation was cancelled before it finished.
    #[error("cancelled: {operation}")]
    Cancelled {
        /// What was cancelled.
        operation: String,
    },

    /// The JSON guard found no valid output in any attempt.
    #[error("json guard: no valid output after {attempts} attempt(s){}", .problems.first().map(|p| format!(": {p}")).unwrap_or_default())]
    JsonGuard {
        /// Attempts made.
        attempts: u32,
        /// Every attempt's problems, as `attempt N: <path>: <message>`.
        problems: Vec<String>,
    },

    /// A durable store (the run registry's SQLite file, a state store) failed or refused an
    /// operation. The class depends on why: a database another process holds past the busy
    /// timeout is retryable, a full disk recoverable, a damaged or newer-schema file fatal.
    #[error("store {store}: {operation}: {reason}")]
    Store {
        /// Which store: a database path, or a server address without its credentials.
        store: String,
        /// What was being done, e.g. `"open"` or `"commit stage train"`.
        operation: String,
        /// What went wrong, in words.
        reason: String,
        /// How a caller should react.
        class: ErrorClass,
        /// The driver's error, when there is one.
        #[source]
        source: Option<Box<dyn StdError + Send + Sync>>,
    },

    /// A pipeline stage was refused or stopped by one of its own checks: its preflight
    /// (machine, prerequisites, inputs), an output it did not write, or a mandatory gate.
    /// The class is the class of what failed (a full disk is recoverable, a gate on too
    /// few rows is validation).
    #[error("stage {stage}: {check}: {reason}")]
    Stage {
        /// The stage.
        stage: String,
        /// Which check, e.g. `"preflight"` or `"gate enough_rows"`.
        check: String,
        /// What it found, with the figures.
        reason: String,
        /// How a caller should react.
        class: ErrorClass,
    },

    /// A metric's labels were refused by the cardinality guard: a forbidden label name
    /// (an id, a timestamp) or one label set too many for the metric.
    #[error("cardinality: metric {metric}: {reason}")]
    Cardinality {
        /// The metric.
        metric: String,
        /// What is wrong, naming the label or the cap.
        reason: String,
    },

    /// The caller's own error, carried through guards with a class the caller chose.
    #[error(transparent)]
    External(ExternalError),

    /// Another error with context attached; transparent for display, source and class.
    #[error(transparent)]
    Context(ContextError),

    /// One error delivered to several callers (the waiters of a coalesced cache load);
    /// transparent for display, source, kind and class.
    #[error(transparent)]
    Shared(Arc<GuardrailError>),
}

impl GuardrailError {
    /// Wraps the caller's own error; it is classified [`ErrorClass::Fatal`] (never retried
    /// by default). Use [`GuardrailError::external_with_class`] to say otherwise.
    pub fn external<E>(error: E) -> Self
    where
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        Self::external_with_class(error, ErrorClass::Fatal)
    }

    /// Wraps the caller's own error with the class retry loops and pipelines should see.
    pub fn external_with_class<E>(error: E, class: ErrorClass) -> Self
    where
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        Self::External(ExternalError {
            source: error.into(),
            class,
        })
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: Some(path.into()),
            source,
        }
    }

    /// A [`Timeout`](Self::Timeout) of `operation`, logged at ERROR with the elapsed time and
    /// the limit (every deadline in the crate reports through here).
    pub(crate) fn timeout(
        operation: &str,
        elapsed: std::time::Duration,
        limit: std::time::Duration,
    ) -> Self {
        tracing::error!(
            operation,
            elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            "timeout"
        );
        crate::events::emit(|| crate::events::GuardEvent {
            guard: crate::events::GuardKind::Timeout,
            name: operation,
            decision: crate::events::Decision::TimedOut { after: limit },
        });
        Self::Timeout {
            operation: operation.to_string(),
            elapsed,
            limit,
        }
    }

    /// A configuration error on the key `field`.
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The error without its context and sharing layers.
    pub fn inner(&self) -> &GuardrailError {
        match self {
            Self::Context(c) => c.inner.inner(),
            Self::Shared(e) => e.inner(),
            other => other,
        }
    }

    /// The attached context, if any.
    pub fn context(&self) -> Option<&ErrorContext> {
        match self {
            Self::Context(c) => Some(&c.context),
            Self::Shared(e) => e.context(),
            _ => None,
        }
    }

    /// The variant, seen through context.
    pub fn kind(&self) -> ErrorKind {
        match self.inner() {
            Self::ResourceExhausted { .. } => ErrorKind::ResourceExhausted,
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::DataIntegrity { .. } => ErrorKind::DataIntegrity,
            Self::CircuitOpen { .. } => ErrorKind::CircuitOpen,
            Self::RetriesExhausted { .. } => ErrorKind::RetriesExhausted,
            Self::RateLimited { .. } => ErrorKind::RateLimited,
            Self::BulkheadFull { .. } => ErrorKind::BulkheadFull,
            Self::Config { .. } => ErrorKind::Config,
            Self::Io { .. } => ErrorKind::Io,
            Self::Cancelled { .. } => ErrorKind::Cancelled,
            Self::External(_) => ErrorKind::External,
            Self::JsonGuard { .. } => ErrorKind::JsonGuard,
            Self::Store { .. } => ErrorKind::Store,
            Self::Stage { .. } => ErrorKind::Stage,
            Self::Cardinality { .. } => ErrorKind::Cardinality,
            // `inner()` never returns these layers.
            Self::Context(_) | Self::Shared(_) => ErrorKind::External,
        }
    }

    /// How a caller should react; see the table in the [module docs](self).
    pub fn class(&self) -> ErrorClass {
        match self.inner() {
            Self::Timeout { .. } | Self::RateLimited { .. } | Self::BulkheadFull { .. } => {
                ErrorClass::Retryable
            }
            // A retry inside the open window or after the retries ran out only adds load:
            // the caller should take its fallback instead.
            Self::ResourceExhausted { .. }
            | Self::CircuitOpen { .. }
            | Self::RetriesExhausted { .. } => ErrorClass::Recoverable,
            Self::DataIntegrity { .. } | Self::JsonGuard { .. } | Self::Cardinality { .. } => {
                ErrorClass::Validation
            }
            Self::Config { .. } | Self::Cancelled { .. } => ErrorClass::Fatal,
            Self::Io { source, .. } => io_class(source.kind()),
            Self::Store { class, .. } | Self::Stage { class, .. } => *class,
            Self::External(e) => e.class,
            Self::Context(_) | Self::Shared(_) => ErrorClass::Fatal,
        }
    }

    /// The caller's own error (an [`External`](Self::External), under any context) given
    /// the class `classify` says, where it says one: a user classifier that knows the
    /// caller's error types better than the class chosen when it was wrapped.
    #[cfg_attr(not(all(feature = "pipeline", unix)), allow(dead_code))]
    pub(crate) fn reclassify_external(self, classify: &UserClassifier) -> Self {
        match self {
            Self::External(mut e) => {
                if let Some(class) = classify(&*e.source) {
                    e.class = class;
                }
                Self::External(e)
            }
            Self::Context(ContextError { context, inner }) => Self::Context(ContextError {
                context,
                inner: Box::new(inner.reclassify_external(classify)),
            }),
            other => other,
        }
    }

    /// Attaches context, merging with context already there: values set closer to the
    /// failure are kept, empty ones are filled in.
    #[must_use]
    pub fn with_context(self, context: ErrorContext) -> Self {
        match self {
            Self::Context(mut c) => {
                c.context.fill_from(context);
                Self::Context(c)
            }
            inner => Self::Context(ContextError {
                context: Box::new(context),
                inner: Box::new(inner),
            }),
        }
    }

    /// Displays the error and every cause on one line, separated by `": "`.
    ///
    /// ```
    /// use guardrails::GuardrailError;
    /// let err = GuardrailError::io(
    ///     "/data/a.parquet",
    ///     std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
    /// );
    /// assert_eq!(err.report().to_string(), "i/o error on /data/a.parquet: no such file");
    /// ```
    pub fn report(&self) -> ErrorReport<'_> {
        ErrorReport(self)
    }

    /// The error as JSON for logs and reports: `kind`, `class`, `message`, `fields`,
    /// `context` (when attached), `source` (a nested guard error, in the same shape) and
    /// `chain` (the message of every cause, outermost first).
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("kind".into(), json!(self.kind().as_str()));
        obj.insert("class".into(), json!(self.class().as_str()));
        obj.insert("message".into(), json!(self.inner().to_string()));
        obj.insert("fields".into(), Value::Object(self.inner().fields()));
        if let Some(ctx) = self.context() {
            obj.insert(
                "context".into(),
                serde_json::to_value(ctx).unwrap_or(Value::Null),
            );
        }
        if let Self::RetriesExhausted { last, .. } = self.inner() {
            obj.insert("source".into(), last.to_json());
        }
        let chain: Vec<Value> = Chain(StdError::source(self))
            .map(|e| json!(e.to_string()))
            .collect();
        obj.insert("chain".into(), Value::Array(chain));
        Value::Object(obj)
    }

    fn fields(&self) -> Map<String, Value> {
        let value = match self {
            Self::ResourceExhausted {
                resource,
                used,
                limit,
                unit,
            } => json!({ "resource": resource, "used": used, "limit": limit, "unit": unit }),
            Self::Timeout {
                operation,
                elapsed,
                limit,
            } => json!({
                "operation": operation,
                "elapsed_secs": elapsed.as_secs_f64(),
                "limit_secs": limit.as_secs_f64(),
            }),
            Self::DataIntegrity {
                path,
                check,
                expected,
                found,
            } => json!({
                "path": path.display().to_string(),
                "check": check,
                "expected": expected,
                "found": found,
            }),
            Self::CircuitOpen { name, retry_after } => json!({
                "name": name,
                "retry_after_secs": retry_after.map(|d| d.as_secs_f64()),
            }),
            Self::RetriesExhausted { attempts, .. } => json!({ "attempts": attempts }),
            Self::RateLimited { name, retry_after } => json!({
                "name": name,
                "retry_after_secs": retry_after.as_secs_f64(),
            }),
            Self::BulkheadFull {
                name,
                max_concurrent,
            } => json!({ "name": name, "max_concurrent": max_concurrent }),
            Self::Config { field, reason } => json!({ "field": field, "reason": reason }),
            Self::Io { path, source } => json!({
                "path": path.as_ref().map(|p| p.display().to_string()),
                "io_kind": format!("{:?}", source.kind()),
            }),
            Self::Cancelled { operation } => json!({ "operation": operation }),
            Self::JsonGuard { attempts, problems } => {
                json!({ "attempts": attempts, "problems": problems })
            }
            Self::Store {
                store,
                operation,
                reason,
                ..
            } => json!({ "store": store, "operation": operation, "reason": reason }),
            Self::Stage {
                stage,
                check,
                reason,
                ..
            } => json!({ "stage": stage, "check": check, "reason": reason }),
            Self::Cardinality { metric, reason } => json!({ "metric": metric, "reason": reason }),
            Self::External(_) => json!({}),
            Self::Context(_) | Self::Shared(_) => return self.inner().fields(),
        };
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }
}

/// A boxed error (tower's `BoxError`) becomes the guard error it carries, if it is one, and
/// [`GuardrailError::External`] otherwise; so guard errors cross tower stacks unchanged.
impl From<Box<dyn StdError + Send + Sync>> for GuardrailError {
    fn from(boxed: Box<dyn StdError + Send + Sync>) -> Self {
        match boxed.downcast::<GuardrailError>() {
            Ok(guard) => *guard,
            Err(other) => Self::External(ExternalError {
                source: other,
                class: ErrorClass::Fatal,
            }),
        }
    }
}

impl From<io::Error> for GuardrailError {
    fn from(source: io::Error) -> Self {
        Self::Io { path: None, source }
    }
}

impl Serialize for GuardrailError {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

/// I/O errors are classified by kind: transient network and signal conditions are
/// retryable, a full disk is recoverable, bad content is a validation failure, and
/// everything else (not found, permission denied, …) is fatal.
fn io_class(kind: io::ErrorKind) -> ErrorClass {
    use io::ErrorKind as K;
    match kind {
        K::Interrupted
        | K::TimedOut
        | K::ConnectionReset
        | K::ConnectionRefused
        | K::ConnectionAborted
        | K::WouldBlock
        | K::ResourceBusy => ErrorClass::Retryable,
        // EFBIG: the file-size limit (`RLIMIT_FSIZE`) or the filesystem's largest file, a
        // full disk by another name for the writer.
        K::StorageFull | K::OutOfMemory | K::QuotaExceeded | K::FileTooLarge => {
            ErrorClass::Recoverable
        }
        K::InvalidData | K::UnexpectedEof => ErrorClass::Validation,
        _ => ErrorClass::Fatal,
    }
}

fn fmt_duration(d: Duration) -> String {
    // Whole seconds read best in messages; sub-second limits keep milliseconds.
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.3}s", d.as_secs_f64())
    }
}

fn fmt_retry_after(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!(", retry after {}", fmt_duration(d)),
        None => String::new(),
    }
}

/// Classifies the caller's own error (the one inside [`GuardrailError::External`]): the
/// class to give it, or `None` to keep the one it was wrapped with.
pub type UserClassifier =
    dyn Fn(&(dyn StdError + Send + Sync + 'static)) -> Option<ErrorClass> + Send + Sync;

/// The caller's own error inside [`GuardrailError::External`].
#[derive(Debug)]
pub struct ExternalError {
    source: Box<dyn StdError + Send + Sync>,
    class: ErrorClass,
}

impl ExternalError {
    /// The class the caller gave it.
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// The wrapped error.
    pub fn get_ref(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.source
    }

    /// Tries to take the wrapped error back as its concrete type.
    pub fn downcast<E: StdError + 'static>(self) -> std::result::Result<E, Self> {
        match self.source.downcast::<E>() {
            Ok(e) => Ok(*e),
            Err(source) => Err(Self {
                source,
                class: self.class,
            }),
        }
    }
}

impl fmt::Display for ExternalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl StdError for ExternalError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.source()
    }
}

/// Where and why an error happened, beyond what its variant says.
///
/// ```
/// use guardrails::ErrorContext;
/// let ctx = ErrorContext::new().stage("ingest").correlation_id("run-42");
/// assert_eq!(ctx.to_string(), "stage ingest, correlation id run-42");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorContext {
    /// The pipeline stage, e.g. `"decode"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The operation within the stage, e.g. `"load_metadata"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// An id that ties log lines of one run or request together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// What a person or the pipeline can do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl ErrorContext {
    /// Empty context.
    pub const fn new() -> Self {
        Self {
            stage: None,
            operation: None,
            correlation_id: None,
            hint: None,
        }
    }

    /// Sets the stage.
    pub fn stage(mut self, stage: impl Into<String>) -> Self {
        self.stage = Some(stage.into());
        self
    }

    /// Sets the operation.
    pub fn operation(mut self, operation: impl Into<String>) -> Self {
        self.operation = Some(operation.into());
        self
    }

    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the recovery hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    fn fill_from(&mut self, outer: ErrorContext) {
        self.stage = self.stage.take().or(outer.stage);
        self.operation = self.operation.take().or(outer.operation);
        self.correlation_id = self.correlation_id.take().or(outer.correlation_id);
        self.hint = self.hint.take().or(outer.hint);
    }
}

impl fmt::Display for ErrorContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            ("stage", &self.stage),
            ("operation", &self.operation),
            ("correlation id", &self.correlation_id),
        ];
        let mut first = true;
        for (label, value) in parts {
            if let Some(v) = value {
                if !first {
                    f.write_str(", ")?;
                }
                write!(f, "{label} {v}")?;
                first = false;
            }
        }
        Ok(())
    }
}

/// An error with [`ErrorContext`] attached; see [`GuardrailError::with_context`].
///
/// It displays as `"<context>: <error>"` (the hint is left to [`ErrorContext::hint`] and
/// JSON, since it is advice rather than a description) and has the inner error's source.
#[derive(Debug)]
pub struct ContextError {
    context: Box<ErrorContext>,
    inner: Box<GuardrailError>,
}

impl ContextError {
    /// The context.
    pub fn context(&self) -> &ErrorContext {
        &self.context
    }

    /// The error the context is attached to.
    pub fn inner(&self) -> &GuardrailError {
        &self.inner
    }

    /// Splits into the context and the error.
    pub fn into_parts(self) -> (ErrorContext, GuardrailError) {
        (*self.context, *self.inner)
    }
}

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ctx = self.context.to_string();
        if ctx.is_empty() {
            write!(f, "{}", self.inner)
        } else {
            write!(f, "{ctx}: {}", self.inner)
        }
    }
}

impl StdError for ContextError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner.source()
    }
}

/// An error with its whole chain of causes on one line; see [`GuardrailError::report`].
/// (Named apart from [`integrity::Report`](crate::integrity), the report of a file check.)
#[derive(Debug, Clone, Copy)]
pub struct ErrorReport<'a>(&'a GuardrailError);

/// The old name of [`ErrorReport`].
#[deprecated(
    since = "0.1.0",
    note = "use `ErrorReport`; `integrity::Report` is the file report"
)]
pub type Report<'a> = ErrorReport<'a>;

impl fmt::Display for ErrorReport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        for cause in Chain(StdError::source(self.0)) {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

struct Chain<'a>(Option<&'a (dyn StdError + 'static)>);

impl<'a> Iterator for Chain<'a> {
    type Item = &'a (dyn StdError + 'static);

    fn next(&mut self) -> Option<Self::Item> {
        let current = self.0?;
        self.0 = current.source();
        Some(current)
    }
}

/// Adds context to any `Result` whose error converts into [`GuardrailError`].
///
/// ```
/// use guardrails::prelude::*;
///
/// fn read(path: &str) -> guardrails::Result<String> {
///     std::fs::read_to_string(path).path(path).operation("read manifest")
/// }
/// let err = read("/no/such/file").unwrap_err();
/// assert_eq!(err.class(), ErrorClass::Fatal);
/// assert!(err.to_string().contains("/no/such/file"));
/// ```
pub trait ResultExt<T> {
    /// Attaches `context`.
    fn context(self, context: ErrorContext) -> Result<T>;
    /// Attaches the context `f` builds, only on error.
    fn with_context<F: FnOnce() -> ErrorContext>(self, f: F) -> Result<T>;
    /// Attaches a stage name.
    fn stage(self, stage: impl Into<String>) -> Result<T>;
    /// Attaches an operation name.
    fn operation(self, operation: impl Into<String>) -> Result<T>;
    /// Attaches a recovery hint.
    fn hint(self, hint: impl Into<String>) -> Result<T>;
    /// Names the file of an I/O error that has none yet (other errors are unchanged).
    fn path(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T, E: Into<GuardrailError>> ResultExt<T> for std::result::Result<T, E> {
    fn context(self, context: ErrorContext) -> Result<T> {
        self.map_err(|e| e.into().with_context(context))
    }

    fn with_context<F: FnOnce() -> ErrorContext>(self, f: F) -> Result<T> {
        self.map_err(|e| e.into().with_context(f()))
    }

    fn stage(self, stage: impl Into<String>) -> Result<T> {
        self.map_err(|e| e.into().with_context(ErrorContext::new().stage(stage)))
    }

    fn operation(self, operation: impl Into<String>) -> Result<T> {
        self.map_err(|e| {
            e.into()
                .with_context(ErrorContext::new().operation(operation))
        })
    }

    fn hint(self, hint: impl Into<String>) -> Result<T> {
        self.map_err(|e| e.into().with_context(ErrorContext::new().hint(hint)))
    }

    fn path(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| match e.into() {
            GuardrailError::Io { path: None, source } => GuardrailError::io(path.as_ref(), source),
            other => other,
        })
    }
}

/// The text of a caught panic's payload (`panic!("…")` gives a `&str` or a `String`), for
/// the error that reports it.
#[cfg_attr(not(all(feature = "pipeline", unix)), allow(dead_code))]
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown cause".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_formatting_keeps_precision_where_it_matters() {
        assert_eq!(fmt_duration(Duration::from_secs(30)), "30s");
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.500s");
    }
}
