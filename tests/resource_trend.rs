//! Trend maths and predictive alerts on ManualClock histories; the sampler's lifecycle.

use std::sync::Arc;
use std::time::Duration;

use guardrails::prelude::*;
use guardrails::resource::{Gauge, Predictor, ResourceSampler, SamplerConfig, SamplerEvent, Trend};

fn line(slope: f64, intercept: f64, n: usize) -> Vec<(f64, f64)> {
    (0..n)
        .map(|i| (i as f64 * 10.0, intercept + slope * i as f64 * 10.0))
        .collect()
}

#[test]
fn least_squares_fits_rising_flat_and_falling_lines() {
    let rising = Trend::fit(&line(2.0, 100.0, 20)).unwrap();
    assert!((rising.slope - 2.0).abs() < 1e-9 && (rising.intercept - 100.0).abs() < 1e-6);
    // At t = 190 the value is 480; 1000 is reached 260 s later.
    assert!((rising.seconds_until(190.0, 1000.0).unwrap() - 260.0).abs() < 1e-6);
    assert_eq!(
        rising.seconds_until(190.0, 400.0),
        Some(0.0),
        "already past the limit"
    );

    let flat = Trend::fit(&line(0.0, 5.0, 10)).unwrap();
    assert_eq!(flat.seconds_until(90.0, 10.0), None);
    let falling = Trend::fit(&line(-1.0, 500.0, 10)).unwrap();
    assert_eq!(falling.seconds_until(90.0, 1000.0), None);

    assert_eq!(Trend::fit(&[(1.0, 1.0)]), None, "one point is no line");
    assert_eq!(
        Trend::fit(&[(1.0, 1.0), (1.0, 2.0)]),
        None,
        "no spread in time"
    );
}

#[test]
fn noisy_samples_still_give_the_underlying_slope() {
    let mut rng = fastrand::Rng::with_seed(3);
    let points: Vec<(f64, f64)> = (0..200)
        .map(|i| {
            let t = i as f64;
            (t, 3.0 * t + 50.0 + (rng.f64() - 0.5) * 40.0)
        })
        .collect();
    let fit = Trend::fit(&points).unwrap();
    assert!((fit.slope - 3.0).abs() < 0.1, "{}", fit.slope);
}

fn disk(used_gb: f64) -> Vec<Gauge> {
    vec![Gauge {
        resource: "disk /data".into(),
        value: used_gb * 1e9,
        limit: 100e9,
    }]
}

#[test]
fn filling_disk_raises_one_alert_and_clears_when_it_stops() {
    let clock = ManualClock::new();
    let config = SamplerConfig::new().with_horizon(Duration::from_secs(6 * 3600));
    let mut p = Predictor::new(config).unwrap();
    let mut events = Vec::new();
    // 1 GB every 10 minutes from 40 GB: 100 GB is 10 h away at first, so no alert yet.
    let mut used = 40.0;
    for _ in 0..12 {
        events.extend(p.observe(clock.now(), &disk(used)));
        clock.advance(Duration::from_secs(600));
        used += 1.0;
    }
    assert!(events.is_empty(), "{events:?}");
    // Keep filling: the alert comes once the prediction drops under 6 h (at 64 GB).
    for _ in 0..30 {
        events.extend(p.observe(clock.now(), &disk(used)));
        clock.advance(Duration::from_secs(600));
        used += 1.0;
    }
    let alerts: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            SamplerEvent::Alert(a) => Some(a.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        alerts.len(),
        1,
        "raised once, not once per sample: {events:?}"
    );
    assert!(
        alerts[0].message.starts_with("disk /data full in ~"),
        "{}",
        alerts[0].message
    );
    assert!((alerts[0].slope_per_hour - 6e9).abs() < 1e6);
    assert!(alerts[0].time_to_exhaustion <= Duration::from_secs(6 * 3600));
    assert_eq!(p.active_alerts().len(), 1);

    // The job stops writing: the trend flattens over the history and the alert clears once.
    events.clear();
    for _ in 0..400 {
        events.extend(p.observe(clock.now(), &disk(used)));
        clock.advance(Duration::from_secs(600));
    }
    let cleared = events
        .iter()
        .filter(|e| matches!(e, SamplerEvent::AlertCleared { .. }))
        .count();
    assert_eq!(cleared, 1, "{events:?}");
    assert!(p.active_alerts().is_empty());
}

#[test]
fn hysteresis_keeps_a_borderline_alert_from_flapping() {
    let clock = ManualClock::new();
    let config = SamplerConfig::new()
        .with_horizon(Duration::from_secs(3600))
        .with_min_samples(2);
    let mut p = Predictor::new(config).unwrap();
    // Growth that puts exhaustion between 1 h and 1.5 h after it first went under 1 h:
    // value rises 1 per second toward 4000 from 0; at t = 2900 the prediction is 1100 s.
    let mut events = Vec::new();
    for step in 0..=29 {
        let t = step as f64 * 100.0;
        events.extend(p.observe(
            clock.now(),
            &[Gauge {
                resource: "memory".into(),
                value: t,
                limit: 4000.0 + 2100.0,
            }],
        ));
        clock.advance(Duration::from_secs(100));
    }
    let raised = events
        .iter()
        .filter(|e| matches!(e, SamplerEvent::Alert(_)))
        .count();
    assert_eq!(raised, 1, "{events:?}");
    // Now the limit moves out so the prediction sits at ~1.2 h: inside the hysteresis band.
    events.clear();
    for step in 30..40 {
        let t = step as f64 * 100.0;
        events.extend(p.observe(
            clock.now(),
            &[Gauge {
                resource: "memory".into(),
                value: t,
                limit: t + 4300.0,
            }],
        ));
        clock.advance(Duration::from_secs(100));
    }
    assert!(events.is_empty(), "no clear inside the band: {events:?}");
    assert_eq!(p.active_alerts().len(), 1);
}

#[test]
fn invalid_sampler_config_is_refused() {
    assert!(Predictor::new(SamplerConfig::new().with_min_samples(1)).is_err());
    assert!(Predictor::new(SamplerConfig::new().with_interval(Duration::ZERO)).is_err());
}

#[test]
fn sampler_reports_and_stops_when_dropped() {
    let monitor = Arc::new(ResourceMonitor::new(ResourceLimits::new()).unwrap());
    let sampler = ResourceSampler::start(
        monitor,
        SamplerConfig::new().with_interval(Duration::from_millis(5)),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sampler.latest().is_none() && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert!(sampler.latest().is_some());
    assert!(sampler.is_running());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(sampler);
        let _ = tx.send(());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("drop stops the sampler");
}

#[cfg(feature = "async")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_sampler_reports_and_stops_when_dropped() {
    let monitor = Arc::new(ResourceMonitor::new(ResourceLimits::new()).unwrap());
    let sampler = ResourceSampler::spawn_tokio(
        monitor,
        SamplerConfig::new().with_interval(Duration::from_millis(5)),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sampler.latest().is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(sampler.latest().is_some());
    assert!(sampler.is_running());
    drop(sampler);
}

#[cfg(feature = "async")]
#[test]
fn tokio_sampler_needs_a_runtime() {
    let monitor = Arc::new(ResourceMonitor::new(ResourceLimits::new()).unwrap());
    let err = ResourceSampler::spawn_tokio(monitor, SamplerConfig::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}
