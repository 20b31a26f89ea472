//! HealthRegistry aggregation, timeouts, latency and last errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use guardrails::health::{CheckOptions, HealthRegistry};
use guardrails::prelude::*;

const T: Duration = Duration::from_secs(10);

#[test]
fn status_is_the_worst_required_check() {
    let mut r = HealthRegistry::new();
    assert_eq!(r.run().status, HealthStatus::Healthy);
    r.register("a", CheckOptions::required(T), || Ok(HealthStatus::Healthy));
    r.register("b", CheckOptions::required(T), || {
        Ok(HealthStatus::Unhealthy)
    });
    r.register("c", CheckOptions::required(T), || {
        Ok(HealthStatus::Degraded)
    });
    let report = r.run();
    assert_eq!(report.status, HealthStatus::Unhealthy);
    assert_eq!(
        report
            .checks
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
}

#[test]
fn optional_checks_count_at_most_as_degraded() {
    let mut r = HealthRegistry::new();
    r.register("model", CheckOptions::required(T), || {
        Ok(HealthStatus::Healthy)
    });
    r.register("metrics", CheckOptions::optional(T), || {
        Ok(HealthStatus::Critical)
    });
    let report = r.run();
    assert_eq!(report.status, HealthStatus::Degraded);
    assert_eq!(
        report.checks[1].status,
        HealthStatus::Critical,
        "its own status is kept"
    );
}

#[test]
fn errors_are_unhealthy_and_remembered() {
    let fail = Arc::new(AtomicBool::new(true));
    let f = Arc::clone(&fail);
    let mut r = HealthRegistry::new();
    r.register("llama", CheckOptions::required(T), move || {
        if f.load(Ordering::SeqCst) {
            Err(GuardrailError::external(std::io::Error::other(
                "503 from model server",
            )))
        } else {
            Ok(HealthStatus::Healthy)
        }
    });
    let first = r.run();
    assert_eq!(first.status, HealthStatus::Unhealthy);
    assert_eq!(
        first.checks[0].error.as_deref(),
        Some("503 from model server")
    );
    fail.store(false, Ordering::SeqCst);
    let second = r.run();
    assert_eq!(second.status, HealthStatus::Healthy);
    assert_eq!(second.checks[0].error, None);
    assert_eq!(
        second.checks[0].last_error.as_deref(),
        Some("503 from model server")
    );
}

#[test]
fn a_hung_check_times_out_without_holding_up_the_others() {
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let hold = std::sync::Mutex::new(hold);
    let mut r = HealthRegistry::new();
    r.register(
        "stuck",
        CheckOptions::required(Duration::from_millis(50)),
        move || {
            let _ = hold.lock().unwrap().recv();
            Ok(HealthStatus::Healthy)
        },
    );
    r.register("quick", CheckOptions::required(T), || {
        Ok(HealthStatus::Healthy)
    });
    let start = Instant::now();
    let report = r.run();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(report.status, HealthStatus::Unhealthy);
    let stuck = &report.checks[0];
    assert_eq!(stuck.latency, Duration::from_millis(50));
    assert!(stuck.error.as_deref().unwrap().contains("no answer within"));
    assert_eq!(report.checks[1].status, HealthStatus::Healthy);
    drop(release);
}

#[test]
fn the_resource_monitor_is_one_check() {
    let mut r = HealthRegistry::new();
    let strict = ResourceMonitor::new(ResourceLimits::new().with_max_memory_bytes(1)).unwrap();
    r.register_resources(Arc::new(strict));
    let report = r.run();
    assert_eq!(report.checks[0].name, "resources");
    if cfg!(target_os = "linux") {
        assert_eq!(report.status, HealthStatus::Critical);
    }
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["checks"][0]["name"], "resources");
}

#[cfg(feature = "async")]
#[tokio::test(start_paused = true)]
async fn async_checks_run_concurrently_with_timeouts() {
    let mut r = HealthRegistry::new();
    r.register_async(
        "qwen",
        CheckOptions::required(Duration::from_secs(5)),
        || async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(HealthStatus::Healthy)
        },
    );
    r.register_async(
        "mistral",
        CheckOptions::required(Duration::from_secs(2)),
        || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(HealthStatus::Healthy)
        },
    );
    r.register(
        "sync",
        CheckOptions::optional(Duration::from_secs(5)),
        || Ok(HealthStatus::Degraded),
    );
    let start = tokio::time::Instant::now();
    let report = r.run_async().await;
    // All at once: the slowest bound is the 2 s timeout, not the sum.
    assert!(start.elapsed() <= Duration::from_secs(3));
    assert_eq!(report.checks[0].status, HealthStatus::Healthy);
    assert_eq!(report.checks[0].latency, Duration::from_secs(1));
    assert_eq!(report.checks[1].status, HealthStatus::Unhealthy);
    assert!(
        report.checks[1]
            .error
            .as_deref()
            .unwrap()
            .contains("no answer within 2s")
    );
    assert_eq!(report.status, HealthStatus::Unhealthy);
}

#[cfg(feature = "async")]
#[test]
fn async_checks_also_run_from_blocking_code() {
    let mut r = HealthRegistry::new();
    r.register_async("llama", CheckOptions::required(T), || async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(HealthStatus::Degraded)
    });
    let report = r.run();
    assert_eq!(report.status, HealthStatus::Degraded);
}

#[cfg(target_os = "linux")]
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// A check that never returns, polled 100 times: it holds one thread, later polls answer
/// unhealthy at once saying an earlier run is still in flight, and the check runs again
/// once it returns.
#[cfg(target_os = "linux")]
#[test]
fn a_hung_check_polled_100_times_holds_one_thread() {
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let hold = std::sync::Mutex::new(hold);
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let mut r = HealthRegistry::new();
    r.register(
        "nfs",
        CheckOptions::required(Duration::from_millis(20)),
        move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = hold.lock().unwrap().recv();
            Ok(HealthStatus::Healthy)
        },
    );
    let first = r.run();
    assert_eq!(first.status, HealthStatus::Unhealthy);
    let before = thread_count();
    for _ in 0..100 {
        let report = r.run();
        assert_eq!(report.status, HealthStatus::Unhealthy);
        let err = report.checks[0].error.as_deref().unwrap();
        assert!(err.contains("earlier run has not returned"), "{err}");
    }
    // Other tests in this binary run in parallel and start threads of their own; the bound
    // is far below the 100 a thread per poll would leave.
    assert!(
        thread_count() <= before + 8,
        "{} -> {}",
        before,
        thread_count()
    );
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Released, the check returns (and returns at once from then on); a later poll runs it
    // again.
    drop(release);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = r.run();
        if report.status == HealthStatus::Healthy {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", report.checks[0].error);
        std::thread::yield_now();
    }
    assert!(runs.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

/// A sync check's latency is read from the registry's clock: a check that takes 3 s of
/// manual time reports 3 s, with no real wait.
#[test]
fn latency_comes_from_the_injected_clock() {
    let clock = ManualClock::new();
    let c = clock.clone();
    let mut r = HealthRegistry::new().with_clock(clock.clone());
    r.register("slow", CheckOptions::required(T), move || {
        c.advance(Duration::from_secs(3));
        Ok(HealthStatus::Healthy)
    });
    let report = r.run();
    assert_eq!(report.status, HealthStatus::Healthy);
    assert_eq!(report.checks[0].latency, Duration::from_secs(3));
}
