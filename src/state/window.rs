//! Counts per time bucket shared by a fleet; see `SharedWindowCounts`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::{GuardrailError, Result};

/// The most buckets one read may span.
pub const MAX_WINDOW_BUCKETS: u32 = 1024;

/// Counts per time bucket that a fleet shares: each worker adds what it counted in a bucket
/// and reads everyone's counts of the buckets around it. The retry analytics use it so a
/// fleet sees a retry storm that no single worker is large enough to call one.
///
/// Buckets are numbered by the caller (its wall clock divided by the bucket length): hosts
/// kept by NTP agree to milliseconds, a bucket is seconds long.
///
/// ```
/// use std::time::Duration;
/// use guardrails::state::{MemoryWindowCounts, SharedWindowCounts};
///
/// let counts = MemoryWindowCounts::new();
/// let ten_s = Duration::from_secs(10);
/// counts.add("retry:llm", 100, 3, 3, ten_s)?; // worker a
/// assert_eq!(counts.add("retry:llm", 101, 2, 3, ten_s)?, [0, 3, 2]); // worker b
/// # Ok::<(), guardrails::GuardrailError>(())
/// ```
///
/// Implemented in
/// memory ([`MemoryWindowCounts`]) and on Redis (`RedisWindowCounts`, feature `redis`).
pub trait SharedWindowCounts: Send + Sync + std::fmt::Debug {
    /// Adds `n` to bucket `bucket` of `key` and answers every worker's counts of the
    /// `window` buckets that end with it, oldest first (0 where nothing was added). Buckets
    /// that left the window may be dropped; a key nobody added to for `window` buckets of
    /// `bucket_len` may expire.
    ///
    /// # Errors
    /// [`GuardrailError::Config`] for a window of 0 or past [`MAX_WINDOW_BUCKETS`]; the
    /// store's errors (a Redis that cannot be reached is retryable).
    fn add(
        &self,
        key: &str,
        bucket: u64,
        n: u64,
        window: u32,
        bucket_len: Duration,
    ) -> Result<Vec<u64>>;
}

pub(crate) fn check_window(key: &str, window: u32) -> Result<()> {
    super::check_key(key)?;
    if window == 0 || window > MAX_WINDOW_BUCKETS {
        return Err(GuardrailError::config(
            "window",
            format!("must be within 1..={MAX_WINDOW_BUCKETS} buckets"),
        ));
    }
    Ok(())
}

/// The most keys [`MemoryWindowCounts`] keeps; adding to a new key past it is refused.
const MAX_KEYS: usize = 10_000;

/// [`SharedWindowCounts`] in this process (its threads are the fleet): for tests and for
/// one process with many workers.
#[derive(Debug, Default)]
pub struct MemoryWindowCounts {
    keys: Mutex<HashMap<String, BTreeMap<u64, u64>>>,
}

impl MemoryWindowCounts {
    /// No counts yet.
    pub fn new() -> Self {
        Self::default()
    }
}

impl SharedWindowCounts for MemoryWindowCounts {
    fn add(
        &self,
        key: &str,
        bucket: u64,
        n: u64,
        window: u32,
        _bucket_len: Duration,
    ) -> Result<Vec<u64>> {
        check_window(key, window)?;
        let first = bucket.saturating_sub(u64::from(window) - 1);
        let mut keys = self.keys.lock();
        if !keys.contains_key(key) && keys.len() >= MAX_KEYS {
            return Err(GuardrailError::config(
                "window counts",
                format!("more than {MAX_KEYS} keys in memory"),
            ));
        }
        let buckets = keys.entry(key.to_string()).or_default();
        if n > 0 {
            let c = buckets.entry(bucket).or_insert(0);
            *c = c.saturating_add(n);
        }
        // Buckets past the newest (a worker whose clock runs ahead) are kept.
        buckets.retain(|b, _| *b >= first);
        Ok((first..=bucket)
            .map(|b| buckets.get(&b).copied().unwrap_or(0))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_see_each_others_buckets_and_old_ones_leave() {
        let c = MemoryWindowCounts::new();
        let len = Duration::from_secs(1);
        assert_eq!(c.add("k", 10, 4, 3, len).unwrap(), [0, 0, 4]);
        assert_eq!(c.add("k", 10, 1, 3, len).unwrap(), [0, 0, 5]);
        assert_eq!(c.add("k", 12, 0, 3, len).unwrap(), [5, 0, 0]);
        assert_eq!(c.add("k", 13, 2, 3, len).unwrap(), [0, 0, 2]);
        assert_eq!(c.add("other", 13, 0, 1, len).unwrap(), [0]);
        assert!(c.add("k", 13, 0, 0, len).is_err());
        assert!(c.add("k", 13, 0, MAX_WINDOW_BUCKETS + 1, len).is_err());
    }
}
