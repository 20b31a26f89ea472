//! LruTtlCache against a reference model, under concurrency, and its loads, listener,
//! weigher, idle expiry and config.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use guardrails::cache::{CacheConfig, EvictionCause, LruTtlCache};
use guardrails::prelude::*;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------
// Reference model: a VecDeque with the most recently used entry at the front.

#[derive(Debug, Clone)]
struct ModelEntry {
    key: u8,
    value: u32,
    deadline: Option<u64>,
    idle: Option<u64>,
}

#[derive(Debug)]
struct Model {
    entries: VecDeque<ModelEntry>,
    capacity: usize,
    now: u64,
    tti: Option<u64>,
    default_ttl: Option<u64>,
    evicted: Vec<(u8, u32, EvictionCause)>,
    hits: u64,
    misses: u64,
}

impl Model {
    fn expired(&self, e: &ModelEntry) -> bool {
        let d = match (e.deadline, e.idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        d.is_some_and(|d| self.now >= d)
    }

    fn position(&self, key: u8) -> Option<usize> {
        self.entries.iter().position(|e| e.key == key)
    }

    fn get(&mut self, key: u8) -> Option<u32> {
        let Some(i) = self.position(key) else {
            self.misses += 1;
            return None;
        };
        if self.expired(&self.entries[i]) {
            let e = self.entries.remove(i).unwrap();
            self.evicted.push((e.key, e.value, EvictionCause::Expired));
            self.misses += 1;
            return None;
        }
        let mut e = self.entries.remove(i).unwrap();
        if let Some(tti) = self.tti {
            e.idle = Some(self.now + tti);
        }
        let v = e.value;
        self.entries.push_front(e);
        self.hits += 1;
        Some(v)
    }

    fn peek(&self, key: u8) -> Option<u32> {
        let e = &self.entries[self.position(key)?];
        (!self.expired(e)).then_some(e.value)
    }

    fn insert(&mut self, key: u8, value: u32, ttl: Option<u64>) {
        let ttl = ttl.or(self.default_ttl);
        let entry = ModelEntry {
            key,
            value,
            deadline: ttl.map(|t| self.now + t),
            idle: self.tti.map(|t| self.now + t),
        };
        if let Some(i) = self.position(key) {
            let old = self.entries.remove(i).unwrap();
            self.evicted
                .push((old.key, old.value, EvictionCause::Replaced));
        }
        self.entries.push_front(entry);
        while self.entries.len() > self.capacity {
            let e = self.entries.pop_back().unwrap();
            let cause = if self.expired(&e) {
                EvictionCause::Expired
            } else {
                EvictionCause::Size
            };
            self.evicted.push((e.key, e.value, cause));
        }
    }

    fn remove(&mut self, key: u8) -> Option<u32> {
        let i = self.position(key)?;
        let e = self.entries.remove(i).unwrap();
        if self.expired(&e) {
            self.evicted.push((e.key, e.value, EvictionCause::Expired));
            None
        } else {
            self.evicted.push((e.key, e.value, EvictionCause::Explicit));
            Some(e.value)
        }
    }

    fn purge(&mut self) -> usize {
        let mut n = 0;
        let mut i = self.entries.len();
        while i > 0 {
            i -= 1;
            if self.expired(&self.entries[i]) {
                let e = self.entries.remove(i).unwrap();
                self.evicted.push((e.key, e.value, EvictionCause::Expired));
                n += 1;
            }
        }
        n
    }
}

#[derive(Debug, Clone)]
enum Op {
    Get(u8),
    Peek(u8),
    Contains(u8),
    Insert(u8, u32, Option<u64>),
    Remove(u8),
    Advance(u64),
    Purge,
}

/// Operations on keys `0..keys`.
fn op(keys: u8) -> impl Strategy<Value = Op> {
    let key = 0u8..keys;
    prop_oneof![
        4 => key.clone().prop_map(Op::Get),
        1 => key.clone().prop_map(Op::Peek),
        1 => key.clone().prop_map(Op::Contains),
        4 => (key.clone(), any::<u32>(), prop::option::of(1u64..50)).prop_map(|(k, v, t)| Op::Insert(k, v, t)),
        1 => key.prop_map(Op::Remove),
        2 => (0u64..30).prop_map(Op::Advance),
        1 => Just(Op::Purge),
    ]
}

/// Runs `ops` on a one-shard cache and on the model, comparing every answer, every
/// eviction (key, value, cause, in order), the length, the final LRU order and the stats.
fn check_against_model(
    capacity: usize,
    default_ttl: Option<u64>,
    tti: Option<u64>,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let clock = ManualClock::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let mut builder = LruTtlCache::builder(capacity)
        .shards(1)
        .with_clock(clock.clone())
        .eviction_listener(move |k: &u8, v: &u32, cause| s.lock().unwrap().push((*k, *v, cause)));
    if let Some(t) = default_ttl {
        builder = builder.ttl(Duration::from_millis(t));
    }
    if let Some(t) = tti {
        builder = builder.time_to_idle(Duration::from_millis(t));
    }
    let cache = builder.build().unwrap();
    let mut model = Model {
        entries: VecDeque::new(),
        capacity,
        now: 0,
        tti: tti.map(|t| t * 1_000_000),
        default_ttl: default_ttl.map(|t| t * 1_000_000),
        evicted: Vec::new(),
        hits: 0,
        misses: 0,
    };
    for op in ops {
        match op {
            Op::Get(k) => prop_assert_eq!(cache.get(&k), model.get(k), "get {}", k),
            Op::Peek(k) => prop_assert_eq!(cache.peek(&k), model.peek(k), "peek {}", k),
            Op::Contains(k) => prop_assert_eq!(cache.contains(&k), model.peek(k).is_some()),
            Op::Insert(k, v, ttl) => match ttl {
                Some(t) => {
                    cache.insert_with_ttl(k, v, Duration::from_millis(t));
                    model.insert(k, v, Some(t * 1_000_000));
                }
                None => {
                    cache.insert(k, v);
                    model.insert(k, v, None);
                }
            },
            Op::Remove(k) => prop_assert_eq!(cache.remove(&k), model.remove(k), "remove {}", k),
            Op::Advance(ms) => {
                clock.advance(Duration::from_millis(ms));
                model.now += ms * 1_000_000;
            }
            Op::Purge => prop_assert_eq!(cache.purge_expired(), model.purge()),
        }
        prop_assert_eq!(cache.len(), model.entries.len());
        prop_assert!(cache.len() <= capacity);
        prop_assert_eq!(&*seen.lock().unwrap(), &model.evicted);
    }
    let order: Vec<u8> = cache.entries_lru().into_iter().map(|(k, _)| k).collect();
    let expected: Vec<u8> = model
        .entries
        .iter()
        .rev()
        .filter(|e| !model.expired(e))
        .map(|e| e.key)
        .collect();
    prop_assert_eq!(order, expected);
    let stats = cache.stats();
    prop_assert_eq!((stats.hits, stats.misses), (model.hits, model.misses));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn one_shard_matches_the_reference_lru(
        capacity in 1usize..8,
        default_ttl in prop::option::of(5u64..60),
        tti in prop::option::of(5u64..60),
        ops in prop::collection::vec(op(12), 1..400),
    ) {
        check_against_model(capacity, default_ttl, tti, ops)?;
    }

    /// Larger caches over more keys: long runs of hits between evictions, so eviction
    /// passes over many entries used since the last sort and sorts again often.
    #[test]
    fn larger_one_shard_caches_match_the_reference_lru(
        capacity in 1usize..40,
        default_ttl in prop::option::of(50u64..600),
        ops in prop::collection::vec(op(64), 1..1500),
    ) {
        check_against_model(capacity, default_ttl, None, ops)?;
    }
}

// ---------------------------------------------------------------------------------------

#[test]
fn ttl_expiry_never_returns_a_stale_value() {
    let clock = ManualClock::new();
    let cache = LruTtlCache::builder(100)
        .ttl(Duration::from_secs(10))
        .with_clock(clock.clone())
        .build()
        .unwrap();
    cache.insert("k", 1);
    cache.insert_with_ttl("short", 2, Duration::from_secs(1));
    clock.advance(Duration::from_millis(999));
    assert_eq!(cache.get(&"short"), Some(2));
    clock.advance(Duration::from_millis(1));
    assert_eq!(cache.get(&"short"), None);
    assert!(!cache.contains(&"short"));
    clock.advance(Duration::from_secs(9));
    assert_eq!(cache.peek(&"k"), None);
    assert_eq!(cache.len(), 1, "expired but not yet removed");
    assert_eq!(cache.purge_expired(), 1);
    assert!(cache.is_empty());
}

#[test]
fn time_to_idle_is_renewed_by_reads_only() {
    let clock = ManualClock::new();
    let cache = LruTtlCache::builder(10)
        .time_to_idle(Duration::from_secs(5))
        .with_clock(clock.clone())
        .build()
        .unwrap();
    cache.insert(1, "read often");
    cache.insert(2, "never read");
    for _ in 0..4 {
        clock.advance(Duration::from_secs(4));
        assert_eq!(cache.get(&1), Some("read often"));
        let _ = cache.peek(&2); // peek does not renew
    }
    assert_eq!(cache.get(&2), None);
    assert_eq!(cache.stats().expired, 1);
}

#[test]
fn weigher_bounds_the_total_weight() {
    let evicted = Arc::new(Mutex::new(Vec::new()));
    let e = Arc::clone(&evicted);
    let cache = LruTtlCache::builder(1_000)
        .shards(1)
        .weigher(100, |_k: &u32, v: &Vec<u8>| v.len() as u64)
        .eviction_listener(move |k: &u32, _v: &Vec<u8>, c| e.lock().unwrap().push((*k, c)))
        .build()
        .unwrap();
    cache.insert(1, vec![0; 40]);
    cache.insert(2, vec![0; 40]);
    cache.insert(3, vec![0; 40]); // 120 > 100: the oldest goes
    assert_eq!(*evicted.lock().unwrap(), [(1, EvictionCause::Size)]);
    assert_eq!(cache.stats().weight, Some(80));
    cache.insert(4, vec![0; 500]); // heavier than the whole cache: evicted at once
    assert!(!cache.contains(&4));
    assert!(cache.stats().weight.unwrap() <= 100);
}

#[test]
fn stats_and_listener_count_every_cause() {
    let causes = Arc::new(Mutex::new(Vec::new()));
    let c = Arc::clone(&causes);
    let clock = ManualClock::new();
    let cache = LruTtlCache::builder(2)
        .shards(1)
        .with_clock(clock.clone())
        .eviction_listener(move |_k: &&str, _v: &i32, cause| c.lock().unwrap().push(cause))
        .build()
        .unwrap();
    cache.insert("a", 1);
    cache.insert("a", 2); // replaced
    cache.insert("b", 3);
    cache.insert("c", 4); // size: a goes
    assert_eq!(cache.remove(&"b"), Some(3)); // explicit
    cache.insert_with_ttl("d", 5, Duration::from_secs(1));
    clock.advance(Duration::from_secs(1));
    assert_eq!(cache.get(&"d"), None); // expired
    cache.invalidate_all(); // explicit: c
    use EvictionCause::*;
    assert_eq!(
        *causes.lock().unwrap(),
        [Replaced, Size, Explicit, Expired, Explicit]
    );
    let s = cache.stats();
    assert_eq!(
        (
            s.inserts,
            s.replaced,
            s.evicted_size,
            s.removed,
            s.expired,
            s.size,
            s.max_size
        ),
        (5, 1, 1, 2, 1, 0, 2)
    );
    assert_eq!((s.hits, s.misses), (0, 1));
    assert_eq!(s.utilisation, 0.0);
}

#[test]
fn retain_keeps_what_the_predicate_accepts() {
    let cache = LruTtlCache::new(100).unwrap();
    for i in 0..50u32 {
        cache.insert(i, i * 10);
    }
    cache.retain(|k, _| k % 2 == 0);
    assert_eq!(cache.len(), 25);
    assert!(cache.contains(&48) && !cache.contains(&49));
}

#[test]
fn length_never_exceeds_capacity_under_concurrency() {
    let cache = Arc::new(LruTtlCache::builder(1_000).shards(8).build().unwrap());
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let (cache, barrier) = (Arc::clone(&cache), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..20_000u64 {
                    cache.insert(t * 1_000_000 + i, i);
                    let _ = cache.get(&(t * 1_000_000 + i / 2));
                    assert!(cache.len() <= 1_000);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(cache.len() <= 1_000);
    assert!(cache.stats().evicted_size >= 79_000);
}

#[test]
fn no_expired_value_is_returned_under_concurrency() {
    let clock = ManualClock::new();
    let cache = Arc::new(
        LruTtlCache::builder(10_000)
            .with_clock(clock.clone())
            .build()
            .unwrap(),
    );
    // Every value records the time it was inserted (ms) and lives 50 ms.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (cache, clock, stop, checked) = (
                Arc::clone(&cache),
                clock.clone(),
                Arc::clone(&stop),
                Arc::clone(&checked),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for k in 0..100u64 {
                        let before = clock.elapsed().as_millis() as u64;
                        if let Some(inserted_at) = cache.get(&k) {
                            // A value returned at or after `before` had not expired then.
                            assert!(
                                before < inserted_at + 50,
                                "stale: {inserted_at} read at {before}"
                            );
                            checked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    let mut step = 0u64;
    while step < 2_000 || (checked.load(Ordering::Relaxed) < 10_000 && step < 5_000_000) {
        let now = clock.elapsed().as_millis() as u64;
        cache.insert_with_ttl(step % 100, now, Duration::from_millis(50));
        clock.advance(Duration::from_millis(1));
        step += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(checked.load(Ordering::Relaxed) >= 10_000);
}

#[test]
fn concurrent_misses_run_the_loader_once() {
    let cache = Arc::new(LruTtlCache::<u32, u64>::new(100).unwrap());
    let runs = Arc::new(AtomicU32::new(0));
    let barrier = Arc::new(Barrier::new(8));
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let waiting = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (cache, runs, barrier, rx, waiting) = (
                Arc::clone(&cache),
                Arc::clone(&runs),
                Arc::clone(&barrier),
                Arc::clone(&release_rx),
                Arc::clone(&waiting),
            );
            std::thread::spawn(move || {
                barrier.wait();
                waiting.fetch_add(1, Ordering::SeqCst);
                cache.get_or_insert_with(7, || {
                    runs.fetch_add(1, Ordering::SeqCst);
                    // Hold the load until released, so every thread misses meanwhile.
                    let _ = rx.lock().unwrap().recv();
                    Ok(42)
                })
            })
        })
        .collect();
    while waiting.load(Ordering::SeqCst) < 8 {
        std::thread::yield_now();
    }
    // A thread that reaches the slot after the release finds the value cached, so the
    // count below holds however the threads are scheduled; nothing waits on time.
    release_tx.send(()).unwrap();
    for h in handles {
        assert_eq!(h.join().unwrap().unwrap(), 42);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(cache.get(&7), Some(42));
}

#[test]
fn a_failing_loader_reaches_every_waiter_and_caches_nothing() {
    let cache = Arc::new(LruTtlCache::<u32, u64>::new(100).unwrap());
    let runs = Arc::new(AtomicU32::new(0));
    let barrier = Arc::new(Barrier::new(5));
    // The load fails only once every thread is past the barrier, not after a sleep.
    let (fail_tx, fail_rx) = std::sync::mpsc::channel::<()>();
    let fail_rx = Arc::new(std::sync::Mutex::new(fail_rx));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (cache, runs, barrier, fail_rx) = (
                Arc::clone(&cache),
                Arc::clone(&runs),
                Arc::clone(&barrier),
                Arc::clone(&fail_rx),
            );
            std::thread::spawn(move || {
                barrier.wait();
                cache.get_or_insert_with(1, || {
                    runs.fetch_add(1, Ordering::SeqCst);
                    let _ = fail_rx.lock().unwrap().recv();
                    Err(GuardrailError::Timeout {
                        operation: "load embedding".into(),
                        elapsed: Duration::from_secs(2),
                        limit: Duration::from_secs(1),
                    })
                })
            })
        })
        .collect();
    barrier.wait();
    // One release per possible load: a thread that came after a failure loads again.
    for _ in 0..4 {
        let _ = fail_tx.send(());
    }
    for h in handles {
        let err = h.join().unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert_eq!(err.class(), ErrorClass::Retryable);
        assert!(err.to_string().contains("load embedding"));
    }
    // Threads that arrived after the failure ran their own load, so at most 4 runs; the
    // ones that waited did not.
    assert!(runs.load(Ordering::SeqCst) >= 1);
    assert!(!cache.contains(&1));
    assert_eq!(cache.get_or_insert_with(1, || Ok(5)).unwrap(), 5);
}

#[test]
fn a_panicking_loader_hands_the_load_to_a_waiter() {
    let cache = Arc::new(LruTtlCache::<u32, u64>::new(100).unwrap());
    let c = Arc::clone(&cache);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (calling_tx, calling_rx) = std::sync::mpsc::channel::<()>();
    let leader = std::thread::spawn(move || {
        c.get_or_insert_with(9, || {
            started_tx.send(()).unwrap();
            // Panics once the waiter is on its way in, not after a sleep; a waiter that
            // arrives after the panic loads for itself and gets the same answer.
            let _ = calling_rx.recv();
            panic!("loader bug")
        })
    });
    started_rx.recv().unwrap();
    let c = Arc::clone(&cache);
    let waiter = std::thread::spawn(move || {
        calling_tx.send(()).unwrap();
        c.get_or_insert_with(9, || Ok(99))
    });
    assert_eq!(waiter.join().unwrap().unwrap(), 99);
    assert!(leader.join().is_err());
}

#[test]
fn sweeper_purges_in_the_background() {
    let clock = ManualClock::new();
    let cache = LruTtlCache::builder(100)
        .ttl(Duration::from_secs(1))
        .cleanup_interval(Duration::from_millis(1))
        .with_clock(clock.clone())
        .build()
        .unwrap();
    for i in 0..10u32 {
        cache.insert(i, i);
    }
    clock.advance(Duration::from_secs(1));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cache.is_empty() && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert!(cache.is_empty(), "the sweeper removed the expired entries");
    assert_eq!(cache.stats().expired, 10);
}

#[test]
fn shared_errors_keep_kind_class_and_json() {
    let inner = GuardrailError::config("x", "y");
    let shared = GuardrailError::Shared(Arc::new(inner));
    assert_eq!(shared.kind(), ErrorKind::Config);
    assert_eq!(shared.to_json()["fields"]["field"], "x");
    assert_eq!(shared.to_string(), "invalid config: x: y");
}

#[test]
fn config_section_builds_a_cache_and_is_validated() {
    let cfg: GuardrailsConfig = r#"
        [caches.embeddings]
        max_entries = 5000
        ttl = "10m"
        time_to_idle = "2m"
        shards = 4
        cleanup_interval = "30s"
    "#
    .parse()
    .unwrap();
    let c = &cfg.caches["embeddings"];
    assert_eq!(
        (c.max_entries, c.ttl, c.shards),
        (5000, Some(Duration::from_secs(600)), Some(4))
    );
    let cache: LruTtlCache<String, u32> = guardrails::cache::CacheBuilder::from_config(c.clone())
        .build()
        .unwrap();
    assert_eq!(cache.shard_count(), 4);
    assert_eq!(cache.stats().ttl, Some(Duration::from_secs(600)));

    for (text, field) in [
        ("[caches.a]\nmax_entries = 0\n", "caches.a.max_entries"),
        ("[caches.a]\nttl = \"0s\"\n", "caches.a.ttl"),
        ("[caches.a]\nshards = 0\n", "caches.a.shards"),
    ] {
        match text.parse::<GuardrailsConfig>().unwrap_err() {
            GuardrailError::Config { field: f, .. } => assert_eq!(f, field),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(CacheConfig::default().max_entries, 10_000);
}

#[cfg(feature = "async")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_loads_coalesce_too() {
    let cache = Arc::new(LruTtlCache::<u32, u64>::new(100).unwrap());
    let runs = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (cache, runs) = (Arc::clone(&cache), Arc::clone(&runs));
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_insert_with_async(3, || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(33)
                })
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 33);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
