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

mod supervisor {
    use std::process::Command;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use guardrails::backoff::Backoff;
    use guardrails::events::{self, GuardKind};
    use guardrails::observe::supervisor::{
        ChildFailed, RecoveryAction, Supervisor, SupervisorConfig, SupervisorGaveUp, SupervisorStep,
    };
    use guardrails::process::ProcessLimits;
    use guardrails::{Clock, ErrorClass, GuardrailError, ManualClock, Result};

    /// A real child process that exits with `code`.
    fn child(code: i32) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("echo 'worker says {code}' >&2; exit {code}")]);
        cmd
    }

    fn limits() -> ProcessLimits {
        ProcessLimits::new(Duration::from_secs(30))
    }

    type Steps = Arc<Mutex<Vec<SupervisorStep>>>;

    fn supervisor(max_restarts: u32, clock: &ManualClock) -> (Supervisor, Steps) {
        let steps: Steps = Arc::default();
        let into = Arc::clone(&steps);
        let sup = Supervisor::new(
            "worker",
            SupervisorConfig {
                max_restarts,
                within: Duration::from_secs(60),
                backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 2.0),
                give_up_on_fatal: true,
            },
        )
        .unwrap()
        .with_clock(clock.clone())
        .on_step(move |s| into.lock().unwrap().push(s.clone()));
        (sup, steps)
    }

    #[test]
    fn a_crashing_child_is_restarted_with_backoff_until_it_runs() {
        let clock = ManualClock::new();
        let (sup, steps) = supervisor(5, &clock);
        let start = clock.now();
        let out = sup
            .run_process(|attempt| child(if attempt < 3 { 3 } else { 0 }), &limits())
            .unwrap();
        assert!(out.status.success());
        let failures: Vec<String> = steps
            .lock()
            .unwrap()
            .iter()
            .filter_map(|s| match s {
                SupervisorStep::Failed { kind, error, .. } => Some(format!("{kind}: {error}")),
                _ => None,
            })
            .collect();
        assert_eq!(failures.len(), 2);
        assert!(
            failures[0].starts_with("child_exit: ")
                && failures[0].contains("sh exited with code 3: worker says 3"),
            "{failures:?}"
        );
        let restarts: Vec<(u32, Duration)> = steps
            .lock()
            .unwrap()
            .iter()
            .filter_map(|s| match s {
                SupervisorStep::Restart { attempt, delay } => Some((*attempt, *delay)),
                _ => None,
            })
            .collect();
        assert_eq!(
            restarts,
            [
                (2, Duration::from_millis(100)),
                (3, Duration::from_millis(200))
            ]
        );
        assert_eq!(
            clock.now() - start,
            Duration::from_millis(300),
            "the waits were the backoff's"
        );
    }

    #[test]
    fn past_the_restart_intensity_it_gives_up_fatally_with_the_last_error() {
        let clock = ManualClock::new();
        let (sup, steps) = supervisor(3, &clock);
        let mut runs = 0;
        let err = sup
            .run_process(
                |_| {
                    runs += 1;
                    child(7)
                },
                &limits(),
            )
            .unwrap_err();
        assert_eq!(runs, 4, "the first run and three restarts");
        assert_eq!(err.class(), ErrorClass::Fatal);
        assert!(
            err.to_string()
                .contains("restart intensity exceeded: 3 restarts within 60s"),
            "{err}"
        );
        let GuardrailError::External(external) = &err else {
            panic!("{err:?}")
        };
        let gave_up = external
            .get_ref()
            .downcast_ref::<SupervisorGaveUp>()
            .expect("the cause is SupervisorGaveUp");
        let last = ChildFailed::of(&gave_up.last).expect("the last error is the child's");
        assert_eq!((last.code, last.signal), (Some(7), None));
        assert_eq!(last.stderr_tail.trim(), "worker says 7");
        assert!(matches!(
            steps.lock().unwrap().last(),
            Some(SupervisorStep::GaveUp { .. })
        ));

        // Restarts older than the window are forgotten: a failure an hour apart restarts.
        let (sup, _) = supervisor(1, &clock);
        let mut runs = 0;
        sup.run_process(
            |_| {
                runs += 1;
                match runs {
                    1 => child(1),
                    2 => {
                        clock.advance(Duration::from_secs(3600));
                        child(1)
                    }
                    _ => child(0),
                }
            },
            &limits(),
        )
        .unwrap();
        assert_eq!(runs, 3);
    }

    #[test]
    fn recovery_actions_run_in_order_until_one_succeeds_each_under_its_timeout() {
        let clock = ManualClock::new();
        let ran: Arc<Mutex<Vec<&'static str>>> = Arc::default();
        let log = |name: &'static str, ran: &Arc<Mutex<Vec<&'static str>>>| {
            let ran = Arc::clone(ran);
            move |_: &GuardrailError| -> Result<()> {
                ran.lock().unwrap().push(name);
                Ok(())
            }
        };
        let hung = {
            let ran = Arc::clone(&ran);
            move |_: &GuardrailError| -> Result<()> {
                ran.lock().unwrap().push("reallocate");
                // The fault: an action that does not return within its timeout.
                std::thread::sleep(Duration::from_millis(500));
                Ok(())
            }
        };
        let failing = {
            let ran = Arc::clone(&ran);
            move |_: &GuardrailError| -> Result<()> {
                ran.lock().unwrap().push("clear stale locks");
                Err(GuardrailError::external(std::io::Error::other(
                    "lock held by pid 4242",
                )))
            }
        };
        let (sup, steps) = supervisor(5, &clock);
        let sup = sup
            .classify_with(|e| {
                if e.to_string().contains("CUDA") {
                    "training".into()
                } else {
                    "other".into()
                }
            })
            .recover(
                "training",
                RecoveryAction::new("clear stale locks", Duration::from_secs(5), failing),
            )
            .recover(
                "training",
                RecoveryAction::new("reallocate", Duration::from_millis(50), hung),
            )
            .recover(
                "training",
                RecoveryAction::new(
                    "fall back to checkpoint",
                    Duration::from_secs(5),
                    log("fall back to checkpoint", &ran),
                ),
            )
            .recover(
                "training",
                RecoveryAction::new(
                    "restart with higher limits",
                    Duration::from_secs(5),
                    log("never", &ran),
                ),
            )
            .recover(
                "other",
                RecoveryAction::new("other", Duration::from_secs(5), log("other", &ran)),
            );
        sup.run(|attempt| {
            if attempt == 1 {
                Err(GuardrailError::external_with_class(
                    std::io::Error::other("CUDA error: out of memory"),
                    ErrorClass::Recoverable,
                ))
            } else {
                Ok(())
            }
        })
        .unwrap();
        assert_eq!(
            *ran.lock().unwrap(),
            ["clear stale locks", "reallocate", "fall back to checkpoint"]
        );
        let actions: Vec<(String, bool)> = steps
            .lock()
            .unwrap()
            .iter()
            .filter_map(|s| match s {
                SupervisorStep::Action { action, ok, .. } => Some((action.clone(), *ok)),
                _ => None,
            })
            .collect();
        assert_eq!(
            actions,
            [
                ("clear stale locks".to_string(), false),
                ("reallocate".to_string(), false),
                ("fall back to checkpoint".to_string(), true),
            ]
        );
    }

    #[test]
    fn a_child_killed_by_a_signal_gets_the_signal_recovery_and_every_step_is_a_guard_event() {
        let clock = ManualClock::new();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = Arc::clone(&seen);
        let _subscription = events::subscribe(move |e| {
            if e.guard == GuardKind::Supervisor && e.name == "signal-worker" {
                sink.lock().unwrap().push(e.decision.label().to_string());
            }
        });
        let released: Arc<Mutex<u32>> = Arc::default();
        let counter = Arc::clone(&released);
        let sup = Supervisor::new(
            "signal-worker",
            SupervisorConfig {
                max_restarts: 1,
                ..SupervisorConfig::default()
            },
        )
        .unwrap()
        .with_clock(clock.clone())
        .recover(
            "child_signal",
            RecoveryAction::new("release memory", Duration::from_secs(5), move |_| {
                *counter.lock().unwrap() += 1;
                Ok(())
            }),
        )
        .recover(
            "child_exit",
            RecoveryAction::new("never", Duration::from_secs(5), |_| {
                panic!("a signal is not an exit")
            }),
        );
        let err = sup
            .run_process(
                |_| {
                    // What the kernel's OOM killer does to a worker.
                    let mut cmd = Command::new("sh");
                    cmd.args(["-c", "kill -9 $$"]);
                    cmd
                },
                &limits(),
            )
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Fatal);
        let GuardrailError::External(external) = &err else {
            panic!("{err:?}")
        };
        let gave_up = external
            .get_ref()
            .downcast_ref::<SupervisorGaveUp>()
            .unwrap();
        assert_eq!(ChildFailed::of(&gave_up.last).unwrap().signal, Some(9));
        assert_eq!(
            *released.lock().unwrap(),
            1,
            "one failure was recovered, the second gave up"
        );
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "task_failed",
                "recovery_action",
                "restart",
                "task_failed",
                "gave_up"
            ]
        );
    }

    #[cfg(feature = "async")]
    #[tokio::test(start_paused = true)]
    async fn an_async_task_is_restarted_on_paused_time_and_its_recovery_runs_off_the_runtime() {
        let ran: Arc<Mutex<Vec<&'static str>>> = Arc::default();
        let log = Arc::clone(&ran);
        let sup = Supervisor::new(
            "async-worker",
            SupervisorConfig {
                backoff: Backoff::new(Duration::from_secs(2), Duration::from_secs(60), 2.0),
                ..SupervisorConfig::default()
            },
        )
        .unwrap()
        .recover(
            "timeout",
            RecoveryAction::new("drain the queue", Duration::from_secs(5), move |_| {
                log.lock().unwrap().push("drain the queue");
                Ok(())
            }),
        );
        let start = tokio::time::Instant::now();
        let out = sup
            .run_async(|attempt| async move {
                if attempt < 3 {
                    Err(GuardrailError::Timeout {
                        operation: "fetch batch".into(),
                        elapsed: Duration::from_secs(1),
                        limit: Duration::from_secs(1),
                    })
                } else {
                    Ok(attempt)
                }
            })
            .await
            .unwrap();
        assert_eq!(out, 3);
        assert_eq!(*ran.lock().unwrap(), ["drain the queue", "drain the queue"]);
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(2 + 4),
            "the backoff's waits, on paused time"
        );
    }
}

#[test]
fn the_history_records_guard_decisions_from_real_guards() {
    use guardrails::observe::history::{HistoryConfig, MetricsHistory};
    use guardrails::resilience::{RateLimitConfig, RateLimiter};

    let clock = ManualClock::new();
    let history = Arc::new(MetricsHistory::new(HistoryConfig::default()).with_clock(clock.clone()));
    let _subscription = history.subscribe();
    let limiter = RateLimiter::new(
        "history-rate",
        RateLimitConfig::per(1, Duration::from_secs(60)),
    )
    .unwrap()
    .with_clock(clock.clone());
    limiter.check().unwrap();
    assert!(limiter.check().is_err());
    clock.advance(Duration::from_secs(5));
    assert!(limiter.check().is_err());
    history.record_metric("training", "accuracy", 0.95, &[("run", "r1")]);

    let refused: Vec<_> = history
        .query("rate_limiter", "rate_limited", Duration::from_secs(60))
        .into_iter()
        .filter(|s| {
            s.tags
                .contains(&("name".to_string(), "history-rate".to_string()))
        })
        .collect();
    assert_eq!(refused.len(), 2);
    assert_eq!(
        refused[1].at.duration_since(refused[0].at).unwrap(),
        Duration::from_secs(5)
    );
    assert_eq!(
        history
            .query("rate_limiter", "rate_limited", Duration::from_secs(1))
            .len(),
        1
    );
    assert_eq!(
        history.query("training", "accuracy", Duration::from_secs(1))[0].value,
        0.95
    );
}

#[path = "common/retry_fleet.rs"]
mod retry_fleet;

#[test]
fn a_storm_spread_over_a_fleet_is_a_fleet_spike_though_no_worker_spikes() {
    retry_fleet::fleet_storm(
        Arc::new(guardrails::state::MemoryWindowCounts::new()),
        "fleet-memory",
    );
}
