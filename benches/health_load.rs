//! `/health` and `/health/llm?model=all` under 1 000 requests/s on loopback for 10 s each,
//! with cached check and probe results: latency percentiles as a client sees them.
//! A bounded, paced loop (it stops by itself); not a criterion bench, a load run.
//!
//! `cargo bench --features http --bench health_load`
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use guardrails::health::{CheckOptions, HealthRegistry};
use guardrails::observe::model_health::{ModelHealthCheck, ModelHealthConfig};
use guardrails::resource::HealthStatus;
use guardrails::server::{HealthServer, ServerConfig};

const RATE: u64 = 1_000;
const SECONDS: u64 = 10;
const CLIENTS: u64 = 4;

fn run(url: &str) -> (Vec<Duration>, u64) {
    let per_client = RATE / CLIENTS;
    let interval = Duration::from_nanos(1_000_000_000 / per_client);
    let handles: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let url = url.to_string();
            std::thread::spawn(move || {
                let agent = ureq::Agent::new_with_config(
                    ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(5)))
                        .build(),
                );
                let start = Instant::now() + Duration::from_micros(c * 250);
                let mut latencies = Vec::with_capacity((per_client * SECONDS) as usize);
                let mut errors = 0;
                for i in 0..per_client * SECONDS {
                    // Paced by schedule, not by answers: a slow answer does not lower the rate.
                    let due = start + interval * i as u32;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let began = Instant::now();
                    match agent.get(&url).call() {
                        Ok(mut r) if r.status().is_success() => {
                            let _ = r.body_mut().read_to_string();
                        }
                        _ => errors += 1,
                    }
                    latencies.push(began.elapsed());
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.join().unwrap();
        all.extend(l);
        errors += e;
    }
    all.sort();
    (all, errors)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn main() {
    // `cargo bench` passes `--bench`; a `cargo test --benches` run passes nothing and must
    // not take 20 s.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mut registry = HealthRegistry::new();
    for name in ["db", "queue", "object-store"] {
        registry.register(name, CheckOptions::required(Duration::from_secs(1)), || {
            // A check that costs something: what a cached report saves.
            std::thread::sleep(Duration::from_millis(2));
            Ok(HealthStatus::Healthy)
        });
    }
    let mut server = HealthServer::new(
        ServerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            ..ServerConfig::default()
        },
        registry,
    )
    .unwrap();
    for model in ["qwen", "llama"] {
        let check = ModelHealthCheck::new(model, ModelHealthConfig::default())
            .unwrap()
            .with_probe(|| {
                std::thread::sleep(Duration::from_millis(50));
                Ok("{\"ok\": true}".into())
            });
        server = server.with_model(Arc::new(check));
    }
    let server = server.start_background().unwrap();
    for path in ["/health", "/health/llm?model=all"] {
        let url = format!("http://{}{path}", server.local_addr());
        let (lat, errors) = run(&url);
        println!(
            "GET {path}: {} requests in {SECONDS} s at {RATE}/s target, {errors} errors; \
             p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            lat.len(),
            pct(&lat, 0.50),
            pct(&lat, 0.90),
            pct(&lat, 0.99),
            pct(&lat, 1.0)
        );
    }
    server.shutdown();
}
