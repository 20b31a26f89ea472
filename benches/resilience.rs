//! Resilience benches: each group runs our code and its peers on the same inputs.
//!
//! `cargo bench --bench resilience`; the figures and ratios are in README.md.

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use failsafe::CircuitBreaker as _;
use guardrails::prelude::*;
use guardrails::resilience::{
    BreakerConfig, CircuitBreaker, RateLimitConfig, RateLimiter, RetryPolicy,
};

/// Runs `op` `iters` times split over `threads` threads started together; returns the wall
/// time, so the figure is time per call across all threads (throughput).
fn threaded<F>(threads: usize, iters: u64, op: Arc<F>) -> Duration
where
    F: Fn() + Send + Sync + 'static,
{
    let barrier = Arc::new(Barrier::new(threads + 1));
    let per_thread = iters / threads as u64 + 1;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let op = Arc::clone(&op);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..per_thread {
                    op();
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
}

fn breaker(c: &mut Criterion) {
    let ours = Arc::new(CircuitBreaker::new("bench", BreakerConfig::new()).unwrap());
    let fs = Arc::new(failsafe::Config::new().build());
    let rc = Arc::new(recloser::Recloser::default());

    let mut g = c.benchmark_group("breaker_closed_call_1_thread");
    g.bench_function("guardrails", |b| {
        b.iter(|| black_box(ours.call(|| Ok(black_box(1u64)))))
    });
    g.bench_function("failsafe", |b| {
        b.iter(|| black_box(fs.call(|| Ok::<_, ()>(black_box(1u64)))))
    });
    g.bench_function("recloser", |b| {
        b.iter(|| black_box(rc.call(|| Ok::<_, ()>(black_box(1u64)))))
    });
    g.finish();

    // One failure in every 100 calls: the window is never quiet, so every success is
    // counted; none of the breakers opens at this rate.
    let mut g = c.benchmark_group("breaker_closed_call_1pct_failures_1_thread");
    let mut n = 0u64;
    g.bench_function("guardrails", |b| {
        b.iter(|| {
            n += 1;
            let fail = n.is_multiple_of(100);
            black_box(ours.call(|| {
                if fail {
                    Err(GuardrailError::external_with_class(
                        std::fmt::Error,
                        ErrorClass::Retryable,
                    ))
                } else {
                    Ok(black_box(1u64))
                }
            }))
        })
    });
    g.bench_function("failsafe", |b| {
        b.iter(|| {
            n += 1;
            let fail = n.is_multiple_of(100);
            black_box(fs.call(|| if fail { Err(()) } else { Ok(black_box(1u64)) }))
        })
    });
    g.bench_function("recloser", |b| {
        b.iter(|| {
            n += 1;
            let fail = n.is_multiple_of(100);
            black_box(rc.call(|| if fail { Err(()) } else { Ok(black_box(1u64)) }))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("breaker_closed_call_2_threads");
    {
        let ours = Arc::clone(&ours);
        g.bench_function("guardrails", move |b| {
            let ours = Arc::clone(&ours);
            b.iter_custom(move |iters| {
                let ours = Arc::clone(&ours);
                threaded(
                    2,
                    iters,
                    Arc::new(move || {
                        let _ = black_box(ours.call(|| Ok(black_box(1u64))));
                    }),
                )
            })
        });
    }
    {
        let fs = Arc::clone(&fs);
        g.bench_function("failsafe", move |b| {
            let fs = Arc::clone(&fs);
            b.iter_custom(move |iters| {
                let fs = Arc::clone(&fs);
                threaded(
                    2,
                    iters,
                    Arc::new(move || {
                        let _ = black_box(fs.call(|| Ok::<_, ()>(black_box(1u64))));
                    }),
                )
            })
        });
    }
    {
        let rc = Arc::clone(&rc);
        g.bench_function("recloser", move |b| {
            let rc = Arc::clone(&rc);
            b.iter_custom(move |iters| {
                let rc = Arc::clone(&rc);
                threaded(
                    2,
                    iters,
                    Arc::new(move || {
                        let _ = black_box(rc.call(|| Ok::<_, ()>(black_box(1u64))));
                    }),
                )
            })
        });
    }
    g.finish();
}

fn rate_limit(c: &mut Criterion) {
    use std::num::NonZeroU32;
    // One call per nanosecond: a quota no bench loop can exhaust, so every check takes the
    // allow path.
    let rate = 1_000_000_000;
    let ours = Arc::new(
        RateLimiter::new("bench", RateLimitConfig::per(rate, Duration::from_secs(1))).unwrap(),
    );
    let quota = governor::Quota::per_second(NonZeroU32::new(rate).unwrap());
    let gov = Arc::new(governor::RateLimiter::direct(quota));

    let mut g = c.benchmark_group("rate_limit_check_1_thread");
    g.bench_function("guardrails", |b| b.iter(|| black_box(ours.check())));
    g.bench_function("governor", |b| b.iter(|| black_box(gov.check())));
    g.finish();

    let mut g = c.benchmark_group("rate_limit_check_2_threads");
    {
        let ours = Arc::clone(&ours);
        g.bench_function("guardrails", move |b| {
            let ours = Arc::clone(&ours);
            b.iter_custom(move |iters| {
                let ours = Arc::clone(&ours);
                threaded(
                    2,
                    iters,
                    Arc::new(move || {
                        let _ = black_box(ours.check());
                    }),
                )
            })
        });
    }
    {
        let gov = Arc::clone(&gov);
        g.bench_function("governor", move |b| {
            let gov = Arc::clone(&gov);
            b.iter_custom(move |iters| {
                let gov = Arc::clone(&gov);
                threaded(
                    2,
                    iters,
                    Arc::new(move || {
                        let _ = black_box(gov.check());
                    }),
                )
            })
        });
    }
    g.finish();
}

#[inline(never)]
fn bare_call() -> guardrails::Result<u64> {
    Ok(black_box(1))
}

fn retry(c: &mut Criterion) {
    use backon::BlockingRetryable;
    let ours = RetryPolicy::new(RetryConfig::new()).unwrap();
    let mut g = c.benchmark_group("retry_first_try_success");
    g.bench_function("bare_call", |b| b.iter(|| black_box(bare_call())));
    g.bench_function("guardrails", |b| {
        b.iter(|| black_box(ours.call(|| Ok(black_box(1u64)))))
    });
    g.bench_function("backon", |b| {
        b.iter(|| {
            black_box(
                (|| -> Result<u64, std::io::Error> { Ok(black_box(1)) })
                    .retry(backon::ExponentialBuilder::default())
                    .call(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, breaker, rate_limit, retry);
criterion_main!(benches);
