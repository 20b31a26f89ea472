//! Exactly-once effects on the memory and SQLite stores: cached results, mismatches, leases
//! held and taken over on a manual clock, stale fences refused, errors released or recorded,
//! the local cache, and races between 16 threads and between 8 processes.

#![cfg(unix)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use guardrails::state::{
    Claim, ClaimRequest, Fence, Idempotency, IdempotencyConfig, MemoryStore, Outcome, SqliteStore,
    StateStore, fingerprint,
};
use guardrails::{ErrorClass, GuardrailError, ManualClock, Result};

/// Both stores, on one manual clock.
fn stores(dir: &Path, clock: &ManualClock) -> Vec<(&'static str, Arc<dyn StateStore>)> {
    vec![
        (
            "memory",
            Arc::new(MemoryStore::new().with_clock(clock.clone())),
        ),
        (
            "sqlite",
            Arc::new(
                SqliteStore::open(dir.join("state.db"))
                    .unwrap()
                    .with_clock(clock.clone()),
            ),
        ),
    ]
}

fn config() -> IdempotencyConfig {
    IdempotencyConfig::new()
        .with_lease(Duration::from_secs(10))
        .with_ttl(Duration::from_secs(3600))
        .with_local_cache(0)
}

#[test]
fn a_completed_key_is_served_and_another_payload_is_a_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    for (name, store) in stores(dir.path(), &clock) {
        let a = Idempotency::with_config(store.clone(), config()).unwrap();
        let b = Idempotency::with_config(store, config()).unwrap();
        let key = a.key("ledger", "row-1");
        let runs = AtomicUsize::new(0);
        let effect = |_: Fence| -> Result<u32> {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(7)
        };
        assert_eq!(
            a.run(&key, "p1", effect).unwrap(),
            Outcome::Executed(7),
            "{name}"
        );
        assert_eq!(
            b.run(&key, "p1", effect).unwrap(),
            Outcome::Cached(7),
            "{name}"
        );
        assert_eq!(
            b.run(&key, "p2", effect).unwrap(),
            Outcome::Mismatch {
                stored: "p1".into()
            },
            "{name}"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{name}");

        // Past the TTL the key is new again.
        clock.advance(Duration::from_secs(3601));
        assert_eq!(
            b.run(&key, "p2", effect).unwrap(),
            Outcome::Executed(7),
            "{name}"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 2, "{name}");
    }
}

#[test]
fn a_live_lease_holds_and_an_expired_one_is_taken_over_with_a_higher_fence() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    for (name, store) in stores(dir.path(), &clock) {
        let a = Idempotency::with_config(store.clone(), config()).unwrap();
        let b = Idempotency::with_config(store.clone(), config()).unwrap();
        let key = a.key("charge", "card-5");
        let outcome = a.run(&key, "p", |fence_a| -> Result<u64> {
            // While a runs, b is told to come back when a's lease ends.
            match b.run(&key, "p", |_| -> Result<u64> { panic!("b must not run") })? {
                Outcome::InProgress { retry_after } => {
                    assert_eq!(retry_after, Duration::from_secs(10), "{name}")
                }
                other => panic!("{name}: {other:?}"),
            }
            // a stalls past its lease: b takes the key over and completes it.
            clock.advance(Duration::from_secs(11));
            let taken = b.run(&key, "p", |fence_b| {
                assert!(fence_b > fence_a, "{name}: {fence_b} after {fence_a}");
                Ok(fence_b.0)
            })?;
            assert!(matches!(taken, Outcome::Executed(_)), "{name}: {taken:?}");
            Ok(fence_a.0)
        });
        // a's result is refused by the fence: the stored result is b's.
        let err = outcome.unwrap_err();
        assert!(
            err.to_string().contains("no longer holds the key"),
            "{name}: {err}"
        );
        match b.run(&key, "p", |_| -> Result<u64> { Ok(0) }).unwrap() {
            Outcome::Cached(fence) => assert!(fence > 1, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[derive(Debug)]
struct Flaky;
impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the ledger timed out")
    }
}
impl std::error::Error for Flaky {}

#[test]
fn a_retryable_error_releases_the_claim_and_a_fatal_one_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    for (name, store) in stores(dir.path(), &clock) {
        let fx = Idempotency::with_config(store, config()).unwrap();
        let key = fx.key("ledger", "row-2");
        let err = fx
            .run(&key, "p", |_| -> Result<u8> {
                Err(GuardrailError::external_with_class(
                    Flaky,
                    ErrorClass::Retryable,
                ))
            })
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Retryable);
        // Released: the next call runs it, without waiting out the lease.
        assert_eq!(
            fx.run(&key, "p", |_| Ok(1u8)).unwrap(),
            Outcome::Executed(1),
            "{name}"
        );

        let key = fx.key("ledger", "row-3");
        let _ = fx
            .run(&key, "p", |_| -> Result<u8> {
                Err(GuardrailError::external(Flaky))
            })
            .unwrap_err();
        match fx.run(&key, "p", |_| Ok(1u8)).unwrap() {
            Outcome::Failed { message } => assert!(message.contains("timed out"), "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn the_same_owner_claiming_again_gets_its_own_claim() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    for (name, store) in stores(dir.path(), &clock) {
        let request = ClaimRequest {
            key: "effect:x:1",
            fingerprint: "p",
            owner: "worker-1",
            lease: Duration::from_secs(10),
            ttl: Duration::from_secs(100),
        };
        let first = store.claim(&request).unwrap();
        let again = store.claim(&request).unwrap();
        assert_eq!(first, again, "{name}: a retried claim is re-entrant");
        let other = store
            .claim(&ClaimRequest {
                owner: "worker-2",
                ..request
            })
            .unwrap();
        assert!(
            matches!(other, Claim::InProgress { .. }),
            "{name}: {other:?}"
        );
        let long = "k".repeat(600);
        assert!(
            store
                .claim(&ClaimRequest {
                    key: &long,
                    ..request
                })
                .is_err()
        );
    }
}

/// Counts the claims that reach the store.
#[derive(Debug)]
struct Counting(Arc<dyn StateStore>, AtomicUsize);
impl StateStore for Counting {
    fn claim(&self, r: &ClaimRequest<'_>) -> Result<Claim> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.claim(r)
    }
    fn renew(&self, k: &str, f: Fence, l: Duration) -> Result<bool> {
        self.0.renew(k, f, l)
    }
    fn complete(&self, k: &str, f: Fence, r: &[u8], t: Duration) -> Result<()> {
        self.0.complete(k, f, r, t)
    }
    fn fail(&self, k: &str, f: Fence, m: &str, t: Duration) -> Result<()> {
        self.0.fail(k, f, m, t)
    }
    fn release(&self, k: &str, f: Fence) -> Result<()> {
        self.0.release(k, f)
    }
}

#[test]
fn a_completed_key_is_answered_from_the_local_cache() {
    let store = Arc::new(Counting(Arc::new(MemoryStore::new()), AtomicUsize::new(0)));
    let fx = Idempotency::with_config(store.clone(), config().with_local_cache(100)).unwrap();
    let payload = serde_json::json!({"order": 3, "items": [1, 2]});
    let fp = fingerprint(&payload);
    let key = fx.key("ship", "3");
    assert_eq!(
        fx.run(&key, &fp, |_| Ok("sent".to_string())).unwrap(),
        Outcome::Executed("sent".into())
    );
    for _ in 0..10 {
        assert_eq!(
            fx.run(&key, &fp, |_| Ok(String::new())).unwrap(),
            Outcome::Cached("sent".into())
        );
    }
    assert!(matches!(
        fx.run(&key, "other", |_| Ok(String::new())).unwrap(),
        Outcome::Mismatch { .. }
    ));
    assert_eq!(store.1.load(Ordering::SeqCst), 1);
}

#[test]
fn the_sqlite_store_survives_a_reopen_and_refuses_a_foreign_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let key = {
        let fx = Idempotency::new(Arc::new(SqliteStore::open(&path).unwrap()));
        let key = fx.key("email", "u1");
        fx.run(&key, "p", |_| Ok(vec![1, 2, 3])).unwrap();
        key
    };
    let fx = Idempotency::new(Arc::new(SqliteStore::open(&path).unwrap()));
    assert_eq!(
        fx.run(&key, "p", |_| Ok(vec![])).unwrap(),
        Outcome::Cached(vec![1, 2, 3])
    );

    let foreign = dir.path().join("other.db");
    let conn = rusqlite::Connection::open(&foreign).unwrap();
    conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    drop(conn);
    let err = SqliteStore::open(&foreign).unwrap_err();
    assert!(err.to_string().contains("another program"), "{err}");
    std::fs::write(&foreign, b"not a database at all, just text").unwrap();
    assert!(SqliteStore::open(&foreign).is_err());
}

/// 16 threads claim the same keys; every effect runs exactly once.
fn race_threads(store: Arc<dyn StateStore>, keys: usize) -> HashMap<usize, usize> {
    let runs: Vec<AtomicUsize> = (0..keys).map(|_| AtomicUsize::new(0)).collect();
    std::thread::scope(|s| {
        for t in 0..16 {
            let store = store.clone();
            let runs = &runs;
            s.spawn(move || {
                let fx = Idempotency::with_config(store, config()).unwrap();
                for i in 0..keys {
                    // Each thread walks the keys from another place, so they collide.
                    let k = (i + t * 61) % keys;
                    let key = fx.key("race", &k.to_string());
                    loop {
                        match fx.run(&key, "p", |_| {
                            runs[k].fetch_add(1, Ordering::SeqCst);
                            Ok(k)
                        }) {
                            Ok(Outcome::Executed(_) | Outcome::Cached(_)) => break,
                            Ok(Outcome::InProgress { .. }) => std::thread::yield_now(),
                            other => panic!("{other:?}"),
                        }
                    }
                }
            });
        }
    });
    let mut counts = HashMap::new();
    for r in &runs {
        *counts.entry(r.load(Ordering::SeqCst)).or_insert(0) += 1;
    }
    counts
}

#[test]
fn sixteen_threads_run_each_effect_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let counts = race_threads(Arc::new(MemoryStore::new()), 1000);
    assert_eq!(counts, HashMap::from([(1, 1000)]));
    let sqlite = SqliteStore::open(dir.path().join("state.db")).unwrap();
    let counts = race_threads(Arc::new(sqlite), 200);
    assert_eq!(counts, HashMap::from([(1, 200)]));
}

/// The child of the process race: claims every key of the shared store, appending the key
/// to its own log each time it runs the effect.
#[test]
#[ignore = "run by eight_processes_run_each_effect_exactly_once"]
fn race_child() {
    let db = std::env::var("STATE_DB").unwrap();
    let log = std::env::var("STATE_LOG").unwrap();
    let keys: usize = std::env::var("STATE_KEYS").unwrap().parse().unwrap();
    let me: usize = std::env::var("STATE_ME").unwrap().parse().unwrap();
    let fx = Idempotency::with_config(Arc::new(SqliteStore::open(db).unwrap()), config()).unwrap();
    let mut ran = Vec::new();
    for i in 0..keys {
        let k = (i + me * 97) % keys;
        let key = fx.key("race", &k.to_string());
        loop {
            match fx.run(&key, "p", |_| {
                ran.push(k.to_string());
                Ok(k)
            }) {
                Ok(Outcome::Executed(_) | Outcome::Cached(_)) => break,
                Ok(Outcome::InProgress { .. }) => std::thread::yield_now(),
                other => panic!("{other:?}"),
            }
        }
    }
    std::fs::write(log, ran.join("\n")).unwrap();
}

#[test]
fn eight_processes_run_each_effect_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    SqliteStore::open(&db).unwrap();
    let keys = 300;
    let children: Vec<_> = (0..8)
        .map(|me| {
            common::process::rerun_ignored("race_child")
                .env("STATE_DB", &db)
                .env("STATE_LOG", dir.path().join(format!("log{me}")))
                .env("STATE_KEYS", keys.to_string())
                .env("STATE_ME", me.to_string())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let mut runs: HashMap<String, usize> = HashMap::new();
    for me in 0..8 {
        let log = std::fs::read_to_string(dir.path().join(format!("log{me}"))).unwrap();
        for k in log.lines().filter(|l| !l.is_empty()) {
            *runs.entry(k.to_string()).or_insert(0) += 1;
        }
    }
    assert_eq!(runs.len(), keys, "every key ran");
    assert!(runs.values().all(|&n| n == 1), "a key ran twice: {runs:?}");
}
