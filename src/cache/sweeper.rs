//! The background sweeper: purges expired entries every interval, stops with the cache.

use std::hash::{BuildHasher, Hash};
use std::sync::Weak;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::Inner;

/// Owns the sweeper thread; dropping it stops the thread and waits for it.
pub(crate) struct Sweeper {
    stop: Option<mpsc::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Sweeper {
    pub(crate) fn start<K, V, S>(inner: Weak<Inner<K, V, S>>, interval: Duration) -> Self
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        S: BuildHasher + Send + Sync + 'static,
    {
        let (stop, stopped) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("guardrails-cache-sweeper".into())
            .spawn(move || {
                // The channel doubles as the sleep: dropping the sender wakes the thread at
                // once instead of after a full interval.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    match inner.upgrade() {
                        Some(inner) => {
                            inner.purge_expired();
                        }
                        None => break,
                    }
                }
            })
            .ok();
        if handle.is_none() {
            tracing::warn!("could not start the cache sweeper thread; expiry stays lazy");
        }
        Self {
            stop: Some(stop),
            handle,
        }
    }

    /// Whether the thread is still running.
    #[cfg(test)]
    pub(crate) fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}
