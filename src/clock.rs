//! Time as a dependency, so that TTLs, breaker wait durations and backoff delays can be
//! tested without waiting.
//!
//! Every component that reads or waits on time takes a [`Clock`]. Production code uses
//! [`SystemClock`]; tests (ours and yours) use [`ManualClock`], which only moves when told
//! to and whose [`sleep`](Clock::sleep) returns at once after advancing itself.
//!
//! ```
//! use guardrails::clock::{Clock, ManualClock};
//! use std::time::Duration;
//!
//! let clock = ManualClock::new();
//! let start = clock.now();
//! clock.advance(Duration::from_secs(90));
//! clock.sleep(Duration::from_secs(10)); // returns immediately
//! assert_eq!(clock.now() - start, Duration::from_secs(100));
//! assert_eq!(clock.sleeps(), vec![Duration::from_secs(10)]);
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// A source of monotonic and wall-clock time that can also wait.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Monotonic now, for measuring durations and deadlines.
    fn now(&self) -> Instant;

    /// Wall-clock now, for timestamps in reports and checkpoints.
    fn system_time(&self) -> SystemTime;

    /// Blocks the current thread for `duration` ([`ManualClock`] advances instead).
    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }

    /// Waits for `duration` without blocking the thread: tokio's sleep by default (so paused
    /// time works); [`ManualClock`] advances and records instead, and returns at once. The
    /// async retry loop and the JSON guard's async run wait through this.
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    fn sleep_async(&self, duration: Duration) -> AsyncSleep {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// The future [`Clock::sleep_async`] returns.
#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub type AsyncSleep = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>;

/// A clock shared by the components of one pipeline.
pub type SharedClock = Arc<dyn Clock>;

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }

    fn system_time(&self) -> SystemTime {
        (**self).system_time()
    }

    fn sleep(&self, duration: Duration) {
        (**self).sleep(duration)
    }

    #[cfg(feature = "async")]
    fn sleep_async(&self, duration: Duration) -> AsyncSleep {
        (**self).sleep_async(duration)
    }
}

/// The operating system's clocks.
///
/// ```
/// use guardrails::clock::{Clock, SystemClock};
/// let t0 = SystemClock.now();
/// assert!(SystemClock.now() >= t0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn system_time(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// tokio's clock: follows `tokio::time::pause()` and `advance()`, so async tests that pause
/// time see the budgets and waits they expect.
///
/// [`sleep`](Clock::sleep) blocks the thread and must not be called from async code; async
/// components wait with [`sleep_async`](Clock::sleep_async).
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use guardrails::clock::{Clock, TokioClock};
/// use std::time::Duration;
/// let t0 = TokioClock.now();
/// tokio::time::sleep(Duration::from_secs(3600)).await; // instant under paused time
/// assert!(TokioClock.now() - t0 >= Duration::from_secs(3600));
/// # }
/// ```
#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokioClock;

#[cfg(feature = "async")]
impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn system_time(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when advanced; clones share the same time.
///
/// It starts at the real `Instant` and `SystemTime` of its creation and never goes
/// backwards. [`sleep`](Clock::sleep) advances it by the requested duration and records the
/// request, so a test can assert the delays a retry loop chose.
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

struct ManualInner {
    origin: Instant,
    system_origin: SystemTime,
    elapsed_nanos: AtomicU64,
    sleeps: Mutex<Vec<Duration>>,
}

impl ManualClock {
    /// A clock standing at the current real time.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(ManualInner {
                origin: Instant::now(),
                system_origin: SystemTime::now(),
                elapsed_nanos: AtomicU64::new(0),
                sleeps: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Moves time forward by `by` (saturating at about 584 years after creation).
    pub fn advance(&self, by: Duration) {
        let by = duration_nanos(by);
        // fetch_update cannot fail with a closure that always returns Some.
        let _ = self
            .inner
            .elapsed_nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(by))
            });
    }

    /// Sets the time since creation; a value earlier than now is ignored, because
    /// monotonic time never goes backwards.
    pub fn set_elapsed(&self, elapsed: Duration) {
        self.inner
            .elapsed_nanos
            .fetch_max(duration_nanos(elapsed), Ordering::AcqRel);
    }

    /// Time since creation.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.inner.elapsed_nanos.load(Ordering::Acquire))
    }

    /// Every duration passed to [`sleep`](Clock::sleep), oldest first.
    pub fn sleeps(&self) -> Vec<Duration> {
        self.inner
            .sleeps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("elapsed", &self.elapsed())
            .finish()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        // Checked so that an origin near the platform's end of time cannot panic.
        self.inner
            .origin
            .checked_add(self.elapsed())
            .unwrap_or(self.inner.origin)
    }

    fn system_time(&self) -> SystemTime {
        self.inner
            .system_origin
            .checked_add(self.elapsed())
            .unwrap_or(self.inner.system_origin)
    }

    fn sleep(&self, duration: Duration) {
        self.inner
            .sleeps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(duration);
        self.advance(duration);
    }

    #[cfg(feature = "async")]
    fn sleep_async(&self, duration: Duration) -> AsyncSleep {
        self.sleep(duration);
        Box::pin(std::future::ready(()))
    }
}

/// `t` as milliseconds since the Unix epoch, the crate's one timestamp in its databases
/// (0 before the epoch, `i64::MAX` past what fits).
pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Wall-clock milliseconds for a hot path: a TSC read per call and a `clock_gettime` at
/// most once a millisecond (it costs ~47 ns on this project's VMs, half a recording
/// call), so a stamp is at most ~1 ms old. Racing refreshes are harmless: each stores a
/// real reading.
#[cfg_attr(not(feature = "history"), allow(dead_code))]
pub(crate) struct RecentWallMs {
    clock: quanta::Clock,
    ticks_per_ms: u64,
    last_raw: AtomicU64,
    last_ms: std::sync::atomic::AtomicI64,
}

#[cfg_attr(not(feature = "history"), allow(dead_code))]
impl RecentWallMs {
    pub(crate) fn new() -> Self {
        let clock = quanta::Clock::new();
        // quanta scales ticks to nanoseconds; inverting the scale of a large span gives
        // the ticks in a millisecond without waiting one out.
        let span = 1_000_000_000u64;
        let nanos = clock.delta_as_nanos(0, span).max(1);
        let ticks_per_ms = (u128::from(span) * 1_000_000 / u128::from(nanos)).max(1);
        Self {
            ticks_per_ms: u64::try_from(ticks_per_ms).unwrap_or(u64::MAX),
            last_raw: AtomicU64::new(clock.raw()),
            last_ms: std::sync::atomic::AtomicI64::new(unix_ms(SystemTime::now())),
            clock,
        }
    }

    #[inline]
    pub(crate) fn now_ms(&self) -> i64 {
        let raw = self.clock.raw();
        if raw.wrapping_sub(self.last_raw.load(Ordering::Relaxed)) < self.ticks_per_ms {
            return self.last_ms.load(Ordering::Relaxed);
        }
        self.refresh(raw)
    }

    #[cold]
    fn refresh(&self, raw: u64) -> i64 {
        let ms = unix_ms(SystemTime::now());
        self.last_ms.store(ms, Ordering::Relaxed);
        self.last_raw.store(raw, Ordering::Relaxed);
        ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_wall_ms_is_a_real_reading_at_most_a_few_ms_old() {
        let recent = RecentWallMs::new();
        for _ in 0..1000 {
            let before = unix_ms(SystemTime::now());
            let got = recent.now_ms();
            let after = unix_ms(SystemTime::now());
            assert!(got <= after && got + 5 >= before, "{before} {got} {after}");
        }
    }
}
