//! Closures run with a deadline on a bounded pool of threads that remembers hung work.
//!
//! A Rust thread cannot be killed, so work that misses its deadline keeps its thread until it
//! returns on its own. Spawning a thread per call turns every hung call into a leaked thread
//! (a health check polled every second on a dead NFS mount leaks 3 600 threads an hour).
//! This pool bounds that twice:
//!
//! - **Keyed work is never started twice.** A call with a key (a health check's name, a
//!   statvfs path) whose previous run has not returned yet is answered at once with
//!   [`GuardrailError::Timeout`], saying it is still running and for how long; it takes no
//!   thread. One hung check costs one thread, however often it is polled.
//! - **The pool has a ceiling** ([`MAX_THREADS`]). When every thread is busy, a call is
//!   refused with [`GuardrailError::BulkheadFull`] instead of spawning more.
//!
//! Idle threads wait for work and end after [`IDLE_EXIT`] without any. A panic in a job is
//! caught on the worker and resumed on the caller's thread; the worker lives on.

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError, mpsc};
use std::time::{Duration, Instant};

use crate::error::{GuardrailError, Result};

/// The most threads the pool runs at once.
pub(crate) const MAX_THREADS: usize = 64;
/// How long an idle worker waits for work before it ends.
pub(crate) const IDLE_EXIT: Duration = Duration::from_secs(30);

type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    state: Mutex<State>,
    work: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    threads: usize,
    idle: usize,
    /// Keyed work in flight, with when it started.
    running: HashMap<String, Instant>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        state: Mutex::new(State::default()),
        work: Condvar::new(),
    })
}

/// Removes a key from the in-flight set when its job ends, panicked or not.
struct KeyGuard(Option<String>);

impl Drop for KeyGuard {
    fn drop(&mut self) {
        if let Some(key) = self.0.take() {
            pool()
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .running
                .remove(&key);
        }
    }
}

/// Runs `f` on the pool and waits at most `limit` for it; see the [module docs](self).
/// `operation` names the work in errors and logs; `key`, when given, makes the work
/// single-flight.
pub(crate) fn run<T, F>(operation: &str, key: Option<&str>, limit: Duration, f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    start(operation, key, limit, f)?.wait()
}

/// Work handed to the pool, not waited for yet.
pub(crate) struct Pending<T> {
    rx: mpsc::Receiver<std::thread::Result<Result<T>>>,
    operation: String,
    started: Instant,
    limit: Duration,
}

impl<T> Pending<T> {
    /// Waits until the work returns or its deadline (`limit` after it was started) passes.
    pub(crate) fn wait(self) -> Result<T> {
        let left = self.limit.saturating_sub(self.started.elapsed());
        match self.rx.recv_timeout(left) {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(GuardrailError::timeout(
                &self.operation,
                self.started.elapsed(),
                self.limit,
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(GuardrailError::Cancelled {
                operation: self.operation,
            }),
        }
    }
}

/// Hands `f` to the pool without waiting; [`Pending::wait`] collects it. Several started
/// together run at once.
pub(crate) fn start<T, F>(
    operation: &str,
    key: Option<&str>,
    limit: Duration,
    f: F,
) -> Result<Pending<T>>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    let started = Instant::now();
    let (tx, rx) = mpsc::sync_channel(1);
    let owned_key = key.map(str::to_owned);
    // The guard is made when the job starts: a job refused before it ran must not release a
    // key that belongs to the run in flight.
    let job: Job = Box::new(move || {
        let guard = KeyGuard(owned_key);
        let result = catch_unwind(AssertUnwindSafe(f));
        // The key is released before the answer is sent, so a caller that got the answer
        // can start the same work again at once.
        drop(guard);
        // The receiver is gone after a timeout; the result is dropped then.
        let _ = tx.send(result);
    });
    submit(operation, key, limit, job)?;
    Ok(Pending {
        rx,
        operation: operation.to_string(),
        started,
        limit,
    })
}

/// Queues `job` with an idle worker there for it (starting one when needed) under one lock,
/// or says why the work cannot start.
fn submit(operation: &str, key: Option<&str>, limit: Duration, job: Job) -> Result<()> {
    let pool = pool();
    let mut state = pool.state.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(since) = key.and_then(|k| state.running.get(k)) {
        return Err(GuardrailError::timeout(
            &format!("{operation} (an earlier run has not returned yet)"),
            since.elapsed(),
            limit,
        ));
    }
    // Each queued job needs an idle worker of its own; start one when none is left.
    if state.idle <= state.queue.len() {
        if state.threads >= MAX_THREADS {
            tracing::warn!(operation, threads = MAX_THREADS, "deadline pool exhausted");
            return Err(GuardrailError::BulkheadFull {
                name: "deadline workers".into(),
                max_concurrent: MAX_THREADS,
            });
        }
        std::thread::Builder::new()
            .name("guardrails-deadline".into())
            .spawn(worker)
            .map_err(|e| GuardrailError::Io {
                path: None,
                source: e,
            })?;
        state.threads += 1;
        state.idle += 1;
    }
    if let Some(key) = key {
        state.running.insert(key.to_owned(), Instant::now());
    }
    state.queue.push_back(job);
    drop(state);
    pool.work.notify_one();
    Ok(())
}

fn worker() {
    let pool = pool();
    let mut state = pool.state.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        if let Some(job) = state.queue.pop_front() {
            state.idle -= 1;
            drop(state);
            job();
            state = pool.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.idle += 1;
            continue;
        }
        let (next, waited) = pool
            .work
            .wait_timeout(state, IDLE_EXIT)
            .unwrap_or_else(PoisonError::into_inner);
        state = next;
        if waited.timed_out() && state.queue.is_empty() {
            state.idle -= 1;
            state.threads -= 1;
            return;
        }
    }
}
