//! JSON guard benches: a valid document through the guard against serde_json plus a
//! precompiled jsonschema validator alone, and the repair path's throughput (the Python
//! json_repair peer runs from `benches/peers/json_guard.sh` on the same input).

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use guardrails::json_guard::{JsonGuardConfig, JsonHardGuard};
use serde_json::{Value, json};

const VALID: &str = include_str!("peers/valid_2k.json");
const MALFORMED: &str = include_str!("peers/malformed_8k.txt");

fn schema() -> Value {
    json!({
        "type": "object",
        "required": ["query", "count", "items"],
        "properties": {
            "query": {"type": "string"},
            "count": {"type": "integer", "minimum": 0},
            "items": {"type": "array", "items": {
                "type": "object",
                "required": ["id", "title", "price"],
                "properties": {
                    "id": {"type": "integer"},
                    "title": {"type": "string"},
                    "price": {"type": "number", "minimum": 0},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "in_stock": {"type": "boolean"}
                }
            }}
        }
    })
}

fn valid_document(c: &mut Criterion) {
    let guard = JsonHardGuard::new(JsonGuardConfig::new())
        .unwrap()
        .with_schema(&schema())
        .unwrap();
    let validator = jsonschema::validator_for(&schema()).unwrap();
    let mut g = c.benchmark_group("json_guard_valid_document");
    g.throughput(Throughput::Bytes(VALID.len() as u64));
    g.bench_function("guardrails", |b| {
        b.iter(|| black_box(guard.parse_value(black_box(VALID)).is_ok()))
    });
    g.bench_function("serde_json_jsonschema", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_str(black_box(VALID)).unwrap();
            black_box(validator.is_valid(&v))
        })
    });
    g.finish();
}

fn repair(c: &mut Criterion) {
    let guard = JsonHardGuard::new(JsonGuardConfig::new()).unwrap();
    assert!(guard.parse_value(MALFORMED).is_ok());
    let mut g = c.benchmark_group("json_guard_repair_8k");
    g.throughput(Throughput::Bytes(MALFORMED.len() as u64));
    g.bench_function("guardrails", |b| {
        b.iter(|| black_box(guard.parse_value(black_box(MALFORMED)).is_ok()))
    });
    g.finish();
}

criterion_group!(benches, valid_document, repair);
criterion_main!(benches);
