//! Exactly-once effects on a real `redis-server` (each test starts its own): cached results
//! and mismatches, leases held and taken over, stale fences refused, retried completions,
//! AUTH without leaking the password, the server killed and back, `SCRIPT FLUSH`, a dropped
//! connection, and races between 16 threads and between 8 processes.

#![cfg(unix)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::redis::RedisServer;
use guardrails::state::{
    Claim, ClaimRequest, Fence, Idempotency, IdempotencyConfig, Outcome, RedisConfig, RedisStore,
    StateStore,
};
use guardrails::{ErrorClass, GuardrailError, Result};

fn config() -> IdempotencyConfig {
    IdempotencyConfig::new()
        .with_lease(Duration::from_secs(10))
        .with_ttl(Duration::from_secs(3600))
        .with_local_cache(0)
}

fn store(server: &RedisServer) -> Arc<RedisStore> {
    Arc::new(RedisStore::connect(&server.url(), RedisConfig::default()).unwrap())
}

/// Moves the key's lease end into the past, as a worker stalled past its lease would see
/// it: the server's clock cannot be advanced, the record can.
fn age_lease(server: &RedisServer, key: &str) {
    let mut c = server.client();
    redis::cmd("HSET")
        .arg(key)
        .arg("l")
        .arg("1")
        .query::<i64>(&mut c)
        .unwrap();
}

fn request<'a>(key: &'a str, owner: &'a str) -> ClaimRequest<'a> {
    ClaimRequest {
        key,
        fingerprint: "p",
        owner,
        lease: Duration::from_secs(10),
        ttl: Duration::from_secs(3600),
    }
}

#[test]
fn a_completed_key_is_served_and_another_payload_is_a_mismatch() {
    let server = RedisServer::start();
    let s = store(&server);
    let a = Idempotency::with_config(s.clone(), config()).unwrap();
    let b = Idempotency::with_config(s, config()).unwrap();
    let key = a.key("ledger", "row-1");
    let runs = AtomicUsize::new(0);
    let effect = |_: Fence| -> Result<u32> {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok(7)
    };
    assert_eq!(a.run(&key, "p1", effect).unwrap(), Outcome::Executed(7));
    assert_eq!(b.run(&key, "p1", effect).unwrap(), Outcome::Cached(7));
    assert_eq!(
        b.run(&key, "p2", effect).unwrap(),
        Outcome::Mismatch {
            stored: "p1".into()
        }
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // The key's Redis TTL is the record's: Redis forgets it by itself.
    let mut c = server.client();
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut c).unwrap();
    assert!((3_590_000..=3_600_000).contains(&ttl), "{ttl}");
}

#[test]
fn a_live_lease_holds_and_an_expired_one_is_taken_over_with_a_higher_fence() {
    let server = RedisServer::start();
    let s = store(&server);
    let a = Idempotency::with_config(s.clone(), config()).unwrap();
    let b = Idempotency::with_config(s.clone(), config()).unwrap();
    let key = a.key("charge", "card-5");
    let outcome = a.run(&key, "p", |fence_a| -> Result<u64> {
        match b.run(&key, "p", |_| -> Result<u64> { panic!("b must not run") })? {
            Outcome::InProgress { retry_after } => {
                assert!(
                    retry_after > Duration::from_secs(9) && retry_after <= Duration::from_secs(10),
                    "{retry_after:?}"
                )
            }
            other => panic!("{other:?}"),
        }
        // a stalls past its lease: b takes the key over and completes it.
        age_lease(&server, &key);
        let taken = b.run(&key, "p", |fence_b| {
            assert!(fence_b > fence_a, "{fence_b} after {fence_a}");
            Ok(fence_b.0)
        })?;
        assert!(matches!(taken, Outcome::Executed(_)), "{taken:?}");
        Ok(fence_a.0)
    });
    let err = outcome.unwrap_err();
    assert!(err.to_string().contains("no longer holds the key"), "{err}");
    assert_eq!(err.class(), ErrorClass::Fatal);
    match b.run(&key, "p", |_| -> Result<u64> { Ok(0) }).unwrap() {
        Outcome::Cached(fence) => assert!(fence > 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn fences_grow_across_release_and_expiry_and_a_retried_completion_is_accepted() {
    let server = RedisServer::start();
    let s = store(&server);
    let key = "effect:t:1";
    let Claim::Acquired { fence: f1, .. } = s.claim(&request(key, "w1")).unwrap() else {
        panic!()
    };
    // The same owner asking again (its first answer lost) gets its own claim back.
    assert_eq!(
        s.claim(&request(key, "w1")).unwrap(),
        Claim::Acquired {
            fence: f1,
            takeover: false
        }
    );
    s.release(key, f1).unwrap();
    let Claim::Acquired {
        fence: f2,
        takeover,
    } = s.claim(&request(key, "w2")).unwrap()
    else {
        panic!()
    };
    assert!(f2 > f1 && !takeover, "{f2} after {f1}");
    // The released fence can no longer finish the key.
    let err = s
        .complete(key, f1, b"late", Duration::from_secs(60))
        .unwrap_err();
    assert!(err.to_string().contains(&format!("fence {f1}")), "{err}");
    assert!(err.to_string().contains(&format!("fence {f2}")), "{err}");
    s.complete(key, f2, b"done", Duration::from_secs(60))
        .unwrap();
    // A completion retried after a lost answer succeeds without a write.
    s.complete(key, f2, b"done", Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        s.claim(&request(key, "w3")).unwrap(),
        Claim::Completed {
            result: b"done".to_vec()
        }
    );
    // Renewal holds only for the live fence.
    assert!(!s.renew(key, f2, Duration::from_secs(5)).unwrap());
    // A key Redis forgot is claimed afresh with a fence above the old ones.
    let mut c = server.client();
    redis::cmd("DEL").arg(key).query::<i64>(&mut c).unwrap();
    let Claim::Acquired { fence: f3, .. } = s.claim(&request(key, "w4")).unwrap() else {
        panic!()
    };
    assert!(f3 > f2, "{f3} after {f2}");
    assert!(s.renew(key, f3, Duration::from_secs(5)).unwrap());
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
    let server = RedisServer::start();
    let fx = Idempotency::with_config(store(&server), config()).unwrap();
    let key = fx.key("mail", "u1");
    let err = fx
        .run(&key, "p", |_| -> Result<()> {
            Err(GuardrailError::external_with_class(
                Flaky,
                ErrorClass::Retryable,
            ))
        })
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Retryable);
    assert_eq!(fx.run(&key, "p", |_| Ok(1)).unwrap(), Outcome::Executed(1));
    let key = fx.key("mail", "u2");
    fx.run(&key, "p", |_| -> Result<()> {
        Err(GuardrailError::external(Flaky))
    })
    .unwrap_err();
    match fx.run(&key, "p", |_| Ok(1)).unwrap() {
        Outcome::Failed { message } => assert!(message.contains("ledger timed out"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn auth_works_and_the_password_never_shows() {
    let secret = "s3cret-pw-for-test";
    let server = RedisServer::with_args(&["--save", "", "--requirepass", secret]);
    let s = RedisStore::connect(&server.url_with(Some(secret)), RedisConfig::default()).unwrap();
    assert!(matches!(
        s.claim(&request("effect:a:1", "w")).unwrap(),
        Claim::Acquired { .. }
    ));
    let shown = format!("{s:?} {:?}", s.connection());
    assert!(!shown.contains(secret), "{shown}");
    assert!(
        shown.contains(&format!("127.0.0.1:{}", server.port)),
        "{shown}"
    );

    let wrong = "not-the-password";
    let err = RedisStore::connect(&server.url_with(Some(wrong)), RedisConfig::default())
        .and_then(|s| s.claim(&request("effect:a:2", "w")))
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal, "{err}");
    let text = format!("{err} {err:?}");
    assert!(!text.contains(wrong), "{text}");
    let err = RedisStore::connect(&server.url(), RedisConfig::default())
        .and_then(|s| s.claim(&request("effect:a:3", "w")))
        .unwrap_err();
    assert!(err.to_string().to_lowercase().contains("auth"), "{err}");
}

fn quick() -> RedisConfig {
    RedisConfig::default()
        .with_connect_timeout(Duration::from_millis(300))
        .with_response_timeout(Duration::from_millis(300))
        .with_attempts(2)
}

#[test]
fn redis_down_fails_closed_or_open_and_recovers_when_it_returns() {
    let unreachable = format!("redis://127.0.0.1:{}/0", common::redis::free_port());
    let err = RedisStore::connect(&unreachable, quick()).unwrap_err();
    assert_eq!(err.class(), ErrorClass::Retryable, "{err}");

    let mut server = RedisServer::with_args(&["--appendonly", "yes", "--appendfsync", "always"]);
    let s = Arc::new(RedisStore::connect(&server.url(), quick()).unwrap());
    let closed = Idempotency::with_config(s.clone(), config()).unwrap();
    let open = Idempotency::with_config(s.clone(), config().with_fail_open(true)).unwrap();
    let done = closed.key("ledger", "before");
    assert_eq!(
        closed.run(&done, "p", |_| Ok(1)).unwrap(),
        Outcome::Executed(1)
    );

    server.kill();
    let runs = AtomicUsize::new(0);
    let key = closed.key("ledger", "during");
    let err = closed
        .run(&key, "p", |_| {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(2)
        })
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Retryable, "{err}");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "fail closed: the effect did not run"
    );
    let outcome = open
        .run(&key, "p", |_| {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(2)
        })
        .unwrap();
    assert_eq!(outcome, Outcome::Executed(2));
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "fail open: it ran unguarded"
    );

    // Back with its AOF: the completed key is still there and new claims work.
    server.restart();
    let mut answered = None;
    for _ in 0..50 {
        match closed.run(&done, "p", |_| Ok(9)) {
            Ok(o) => {
                answered = Some(o);
                break;
            }
            Err(e) if e.class() == ErrorClass::Retryable => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(answered, Some(Outcome::Cached(1)));
    assert_eq!(
        closed.run(&key, "p", |_| Ok(3)).unwrap(),
        Outcome::Executed(3)
    );
}

#[test]
fn scripts_reload_after_script_flush_and_a_dropped_connection_is_retried() {
    let server = RedisServer::start();
    let s = store(&server);
    assert!(matches!(
        s.claim(&request("effect:f:1", "w")).unwrap(),
        Claim::Acquired { .. }
    ));
    let mut c = server.client();
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query::<()>(&mut c)
        .unwrap();
    assert!(matches!(
        s.claim(&request("effect:f:2", "w")).unwrap(),
        Claim::Acquired { .. }
    ));
    // Every other client's connection dropped, as a server idle timeout or a proxy does:
    // the next operation still answers.
    let me: i64 = redis::cmd("CLIENT").arg("ID").query(&mut c).unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut c)
        .unwrap();
    assert!(killed >= 1 && me > 0, "{killed}");
    assert!(matches!(
        s.claim(&request("effect:f:3", "w")).unwrap(),
        Claim::Acquired { .. }
    ));
}

/// 16 threads claim the same keys; every effect runs exactly once.
#[test]
fn sixteen_threads_run_each_effect_exactly_once() {
    let server = RedisServer::start();
    let store: Arc<dyn StateStore> = store(&server);
    let keys = 1000;
    let runs: Vec<AtomicUsize> = (0..keys).map(|_| AtomicUsize::new(0)).collect();
    std::thread::scope(|s| {
        for t in 0..16 {
            let store = store.clone();
            let runs = &runs;
            s.spawn(move || {
                let fx = Idempotency::with_config(store, config()).unwrap();
                for i in 0..keys {
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
    assert_eq!(counts, HashMap::from([(1, keys)]));
}

#[test]
#[ignore = "run by eight_processes_run_each_effect_exactly_once"]
fn race_child() {
    let url = std::env::var("STATE_URL").unwrap();
    let log = std::env::var("STATE_LOG").unwrap();
    let keys: usize = std::env::var("STATE_KEYS").unwrap().parse().unwrap();
    let me: usize = std::env::var("STATE_ME").unwrap().parse().unwrap();
    let s = RedisStore::connect(&url, RedisConfig::default()).unwrap();
    let fx = Idempotency::with_config(Arc::new(s), config()).unwrap();
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
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let keys = 1000;
    let children: Vec<_> = (0..8)
        .map(|me| {
            common::process::rerun_ignored("race_child")
                .env("STATE_URL", server.url())
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
    assert!(runs.values().all(|&n| n == 1), "a key ran twice");
}

mod safety {
    use super::*;
    use guardrails::health::HealthRegistry;
    use guardrails::resource::HealthStatus;
    use guardrails::state::{RedisConnection, RedisSafety, SafetyLevel, SafetyReport};

    fn check(server: &RedisServer, safety: &RedisSafety) -> SafetyReport {
        let conn = RedisConnection::connect(&server.url(), RedisConfig::default()).unwrap();
        safety.check(&conn).unwrap()
    }

    fn level(r: &SafetyReport, check: &str) -> SafetyLevel {
        r.finding(check).unwrap().level
    }

    #[test]
    fn a_persistent_noeviction_master_is_ok() {
        let server = RedisServer::with_args(&[
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
        ]);
        let r = check(&server, &RedisSafety::new());
        assert_eq!(r.level, SafetyLevel::Ok, "{r:#?}");
        assert!(r.safe);
        assert_eq!(r.checks.len(), 4);
        assert_eq!(r.health(), HealthStatus::Healthy);
    }

    #[test]
    fn unsafe_servers_get_the_right_levels() {
        // No persistence at all, evicting any key.
        let server = RedisServer::with_args(&[
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "allkeys-lru",
        ]);
        let r = check(&server, &RedisSafety::new());
        assert_eq!(level(&r, "persistence"), SafetyLevel::Error, "{r:#?}");
        assert_eq!(level(&r, "maxmemory_policy"), SafetyLevel::Error, "{r:#?}");
        assert_eq!(level(&r, "role"), SafetyLevel::Ok);
        assert!(!r.safe);
        assert_eq!(r.health(), HealthStatus::Unhealthy);

        // RDB snapshots only, evicting keys with a TTL, and memory nearly full.
        let server = RedisServer::with_args(&[
            "--save",
            "900 1",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "volatile-lru",
            "--maxmemory",
            "1mb",
        ]);
        let r = check(&server, &RedisSafety::new());
        assert_eq!(level(&r, "persistence"), SafetyLevel::Warning, "{r:#?}");
        assert_eq!(level(&r, "maxmemory_policy"), SafetyLevel::Error, "{r:#?}");
        assert!(
            level(&r, "memory_headroom") >= SafetyLevel::Warning,
            "a server at its baseline uses most of 1 MB: {r:#?}"
        );

        // appendfsync no: the OS decides.
        let server = RedisServer::with_args(&["--appendonly", "yes", "--appendfsync", "no"]);
        let r = check(&server, &RedisSafety::new());
        assert_eq!(level(&r, "persistence"), SafetyLevel::Warning, "{r:#?}");
    }

    #[test]
    fn a_replica_is_critical_and_cannot_be_acknowledged() {
        let master = RedisServer::with_args(&["--appendonly", "yes"]);
        let port = master.port.to_string();
        let replica =
            RedisServer::with_args(&["--appendonly", "yes", "--replicaof", "127.0.0.1", &port]);
        let safety = RedisSafety::new().acknowledge("role", "we only read");
        let r = check(&replica, &safety);
        let role = r.finding("role").unwrap();
        assert_eq!(role.level, SafetyLevel::Critical, "{r:#?}");
        assert!(!role.acknowledged);
        assert!(role.message.contains(&port), "{}", role.message);
        assert_eq!(r.health(), HealthStatus::Critical);
    }

    #[test]
    fn an_acknowledged_error_is_a_warning_and_startup_validation_refuses_the_rest() {
        let server = RedisServer::with_args(&["--save", "", "--appendonly", "no"]);
        let conn = RedisConnection::connect(&server.url(), RedisConfig::default()).unwrap();
        let err = RedisSafety::new().validate_on_startup(&conn).unwrap_err();
        assert!(err.to_string().contains("persistence"), "{err}");
        assert_eq!(err.class(), ErrorClass::Fatal);

        let safety = RedisSafety::new().acknowledge("persistence", "a scratch Redis");
        let r = safety.validate_on_startup(&conn).unwrap();
        let p = r.finding("persistence").unwrap();
        assert_eq!(p.level, SafetyLevel::Warning);
        assert!(
            p.acknowledged && p.message.contains("a scratch Redis"),
            "{p:?}"
        );
        assert!(r.safe);

        let err = RedisSafety::new()
            .acknowledge("persistance", "typo")
            .check(&conn)
            .unwrap_err();
        assert!(err.to_string().contains("persistance"), "{err}");

        // As a health check.
        let mut registry = HealthRegistry::new();
        RedisSafety::new().register(&mut registry, "redis", conn);
        let report = registry.run();
        assert_eq!(report.checks[0].status, HealthStatus::Unhealthy);
    }

    #[test]
    fn a_server_that_hides_config_is_unknown_not_an_error() {
        let server =
            RedisServer::with_args(&["--appendonly", "yes", "--rename-command", "CONFIG", ""]);
        let r = check(&server, &RedisSafety::new());
        assert_eq!(level(&r, "persistence"), SafetyLevel::Unknown, "{r:#?}");
        // INFO still tells the eviction policy and the role.
        assert_eq!(level(&r, "maxmemory_policy"), SafetyLevel::Ok, "{r:#?}");
        assert_eq!(level(&r, "role"), SafetyLevel::Ok);
        assert!(r.safe);
    }
}

mod rate {
    use super::*;
    use guardrails::resilience::{RateLimitConfig, RateLimiter};
    use guardrails::state::{RedisConnection, RedisRateLimit};

    fn fleet(server: &RedisServer, config: RedisConfig) -> Arc<RedisRateLimit> {
        Arc::new(RedisRateLimit::new(
            RedisConnection::connect(&server.url(), config).unwrap(),
        ))
    }

    fn allowed(limiter: &RateLimiter, calls: usize) -> usize {
        (0..calls)
            .filter(|_| match limiter.check() {
                Ok(()) => true,
                Err(GuardrailError::RateLimited { .. }) => false,
                Err(e) => panic!("{e}"),
            })
            .count()
    }

    #[test]
    fn workers_share_one_allowance_and_get_the_exact_retry_after() {
        let server = RedisServer::start();
        let config = RateLimitConfig::per(10, Duration::from_secs(60)).with_burst(5);
        let a = RateLimiter::shared(
            "llm",
            config.clone(),
            fleet(&server, RedisConfig::default()),
        )
        .unwrap();
        let b = RateLimiter::shared("llm", config, fleet(&server, RedisConfig::default())).unwrap();
        assert_eq!(allowed(&a, 3) + allowed(&b, 3), 5, "a burst of 5 for both");
        match b.check() {
            Err(GuardrailError::RateLimited { retry_after, .. }) => assert!(
                retry_after > Duration::from_millis(5_900) && retry_after <= Duration::from_secs(6),
                "one interval (6 s) minus the time since the burst: {retry_after:?}"
            ),
            other => panic!("{other:?}"),
        }
        // One interval later (the stored arrival time moved back 6 s, as the server's
        // clock cannot be advanced) exactly one more call is allowed.
        let key = "{guardrails:rate:llm}";
        let mut c = server.client();
        let tat: i64 = redis::cmd("GET").arg(key).query(&mut c).unwrap();
        redis::cmd("SET")
            .arg(key)
            .arg(tat - 6_000_000)
            .arg("KEEPTTL")
            .query::<()>(&mut c)
            .unwrap();
        assert_eq!(allowed(&a, 1) + allowed(&b, 1), 1);
        assert!(!a.is_local_only());
        // The key expires once the allowance is full again: nothing is left behind.
        let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut c).unwrap();
        assert!(ttl > 0 && ttl <= 30_001, "{ttl}");
        // This redis-server has no GCRA command: the Lua script ran.
        let probe = RedisRateLimit::new(
            RedisConnection::connect(&server.url(), RedisConfig::default()).unwrap(),
        );
        RateLimiter::shared(
            "other",
            RateLimitConfig::per(1, Duration::from_secs(1)),
            Arc::new(probe.clone()),
        )
        .unwrap()
        .check()
        .unwrap();
        assert!(!probe.uses_native());
    }

    #[test]
    fn sixteen_threads_on_four_connections_get_exactly_the_burst() {
        let server = RedisServer::start();
        let config = RateLimitConfig::per(1, Duration::from_secs(3600)).with_burst(100);
        let limiters: Vec<RateLimiter> = (0..4)
            .map(|_| {
                RateLimiter::shared(
                    "batch",
                    config.clone(),
                    fleet(&server, RedisConfig::default()),
                )
                .unwrap()
            })
            .collect();
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..16 {
                let limiter = &limiters[t % 4];
                let total = &total;
                s.spawn(move || {
                    total.fetch_add(allowed(limiter, 20), Ordering::SeqCst);
                });
            }
        });
        assert_eq!(total.load(Ordering::SeqCst), 100);
    }

    #[test]
    fn redis_down_falls_back_to_the_local_allowance_and_back() {
        let mut server = RedisServer::start();
        let quick = RedisConfig::default()
            .with_connect_timeout(Duration::from_millis(300))
            .with_response_timeout(Duration::from_millis(300))
            .with_attempts(1);
        let config = RateLimitConfig::per(1, Duration::from_secs(3600)).with_burst(3);
        let limiter = RateLimiter::shared("api", config, fleet(&server, quick)).unwrap();
        assert_eq!(allowed(&limiter, 2), 2);
        server.kill();
        // Never an error other than RateLimited: the local allowance (a fresh burst of 3).
        assert_eq!(allowed(&limiter, 5), 3);
        assert!(limiter.is_local_only());
        server.restart();
        let mut back = false;
        for _ in 0..50 {
            let _ = limiter.check();
            if !limiter.is_local_only() {
                back = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(back, "the shared allowance answers again");
    }
}

mod fleet {
    use super::*;
    use guardrails::ManualClock;
    use guardrails::resilience::{
        BreakerConfig, BreakerState, CircuitBreaker, FleetBreaker, FleetConfig,
    };
    use guardrails::state::{RedisBreakerState, RedisConnection};

    fn shared(server: &RedisServer, config: RedisConfig) -> Arc<RedisBreakerState> {
        Arc::new(RedisBreakerState::new(
            RedisConnection::connect(&server.url(), config).unwrap(),
        ))
    }

    /// A worker whose own window never opens by itself (minimum 10 000 calls): only the
    /// fleet can open it.
    fn worker(server: &RedisServer, clock: &ManualClock, fleet: FleetConfig) -> FleetBreaker {
        let config = BreakerConfig::new()
            .with_minimum_calls(10_000)
            .with_window(guardrails::resilience::WindowKind::CountBased, 10_000)
            .with_wait_in_open(Duration::from_secs(30))
            .with_half_open_calls(2);
        let breaker = Arc::new(
            CircuitBreaker::new("llm", config)
                .unwrap()
                .with_clock(clock.clone()),
        );
        FleetBreaker::manual(breaker, shared(server, RedisConfig::default()), fleet).unwrap()
    }

    fn storm(breaker: &CircuitBreaker, calls: usize, fail_every: usize) {
        for i in 0..calls {
            let _ = breaker.call(|| -> Result<()> {
                if i % fail_every != 0 {
                    Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into())
                } else {
                    Ok(())
                }
            });
        }
    }

    #[test]
    fn a_failure_storm_opens_every_worker_within_one_interval_and_recovery_closes_them() {
        let server = RedisServer::start();
        let clock = ManualClock::new();
        let fleet = FleetConfig::default()
            .with_minimum_calls(100)
            .with_failure_rate_threshold(0.5);
        let workers: Vec<FleetBreaker> = (0..8)
            .map(|_| worker(&server, &clock, fleet.clone()))
            .collect();
        // Normal load: 8 × 50 calls, all fine; a flush round keeps everyone closed.
        for w in &workers {
            storm(w.breaker(), 50, 1);
        }
        for w in &workers {
            assert_eq!(w.flush_now().unwrap().open_for, None);
        }
        // The storm: 80 % failures on every worker (4 of 5 calls).
        for w in &workers {
            storm(w.breaker(), 250, 5);
        }
        // One interval: each worker flushes once. The fleet passes the threshold at the
        // flush of the third worker (400 + 750 calls, 600 failures): it opens, and every
        // worker flushing after it reads the flag.
        let views: Vec<_> = workers.iter().map(|w| w.flush_now().unwrap()).collect();
        let opened_by = views.iter().position(|v| v.open_for.is_some()).unwrap();
        assert_eq!(opened_by, 2, "{views:?}");
        for (i, w) in workers.iter().enumerate() {
            let expected = if i >= opened_by {
                BreakerState::Open
            } else {
                BreakerState::Closed
            };
            assert_eq!(w.breaker().state(), expected, "worker {i}: {views:?}");
        }
        // The workers that flushed before it open at their next flush: within one interval
        // of the fleet's opening.
        for w in &workers {
            assert!(w.flush_now().unwrap().open_for.is_some());
            assert_eq!(w.breaker().state(), BreakerState::Open);
        }
        match workers[7].breaker().call(|| Ok(1)) {
            Err(GuardrailError::CircuitOpen { retry_after, .. }) => {
                let left = retry_after.unwrap();
                assert!(
                    left <= Duration::from_secs(30) && left > Duration::from_secs(25),
                    "{left:?}"
                )
            }
            other => panic!("{other:?}"),
        }
        // Recovery: the fleet's flag expires (its TTL, removed here as the server's clock
        // cannot be advanced) and each worker's wait ends on its clock; the trial calls
        // succeed and close them, and the storm's failures do not reopen them: the window
        // started over when the fleet opened.
        let mut c = server.client();
        redis::cmd("DEL")
            .arg("{guardrails:breaker:llm}:open")
            .query::<i64>(&mut c)
            .unwrap();
        clock.advance(Duration::from_secs(30));
        for w in &workers {
            storm(w.breaker(), 2, 1);
            assert_eq!(w.breaker().state(), BreakerState::Closed);
        }
        for w in &workers {
            let view = w.flush_now().unwrap();
            assert_eq!(view.open_for, None, "{view:?}");
            assert_eq!(w.breaker().state(), BreakerState::Closed);
        }
    }

    #[test]
    fn a_worker_that_opens_by_itself_opens_the_fleet() {
        let server = RedisServer::start();
        let clock = ManualClock::new();
        let local = BreakerConfig::new()
            .with_minimum_calls(4)
            .with_window(guardrails::resilience::WindowKind::CountBased, 4)
            .with_wait_in_open(Duration::from_secs(60));
        let a_breaker = Arc::new(
            CircuitBreaker::new("db", local)
                .unwrap()
                .with_clock(clock.clone()),
        );
        let a = FleetBreaker::manual(
            a_breaker.clone(),
            shared(&server, RedisConfig::default()),
            FleetConfig::default().with_minimum_calls(1000),
        )
        .unwrap();
        let b_breaker = Arc::new(
            CircuitBreaker::new("db", BreakerConfig::new())
                .unwrap()
                .with_clock(clock.clone()),
        );
        let b = FleetBreaker::manual(
            b_breaker.clone(),
            shared(&server, RedisConfig::default()),
            FleetConfig::default().with_minimum_calls(1000),
        )
        .unwrap();
        storm(&a_breaker, 4, usize::MAX);
        assert_eq!(a_breaker.state(), BreakerState::Open);
        assert_eq!(b_breaker.state(), BreakerState::Closed);
        a.flush_now().unwrap();
        let view = b.flush_now().unwrap();
        assert!(view.open_for.unwrap() > Duration::from_secs(55), "{view:?}");
        assert_eq!(b_breaker.state(), BreakerState::Open);
        // Both flag keys carry a TTL: nothing stays behind.
        let mut c = server.client();
        let ttl: i64 = redis::cmd("PTTL")
            .arg("{guardrails:breaker:db}:open")
            .query(&mut c)
            .unwrap();
        assert!(ttl > 55_000 && ttl <= 60_000, "{ttl}");
    }

    #[test]
    fn redis_down_leaves_the_breaker_local_and_never_blocks_the_call_path() {
        let mut server = RedisServer::start();
        let clock = ManualClock::new();
        let quick = RedisConfig::default()
            .with_connect_timeout(Duration::from_millis(300))
            .with_response_timeout(Duration::from_millis(300))
            .with_attempts(1);
        let breaker = Arc::new(
            CircuitBreaker::new("api", BreakerConfig::new())
                .unwrap()
                .with_clock(clock.clone()),
        );
        let fleet = FleetBreaker::manual(
            breaker.clone(),
            shared(&server, quick),
            FleetConfig::default(),
        )
        .unwrap();
        assert!(fleet.flush_now().is_some());
        server.kill();
        assert_eq!(breaker.call(|| Ok(5)).unwrap(), 5);
        assert!(fleet.flush_now().is_none());
        assert!(fleet.is_local_only());
        assert_eq!(breaker.call(|| Ok(6)).unwrap(), 6);
        server.restart();
        let mut back = false;
        for _ in 0..50 {
            if fleet.flush_now().is_some() {
                back = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(back && !fleet.is_local_only());
    }

    #[test]
    fn the_flush_thread_carries_an_opening_to_the_other_workers() {
        let server = RedisServer::start();
        let fleet = FleetConfig::default()
            .with_interval(Duration::from_millis(50))
            .with_minimum_calls(20);
        let make = || {
            let config = BreakerConfig::new().with_minimum_calls(10_000);
            let breaker = Arc::new(CircuitBreaker::new("ocr", config).unwrap());
            let f = FleetBreaker::new(
                breaker.clone(),
                shared(&server, RedisConfig::default()),
                fleet.clone(),
            )
            .unwrap();
            (breaker, f)
        };
        let (a, _fa) = make();
        let (b, fb) = make();
        storm(&a, 40, 5);
        // Bounded: the flush threads run every 50 ms; 5 s is a hundred intervals.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while b.state() != BreakerState::Open && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            b.state(),
            BreakerState::Open,
            "after {} flushes",
            fb.flushes()
        );
        assert_eq!(a.state(), BreakerState::Open);
    }
}

#[test]
fn redis_killed_during_completion_is_retried_until_it_returns() {
    let server = RedisServer::with_args(&["--appendonly", "yes", "--appendfsync", "always"]);
    let url = server.url();
    let server = Arc::new(std::sync::Mutex::new(server));
    let s = Arc::new(
        RedisStore::connect(
            &url,
            RedisConfig::default()
                .with_connect_timeout(Duration::from_millis(200))
                .with_response_timeout(Duration::from_millis(200)),
        )
        .unwrap(),
    );
    let fx = Idempotency::with_config(s, config()).unwrap();
    let key = fx.key("ledger", "mid-completion");
    let mut restarter = None;
    let outcome = fx
        .run(&key, "p", |fence| {
            // The effect is done; Redis dies before its result is recorded, and comes back
            // (with its AOF) 400 ms later, well within the 10 s lease.
            server.lock().unwrap().kill();
            let server = Arc::clone(&server);
            restarter = Some(std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(400));
                server.lock().unwrap().restart();
            }));
            Ok(fence.0)
        })
        .unwrap();
    restarter.unwrap().join().unwrap();
    let Outcome::Executed(fence) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        fx.run(&key, "p", |_| Ok(0)).unwrap(),
        Outcome::Cached(fence),
        "the result was recorded once Redis was back"
    );
}

/// Every Redis-backed guard on a 3-master Redis Cluster: idempotency keys spread over the
/// masters, the rate limiter's key and the breaker's three keys each in one slot.
#[test]
fn the_guards_work_on_a_three_master_cluster() {
    use guardrails::resilience::{
        BreakerConfig, BreakerState, CircuitBreaker, FleetBreaker, FleetConfig, RateLimitConfig,
        RateLimiter,
    };
    use guardrails::state::{RedisBreakerState, RedisConnection, RedisRateLimit};

    let cluster = common::redis::RedisCluster::start();
    let urls = cluster.urls();
    let first: Vec<&str> = urls.iter().take(1).map(String::as_str).collect();
    let conn = RedisConnection::connect_cluster(&first, RedisConfig::default()).unwrap();
    assert!(conn.label().starts_with("cluster "), "{}", conn.label());

    let fx = Idempotency::with_config(Arc::new(RedisStore::new(conn.clone())), config()).unwrap();
    for i in 0..200 {
        let key = fx.key("cluster", &i.to_string());
        assert_eq!(fx.run(&key, "p", |_| Ok(i)).unwrap(), Outcome::Executed(i));
        assert_eq!(fx.run(&key, "p", |_| Ok(-1)).unwrap(), Outcome::Cached(i));
    }
    // The keys are spread: every master holds some.
    for n in &cluster.nodes {
        let mut c = n.client();
        let held: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
        assert!(held > 0, "node {} holds no key", n.port);
    }

    let limiter = RateLimiter::shared(
        "cluster-llm",
        RateLimitConfig::per(1, Duration::from_secs(3600)).with_burst(3),
        Arc::new(RedisRateLimit::new(conn.clone())),
    )
    .unwrap();
    let allowed = (0..5).filter(|_| limiter.check().is_ok()).count();
    assert_eq!(allowed, 3);
    assert!(!limiter.is_local_only());

    let config = BreakerConfig::new().with_minimum_calls(10_000);
    let breaker = Arc::new(CircuitBreaker::new("cluster-db", config).unwrap());
    let fleet = FleetBreaker::manual(
        breaker.clone(),
        Arc::new(RedisBreakerState::new(conn)),
        FleetConfig::default().with_minimum_calls(10),
    )
    .unwrap();
    for _ in 0..20 {
        let _ = breaker.call(|| -> Result<()> {
            Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into())
        });
    }
    let view = fleet.flush_now().expect("the cluster answers a flush");
    assert!(view.open_for.is_some(), "{view:?}");
    assert_eq!(breaker.state(), BreakerState::Open);

    // The safety check judges every primary and reports each check's worst node: these
    // nodes keep nothing on disk.
    let conn = RedisConnection::connect_cluster(&first, RedisConfig::default()).unwrap();
    let report = guardrails::state::RedisSafety::new().check(&conn).unwrap();
    assert_eq!(report.checks.len(), 4, "{report:#?}");
    let p = report.finding("persistence").unwrap();
    assert_eq!(
        p.level,
        guardrails::state::SafetyLevel::Error,
        "{report:#?}"
    );
    assert!(
        p.message.contains("127.0.0.1:"),
        "names the node: {}",
        p.message
    );
    assert_eq!(
        report.finding("role").unwrap().level,
        guardrails::state::SafetyLevel::Ok
    );
}

/// The lease is renewed while the effect runs: an effect that takes four leases is never
/// taken over. (Renewal runs on real time, so this test does too: 1.2 s.)
#[test]
fn a_running_effect_keeps_its_lease_renewed() {
    let server = RedisServer::start();
    let s = store(&server);
    let short = config().with_lease(Duration::from_millis(300));
    let a = Idempotency::with_config(s.clone(), short.clone()).unwrap();
    let b = Idempotency::with_config(s, short).unwrap();
    let key = a.key("train", "epoch-1");
    let outcome = a
        .run(&key, "p", |fence| {
            let until = std::time::Instant::now() + Duration::from_millis(1200);
            let mut polls = 0;
            while std::time::Instant::now() < until {
                match b.run(&key, "p", |_| -> Result<u64> { panic!("taken over") })? {
                    Outcome::InProgress { retry_after } => {
                        assert!(retry_after <= Duration::from_millis(300), "{retry_after:?}")
                    }
                    other => panic!("{other:?}"),
                }
                polls += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(polls >= 10);
            Ok(fence.0)
        })
        .unwrap();
    assert!(matches!(outcome, Outcome::Executed(_)), "{outcome:?}");
}

#[path = "common/retry_fleet.rs"]
mod retry_fleet;

mod window_counts {
    use super::*;
    use guardrails::state::{RedisConnection, RedisWindowCounts, SharedWindowCounts};

    #[test]
    fn a_fleet_storm_is_seen_through_a_real_redis_and_old_buckets_leave() {
        let server = RedisServer::start();
        let conn = RedisConnection::connect(&server.url(), RedisConfig::default()).unwrap();
        let counts = RedisWindowCounts::new(conn.clone());
        // Two connections, one hash: what one worker adds the other reads.
        let other = RedisWindowCounts::new(
            RedisConnection::connect(&server.url(), RedisConfig::default()).unwrap(),
        );
        let len = Duration::from_secs(10);
        assert_eq!(counts.add("k", 1000, 3, 3, len).unwrap(), [0, 0, 3]);
        assert_eq!(other.add("k", 1001, 2, 3, len).unwrap(), [0, 3, 2]);
        assert_eq!(counts.add("k", 1003, 0, 3, len).unwrap(), [2, 0, 0]);
        let mut raw = server.client();
        let fields: Vec<String> = redis::cmd("HKEYS")
            .arg("guardrails:window:k")
            .query(&mut raw)
            .unwrap();
        assert_eq!(fields, ["1001"], "bucket 1000 left the window and the hash");
        let ttl: i64 = redis::cmd("PTTL")
            .arg("guardrails:window:k")
            .query(&mut raw)
            .unwrap();
        assert!(ttl > 30_000 && ttl <= 40_000, "{ttl}");
        assert!(counts.add("k", 1003, 0, 0, len).is_err());

        retry_fleet::fleet_storm(Arc::new(counts), "fleet-redis");
    }
}
