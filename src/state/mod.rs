//! Guard state shared between workers: exactly-once side effects ([`Idempotency`]) over a
//! [`StateStore`], and on Redis the shared state of fleet-wide rate limiters and breakers
//! and a check that the server is safe for it.
//!
//! Backends: [`MemoryStore`] (one process, tests), [`SqliteStore`] (feature `durable`:
//! one machine, several processes, survives restarts; the embedded default) and
//! `RedisStore` (feature `redis`: a fleet of machines; Lua scripts on server time, Redis
//! Cluster too). Every backend keeps the same record per key and decides a claim with the
//! same rules (the Redis backend runs them as a Lua script), so they differ only in where
//! the record lives and how the read-decide-write is made atomic.
//!
//! With feature `redis`: `RedisConnection` (one connection shared by every Redis-backed
//! guard), `RedisRateLimit` (the fleet-wide allowance of
//! [`RateLimiter::shared`](crate::resilience::RateLimiter::shared)), `RedisBreakerState`
//! (the shared window of a [`FleetBreaker`](crate::resilience::FleetBreaker)) and
//! `RedisSafety` (persistence, eviction, memory, role).
//!
//! # What exactly-once means here
//!
//! A claim is a lease with an expiry, and each claim or takeover gets a **fence**: a number
//! that only grows for its key (the memory and SQLite stores draw it from one counter for
//! all keys; Redis from the server's clock in ms and the key's last fence, so it stays
//! above the old one even after the key expired). Completing a claim is a compare-and-set on
//! its fence, so a worker that stalled past its lease while another took the key over cannot
//! record its result. The effect itself runs at least once per key and at most once per
//! live lease; a sink that refuses writes carrying a fence lower than the last it accepted
//! (the fence is handed to the effect) makes the effect's *result* exactly-once too.

mod idempotency;
mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(all(feature = "durable", unix))]
mod sqlite;
mod window;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorClass, GuardrailError, Result};

pub use idempotency::{Idempotency, IdempotencyConfig, Outcome, fingerprint, key_from_json};
pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis::{
    RedisBreakerState, RedisConfig, RedisConnection, RedisRateLimit, RedisSafety, RedisStore,
    RedisWindowCounts, SAFETY_CHECKS, SafetyFinding, SafetyLevel, SafetyReport,
};
#[cfg(all(feature = "durable", unix))]
pub use sqlite::SqliteStore;
pub use window::{MAX_WINDOW_BUCKETS, MemoryWindowCounts, SharedWindowCounts};

/// The most bytes of a key; longer keys are refused (every size from outside is bounded).
pub const MAX_KEY_BYTES: usize = 512;

/// A claim's fencing token: it increases on every claim and takeover of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fence(pub u64);

impl std::fmt::Display for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a worker asks of [`StateStore::claim`].
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    /// The key (`effect:TYPE:ENTITY` by [`Idempotency::key`]).
    pub key: &'a str,
    /// The payload's fingerprint: the same key with another payload is a mismatch.
    pub fingerprint: &'a str,
    /// Who claims: the same owner claiming again gets its own live claim back.
    pub owner: &'a str,
    /// How long the claim holds without renewal.
    pub lease: Duration,
    /// How long the key's record lives (completed results are served until then).
    pub ttl: Duration,
}

/// A store's answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Claim {
    /// The key is this worker's until the lease ends: run the effect with this fence.
    Acquired {
        /// The claim's fence.
        fence: Fence,
        /// Whether it took over an expired claim of another worker.
        takeover: bool,
    },
    /// The key completed before with the same payload: its stored result.
    Completed {
        /// The serialized result.
        result: Vec<u8>,
    },
    /// The effect failed before with an error that retrying does not fix.
    Failed {
        /// The recorded error.
        message: String,
    },
    /// Another worker holds a live claim.
    InProgress {
        /// When its lease ends.
        retry_after: Duration,
    },
    /// The key was used with another payload.
    Mismatch {
        /// The fingerprint stored with the key.
        stored: String,
    },
}

/// Where shared guard state lives. Each operation is atomic in the store; time comes from
/// the store's clock, not from the worker calling it.
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// Claims `request.key`, or says why not.
    fn claim(&self, request: &ClaimRequest<'_>) -> Result<Claim>;

    /// Extends a live claim's lease; `false` when `fence` no longer holds the key.
    fn renew(&self, key: &str, fence: Fence, lease: Duration) -> Result<bool>;

    /// Records the result of the claim `fence`, kept for `ttl`. A fence that no longer holds
    /// the key is refused with an error naming both fences: its result is not recorded.
    fn complete(&self, key: &str, fence: Fence, result: &[u8], ttl: Duration) -> Result<()>;

    /// Records that the claim `fence` failed for good (`message`), kept for `ttl`.
    fn fail(&self, key: &str, fence: Fence, message: &str, ttl: Duration) -> Result<()>;

    /// Gives the claim `fence` up so that the next claim runs the effect (after a retryable
    /// error). A fence that no longer holds the key changes nothing.
    fn release(&self, key: &str, fence: Fence) -> Result<()>;
}

/// What a store keeps per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) fence: u64,
    pub(crate) owner: String,
    pub(crate) fingerprint: String,
    pub(crate) state: RecordState,
    /// Store time (ms since the Unix epoch) the claim's lease ends.
    pub(crate) lease_until_ms: i64,
    /// Store time the record may be forgotten.
    pub(crate) expires_ms: i64,
    /// The result (completed) or the error message (failed).
    pub(crate) payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordState {
    InProgress,
    Completed,
    Failed,
}

impl RecordState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    #[cfg_attr(not(all(feature = "durable", unix)), allow(dead_code))]
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "in_progress" => Self::InProgress,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A store's now: ms since the Unix epoch on its clock.
pub(crate) fn now_ms(clock: &dyn crate::clock::Clock) -> i64 {
    crate::clock::unix_ms(clock.system_time())
}

/// The words for finishing a claim in `state`, for errors.
pub(crate) fn finish_operation(state: RecordState) -> &'static str {
    match state {
        RecordState::Completed => "complete",
        _ => "record the failure of",
    }
}

/// The claim rules every backend applies inside its atomic section: `existing` is the key's
/// record (`None`, or one past its expiry, counts as absent), `next_fence` draws a new fence.
/// Returns the record to write (if any) and the answer.
pub(crate) fn decide(
    existing: Option<&Record>,
    request: &ClaimRequest<'_>,
    now_ms: i64,
    next_fence: impl FnOnce() -> Result<u64>,
) -> Result<(Option<Record>, Claim)> {
    let live = existing.filter(|r| r.expires_ms > now_ms);
    let fresh = |fence: u64| Record {
        fence,
        owner: request.owner.to_string(),
        fingerprint: request.fingerprint.to_string(),
        state: RecordState::InProgress,
        lease_until_ms: now_ms.saturating_add(ms(request.lease)),
        expires_ms: now_ms.saturating_add(ms(request.ttl)),
        payload: Vec::new(),
    };
    let Some(r) = live else {
        let fence = next_fence()?;
        let claim = Claim::Acquired {
            fence: Fence(fence),
            takeover: false,
        };
        return Ok((Some(fresh(fence)), claim));
    };
    if r.fingerprint != request.fingerprint {
        return Ok((
            None,
            Claim::Mismatch {
                stored: r.fingerprint.clone(),
            },
        ));
    }
    match r.state {
        RecordState::Completed => Ok((
            None,
            Claim::Completed {
                result: r.payload.clone(),
            },
        )),
        RecordState::Failed => Ok((
            None,
            Claim::Failed {
                message: String::from_utf8_lossy(&r.payload).into_owned(),
            },
        )),
        RecordState::InProgress if r.lease_until_ms > now_ms => {
            if r.owner == request.owner {
                // Re-entrant: a worker whose first try got no answer (a broken pipe) asks
                // again and gets its own claim, with its lease renewed.
                let mut renewed = r.clone();
                renewed.lease_until_ms = now_ms.saturating_add(ms(request.lease));
                let claim = Claim::Acquired {
                    fence: Fence(r.fence),
                    takeover: false,
                };
                return Ok((Some(renewed), claim));
            }
            let left = u64::try_from(r.lease_until_ms - now_ms).unwrap_or(0);
            Ok((
                None,
                Claim::InProgress {
                    retry_after: Duration::from_millis(left),
                },
            ))
        }
        RecordState::InProgress => {
            let fence = next_fence()?;
            let claim = Claim::Acquired {
                fence: Fence(fence),
                takeover: true,
            };
            Ok((Some(fresh(fence)), claim))
        }
    }
}

/// Whether `fence` still holds `record` for completing, failing or renewing it; the error
/// names both fences.
pub(crate) fn check_fence(
    store: &str,
    key: &str,
    record: Option<&Record>,
    fence: Fence,
    operation: &str,
) -> Result<()> {
    match record {
        Some(r) if r.fence == fence.0 && r.state == RecordState::InProgress => Ok(()),
        Some(r) => Err(stale_fence(
            store,
            key,
            operation,
            format!(
                "fence {fence} no longer holds the key: it is at fence {} ({})",
                r.fence,
                r.state.as_str()
            ),
        )),
        None => Err(stale_fence(
            store,
            key,
            operation,
            format!("fence {fence} no longer holds the key: its claim expired"),
        )),
    }
}

fn stale_fence(store: &str, key: &str, operation: &str, reason: String) -> GuardrailError {
    GuardrailError::Store {
        store: store.to_string(),
        operation: format!("{operation} {key}"),
        reason,
        class: ErrorClass::Fatal,
        source: None,
    }
}

/// Refuses a key that is empty or longer than [`MAX_KEY_BYTES`].
pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(GuardrailError::config(
            "idempotency.key",
            format!(
                "a key has 1 to {MAX_KEY_BYTES} bytes, this one {}",
                key.len()
            ),
        ));
    }
    Ok(())
}
