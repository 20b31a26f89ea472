//! The in-process store: one mutex around a map.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{
    Claim, ClaimRequest, Fence, Record, RecordState, StateStore, check_fence, check_key, decide,
    finish_operation, ms, now_ms,
};
use crate::clock::{Clock, SystemClock};
use crate::error::Result;

/// Guard state for the threads of one process (and tests): nothing survives the process.
///
/// ```
/// use std::sync::Arc;
/// use guardrails::state::{Idempotency, MemoryStore, Outcome};
///
/// let effects = Idempotency::new(Arc::new(MemoryStore::new()));
/// let key = effects.key("ledger", "order-17");
/// let first = effects.run(&key, "fp", |_fence| Ok(41 + 1))?;
/// let again = effects.run(&key, "fp", |_fence| Ok(0))?;
/// assert_eq!(first, Outcome::Executed(42));
/// assert_eq!(again, Outcome::Cached(42));
/// # Ok::<(), guardrails::GuardrailError>(())
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    clock: Arc<dyn Clock>,
}

#[derive(Debug, Default)]
struct Inner {
    records: HashMap<String, Record>,
    last_fence: u64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            clock: Arc::new(SystemClock),
        }
    }

    /// Leases and expiries on `clock` (a `ManualClock` in tests).
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    fn now_ms(&self) -> i64 {
        now_ms(self.clock.as_ref())
    }

    fn finish(
        &self,
        key: &str,
        fence: Fence,
        state: RecordState,
        payload: &[u8],
        ttl: Duration,
    ) -> Result<()> {
        check_key(key)?;
        let now = self.now_ms();
        let mut inner = self.inner.lock();
        let record = inner.records.get_mut(key).filter(|r| r.expires_ms > now);
        let operation = finish_operation(state);
        check_fence("memory", key, record.as_deref(), fence, operation)?;
        if let Some(r) = record {
            r.state = state;
            r.payload = payload.to_vec();
            r.expires_ms = now.saturating_add(ms(ttl));
        }
        Ok(())
    }
}

impl StateStore for MemoryStore {
    fn claim(&self, request: &ClaimRequest<'_>) -> Result<Claim> {
        check_key(request.key)?;
        let now = self.now_ms();
        let mut inner = self.inner.lock();
        let Inner {
            records,
            last_fence,
        } = &mut *inner;
        let (write, claim) = decide(records.get(request.key), request, now, || {
            *last_fence += 1;
            Ok(*last_fence)
        })?;
        if let Some(record) = write {
            records.insert(request.key.to_string(), record);
        }
        Ok(claim)
    }

    fn renew(&self, key: &str, fence: Fence, lease: Duration) -> Result<bool> {
        let now = self.now_ms();
        let mut inner = self.inner.lock();
        match inner.records.get_mut(key) {
            Some(r)
                if r.fence == fence.0
                    && r.state == RecordState::InProgress
                    && r.expires_ms > now =>
            {
                r.lease_until_ms = now.saturating_add(ms(lease));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn complete(&self, key: &str, fence: Fence, result: &[u8], ttl: Duration) -> Result<()> {
        self.finish(key, fence, RecordState::Completed, result, ttl)
    }

    fn fail(&self, key: &str, fence: Fence, message: &str, ttl: Duration) -> Result<()> {
        self.finish(key, fence, RecordState::Failed, message.as_bytes(), ttl)
    }

    fn release(&self, key: &str, fence: Fence) -> Result<()> {
        let mut inner = self.inner.lock();
        if inner
            .records
            .get(key)
            .is_some_and(|r| r.fence == fence.0 && r.state == RecordState::InProgress)
        {
            inner.records.remove(key);
        }
        Ok(())
    }
}
