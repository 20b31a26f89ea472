//! An embedding cache: TTL, coalesced loads, statistics and an eviction listener.
//!
//! Run with `cargo run --example cache`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use guardrails::cache::LruTtlCache;
use guardrails::prelude::*;

fn main() -> guardrails::Result<()> {
    let clock = ManualClock::new();
    let cache: Arc<LruTtlCache<String, Arc<Vec<f32>>>> = Arc::new(
        LruTtlCache::builder(2)
            .ttl(Duration::from_secs(600))
            .with_clock(clock.clone())
            .eviction_listener(|key, _value, cause| println!("  evicted {key} ({cause:?})"))
            .build()?,
    );
    let loads = Arc::new(AtomicU32::new(0));

    // Four threads ask for the same embedding at once: the model is called once.
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (cache, loads) = (Arc::clone(&cache), Arc::clone(&loads));
            std::thread::spawn(move || {
                cache.get_or_insert_with("doc-1".to_string(), || {
                    loads.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(50)); // the model call
                    Ok(Arc::new(vec![0.1, 0.2, 0.3]))
                })
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    println!(
        "model calls for 4 concurrent requests: {}",
        loads.load(Ordering::SeqCst)
    );

    cache.insert("doc-2".into(), Arc::new(vec![1.0]));
    let _ = cache.get("doc-1");
    cache.insert("doc-3".into(), Arc::new(vec![2.0])); // evicts doc-2, the least recently used
    clock.advance(Duration::from_secs(600));
    println!("doc-1 after its TTL: {:?}", cache.get("doc-1"));
    println!("stats: {:?}", cache.stats());
    Ok(())
}
