//! `PipelineGuardrails`: preflight of the example's five stages against the same checks
//! made one at a time, and the runner's overhead per stage against the body, the output
//! check and the registry commit done by hand.
//!
//! `cargo bench --bench pipeline --features pipeline`. Files go under `target/` (a real
//! disk: on tmpfs `fsync` is free and the commit figures mean nothing).

// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use std::fs;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use guardrails::durable::RunRegistry;
use guardrails::integrity::{DataIntegrityChecker, TableCheck};
use guardrails::pipeline::{DataKind, DataSpec, PipelineGuardrails, PipelinePlan, StageSpec};
use guardrails::resource::{ResourceLimits, ResourceMonitor};

/// The example, to build its data: a clean run leaves every stage committed.
#[allow(dead_code)]
#[path = "../examples/pipeline.rs"]
mod example;

fn scratch() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-scratch");
    fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

/// The files of a declared input, as `guardrails validate` would be given them.
fn files(spec: &DataSpec) -> Vec<std::path::PathBuf> {
    if spec.path.is_dir() {
        let mut v: Vec<_> = fs::read_dir(&spec.path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    } else {
        vec![spec.path.clone()]
    }
}

/// What preflight replaces, done by hand: per stage a resource snapshot of its paths and
/// its outputs' folders, and
/// each input's files validated once, with the check of the upstream output it is (in the
/// example each producer's declared check holds the consumer's) or else its own. Not the
/// registry: the prerequisite figure is measured on its own.
fn by_hand(plan: &PipelinePlan, monitor: &ResourceMonitor, checker: &DataIntegrityChecker) {
    for name in &plan.order {
        let stage = plan.stage(name).unwrap();
        // The check paths and the outputs' folders (free space for the outputs).
        let paths: Vec<&Path> = stage
            .resources
            .check_paths
            .iter()
            .map(|p| p.as_path())
            .chain(stage.outputs.values().filter_map(|o| o.path.parent()))
            .collect();
        black_box(monitor.snapshot_with(&paths).check(&plan.resources));
        for input in stage.inputs.values() {
            let producer = stage.depends_on.iter().find_map(|d| {
                let up = plan.stage(d).unwrap();
                up.outputs.values().find(|o| o.path == input.path)
            });
            let input = producer.unwrap_or(input);
            for file in files(input) {
                let report = match input.kind {
                    DataKind::Table => {
                        let dir = input.path.parent().unwrap();
                        checker.validate_metadata_file(&file, &input.table_check(dir))
                    }
                    DataKind::Features => {
                        checker.validate_feature_file(&file, &input.feature_check())
                    }
                    _ => checker.validate_video_file(&file, &input.video_check()),
                };
                black_box(report.unwrap());
            }
        }
    }
}

fn preflight(c: &mut Criterion) {
    let dir = scratch();
    let outcome = example::run(dir.path(), example::Scenario::Clean).unwrap();
    assert!(outcome.is_success(), "{outcome:?}");
    let plan = PipelinePlan::from_path(dir.path().join("pipeline.toml")).unwrap();
    let reports = plan.preflight(&[]).unwrap();
    assert!(reports.iter().all(|r| r.ok), "{reports:?}");

    let mut g = c.benchmark_group("preflight_5_stages");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    g.bench_function("guardrails", |b| {
        b.iter(|| black_box(plan.preflight(&[]).unwrap()))
    });
    // A fresh monitor and checker, as each separate `guardrails` call has and as
    // `PipelinePlan::preflight` makes (its first snapshot costs more than later ones).
    g.bench_function("checks_by_hand", |b| {
        b.iter(|| {
            let monitor = ResourceMonitor::new(plan.resources.clone()).unwrap();
            by_hand(&plan, &monitor, &DataIntegrityChecker::new())
        })
    });
    // The part no validate call does: the registry opened read-only and the run's
    // committed stages read.
    g.bench_function("registry_read", |b| {
        b.iter(|| {
            let registry = RunRegistry::open_read_only(&plan.registry).unwrap();
            let runs = registry.runs().unwrap();
            black_box(registry.attempts(&runs[0].id).unwrap())
        })
    });
    g.finish();
}

/// One stage writing a 10-row CSV, with no resources to check, no inputs and no gates: what
/// `run_stage` adds is preflight, the attempt rows, the output check and the commit.
fn runner_overhead(c: &mut Criterion) {
    const CSV: &str =
        "id,score\n0,0.0\n1,0.1\n2,0.2\n3,0.3\n4,0.4\n5,0.5\n6,0.6\n7,0.7\n8,0.8\n9,0.9\n";
    let dir = scratch();
    let limits = ResourceLimits::new()
        .with_min_free_disk_bytes(0)
        .with_max_disk_bytes(u64::MAX / 2)
        .with_max_memory_bytes(u64::MAX / 2);
    let plan = PipelineGuardrails::builder("bench")
        .root(dir.path())
        .resources(limits)
        .stage(
            "s",
            StageSpec::new().with_output(
                "t",
                DataSpec::table("t.csv").with_required_columns(["id", "score"]),
            ),
        )
        .plan()
        .unwrap();
    let mut pipeline = PipelineGuardrails::open(plan).unwrap();
    let registry = RunRegistry::open(dir.path().join("by_hand.db")).unwrap();
    let run = registry.start_run("bench", "h").unwrap();
    let checker = DataIntegrityChecker::new();
    let check = TableCheck::new().with_required_columns(["id", "score"]);
    let target = dir.path().join("h.csv");

    let mut g = c.benchmark_group("run_stage_10_rows");
    g.sample_size(30).measurement_time(Duration::from_secs(8));
    g.bench_function("guardrails", |b| {
        b.iter(|| {
            pipeline
                .run_stage("s", |ctx| {
                    fs::write(ctx.output("t")?, CSV)?;
                    Ok(())
                })
                .unwrap()
        })
    });
    // The same body, check and atomic commit through the registry, without the runner.
    g.bench_function("by_hand", |b| {
        b.iter(|| {
            registry
                .run_stage(&run, "s", |s| {
                    let temp = s.output(&target)?;
                    fs::write(&temp, CSV)?;
                    checker
                        .validate_metadata_file(&temp, &check)?
                        .into_result()?;
                    Ok(())
                })
                .unwrap()
        })
    });
    // Only the commit: what the overhead is dominated by.
    g.bench_function("registry_commit_only", |b| {
        b.iter(|| {
            registry
                .run_stage(&run, "c", |s| {
                    fs::write(s.output(&target)?, CSV)?;
                    Ok(())
                })
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, preflight, runner_overhead);
criterion_main!(benches);
