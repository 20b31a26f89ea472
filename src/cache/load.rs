//! Coalesced loads: one loader per key, the other callers wait for its result.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use super::Inner;
use crate::error::{GuardrailError, Result};

/// Loads in flight in one shard, by key.
pub(crate) type Loads<K, V> = HashMap<K, Arc<LoadSlot<V>>>;

enum State<V> {
    Loading,
    Done(std::result::Result<V, Arc<GuardrailError>>),
    /// The leader went away without a result (panic, dropped future).
    Abandoned,
}

/// Where waiters meet the leader's result.
pub(crate) struct LoadSlot<V> {
    state: Mutex<State<V>>,
    done: Condvar,
    #[cfg(feature = "async")]
    done_async: tokio::sync::Notify,
}

pub(crate) enum Role<V> {
    Lead(Arc<LoadSlot<V>>),
    Wait(Arc<LoadSlot<V>>),
}

impl<V: Clone> LoadSlot<V> {
    pub(crate) fn new() -> Arc<Self> {
        Self::with_state(State::Loading)
    }

    /// A slot that already holds `value`.
    pub(crate) fn ready(value: V) -> Arc<Self> {
        Self::with_state(State::Done(Ok(value)))
    }

    fn with_state(state: State<V>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(state),
            done: Condvar::new(),
            #[cfg(feature = "async")]
            done_async: tokio::sync::Notify::new(),
        })
    }

    /// The result, or `None` when the leader abandoned the load.
    fn outcome(state: &State<V>) -> Option<Option<Result<V>>> {
        match state {
            State::Loading => None,
            State::Done(Ok(v)) => Some(Some(Ok(v.clone()))),
            State::Done(Err(e)) => Some(Some(Err(GuardrailError::Shared(Arc::clone(e))))),
            State::Abandoned => Some(None),
        }
    }

    pub(crate) fn wait(&self) -> Option<Result<V>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(outcome) = Self::outcome(&state) {
                return outcome;
            }
            state = self
                .done
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    #[cfg(feature = "async")]
    pub(crate) async fn wait_async(&self) -> Option<Result<V>> {
        loop {
            let notified = self.done_async.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a completion in between still wakes us.
            notified.as_mut().enable();
            {
                let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(outcome) = Self::outcome(&state) {
                    return outcome;
                }
            }
            notified.await;
        }
    }

    fn settle(&self, state: State<V>) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
        self.done.notify_all();
        #[cfg(feature = "async")]
        self.done_async.notify_waiters();
    }
}

/// The caller that runs the loader. Dropped without [`finish`](Leader::finish) (the loader
/// panicked, or the future was dropped), it abandons the load so a waiter can take over.
pub(crate) struct Leader<'a, K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher,
{
    inner: &'a Inner<K, V, S>,
    key: Option<K>,
    slot: Arc<LoadSlot<V>>,
}

impl<'a, K, V, S> Leader<'a, K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher,
{
    pub(crate) fn new(inner: &'a Inner<K, V, S>, key: K, slot: Arc<LoadSlot<V>>) -> Self {
        Self {
            inner,
            key: Some(key),
            slot,
        }
    }

    pub(crate) fn finish(mut self, result: Result<V>) -> Result<V> {
        let Some(key) = self.key.take() else {
            return result;
        };
        match result {
            Ok(v) => {
                // Cached before the load is unregistered, so no caller can miss both.
                self.inner.insert(key.clone(), v.clone(), self.inner.ttl);
                self.inner.unregister(&key, &self.slot);
                self.slot.settle(State::Done(Ok(v.clone())));
                Ok(v)
            }
            Err(e) => {
                tracing::debug!(error = %e.report(), "cache load failed; nothing cached");
                let e = Arc::new(e);
                self.inner.unregister(&key, &self.slot);
                self.slot.settle(State::Done(Err(Arc::clone(&e))));
                Err(GuardrailError::Shared(e))
            }
        }
    }
}

impl<K, V, S> Drop for Leader<'_, K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher,
{
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.inner.unregister(&key, &self.slot);
            self.slot.settle(State::Abandoned);
        }
    }
}
