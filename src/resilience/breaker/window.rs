//! Sliding windows with O(1) aggregates and a lock-free path for plain successes.
//!
//! A healthy breaker sees almost only fast successes, and a success can never raise the
//! failure rate, so successes are only counted: in per-thread-striped counters (count-based)
//! or in per-second atomic buckets (time-based). Failures and slow calls, which can open the
//! breaker, go through a mutex that keeps their positions and answers the rates.
//!
//! A count-based window that is full and holds no failed or slow call is *quiet*: the next
//! successes change nothing it reports (the window stays full of successes), so they are not
//! even counted. Positions only matter relative to later calls, so a failure after a quiet
//! spell still ages out after exactly `size` more calls. The first slow-path record clears
//! quiet; a periodic check on the counting path sets it again once failures have aged out.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use super::config::{BreakerConfig, WindowKind};

/// Outcome flags of one recorded call.
pub(crate) const FAILED: u8 = 1;
pub(crate) const SLOW: u8 = 2;

/// What the window holds right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub calls: u64,
    pub failures: u64,
    pub slow: u64,
}

impl Tally {
    pub(crate) fn add(&mut self, flags: u8) {
        self.calls += 1;
        self.failures += u64::from(flags & FAILED != 0);
        self.slow += u64::from(flags & SLOW != 0);
    }

    pub(crate) fn failure_rate(&self) -> f64 {
        ratio(self.failures, self.calls)
    }

    pub(crate) fn slow_rate(&self) -> f64 {
        ratio(self.slow, self.calls)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Keeps a counter on a cache line of its own so threads do not contend on one line.
#[repr(align(128))]
#[derive(Default)]
pub(super) struct Padded(pub(super) AtomicU64);

/// This thread's stripe among `stripes` (a power of two).
#[inline]
pub(super) fn stripe_index(stripes: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| {
        let mut id = s.get();
        if id == usize::MAX {
            id = NEXT.fetch_add(1, Ordering::Relaxed);
            s.set(id);
        }
        id & (stripes - 1)
    })
}

pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    pub(crate) fn new(config: &BreakerConfig) -> Self {
        match config.window {
            WindowKind::CountBased => Self::Count(CountWindow::new(config.window_size)),
            WindowKind::TimeBased => Self::Time(TimeWindow::new(config.window_size)),
        }
    }

    /// Counts one plain success without locking.
    #[inline]
    pub(crate) fn record_fast_success(&self, now_sec: u64) {
        match self {
            Self::Count(w) => w.record_fast_success(),
            Self::Time(w) => w.record_fast_success(now_sec),
        }
    }

    /// Records a call under the lock and returns the window's tally after it.
    pub(crate) fn record(&self, flags: u8, now_sec: u64) -> Tally {
        match self {
            Self::Count(w) => w.record(flags),
            Self::Time(w) => w.record(flags, now_sec),
        }
    }

    pub(crate) fn tally(&self, now_sec: u64) -> Tally {
        match self {
            Self::Count(w) => w.tally(),
            Self::Time(w) => w.tally(now_sec),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            Self::Count(w) => w.reset(),
            Self::Time(w) => w.reset(),
        }
    }

    pub(crate) fn needs_time(&self) -> bool {
        matches!(self, Self::Time(_))
    }
}

/// The last `size` calls. A call's position is the number of calls recorded before it;
/// failures and slow calls keep their position, and fall out once `size` newer calls exist.
pub(crate) struct CountWindow {
    size: u64,
    /// Full and free of failed or slow calls; written only under `slow_path`'s lock.
    quiet: AtomicBool,
    fast: Box<[Padded]>,
    slow_path: Mutex<CountEvents>,
}

/// How often (in counted successes per stripe) the counting path looks whether the window
/// has become quiet again.
const QUIET_CHECK_EVERY: u64 = 1024;

#[derive(Default)]
struct CountEvents {
    /// Calls recorded under the lock (all but fast successes).
    recorded: u64,
    /// (position, flags) of failed or slow calls still in the window, oldest first.
    events: VecDeque<(u64, u8)>,
    failures: u64,
    slow: u64,
}

impl CountWindow {
    fn new(size: u32) -> Self {
        let stripes = std::thread::available_parallelism()
            .map_or(4, |n| n.get())
            .next_power_of_two()
            .clamp(4, 64);
        Self {
            size: u64::from(size),
            quiet: AtomicBool::new(false),
            fast: (0..stripes).map(|_| Padded::default()).collect(),
            slow_path: Mutex::new(CountEvents::default()),
        }
    }

    #[inline]
    fn record_fast_success(&self) {
        if self.quiet.load(Ordering::Relaxed) {
            return;
        }
        let counted = self.fast[stripe_index(self.fast.len())]
            .0
            .fetch_add(1, Ordering::Relaxed);
        if counted % QUIET_CHECK_EVERY == QUIET_CHECK_EVERY - 1 {
            self.tally();
        }
    }

    fn fast_total(&self) -> u64 {
        self.fast.iter().map(|p| p.0.load(Ordering::Relaxed)).sum()
    }

    fn record(&self, flags: u8) -> Tally {
        let mut ev = self
            .slow_path
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ev.recorded += 1;
        let position = self.fast_total() + ev.recorded;
        if flags != 0 {
            ev.events.push_back((position, flags));
            ev.failures += u64::from(flags & FAILED != 0);
            ev.slow += u64::from(flags & SLOW != 0);
        }
        self.settle(&mut ev, position)
    }

    fn tally(&self) -> Tally {
        let mut ev = self
            .slow_path
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let total = self.fast_total() + ev.recorded;
        self.settle(&mut ev, total)
    }

    /// Drops the events that `total` calls have pushed out and reports the rest.
    fn settle(&self, ev: &mut CountEvents, total: u64) -> Tally {
        let oldest_kept = total.saturating_sub(self.size);
        while let Some(&(position, flags)) = ev.events.front() {
            if position > oldest_kept {
                break;
            }
            ev.events.pop_front();
            ev.failures -= u64::from(flags & FAILED != 0);
            ev.slow -= u64::from(flags & SLOW != 0);
        }
        self.quiet.store(
            ev.events.is_empty() && total >= self.size,
            Ordering::Relaxed,
        );
        Tally {
            calls: total.min(self.size),
            failures: ev.failures,
            slow: ev.slow,
        }
    }

    fn reset(&self) {
        let mut ev = self
            .slow_path
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *ev = CountEvents::default();
        for p in self.fast.iter() {
            p.0.store(0, Ordering::Relaxed);
        }
    }
}

/// The calls of the last `size` seconds in one bucket per second, indexed by second.
pub(crate) struct TimeWindow {
    size: u64,
    /// Fast successes: `(second << 32) | count`, one word per bucket.
    fast: Box<[AtomicU64]>,
    slow_path: Mutex<Vec<SecondBucket>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct SecondBucket {
    second: u64,
    tally: Tally,
}

impl TimeWindow {
    fn new(size: u32) -> Self {
        let n = size as usize;
        Self {
            size: u64::from(size),
            fast: (0..n).map(|_| AtomicU64::new(0)).collect(),
            slow_path: Mutex::new(vec![SecondBucket::default(); n]),
        }
    }

    fn slot(&self, second: u64) -> usize {
        // size >= 1 is validated; the result is < size, which came from a u32.
        (second % self.size) as usize
    }

    fn in_window(&self, second: u64, now_sec: u64) -> bool {
        second <= now_sec && now_sec - second < self.size
    }

    fn record_fast_success(&self, now_sec: u64) {
        // Seconds since the breaker was created fit 32 bits for 136 years.
        let tag = now_sec & 0xFFFF_FFFF;
        let bucket = &self.fast[self.slot(now_sec)];
        let _ = bucket.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
            if word >> 32 == tag {
                Some(word.saturating_add(1))
            } else {
                Some((tag << 32) | 1)
            }
        });
    }

    fn fast_calls(&self, now_sec: u64) -> u64 {
        self.fast
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .filter(|word| {
                let second = word >> 32;
                let now_tag = now_sec & 0xFFFF_FFFF;
                now_tag >= second && now_tag - second < self.size
            })
            .map(|word| word & 0xFFFF_FFFF)
            .sum()
    }

    fn record(&self, flags: u8, now_sec: u64) -> Tally {
        let mut buckets = self
            .slow_path
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let bucket = &mut buckets[self.slot(now_sec)];
        if bucket.second != now_sec {
            *bucket = SecondBucket {
                second: now_sec,
                tally: Tally::default(),
            };
        }
        bucket.tally.add(flags);
        self.sum(&buckets, now_sec)
    }

    fn tally(&self, now_sec: u64) -> Tally {
        let buckets = self
            .slow_path
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.sum(&buckets, now_sec)
    }

    fn sum(&self, buckets: &[SecondBucket], now_sec: u64) -> Tally {
        let mut total = Tally {
            calls: self.fast_calls(now_sec),
            ..Tally::default()
        };
        for b in buckets.iter().filter(|b| self.in_window(b.second, now_sec)) {
            total.calls += b.tally.calls;
            total.failures += b.tally.failures;
            total.slow += b.tally.slow;
        }
        total
    }

    fn reset(&self) {
        let mut buckets = self
            .slow_path
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        buckets
            .iter_mut()
            .for_each(|b| *b = SecondBucket::default());
        // Bucket 0 with count 0 is indistinguishable from empty, which is what reset means.
        for b in self.fast.iter() {
            b.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_ages_failures_out_after_size_calls() {
        let w = CountWindow::new(4);
        assert_eq!(
            w.record(FAILED),
            Tally {
                calls: 1,
                failures: 1,
                slow: 0
            }
        );
        w.record_fast_success();
        w.record_fast_success();
        assert_eq!(
            w.record(SLOW),
            Tally {
                calls: 4,
                failures: 1,
                slow: 1
            }
        );
        // The fifth call pushes the first (the failure) out.
        assert_eq!(
            w.record(0),
            Tally {
                calls: 4,
                failures: 0,
                slow: 1
            }
        );
        w.reset();
        assert_eq!(w.tally(), Tally::default());
    }

    #[test]
    fn quiet_window_skips_counting_but_ages_later_failures_exactly() {
        let w = CountWindow::new(3);
        for _ in 0..3 {
            w.record(0);
        }
        assert_eq!(
            w.tally(),
            Tally {
                calls: 3,
                failures: 0,
                slow: 0
            }
        );
        assert!(w.quiet.load(Ordering::Relaxed));
        for _ in 0..10 {
            w.record_fast_success(); // not counted: nothing would change
        }
        assert_eq!(w.record(FAILED).failures, 1);
        assert!(!w.quiet.load(Ordering::Relaxed));
        w.record_fast_success();
        w.record_fast_success();
        assert_eq!(
            w.tally().failures,
            1,
            "two newer calls: the failure is still in"
        );
        w.record_fast_success();
        assert_eq!(
            w.tally(),
            Tally {
                calls: 3,
                failures: 0,
                slow: 0
            }
        );
        assert!(w.quiet.load(Ordering::Relaxed));
    }

    #[test]
    fn time_window_forgets_seconds_older_than_size() {
        let w = TimeWindow::new(3);
        w.record_fast_success(10);
        w.record(FAILED, 10);
        w.record_fast_success(11);
        assert_eq!(
            w.tally(12),
            Tally {
                calls: 3,
                failures: 1,
                slow: 0
            }
        );
        // At second 13, second 10 has left the window.
        assert_eq!(
            w.tally(13),
            Tally {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        // A bucket reused for a later second starts from zero.
        w.record_fast_success(13);
        assert_eq!(
            w.tally(13),
            Tally {
                calls: 2,
                failures: 0,
                slow: 0
            }
        );
    }
}
