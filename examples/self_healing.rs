//! A worker under a supervisor: its retries are watched by the retry analytics; when a
//! failure storm makes them spike, the worker stops, the supervisor runs its recovery
//! action (switch to the standby endpoint) and restarts it, and the work goes on.
//!
//! `cargo run --example self_healing` (about two seconds). With `--features history` every
//! guard decision also goes to an SQLite history (`target/self_healing_history.db`), read
//! back at the end the way `guardrails history query` reads it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use guardrails::backoff::Backoff;
use guardrails::observe::retry_analytics::{RetryAnalytics, RetryAnalyticsConfig, SpikeConfig};
use guardrails::observe::supervisor::{
    RecoveryAction, Supervisor, SupervisorConfig, SupervisorStep,
};
use guardrails::resilience::{RetryConfig, RetryPolicy};
use guardrails::{ErrorClass, GuardrailError, Result};

fn main() -> Result<()> {
    let storm = Arc::new(AtomicBool::new(false));
    let spiked = Arc::new(AtomicBool::new(false));
    let on_standby = Arc::new(AtomicBool::new(false));

    let flag = Arc::clone(&spiked);
    let analytics = Arc::new(
        RetryAnalytics::new(RetryAnalyticsConfig {
            spike: SpikeConfig {
                interval: Duration::from_millis(100),
                baseline_intervals: 5,
                multiplier: 3.0,
                min_count: 5,
            },
            ..RetryAnalyticsConfig::default()
        })?
        .on_anomaly(move |policy, anomaly| {
            println!("anomaly in {policy}: {anomaly:?}");
            flag.store(true, Ordering::SeqCst);
        }),
    );
    let _watching = analytics.subscribe();

    #[cfg(feature = "history")]
    let history = {
        use guardrails::observe::history::{SqliteHistory, SqliteHistoryConfig};
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/self_healing_history.db");
        let history = Arc::new(SqliteHistory::open(&path, SqliteHistoryConfig::default())?);
        let subscription = history.subscribe();
        (history, subscription)
    };

    let policy = RetryPolicy::new(
        RetryConfig::new()
            .with_max_retries(3)
            .with_initial_delay(Duration::from_millis(1)),
    )?
    .with_name("upload");

    let standby = Arc::clone(&on_standby);
    let calmed = Arc::clone(&spiked);
    let supervisor = Supervisor::new(
        "uploader",
        SupervisorConfig {
            max_restarts: 3,
            within: Duration::from_secs(60),
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(1), 2.0),
            give_up_on_fatal: true,
        },
    )?
    .classify_with(|e| {
        if e.to_string().contains("retry storm") {
            "retry_storm".into()
        } else {
            e.kind().as_str().into()
        }
    })
    .recover(
        "retry_storm",
        RecoveryAction::new(
            "switch to the standby endpoint",
            Duration::from_secs(1),
            move |_| {
                standby.store(true, Ordering::SeqCst);
                calmed.store(false, Ordering::SeqCst);
                Ok(())
            },
        ),
    )
    .on_step(|step| match step {
        SupervisorStep::Failed { attempt, kind, .. } => {
            println!("worker run {attempt} failed: {kind}")
        }
        SupervisorStep::Action { action, ok, .. } => println!("recovery: {action} -> {ok}"),
        SupervisorStep::Restart { attempt, delay } => {
            println!("restarting (run {attempt}) after {delay:?}")
        }
        SupervisorStep::GaveUp { reason } => println!("gave up: {reason}"),
    });

    let uploaded = AtomicU32::new(0);
    let calls = AtomicU32::new(0);
    supervisor.run(|_run| {
        while uploaded.load(Ordering::SeqCst) < 2400 {
            if spiked.load(Ordering::SeqCst) {
                return Err(GuardrailError::external_with_class(
                    std::io::Error::other("retry storm on the primary endpoint"),
                    ErrorClass::Recoverable,
                ));
            }
            let n = calls.fetch_add(1, Ordering::SeqCst);
            // After 1 200 uploads the primary endpoint starts failing 80 % of first tries.
            if n == 1200 {
                storm.store(true, Ordering::SeqCst);
                println!("primary endpoint degrades");
            }
            let mut first = true;
            policy.call(|| {
                let failing = storm.load(Ordering::SeqCst)
                    && !on_standby.load(Ordering::SeqCst)
                    && !n.is_multiple_of(5);
                let fail =
                    (first && failing) || (!storm.load(Ordering::SeqCst) && n % 50 == 7 && first);
                first = false;
                if fail {
                    Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into())
                } else {
                    Ok(())
                }
            })?;
            uploaded.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_micros(500));
        }
        Ok(())
    })?;
    let report = analytics.report("upload");
    println!(
        "uploaded {} items; standby endpoint in use: {}",
        uploaded.load(Ordering::SeqCst),
        on_standby.load(Ordering::SeqCst)
    );
    if let Some(r) = report {
        println!("retry windows by attempts: {:?}", r.histogram.buckets());
    }
    #[cfg(feature = "history")]
    {
        let (history, _subscription) = history;
        history.flush()?;
        let hour = Duration::from_secs(3600);
        let retries = history.query("retry", "retry", hour)?;
        let restarts = history.query("supervisor", "restart", hour)?;
        println!(
            "history {}: {} retries and {} restarts in the last hour (guardrails history query --db {} --component supervisor --metric restart)",
            history.path().display(),
            retries.len(),
            restarts.len(),
            history.path().display()
        );
    }
    Ok(())
}
