//! The seed's worker storm, on a manual clock: normal load, then an 80 % failure storm, then
//! recovery. Real retry policies on failing closures feed the retry analytics through guard
//! events; the spike must be found within the storm's first window and nowhere else.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use guardrails::observe::retry_analytics::{
    RetryAnalytics, RetryAnalyticsConfig, RetryAnomaly, RetryAnomalyConfig, SpikeConfig,
};
use guardrails::resilience::{RetryConfig, RetryPolicy};
use guardrails::{ManualClock, Result};

fn timeout_err() -> Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into())
}

#[test]
fn a_failure_storm_is_a_spike_within_one_window_and_recovery_clears_it() {
    let clock = ManualClock::new();
    let spikes: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let phase = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (seen, at) = (Arc::clone(&spikes), Arc::clone(&phase));
    let analytics = Arc::new(
        RetryAnalytics::new(RetryAnalyticsConfig {
            spike: SpikeConfig {
                interval: Duration::from_secs(1),
                baseline_intervals: 10,
                multiplier: 3.0,
                min_count: 5,
            },
            anomalies: RetryAnomalyConfig {
                max_attempts: 3,
                ..RetryAnomalyConfig::default()
            },
        })
        .unwrap()
        .with_clock(Arc::new(clock.clone()))
        .on_anomaly(move |policy, a| {
            if let (true, RetryAnomaly::Spike { count, .. }) = (policy == "storm-worker", a) {
                seen.lock()
                    .unwrap()
                    .push((at.load(std::sync::atomic::Ordering::SeqCst), *count));
            }
        }),
    );
    let _subscription = analytics.subscribe();
    let policy = RetryPolicy::new(
        RetryConfig::new()
            .with_max_retries(3)
            .with_initial_delay(Duration::from_millis(1)),
    )
    .unwrap()
    .with_name("storm-worker")
    .with_clock(clock.clone());

    // 25 intervals: 12 normal (2 % of calls fail once), 5 storm (80 % fail, a quarter of
    // those twice), 8 normal again.
    let mut spiking_by_interval = Vec::new();
    for interval in 0..25 {
        phase.store(interval, std::sync::atomic::Ordering::SeqCst);
        let storm = (12..17).contains(&interval);
        for call in 0..100u32 {
            let failures = match (storm, call % 5, call % 20) {
                (true, 0, _) => 0,
                (true, _, 1) => 2,
                (true, _, _) => 1,
                (false, _, _) if call % 50 == 7 => 1,
                _ => 0,
            };
            let mut left = failures;
            policy
                .call(|| {
                    if left > 0 {
                        left -= 1;
                        timeout_err()
                    } else {
                        Ok(())
                    }
                })
                .unwrap();
        }
        spiking_by_interval.push(analytics.is_spiking("storm-worker"));
        clock.advance(Duration::from_secs(1));
    }

    let spikes = spikes.lock().unwrap().clone();
    assert_eq!(spikes.len(), 1, "one spike, raised once: {spikes:?}");
    assert_eq!(spikes[0].0, 12, "found in the storm's first interval");
    assert!(
        spiking_by_interval[..12].iter().all(|s| !s),
        "no false alarm under normal load"
    );
    assert!(spiking_by_interval[12], "the storm's first interval spikes");
    assert!(
        spiking_by_interval[12..17].iter().all(|s| *s),
        "the storm spikes throughout: {spiking_by_interval:?}"
    );
    // The storm's last interval closes inside interval 17; the first calm one clears it.
    assert!(
        spiking_by_interval[18..].iter().all(|s| !s),
        "recovery clears it within one window: {spiking_by_interval:?}"
    );

    let report = analytics.report("storm-worker").unwrap();
    // Normal: 20 intervals × 2 calls with one retry; storm: 5 × (80 − 5 + 5 × 2).
    assert_eq!(report.retries, 20 * 2 + 5 * (75 + 2 * 5));
    assert_eq!(report.histogram.count("2"), 20 * 2 + 5 * 75);
    assert_eq!(report.histogram.count("3"), 5 * 5);
    assert_eq!(
        report.windows_closed,
        report.histogram.buckets().iter().map(|b| b.1).sum::<u64>()
    );
    assert_eq!(report.windows_failed, 0);
}
