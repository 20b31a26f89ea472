//! Timeouts, retries and the other guards that keep a call from taking a pipeline down.
//!
//! | component | what it guards against |
//! |---|---|
//! | [`retry`] | transient failures: [`RetryConfig`] and its backoff schedule |

pub mod retry;

pub use retry::{Jitter, RetryConfig};
