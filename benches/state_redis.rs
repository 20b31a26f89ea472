//! Shared guard state on a real `redis-server` this bench starts on a loopback port:
//!
//! - idempotent claim + complete (two scripts) against the raw `SET NX PX` + `SET` on the
//!   same connection, at 1 client and at 50 concurrent clients;
//! - the same through the synchronous `Idempotency::run` against raw commands on a blocking
//!   connection;
//! - a fleet-wide GCRA check against a raw round trip of the same redis-cell-style script;
//! - the fleet-wide breaker's call path against the local breaker's.
//!
//! `cargo bench --bench state_redis --features redis` (needs `redis-server` on PATH).

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use guardrails::resilience::{
    BreakerConfig, CircuitBreaker, FleetBreaker, FleetConfig, RateLimitConfig, RateLimiter,
};
use guardrails::state::{
    Claim, ClaimRequest, Idempotency, IdempotencyConfig, RedisBreakerState, RedisConfig,
    RedisConnection, RedisRateLimit, RedisStore,
};

struct Server {
    child: Child,
    port: u16,
    /// Its data dir, removed when the server is gone.
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    Server {
        child,
        port,
        _dir: dir,
    }
}

fn benches(c: &mut Criterion) {
    let server = start();
    let url = format!("redis://127.0.0.1:{}/0", server.port);
    let conn = RedisConnection::connect(&url, RedisConfig::default()).unwrap();
    let store = RedisStore::new(conn.clone());
    let manager = conn.manager().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let next = Arc::new(AtomicU64::new(0));
    let lease = Duration::from_secs(30);
    let ttl = Duration::from_secs(3600);

    let mut g = c.benchmark_group("redis_idempotency");
    g.sample_size(20).measurement_time(Duration::from_secs(6));
    // 1 client: one claim + complete after the other.
    g.throughput(Throughput::Elements(1));
    g.bench_function("guardrails/claim_complete/1_client", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let began = Instant::now();
                for _ in 0..iters {
                    let key = format!("effect:bench:{}", next.fetch_add(1, Ordering::Relaxed));
                    one_claim(&store, &key, lease, ttl).await;
                }
                began.elapsed()
            })
        })
    });
    g.bench_function("raw_set_nx_px/claim_complete/1_client", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let began = Instant::now();
                for _ in 0..iters {
                    let key = format!("raw:bench:{}", next.fetch_add(1, Ordering::Relaxed));
                    one_raw(&manager, &key).await;
                }
                began.elapsed()
            })
        })
    });
    // 50 clients: each iteration is 50 concurrent claim + completes on the connection.
    g.throughput(Throughput::Elements(50));
    g.bench_function("guardrails/claim_complete/50_clients", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let began = Instant::now();
                for _ in 0..iters {
                    let mut set = tokio::task::JoinSet::new();
                    for _ in 0..50 {
                        let (store, next) = (store.clone(), Arc::clone(&next));
                        set.spawn(async move {
                            let key =
                                format!("effect:bench:{}", next.fetch_add(1, Ordering::Relaxed));
                            one_claim(&store, &key, lease, ttl).await;
                        });
                    }
                    while set.join_next().await.is_some() {}
                }
                began.elapsed()
            })
        })
    });
    g.bench_function("raw_set_nx_px/claim_complete/50_clients", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let began = Instant::now();
                for _ in 0..iters {
                    let mut set = tokio::task::JoinSet::new();
                    for _ in 0..50 {
                        let (manager, next) = (manager.clone(), Arc::clone(&next));
                        set.spawn(async move {
                            let key = format!("raw:bench:{}", next.fetch_add(1, Ordering::Relaxed));
                            one_raw(&manager, &key).await;
                        });
                    }
                    while set.join_next().await.is_some() {}
                }
                began.elapsed()
            })
        })
    });
    // The synchronous face: Idempotency::run through the connection's runtime, against raw
    // commands on a blocking connection.
    g.throughput(Throughput::Elements(1));
    let fx = Idempotency::with_config(
        Arc::new(store.clone()),
        IdempotencyConfig::new().with_local_cache(0),
    )
    .unwrap();
    g.bench_function("guardrails/idempotency_run_sync/1_client", |b| {
        b.iter(|| {
            let key = fx.key("bench", &next.fetch_add(1, Ordering::Relaxed).to_string());
            black_box(fx.run(&key, "p", |f| Ok(f.0)).unwrap())
        })
    });
    let mut blocking = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    g.bench_function("raw_set_nx_px/blocking/1_client", |b| {
        b.iter(|| {
            let key = format!("raw:bench:{}", next.fetch_add(1, Ordering::Relaxed));
            let _: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg("claim")
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .query(&mut blocking)
                .unwrap();
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg("done")
                .arg("PX")
                .arg(3_600_000)
                .query(&mut blocking)
                .unwrap();
        })
    });
    g.finish();

    // GCRA: our check against a raw round trip of the same algorithm as a script.
    let mut g = c.benchmark_group("redis_gcra");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    let limit = RedisRateLimit::new(conn.clone()).lua_only();
    let quota = RateLimitConfig::per(1_000_000_000, Duration::from_secs(1));
    g.bench_function("guardrails/acquire_async", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let began = Instant::now();
                for _ in 0..iters {
                    black_box(limit.acquire_async("bench", &quota, 1).await.unwrap());
                }
                began.elapsed()
            })
        })
    });
    let raw = redis::Script::new(RAW_GCRA);
    g.bench_function("raw_cell_script/round_trip", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut m = manager.clone();
                let began = Instant::now();
                for _ in 0..iters {
                    let r: Vec<i64> = raw
                        .key("raw:gcra")
                        .arg(1)
                        .arg(1_000_000)
                        .arg(1)
                        .invoke_async(&mut m)
                        .await
                        .unwrap();
                    black_box(r);
                }
                began.elapsed()
            })
        })
    });
    let limiter =
        RateLimiter::shared("bench-sync", quota.clone(), Arc::new(limit.clone())).unwrap();
    g.bench_function("guardrails/rate_limiter_check_sync", |b| {
        b.iter(|| limiter.check().unwrap())
    });
    g.finish();

    // The breaker's call path: local, and with a fleet attached (flushes are off the path).
    let mut g = c.benchmark_group("fleet_breaker_call");
    let local = CircuitBreaker::new("local", BreakerConfig::new()).unwrap();
    g.bench_function("local/closed_success", |b| {
        b.iter(|| {
            black_box(
                local
                    .call(|| Ok::<_, guardrails::GuardrailError>(1))
                    .unwrap(),
            )
        })
    });
    let shared = Arc::new(CircuitBreaker::new("fleet", BreakerConfig::new()).unwrap());
    let _fleet = FleetBreaker::new(
        Arc::clone(&shared),
        Arc::new(RedisBreakerState::new(conn.clone())),
        FleetConfig::default(),
    )
    .unwrap();
    g.bench_function("fleet/closed_success", |b| {
        b.iter(|| {
            black_box(
                shared
                    .call(|| Ok::<_, guardrails::GuardrailError>(1))
                    .unwrap(),
            )
        })
    });
    g.finish();
}

// A redis-cell-style GCRA as one bare script (no key prefix, no reply parsing beyond ints).
const RAW_GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if (not tat) or tat < now then tat = now end
local new_tat = tat + tonumber(ARGV[1]) * tonumber(ARGV[3])
if new_tat - tonumber(ARGV[2]) > now then return {1, new_tat - tonumber(ARGV[2]) - now} end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', 1000)
return {0, 0}
";

async fn one_claim(store: &RedisStore, key: &str, lease: Duration, ttl: Duration) {
    let request = ClaimRequest {
        key,
        fingerprint: "p",
        owner: "bench",
        lease,
        ttl,
    };
    let Claim::Acquired { fence, .. } = store.claim_async(&request).await.unwrap() else {
        panic!("a fresh key is acquired")
    };
    store.complete_async(key, fence, b"1", ttl).await.unwrap();
}

async fn one_raw(manager: &redis::aio::ConnectionManager, key: &str) {
    let mut m = manager.clone();
    let _: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg("claim")
        .arg("NX")
        .arg("PX")
        .arg(30_000)
        .query_async(&mut m)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg("done")
        .arg("PX")
        .arg(3_600_000)
        .query_async(&mut m)
        .await
        .unwrap();
}

criterion_group!(state_redis, benches);
criterion_main!(state_redis);
