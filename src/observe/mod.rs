//! Observability: guard decisions as metrics, the cardinality guard, and (to come) alert
//! hooks and the metrics history.
//!
//! This layer subscribes to the [guard events](crate::events); the primitives never call
//! it. The cardinality guard is always on (it has no dependencies); the `metrics` facade,
//! `metrics-util`'s layer and the Prometheus exporter need feature `metrics`.

pub mod alerts;
pub mod cardinality;
pub mod detect;
pub mod history;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
pub mod model_health;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod prometheus;
pub mod retry_analytics;
#[cfg(any(feature = "metrics", feature = "history"))]
pub(crate) mod series;
pub mod supervisor;
