//! The fleet storm: four workers whose retry storm is too thin for any one of them to
//! call a spike, sharing their counts through a `SharedWindowCounts`.
#![allow(dead_code)] // each test crate uses its own subset

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use guardrails::observe::retry_analytics::{
    RetryAnalytics, RetryAnalyticsConfig, RetryAnomaly, SpikeConfig,
};
use guardrails::state::SharedWindowCounts;
use guardrails::{Clock, ManualClock};

type Seen = Arc<Mutex<Vec<(usize, usize, &'static str)>>>;

/// Runs 8 calm intervals (1 retry per worker), 3 storm intervals (4 per worker: 16 for the
/// fleet against a baseline of 4), 3 calm ones; every worker flushes at the end of each.
pub(crate) fn fleet_storm(counts: Arc<dyn SharedWindowCounts>, policy: &'static str) {
    let clock = ManualClock::new();
    let ms = clock
        .system_time()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    clock.advance(Duration::from_millis(10_000 - ms % 10_000 + 1));
    let seen: Seen = Arc::default();
    let interval = Arc::new(AtomicUsize::new(0));
    let workers: Vec<RetryAnalytics> = (0..4)
        .map(|w| {
            let (seen, at) = (Arc::clone(&seen), Arc::clone(&interval));
            RetryAnalytics::new(RetryAnalyticsConfig {
                spike: SpikeConfig {
                    interval: Duration::from_secs(10),
                    baseline_intervals: 6,
                    multiplier: 3.0,
                    min_count: 5,
                },
                ..RetryAnalyticsConfig::default()
            })
            .unwrap()
            .with_clock(Arc::new(clock.clone()))
            .with_fleet(Arc::clone(&counts))
            .on_anomaly(move |_, a| {
                let kind = match a {
                    RetryAnomaly::Spike { .. } => "spike",
                    RetryAnomaly::FleetSpike { .. } => "fleet_spike",
                    _ => "other",
                };
                seen.lock()
                    .unwrap()
                    .push((w, at.load(Ordering::SeqCst), kind));
            })
        })
        .collect();
    let mut spiking = Vec::new();
    for i in 0..14 {
        interval.store(i, Ordering::SeqCst);
        let retries = if (8..11).contains(&i) { 4 } else { 1 };
        for w in &workers {
            for _ in 0..retries {
                w.retried(policy);
            }
        }
        for w in &workers {
            w.flush_fleet().unwrap();
        }
        spiking.push(
            workers
                .iter()
                .filter(|w| w.is_fleet_spiking(policy))
                .count(),
        );
        clock.advance(Duration::from_secs(10));
    }
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|(_, _, kind)| *kind == "fleet_spike"),
        "no worker alone spikes: {seen:?}"
    );
    let mut raised: Vec<usize> = seen.iter().map(|(w, _, _)| *w).collect();
    raised.sort_unstable();
    assert_eq!(
        raised,
        [0, 1, 2, 3],
        "each worker raises the storm once: {seen:?}"
    );
    assert!(
        seen.iter().all(|(_, i, _)| *i == 8 || *i == 9),
        "within one interval of the storm's start: {seen:?}"
    );
    assert!(seen.iter().any(|(_, i, _)| *i == 8), "{seen:?}");
    assert_eq!(&spiking[..8], [0; 8], "calm: {spiking:?}");
    assert_eq!(&spiking[9..11], [4, 4], "the storm: {spiking:?}");
    assert_eq!(&spiking[12..], [0, 0], "cleared after it: {spiking:?}");
}
