//! Bytes per entry (u64 → u64) of each cache, counted by a global allocator.
//!
//! `cargo bench --bench cache_memory`: prints one line per cache.

#![allow(missing_docs)]

use std::alloc::System;
use std::num::NonZeroUsize;
use std::sync::Mutex;

use guardrails::cache::LruTtlCache;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const N: u64 = 100_000;

/// Net bytes still allocated after `build` made a cache of capacity N and inserted 2N keys,
/// per entry held: the steady state of a full cache, evictions and their bookkeeping
/// included.
fn per_entry<C>(name: &str, build: impl FnOnce() -> C) {
    let region = Region::new(GLOBAL);
    let cache = build();
    let change = region.change();
    // stats_alloc already books a realloc's growth in bytes_allocated.
    let net = change.bytes_allocated as i64 - change.bytes_deallocated as i64;
    println!("{name:<22} {:>7.1} bytes/entry", net as f64 / N as f64);
    drop(cache);
}

fn main() {
    per_entry("guardrails", || {
        let c = LruTtlCache::new(N as usize).unwrap();
        for k in 0..2 * N {
            c.insert(k, k);
        }
        c
    });
    per_entry("guardrails_1_shard", || {
        let c = LruTtlCache::builder(N as usize).shards(1).build().unwrap();
        for k in 0..2 * N {
            c.insert(k, k);
        }
        c
    });
    per_entry("moka", || {
        let c = moka::sync::Cache::new(N);
        for k in 0..2 * N {
            c.insert(k, k);
        }
        c.run_pending_tasks();
        c
    });
    per_entry("quick_cache", || {
        let c = quick_cache::sync::Cache::new(N as usize);
        for k in 0..2 * N {
            c.insert(k, k);
        }
        c
    });
    per_entry("lru_mutex", || {
        let c = Mutex::new(lru::LruCache::new(NonZeroUsize::new(N as usize).unwrap()));
        for k in 0..2 * N {
            if let Ok(mut g) = c.lock() {
                g.put(k, k);
            }
        }
        c
    });
}
