//! Guards that keep data and ML pipelines from failing in production.
//!
//! `guardrails` is one embeddable library: a pipeline asks it whether the machine will hold
//! (resources), whether its inputs are whole (data integrity), and wraps its calls so that a
//! slow or failing dependency costs a retry, a fallback or a clear error instead of the run.
//! Every part returns the same error type, [`GuardrailError`], and every error says how to
//! react to it through [`ErrorClass`]: retry it, recover from it, stop, or reject the data.
//!
//! # Quick start
//!
//! ```
//! use guardrails::prelude::*;
//! use std::time::Duration;
//!
//! // One TOML document configures every component; unknown keys and bad values are refused.
//! let config: GuardrailsConfig = r#"
//!     [retry]
//!     max_retries = 2
//!     initial_delay = "200ms"
//! "#.parse()?;
//! assert_eq!(
//!     config.retry.delays().collect::<Vec<_>>(),
//!     [Duration::from_millis(200), Duration::from_millis(400)],
//! );
//!
//! // Errors carry structured fields, a class, and context that survives `?`.
//! fn load_manifest(path: &str) -> guardrails::Result<String> {
//!     std::fs::read_to_string(path).path(path).stage("ingest")
//! }
//! let err = load_manifest("/does/not/exist.toml").unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::Io);
//! assert_eq!(err.class(), ErrorClass::Fatal); // not found: retrying will not help
//! assert_eq!(err.to_json()["context"]["stage"], "ingest");
//! # Ok::<(), GuardrailError>(())
//! ```
//!
//! # Features
//!
//! Heavy parts are optional, so a user who wants only the retry loop does not compile Arrow.
//!
//! | feature | turns on |
//! |---|---|
//! | *(none)* | errors, clock, config, resources and health, timeouts, retry, circuit breaker, bulkhead, rate limiter, cache, JSON guard (without schemas) |
//! | `data` | data integrity checks: Parquet, Arrow IPC and CSV tables, NPY and Parquet features, MP4/MKV/AVI videos |
//! | `gpu` | NVIDIA GPU memory through NVML |
//! | `json` | JSON Schema validation in the LLM JSON guard |
//! | `async` | tokio variants of the blocking APIs |
//! | `redis` | shared guard state in Redis |
//! | `cli` | the `guardrails` command-line tool |
//! | `tower` | [`tower`] layers for the breaker, bulkhead and rate limiter |
//! | `metrics` | every guard decision as a metric through the `metrics` facade, the cardinality guard as a `metrics-util` layer, the Prometheus exporter (without TLS) |
//! | `http` | the HTTP health server (axum): `/health`, live/ready, `/health/llm`, `/metrics`; HTTP model probes (ureq; turns on `async` and `metrics`) |
//! | `durable` | durable stage outputs (Unix): atomic file and directory writes, atomic stages, the run registry on SQLite (rusqlite, bundled), checkpoints, resume, verify/repair |
//! | `pipeline` | `PipelineGuardrails`: declared stages with preflight, quality gates, quarantine and a guarded runner (turns on `data` and `durable`) |
//! | `full` | all of the above |
//!
//! # Layers
//!
//! [`error`], [`clock`], [`config`], [`backoff`] (the one delay schedule), [`process`] (child
//! processes under a deadline) and a bounded pool for closures under a deadline are the
//! foundation, with one listener registry; the primitives ([`resource`], [`resilience`]'s
//! guards, [`cache`], [`json_guard`], `integrity`) build on them and never on each other;
//! [`resilience::policy`], [`health`] and [`observe`] compose them; the CLI and the `tower` layers are
//! surfaces over them. See `DESIGN.md` in the repository for the map.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backoff;
pub mod cache;
pub mod clock;
pub mod config;
#[cfg(all(feature = "durable", unix))]
#[cfg_attr(docsrs, doc(cfg(feature = "durable")))]
pub mod durable;
pub mod error;
pub mod events;
pub mod health;
#[cfg(feature = "data")]
#[cfg_attr(docsrs, doc(cfg(feature = "data")))]
pub mod integrity;
pub mod json_guard;
mod listeners;
pub mod observe;
#[cfg(all(feature = "pipeline", unix))]
#[cfg_attr(docsrs, doc(cfg(feature = "pipeline")))]
pub mod pipeline;
pub mod process;
pub mod resilience;
pub mod resource;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod server;
#[cfg(any(feature = "durable", feature = "history"))]
mod sqlite;
pub mod state;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;
mod worker;

#[cfg(feature = "async")]
pub use clock::{AsyncSleep, TokioClock};
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use config::GuardrailsConfig;
pub use error::{
    ContextError, ErrorClass, ErrorContext, ErrorKind, ErrorReport, ExternalError, GuardrailError,
    Result, ResultExt, UserClassifier,
};

/// The everyday types: `use guardrails::prelude::*;`.
pub mod prelude {
    pub use crate::cache::{CacheStats, EvictionCause, LruTtlCache};
    pub use crate::clock::{Clock, ManualClock, SharedClock, SystemClock};
    pub use crate::config::GuardrailsConfig;
    pub use crate::error::{ErrorClass, ErrorContext, ErrorKind, GuardrailError, ResultExt};
    pub use crate::resilience::{Jitter, RetryConfig};
    pub use crate::resource::{
        HealthReport, HealthStatus, ResourceLimits, ResourceMonitor, ResourceSnapshot,
        resource_guard,
    };
}

// The README's examples are compiled and run as doc-tests so they cannot drift. Its data
// integrity example needs the `data` feature; the README's test command turns it on.
#[cfg(all(doctest, feature = "data"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
