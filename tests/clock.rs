//! ManualClock arithmetic and sharing.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use guardrails::prelude::*;

#[test]
fn manual_clock_moves_only_when_told() {
    let clock = ManualClock::new();
    let t0 = clock.now();
    let w0 = clock.system_time();
    assert_eq!(clock.now(), t0);
    clock.advance(Duration::from_millis(1500));
    assert_eq!(clock.now() - t0, Duration::from_millis(1500));
    assert_eq!(
        clock.system_time().duration_since(w0).unwrap(),
        Duration::from_millis(1500)
    );
    assert_eq!(clock.elapsed(), Duration::from_millis(1500));
}

#[test]
fn set_elapsed_never_goes_backwards() {
    let clock = ManualClock::new();
    clock.set_elapsed(Duration::from_secs(10));
    clock.set_elapsed(Duration::from_secs(4));
    assert_eq!(clock.elapsed(), Duration::from_secs(10));
    clock.set_elapsed(Duration::from_secs(12));
    assert_eq!(clock.elapsed(), Duration::from_secs(12));
}

#[test]
fn advance_saturates_instead_of_overflowing() {
    let clock = ManualClock::new();
    clock.advance(Duration::MAX);
    clock.advance(Duration::from_secs(1));
    assert_eq!(clock.elapsed(), Duration::from_nanos(u64::MAX));
    // Reading time must not panic even at the far end.
    let _ = clock.now();
    let _ = clock.system_time();
}

#[test]
fn sleep_advances_and_is_recorded() {
    let clock = ManualClock::new();
    let t0 = clock.now();
    clock.sleep(Duration::from_secs(1));
    clock.sleep(Duration::from_secs(2));
    assert_eq!(clock.now() - t0, Duration::from_secs(3));
    assert_eq!(
        clock.sleeps(),
        vec![Duration::from_secs(1), Duration::from_secs(2)]
    );
}

#[test]
fn clones_and_shared_handles_see_the_same_time() {
    let clock = ManualClock::new();
    let shared: SharedClock = Arc::new(clock.clone());
    let t0 = shared.now();
    let handle = std::thread::spawn({
        let c = clock.clone();
        move || c.advance(Duration::from_secs(60))
    });
    handle.join().unwrap();
    assert_eq!(shared.now() - t0, Duration::from_secs(60));
}

#[test]
fn system_clock_tracks_real_time() {
    let before = SystemTime::now();
    let now = SystemClock.system_time();
    assert!(now >= before);
    let t0 = SystemClock.now();
    assert!(SystemClock.now() >= t0);
}
