//! Cache benches: get-hit throughput and trace replay against moka, quick_cache and lru.
//!
//! `cargo bench --bench cache`. The traces come from `../shared/traces/` (ARC paper: Nimrod
//! Megiddo and Dharmendra S. Modha, "ARC: A Self-Tuning, Low Overhead Replacement Cache",
//! FAST 03); hit ratios are printed before the timings.

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use guardrails::cache::LruTtlCache;

const ENTRIES: u64 = 100_000;
const KEYS: usize = 1 << 20;

/// The operations every cache under test offers.
trait Bench: Send + Sync + 'static {
    fn get(&self, k: u64) -> Option<u64>;
    fn put(&self, k: u64, v: u64);
}

struct Ours(LruTtlCache<u64, u64>);
struct Moka(moka::sync::Cache<u64, u64>);
struct Quick(quick_cache::sync::Cache<u64, u64>);
struct Lru(Mutex<lru::LruCache<u64, u64>>);

impl Bench for Ours {
    fn get(&self, k: u64) -> Option<u64> {
        self.0.get(&k)
    }
    fn put(&self, k: u64, v: u64) {
        self.0.insert(k, v)
    }
}
impl Bench for Moka {
    fn get(&self, k: u64) -> Option<u64> {
        self.0.get(&k)
    }
    fn put(&self, k: u64, v: u64) {
        self.0.insert(k, v)
    }
}
impl Bench for Quick {
    fn get(&self, k: u64) -> Option<u64> {
        self.0.get(&k)
    }
    fn put(&self, k: u64, v: u64) {
        self.0.insert(k, v)
    }
}
impl Bench for Lru {
    fn get(&self, k: u64) -> Option<u64> {
        self.0.lock().ok()?.get(&k).copied()
    }
    fn put(&self, k: u64, v: u64) {
        if let Ok(mut c) = self.0.lock() {
            c.put(k, v);
        }
    }
}

fn caches(capacity: usize) -> Vec<(&'static str, Arc<dyn Bench>)> {
    let cap = NonZeroUsize::new(capacity).unwrap();
    vec![
        (
            "guardrails",
            Arc::new(Ours(LruTtlCache::new(capacity).unwrap())),
        ),
        (
            "guardrails_1_shard",
            Arc::new(Ours(
                LruTtlCache::builder(capacity).shards(1).build().unwrap(),
            )),
        ),
        (
            "moka",
            Arc::new(Moka(moka::sync::Cache::new(capacity as u64))),
        ),
        (
            "quick_cache",
            Arc::new(Quick(quick_cache::sync::Cache::new(capacity))),
        ),
        (
            "lru_mutex",
            Arc::new(Lru(Mutex::new(lru::LruCache::new(cap)))),
        ),
    ]
}

fn random_keys() -> Arc<Vec<u64>> {
    let mut rng = fastrand::Rng::with_seed(42);
    Arc::new((0..KEYS).map(|_| rng.u64(0..ENTRIES)).collect())
}

fn get_hit(c: &mut Criterion) {
    let keys = random_keys();
    let mut one = c.benchmark_group("cache_get_hit_1_thread");
    let mut two_caches = Vec::new();
    for (name, cache) in caches(ENTRIES as usize * 2) {
        for k in 0..ENTRIES {
            cache.put(k, k);
        }
        // moka applies inserts asynchronously; let it settle before reading.
        for k in 0..ENTRIES {
            let _ = cache.get(k);
        }
        let keys1 = Arc::clone(&keys);
        let c1 = Arc::clone(&cache);
        let mut i = 0usize;
        one.bench_function(name, move |b| {
            b.iter(|| {
                i = (i + 1) & (KEYS - 1);
                black_box(c1.get(keys1[i]))
            })
        });
        two_caches.push((name, cache));
    }
    one.finish();

    let mut two = c.benchmark_group("cache_get_hit_2_threads");
    for (name, cache) in two_caches {
        let keys = Arc::clone(&keys);
        two.bench_function(name, move |b| {
            let cache = Arc::clone(&cache);
            let keys = Arc::clone(&keys);
            b.iter_custom(move |iters| {
                let barrier = Arc::new(Barrier::new(3));
                let per = iters / 2 + 1;
                let handles: Vec<_> = (0..2usize)
                    .map(|t| {
                        let (cache, keys, barrier) =
                            (Arc::clone(&cache), Arc::clone(&keys), Arc::clone(&barrier));
                        std::thread::spawn(move || {
                            barrier.wait();
                            let mut i = t * (KEYS / 2);
                            for _ in 0..per {
                                i = (i + 1) & (KEYS - 1);
                                black_box(cache.get(keys[i]));
                            }
                        })
                    })
                    .collect();
                barrier.wait();
                let start = Instant::now();
                for h in handles {
                    let _ = h.join();
                }
                start.elapsed()
            })
        });
    }
    two.finish();
}

/// Expands a trace into the keys it touches, in order.
fn load_trace(name: &str) -> Option<Vec<u64>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/traces")
        .join(format!("{name}.lis.zst"));
    let file = std::fs::File::open(&path).ok()?;
    let decoder = ruzstd::decoding::StreamingDecoder::new(file).ok()?;
    let mut keys = Vec::new();
    for line in BufReader::new(decoder).lines() {
        let line = line.ok()?;
        let mut fields = line.split_whitespace();
        let start: u64 = fields.next()?.parse().ok()?;
        let count: u64 = fields.next()?.parse().ok()?;
        keys.extend(start..start + count);
    }
    Some(keys)
}

fn replay(cache: &dyn Bench, keys: &[u64]) -> u64 {
    let mut hits = 0;
    for &k in keys {
        if cache.get(k).is_some() {
            hits += 1;
        } else {
            cache.put(k, k);
        }
    }
    hits
}

const TRACES: [(&str, usize); 2] = [("OLTP", 50_000), ("P3", 100_000)];

fn trace_replay(c: &mut Criterion) {
    for (trace, capacity) in TRACES {
        let Some(keys) = load_trace(trace) else {
            eprintln!("trace {trace} not found under ../shared/traces; skipping its replay");
            continue;
        };
        let keys = Arc::new(keys);
        eprintln!(
            "\nhit ratio, {trace} ({} accesses), capacity {capacity}:",
            keys.len()
        );
        for (name, cache) in caches(capacity) {
            let hits = replay(&*cache, &keys);
            eprintln!("  {name:<20} {:.4}", hits as f64 / keys.len() as f64);
        }
        let mut g = c.benchmark_group(format!("cache_replay_{trace}"));
        g.sample_size(10).measurement_time(Duration::from_secs(20));
        for (name, _) in caches(1) {
            let keys = Arc::clone(&keys);
            g.bench_function(name, move |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let fresh = caches(capacity)
                            .into_iter()
                            .find(|(n, _)| *n == name)
                            .map(|(_, c)| c);
                        let Some(cache) = fresh else { break };
                        let start = Instant::now();
                        black_box(replay(&*cache, &keys));
                        total += start.elapsed();
                    }
                    total
                })
            });
        }
        g.finish();
    }
}

/// Prints the longest single insert while every insert evicts, on a full 1M-entry cache with
/// one shard and with the default shards: eviction now and then sorts a shard's recency
/// stamps, and this is what that costs a caller at worst. Not a criterion figure (criterion
/// reports central times); printed before the timings like the hit ratios.
fn insert_pauses() {
    const N: u64 = 1_000_000;
    eprintln!("\nlongest insert, full {N}-entry cache, 1 insert to 4 gets (800 000 inserts):");
    for shards in [Some(1), None] {
        let builder = LruTtlCache::<u64, u64>::builder(N as usize);
        let cache = match shards {
            Some(n) => builder.shards(n),
            None => builder,
        }
        .build()
        .unwrap();
        for k in 0..N {
            cache.insert(k, k);
        }
        let mut rng = fastrand::Rng::with_seed(7);
        let mut next = N;
        let mut pauses = Vec::new();
        for _ in 0..4_000_000 {
            if rng.u32(0..5) == 0 {
                let start = Instant::now();
                cache.insert(next, next);
                pauses.push(start.elapsed());
                next += 1;
            } else {
                black_box(cache.get(&(next - 1 - rng.u64(0..N))));
            }
        }
        pauses.sort_unstable();
        let at = |q: f64| pauses[((pauses.len() - 1) as f64 * q) as usize];
        eprintln!(
            "  {:>4} shards: p50 {:?}, p99 {:?}, p99.99 {:?}, max {:?}",
            cache.shard_count(),
            at(0.5),
            at(0.99),
            at(0.9999),
            pauses[pauses.len() - 1]
        );
    }
}

criterion_group!(benches, get_hit, trace_replay);

fn main() {
    insert_pauses();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
