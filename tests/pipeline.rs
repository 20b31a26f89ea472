//! `PipelineGuardrails`: the TOML and builder forms, config errors with their dotted keys,
//! preflight listing every problem, gates (mandatory, advisory, ratios, 0 items), quarantine,
//! retry, fallback, panics, deadlines on a manual clock, blocked downstream stages and resume.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use guardrails::durable::{AttemptStatus, ResumeState, RunStatus};
use guardrails::pipeline::{
    DataSpec, GateLevel, GateSpec, OnValidation, PipelineGuardrails, PipelinePlan, StageBody,
    StageSpec, StageStatus,
};
use guardrails::resilience::RetryConfig;
use guardrails::resource::ResourceLimits;
use guardrails::{ErrorClass, ErrorKind, GuardrailError, ManualClock, ResultExt};

/// The example itself, run end to end below (its `main` and printing go unused here).
#[allow(dead_code)]
#[path = "../examples/pipeline.rs"]
mod example;

/// Limits a CI machine meets: what these tests judge is the pipeline, not the machine.
fn lenient() -> ResourceLimits {
    ResourceLimits::new()
        .with_min_free_disk_bytes(1 << 20)
        .with_max_disk_bytes(u64::MAX / 2)
        .with_max_memory_bytes(u64::MAX / 2)
}

fn csv(rows: usize) -> String {
    let mut text = String::from("id,score\n");
    for i in 0..rows {
        text.push_str(&format!("{i},{}\n", i as f64 / 10.0));
    }
    text
}

fn write_csv(
    ctx: &mut guardrails::pipeline::StageContext<'_, '_>,
    output: &str,
    text: &str,
) -> guardrails::Result<()> {
    std::fs::write(ctx.output(output)?, text)?;
    Ok(())
}

const TOML: &str = r#"
[pipeline]
name = "videos"
registry = "state/registry.db"

[resources]
min_free_disk_bytes = 1048576
max_disk_bytes = 4611686018427387903
max_memory_bytes = 4611686018427387903

[retry]
max_retries = 2
initial_delay = "10ms"

[stages.extract]
outputs.rows = { path = "out/rows.csv", required_columns = ["id", "score"], unique = ["id"] }
gates.enough = { figure = "rows.rows", min = 3 }

[stages.score]
depends_on = ["extract"]
inputs.rows = { path = "out/rows.csv", required_columns = ["id"] }
outputs.scored = { path = "out/scored.csv" }
gates.kept = { figure = "scored.rows", relative_to = "rows.rows", min = 0.5, level = "advisory" }
retry = true
on_validation = "skip"
"#;

fn builder_plan(root: &Path) -> PipelinePlan {
    PipelineGuardrails::builder("videos")
        .root(root)
        .registry("state/registry.db")
        .resources(lenient())
        .retry(
            RetryConfig::new()
                .with_max_retries(2)
                .with_initial_delay(Duration::from_millis(10)),
        )
        .stage(
            "extract",
            StageSpec::new()
                .with_output(
                    "rows",
                    DataSpec::table("out/rows.csv")
                        .with_required_columns(["id", "score"])
                        .with_unique(["id"]),
                )
                .with_gate("enough", GateSpec::new("rows.rows").with_min(3.0)),
        )
        .stage(
            "score",
            StageSpec::new()
                .depends_on("extract")
                .with_input(
                    "rows",
                    DataSpec::table("out/rows.csv").with_required_columns(["id"]),
                )
                .with_output("scored", DataSpec::table("out/scored.csv"))
                .with_gate(
                    "kept",
                    GateSpec::new("scored.rows")
                        .relative_to("rows.rows")
                        .with_min(0.5)
                        .advisory(),
                )
                .with_retry(true)
                .with_on_validation(OnValidation::Skip),
        )
        .plan()
        .unwrap()
}

#[test]
fn the_toml_and_the_builder_give_the_same_plan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, TOML).unwrap();
    let from_toml = PipelinePlan::from_path(&path).unwrap();
    let mut built = builder_plan(dir.path());
    // The TOML keeps the resource limits it names; the builder's are the same three.
    built.resources = from_toml.resources.clone();
    assert_eq!(from_toml, built);
    assert_eq!(from_toml.order, ["extract", "score"]);
    assert_eq!(from_toml.registry, dir.path().join("state/registry.db"));
    assert_eq!(
        from_toml.stages["score"].inputs["rows"].path,
        dir.path().join("out/rows.csv")
    );
}

#[test]
fn config_mistakes_are_refused_with_their_dotted_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[stages.a]\noutputs.t = { path = \"t.csv\", requird_columns = [\"id\"] }",
            "stages.a.outputs.t.requird_columns",
            "unknown key",
        ),
        (
            "[stages.a]\noutputs.t = { path = \"t.csv\", dtypes = [\"float32\"] }",
            "stages.a.outputs.t.dtypes",
            "not a key of a table",
        ),
        (
            "[stages.a]\ndepends_on = []",
            "stages.a.outputs",
            "at least one output",
        ),
        (
            "[stages.a]\ndepends_on = [\"ghost\"]\noutputs.t = { path = \"t.csv\" }",
            "stages.a.depends_on",
            "unknown stage ghost",
        ),
        (
            "[stages.a]\ndepends_on = [\"b\"]\noutputs.t = { path = \"a.csv\" }\n[stages.b]\ndepends_on = [\"a\"]\noutputs.t = { path = \"b.csv\" }",
            "stages.a.depends_on",
            "dependency cycle: a -> b -> a",
        ),
        (
            "[stages.a]\noutputs.t = { path = \"t.csv\" }\ngates.g = { figure = \"t.accuracy\", min = 1 }",
            "stages.a.gates.g.figure",
            "no check produces it",
        ),
        (
            "[stages.a]\noutputs.t = { path = \"t.csv\" }\ngates.g = { figure = \"other.rows\", min = 1 }",
            "stages.a.gates.g.figure",
            "other is not an input or output",
        ),
        (
            "[stages.a]\noutputs.v = { path = \"clips\", kind = \"videos\" }\ngates.g = { figure = \"v.null_fraction.id\", max = 0 }",
            "stages.a.gates.g.figure",
            "v is not a table",
        ),
        (
            "[stages.a]\noutputs.t = { path = \"t.csv\" }\ngates.g = { figure = \"t.rows\" }",
            "stages.a.gates.g.min",
            "needs min, max or both",
        ),
        (
            "[stages.a]\noutputs.v = { path = \"clips\", kind = \"videos\", sample = 0 }",
            "stages.a.outputs.v.sample",
            "(0, 1]",
        ),
        (
            "[stages.a]\noutputs.t = { path = \"t.csv\" }\non_validation = \"ignore\"",
            "stages.a.on_validation",
            "unknown variant",
        ),
    ];
    for (text, field, reason) in cases {
        let problems = text
            .parse::<guardrails::GuardrailsConfig>()
            .map(|_| ())
            .unwrap_err();
        match &problems {
            GuardrailError::Config {
                field: f,
                reason: r,
            } => {
                assert_eq!(f, field, "{text}: {problems}");
                assert!(r.contains(reason), "{text}: {problems}");
            }
            other => panic!("{text}: {other}"),
        }
    }
}

#[test]
fn a_stage_commits_its_outputs_figures_and_gate_results_together() {
    let dir = tempfile::tempdir().unwrap();
    let mut pipeline = PipelineGuardrails::open(builder_plan(dir.path())).unwrap();
    let outcome = pipeline
        .run_stage("extract", |ctx| {
            ctx.record("accuracy", 0.93);
            write_csv(ctx, "rows", &csv(5))
        })
        .unwrap();
    assert_eq!(outcome.figures.get("rows.rows"), Some(5.0));
    assert_eq!(outcome.figures.get("metrics.accuracy"), Some(0.93));
    assert!(
        outcome.gates.iter().all(|g| g.passed),
        "{:?}",
        outcome.gates
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/rows.csv")).unwrap(),
        csv(5)
    );
    let attempts = pipeline.registry().attempts(pipeline.run_id()).unwrap();
    assert_eq!(attempts[0].status, AttemptStatus::Committed);
    assert_eq!(attempts[0].metrics["gates"][0]["gate"], "enough");
    assert_eq!(attempts[0].metrics["gates"][0]["value"], 5.0);
}

#[test]
fn a_failed_mandatory_gate_commits_nothing_and_names_the_stage_gate_and_figures() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out/rows.csv");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::write(&target, "id,score\nold,1\nold2,2\nold3,3\n").unwrap();
    let mut pipeline = PipelineGuardrails::open(builder_plan(dir.path())).unwrap();
    // The gate's result is a guard event too (sinks run on the deciding thread: this one).
    let me = std::thread::current().id();
    type Gates = std::sync::Arc<std::sync::Mutex<Vec<(String, String, bool, bool)>>>;
    let gates: Gates = Default::default();
    let sink = std::sync::Arc::clone(&gates);
    let subscription = guardrails::events::subscribe(move |e| {
        if std::thread::current().id() == me
            && let guardrails::events::Decision::GateResult {
                gate,
                passed,
                mandatory,
            } = &e.decision
        {
            sink.lock()
                .unwrap()
                .push((e.name.to_string(), gate.to_string(), *passed, *mandatory));
        }
    });
    let err = pipeline
        .run_stage("extract", |ctx| write_csv(ctx, "rows", &csv(2)))
        .unwrap_err();
    drop(subscription);
    assert_eq!(
        *gates.lock().unwrap(),
        [("extract".to_string(), "enough".to_string(), false, true)]
    );
    assert_eq!(err.kind(), ErrorKind::Stage);
    assert_eq!(err.class(), ErrorClass::Validation);
    assert_eq!(
        err.to_string(),
        "stage extract: gate enough: rows.rows = 2, expected at least 3"
    );
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "id,score\nold,1\nold2,2\nold3,3\n"
    );
    let leftovers: Vec<_> = std::fs::read_dir(target.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    let attempts = pipeline.registry().attempts(pipeline.run_id()).unwrap();
    assert_eq!(attempts[0].status, AttemptStatus::Failed);
    assert_eq!(attempts[0].metrics["gates"][0]["passed"], false);
}

#[test]
fn an_output_that_fails_its_check_or_was_not_written_is_not_committed() {
    let dir = tempfile::tempdir().unwrap();
    let mut pipeline = PipelineGuardrails::open(builder_plan(dir.path())).unwrap();
    let err = pipeline
        .run_stage("extract", |ctx| write_csv(ctx, "rows", "id\n1\n2\n3\n"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DataIntegrity, "{err}");
    assert!(err.to_string().contains("rows.csv"), "{err}");
    assert!(err.to_string().contains("score"), "{err}");
    let err = pipeline.run_stage("extract", |_| Ok(())).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "stage extract: output rows: the body did not write it (call ctx.output(\"rows\") for {})",
            dir.path().join("out/rows.csv").display()
        )
    );
    assert!(!dir.path().join("out/rows.csv").exists());
}

#[test]
fn preflight_lists_every_problem_not_just_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let plan = PipelineGuardrails::builder("p")
        .root(dir.path())
        .resources(lenient())
        .stage(
            "a",
            StageSpec::new().with_output("t", DataSpec::table("a.csv")),
        )
        .stage(
            "b",
            StageSpec::new()
                .depends_on("a")
                .with_input("raw", DataSpec::table("missing.csv"))
                .with_check_path("no/such/dir")
                .with_output("t", DataSpec::table("b.csv")),
        )
        .plan()
        .unwrap();
    let pipeline = PipelineGuardrails::open(plan).unwrap();
    let report = pipeline.preflight("b").unwrap();
    assert!(!report.ok);
    let checks: Vec<(&str, &str)> = report
        .errors
        .iter()
        .map(|e| (e.check.as_str(), e.subject.as_str()))
        .collect();
    let no_dir = dir.path().join("no/such/dir").display().to_string();
    assert!(
        checks.contains(&("resources", no_dir.as_str())),
        "{checks:?}"
    );
    assert!(checks.contains(&("prerequisite", "a")), "{checks:?}");
    assert!(checks.contains(&("input", "raw")), "{checks:?}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(json["stage"], "b");
    let all = pipeline.preflight_all().unwrap();
    assert_eq!(all.len(), 2);
    assert!(all[0].ok, "{:?}", all[0]);
}

#[test]
fn a_prerequisite_is_revalidated_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let mut pipeline = PipelineGuardrails::open(builder_plan(dir.path())).unwrap();
    pipeline
        .run_stage("extract", |ctx| write_csv(ctx, "rows", &csv(5)))
        .unwrap();
    assert!(pipeline.preflight("score").unwrap().ok);
    // Someone replaces the committed table with one that breaks its declared check.
    std::fs::write(dir.path().join("out/rows.csv"), "id,score\n1,1\n1,2\n").unwrap();
    let report = pipeline.preflight("score").unwrap();
    assert!(!report.ok);
    let problem = report
        .errors
        .iter()
        .find(|e| e.check == "prerequisite")
        .unwrap();
    assert!(
        problem.message.contains("output rows of stage extract"),
        "{problem:?}"
    );
    assert!(problem.message.contains("unique"), "{problem:?}");
    let err = pipeline
        .run_stage("score", |ctx| write_csv(ctx, "scored", "id\n1\n"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Stage);
    assert!(
        err.to_string().starts_with("stage score: preflight: "),
        "{err}"
    );
}

fn skip_plan(root: &Path, on_validation: OnValidation) -> PipelinePlan {
    PipelineGuardrails::builder("p")
        .root(root)
        .resources(lenient())
        .stage(
            "clean",
            StageSpec::new()
                .with_output("t", DataSpec::table("clean.csv"))
                .with_on_validation(on_validation)
                .with_gate("few_bad", GateSpec::new("skipped_fraction").with_max(0.25)),
        )
        .plan()
        .unwrap()
}

fn clean_body(
    bad: &'static [u32],
) -> impl FnMut(&mut guardrails::pipeline::StageContext<'_, '_>) -> guardrails::Result<()> {
    move |ctx| {
        let mut kept = String::from("id\n");
        for i in 0..10u32 {
            let row = ctx.item(format!("clip-{i}"), || {
                if bad.contains(&i) {
                    Err(GuardrailError::DataIntegrity {
                        path: format!("clip-{i}.mp4").into(),
                        check: "moov".into(),
                        expected: "a complete file".into(),
                        found: "cut at 1 KiB".into(),
                    })
                } else {
                    Ok(format!("{i}\n"))
                }
            })?;
            kept.push_str(&row.unwrap_or_default());
        }
        std::fs::write(ctx.output("t")?, kept)?;
        Ok(())
    }
}

#[test]
fn bad_items_are_quarantined_when_skipping_and_fail_the_stage_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let mut pipeline = PipelineGuardrails::open(skip_plan(dir.path(), OnValidation::Skip)).unwrap();
    let outcome = pipeline.run_stage("clean", clean_body(&[3, 7])).unwrap();
    assert_eq!(outcome.skipped, 2);
    assert_eq!(outcome.figures.get("skipped_fraction"), Some(0.2));
    let items: Vec<&str> = outcome.quarantine.iter().map(|q| q.item.as_str()).collect();
    assert_eq!(items, ["clip-3", "clip-7"]);
    assert!(outcome.quarantine[0].error.contains("clip-3.mp4"));
    assert_eq!(outcome.figures.get("t.rows"), Some(8.0));
    let attempts = pipeline.registry().attempts(pipeline.run_id()).unwrap();
    assert_eq!(attempts[0].metrics["quarantine"][1]["item"], "clip-7");

    // Too many bad items: the share gate stops the stage.
    let err = pipeline
        .run_stage("clean", clean_body(&[1, 2, 3]))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "stage clean: gate few_bad: skipped_fraction = 0.3, expected at most 0.25"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut pipeline = PipelineGuardrails::open(skip_plan(dir.path(), OnValidation::Fail)).unwrap();
    let err = pipeline.run_stage("clean", clean_body(&[3])).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DataIntegrity);
    assert!(err.to_string().contains("clip-3.mp4"), "{err}");
    assert_eq!(
        err.context().and_then(|c| c.stage.as_deref()),
        Some("clean")
    );
    assert!(!dir.path().join("clean.csv").exists());
}

#[test]
fn column_figures_feed_gates_and_a_figure_over_no_rows_fails() {
    let dir = tempfile::tempdir().unwrap();
    let plan = PipelineGuardrails::builder("p")
        .root(dir.path())
        .resources(lenient())
        .stage(
            "t",
            StageSpec::new()
                .with_output("t", DataSpec::table("t.csv").with_allow_empty(true))
                .with_gate(
                    "nulls",
                    GateSpec::new("t.null_fraction.label").with_max(0.5),
                )
                .with_gate(
                    "dups",
                    GateSpec::new("t.duplicate_fraction.id").with_max(0.5),
                )
                .with_gate("lo", GateSpec::new("t.min.score").with_min(0.0))
                .with_gate("hi", GateSpec::new("t.max.score").with_max(10.0)),
        )
        .plan()
        .unwrap();
    let mut pipeline = PipelineGuardrails::open(plan).unwrap();
    let outcome = pipeline
        .run_stage("t", |ctx| {
            write_csv(ctx, "t", "id,label,score\n1,a,0.5\n2,,9\n2,c,3\n3,d,-0\n")
        })
        .unwrap();
    assert_eq!(outcome.figures.get("t.null_fraction.label"), Some(0.25));
    assert_eq!(outcome.figures.get("t.duplicate_fraction.id"), Some(0.25));
    assert_eq!(outcome.figures.get("t.min.score"), Some(0.0));
    assert_eq!(outcome.figures.get("t.max.score"), Some(9.0));

    let err = pipeline
        .run_stage("t", |ctx| write_csv(ctx, "t", "id,label,score\n"))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("t.duplicate_fraction.id must be at most 0.5, but t.duplicate_fraction.id was computed over 0 items"),
        "{err}"
    );
}

#[test]
fn retryable_errors_are_retried_and_a_recoverable_one_takes_the_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let plan = builder_plan(dir.path());
    let mut pipeline = PipelineGuardrails::open(plan).unwrap();
    pipeline
        .run_stage("extract", |ctx| write_csv(ctx, "rows", &csv(4)))
        .unwrap();
    let mut calls = 0;
    let outcome = pipeline
        .run_stage("score", |ctx| {
            calls += 1;
            // The first attempt writes half a file and fails: the retry starts from empty.
            std::fs::write(ctx.output("scored")?, "id\n1\n")?;
            if calls == 1 {
                return Err(GuardrailError::RateLimited {
                    name: "scorer".into(),
                    retry_after: Duration::from_millis(1),
                });
            }
            std::fs::write(ctx.output("scored")?, "id\n1\n2\n3\n")?;
            Ok(())
        })
        .unwrap();
    assert_eq!(outcome.body_attempts, 2);
    assert_eq!(outcome.figures.get("scored.rows"), Some(3.0));

    // A recoverable error goes to the registered fallback.
    let plan = PipelineGuardrails::builder("p")
        .root(dir.path())
        .resources(lenient())
        .stage(
            "calibrate",
            StageSpec::new()
                .with_output("t", DataSpec::table("cal.csv"))
                .with_fallback("identity"),
        )
        .plan()
        .unwrap();
    let mut pipeline = PipelineGuardrails::open(plan)
        .unwrap()
        .with_fallback("identity", |ctx| {
            std::fs::write(ctx.output("t")?, "scale\n1.0\n")?;
            Ok(())
        });
    let outcome = pipeline
        .run_stage("calibrate", |ctx| {
            std::fs::write(ctx.output("t")?, "scale\n0.")?;
            Err(GuardrailError::external_with_class(
                std::io::Error::other("the calibrator diverged"),
                ErrorClass::Recoverable,
            ))
        })
        .unwrap();
    assert!(outcome.fallback_used);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("cal.csv")).unwrap(),
        "scale\n1.0\n"
    );
}

#[test]
fn a_panicking_or_fatal_body_fails_the_stage_and_keeps_what_was_committed() {
    let dir = tempfile::tempdir().unwrap();
    let mut pipeline = PipelineGuardrails::open(builder_plan(dir.path())).unwrap();
    pipeline
        .run_stage("extract", |ctx| write_csv(ctx, "rows", &csv(4)))
        .unwrap();
    let err = pipeline
        .run_stage("extract", |ctx| {
            write_csv(ctx, "rows", &csv(9))?;
            panic!("index out of bounds in the user's code");
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "stage extract: body: the stage body panicked: index out of bounds in the user's code"
    );
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/rows.csv")).unwrap(),
        csv(4)
    );
    #[derive(Debug, thiserror::Error)]
    #[error("the warehouse refused the load")]
    struct Refused;
    let err = pipeline
        .run_stage("extract", |ctx| {
            write_csv(ctx, "rows", &csv(9))?;
            Err(GuardrailError::external(Refused))
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::External);
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert_eq!(
        err.to_string(),
        "stage extract: the warehouse refused the load"
    );
    let attempts = pipeline.registry().attempts(pipeline.run_id()).unwrap();
    let statuses: Vec<AttemptStatus> = attempts.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        [
            AttemptStatus::Committed,
            AttemptStatus::Failed,
            AttemptStatus::Failed
        ]
    );
    assert!(
        attempts[1]
            .error_message
            .as_deref()
            .unwrap()
            .contains("panicked")
    );
}

#[test]
fn a_body_past_its_deadline_times_out_on_the_manual_clock() {
    let dir = tempfile::tempdir().unwrap();
    let plan = PipelineGuardrails::builder("p")
        .root(dir.path())
        .resources(lenient())
        .stage(
            "slow",
            StageSpec::new()
                .with_output("t", DataSpec::table("t.csv"))
                .with_timeout(Duration::from_secs(60)),
        )
        .plan()
        .unwrap();
    let clock = ManualClock::new();
    let mut pipeline =
        PipelineGuardrails::open_with_clock(plan, None, Arc::new(clock.clone())).unwrap();
    let mut handled = 0;
    let err = pipeline
        .run_stage("slow", |ctx| {
            for _ in 0..100 {
                ctx.check_deadline()?;
                handled += 1;
                clock.advance(Duration::from_secs(7));
            }
            write_csv(ctx, "t", "id\n1\n")
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(handled, 9, "stops at the first check past 60 s");
    assert!(!dir.path().join("t.csv").exists());
}

#[test]
fn a_failed_stage_blocks_only_its_downstream_and_resume_skips_what_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let table = |p: &str| DataSpec::table(p);
    let plan = PipelineGuardrails::builder("p")
        .root(dir.path())
        .resources(lenient())
        .stage("a", StageSpec::new().with_output("t", table("a.csv")))
        .stage(
            "b",
            StageSpec::new()
                .depends_on("a")
                .with_output("t", table("b.csv"))
                .with_gate("rows", GateSpec::new("t.rows").with_min(2.0)),
        )
        .stage(
            "c",
            StageSpec::new()
                .depends_on("b")
                .with_output("t", table("c.csv")),
        )
        .stage("d", StageSpec::new().with_output("t", table("d.csv")))
        .plan()
        .unwrap();
    let bodies = |b_rows: &'static str| -> BTreeMap<String, StageBody<'static>> {
        let mut m: BTreeMap<String, StageBody<'static>> = BTreeMap::new();
        for s in ["a", "c", "d"] {
            m.insert(s.into(), Box::new(|ctx| write_csv(ctx, "t", "id\n1\n2\n")));
        }
        m.insert("b".into(), Box::new(move |ctx| write_csv(ctx, "t", b_rows)));
        m
    };
    let mut pipeline = PipelineGuardrails::open(plan.clone()).unwrap();
    let outcome = pipeline.run(bodies("id\n1\n")).unwrap();
    assert!(!outcome.is_success());
    let status = |s: &str| match outcome.get(s).unwrap() {
        StageStatus::Committed(_) => "committed".to_string(),
        StageStatus::Skipped { .. } => "skipped".to_string(),
        StageStatus::Failed { error, .. } => format!("failed: {error}"),
        StageStatus::Blocked { by } => format!("blocked by {by}"),
        _ => "other".to_string(),
    };
    assert_eq!(status("a"), "committed");
    assert_eq!(
        status("b"),
        "failed: stage b: gate rows: t.rows = 1, expected at least 2"
    );
    assert_eq!(status("c"), "blocked by b");
    assert_eq!(status("d"), "committed");
    let run = pipeline.run_id().clone();
    assert_eq!(
        pipeline.registry().run(&run).unwrap().unwrap().status,
        RunStatus::Failed
    );
    drop(pipeline);

    // Fixed upstream data: the resumed run skips a and d and runs b and c.
    let mut pipeline = PipelineGuardrails::resume(plan.clone(), &run).unwrap();
    let outcome = pipeline.run(bodies("id\n1\n2\n3\n")).unwrap();
    assert!(outcome.is_success(), "{outcome:?}");
    match outcome.get("a").unwrap() {
        StageStatus::Skipped { reason } => assert!(!reason.is_empty()),
        other => panic!("{other:?}"),
    }
    assert!(matches!(outcome.get("b"), Some(StageStatus::Committed(_))));
    assert!(matches!(outcome.get("c"), Some(StageStatus::Committed(_))));
    assert!(matches!(
        outcome.get("d"),
        Some(StageStatus::Skipped { .. })
    ));
    assert_eq!(outcome.resume.get("b").unwrap().state, ResumeState::ToRun);
    let run = outcome.run.clone();
    drop(pipeline);

    // An output changed since its commit: that stage is stale and runs again, saying why.
    let a_output = plan
        .stage("a")
        .unwrap()
        .outputs
        .values()
        .next()
        .unwrap()
        .path
        .clone();
    std::fs::write(&a_output, "id\n1\n2\n3\n4\n5\n6\n7\n").unwrap();
    let mut pipeline = PipelineGuardrails::resume(plan, &run).unwrap();
    let outcome = pipeline.run(bodies("id\n1\n2\n3\n")).unwrap();
    let why = outcome.resume.get("a").unwrap();
    assert_eq!(why.state, ResumeState::Stale, "{why:?}");
    assert!(
        why.reason
            .contains(a_output.file_name().unwrap().to_str().unwrap()),
        "{why:?}"
    );
    assert!(matches!(outcome.get("a"), Some(StageStatus::Committed(_))));
    // b and c were done, but from a's old output: they run again; d is untouched.
    let why = outcome.resume.get("b").unwrap();
    assert_eq!(why.state, ResumeState::Stale);
    assert!(why.reason.contains("upstream stage a ran again"), "{why:?}");
    assert!(matches!(outcome.get("b"), Some(StageStatus::Committed(_))));
    assert!(matches!(outcome.get("c"), Some(StageStatus::Committed(_))));
    assert!(matches!(
        outcome.get("d"),
        Some(StageStatus::Skipped { .. })
    ));
}

#[test]
fn gates_written_in_code_judge_the_figures_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut pipeline = PipelineGuardrails::open(builder_plan(dir.path()))
        .unwrap()
        .with_gate_fn("extract", "accuracy", GateLevel::Mandatory, |f| {
            match f.get("metrics.accuracy") {
                Some(a) if a >= 0.9 => Ok(()),
                other => Err(format!("accuracy {other:?} below 0.9")),
            }
        });
    let err = pipeline
        .run_stage("extract", |ctx| {
            ctx.record("accuracy", 0.5);
            write_csv(ctx, "rows", &csv(5))
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "stage extract: gate accuracy: accuracy Some(0.5) below 0.9"
    );
}

fn committed(outcome: &guardrails::pipeline::PipelineOutcome) -> Vec<&str> {
    outcome
        .stages
        .iter()
        .filter(|(_, s)| matches!(s, StageStatus::Committed(_)))
        .map(|(n, _)| n.as_str())
        .collect()
}

#[test]
fn the_example_runs_clean_skips_a_damaged_clip_and_stops_on_too_few_rows() {
    let all = [
        "augment",
        "features",
        "scale_videos",
        "scaled_features",
        "training_prereqs",
    ];

    let dir = tempfile::tempdir().unwrap();
    let outcome = example::run(dir.path(), example::Scenario::Clean).unwrap();
    assert!(outcome.is_success(), "{outcome:?}");
    assert_eq!(committed(&outcome), all);
    let prereqs = std::fs::read_to_string(dir.path().join("work/prereqs.csv")).unwrap();
    assert_eq!(
        prereqs,
        "model,ready,rows\nlinear,true,3200\ngbdt,true,3200\nmlp,true,3200\n"
    );

    let dir = tempfile::tempdir().unwrap();
    let outcome = example::run(dir.path(), example::Scenario::CorruptClip).unwrap();
    assert!(outcome.is_success(), "{outcome:?}");
    let Some(StageStatus::Committed(augment)) = outcome.get("augment") else {
        panic!("{outcome:?}");
    };
    assert_eq!(augment.skipped, 1);
    assert_eq!(augment.quarantine[0].item, "damaged.mp4");
    assert!(
        augment.quarantine[0].error.contains("truncated"),
        "{:?}",
        augment.quarantine
    );
    assert!(!dir.path().join("work/clips/damaged.mp4").exists());
    assert_eq!(augment.figures.get("clips.files"), Some(4.0));

    let dir = tempfile::tempdir().unwrap();
    let outcome = example::run(dir.path(), example::Scenario::TooFewRows).unwrap();
    assert!(!outcome.is_success());
    assert_eq!(committed(&outcome), ["augment", "features"]);
    match outcome.get("scale_videos") {
        Some(StageStatus::Failed { error, class }) => {
            assert_eq!(
                error,
                "stage scale_videos: gate enough_rows: metadata.rows = 2000, expected at least 3001"
            );
            assert_eq!(*class, ErrorClass::Validation);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        outcome.get("training_prereqs"),
        Some(StageStatus::Blocked { by }) if by == "scaled_features"
    ));
    assert!(!dir.path().join("work/metadata.parquet").exists());
}

/// A stage linking its output to its inputs: ids within the input's ids, one file per row.
fn link_plan(root: &Path) -> PipelinePlan {
    PipelineGuardrails::builder("links")
        .root(root)
        .resources(lenient())
        .stage(
            "join",
            StageSpec::new()
                .with_input("rows", DataSpec::table("in/rows.csv"))
                .with_input("features", DataSpec::features("in/features"))
                .with_output(
                    "joined",
                    DataSpec::table("out/joined.csv").with_allow_empty(true),
                )
                .with_gate(
                    "known_ids",
                    GateSpec::new("joined.id").ids_within("rows.id"),
                )
                .with_gate(
                    "one_file_per_row",
                    GateSpec::new("rows.clip").files_in("features", "{name}.npy"),
                )
                .with_gate(
                    "few_unknown",
                    GateSpec::new("joined.id")
                        .ids_within("rows.id")
                        .relative_to("joined.rows")
                        .with_max(0.25)
                        .advisory(),
                ),
        )
        .plan()
        .unwrap()
}

fn npy_1x1() -> Vec<u8> {
    example::npy_f32(&[1.0], 1, 1)
}

#[test]
fn link_gates_check_ids_and_files_across_stages() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("in/features")).unwrap();
    std::fs::write(
        root.join("in/rows.csv"),
        "id,clip\n1,clips/a.mp4\n2,clips/b.mp4\n3,clips/c.mp4\n",
    )
    .unwrap();
    for clip in ["a.mp4", "b.mp4"] {
        std::fs::write(root.join(format!("in/features/{clip}.npy")), npy_1x1()).unwrap();
    }
    let mut pipeline = PipelineGuardrails::open(link_plan(root)).unwrap();

    // c.mp4 has no feature file, and id 9 is not an input id: both mandatory gates fail.
    let err = pipeline
        .run_stage("join", |ctx| {
            write_csv(ctx, "joined", "id,score\n1,0.5\n2,0.5\n9,0.5\n")
        })
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Validation);
    let attempts = pipeline.registry().attempts(pipeline.run_id()).unwrap();
    let gates = attempts[0].metrics["gates"].as_array().unwrap().clone();
    let gate = |name: &str| gates.iter().find(|g| g["gate"] == name).unwrap().clone();
    let known = gate("known_ids");
    assert_eq!(known["passed"], false);
    assert_eq!(known["value"], 1.0);
    assert_eq!(known["figure"], "joined.id not in rows.id");
    assert!(known["message"].as_str().unwrap().contains('9'), "{known}");
    let files = gate("one_file_per_row");
    assert_eq!(files["passed"], false);
    assert_eq!(files["value"], 1.0);
    assert!(
        files["message"].as_str().unwrap().contains("c.mp4.npy"),
        "{files}"
    );
    let share = gate("few_unknown");
    assert_eq!(
        share["passed"], false,
        "1 of 3 unknown is over 0.25: {share}"
    );
    assert!(!std::path::Path::new(&root.join("out/joined.csv")).exists());

    // Every id known and every row with its file: committed.
    std::fs::write(root.join("in/features/c.mp4.npy"), npy_1x1()).unwrap();
    let outcome = pipeline
        .run_stage("join", |ctx| {
            write_csv(ctx, "joined", "id,score\n1,0.5\n2,0.5\n3,0.5\n")
        })
        .unwrap();
    assert!(
        outcome.gates.iter().all(|g| g.passed),
        "{:?}",
        outcome.gates
    );
    assert!(root.join("out/joined.csv").exists());

    // An output with no rows: the link is judged over nothing, which fails.
    let err = pipeline
        .run_stage("join", |ctx| write_csv(ctx, "joined", "id,score\n"))
        .unwrap_err();
    assert!(err.to_string().contains("computed over 0 items"), "{err}");
}

#[test]
fn link_gates_name_tables_folders_and_one_link() {
    let stage = r#"
[stages.join]
inputs.rows = { path = "in/rows.csv" }
inputs.features = { path = "in/features", kind = "features" }
outputs.joined = { path = "out/joined.csv" }
"#;
    let cases = [
        (
            r#"{ figure = "features.id", ids_within = "rows.id" }"#,
            "stages.join.gates.g.figure",
            "features is not a table",
        ),
        (
            r#"{ figure = "joined.id", ids_within = "nowhere.id" }"#,
            "stages.join.gates.g.ids_within",
            "not an input or output",
        ),
        (
            r#"{ figure = "rows.clip", files_in = "rows" }"#,
            "stages.join.gates.g.files_in",
            "a table, not a folder",
        ),
        (
            r#"{ figure = "rows.clip", files_in = "features", ids_within = "rows.id" }"#,
            "stages.join.gates.g.files_in",
            "not both",
        ),
        (
            r#"{ figure = "rows.rows", min = 1, file = "{name}" }"#,
            "stages.join.gates.g.file",
            "files_in, which is not set",
        ),
        (
            r#"{ figure = "joined", ids_within = "rows.id" }"#,
            "stages.join.gates.g.figure",
            "X.COL",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    for (gate, key, why) in cases {
        std::fs::write(&path, format!("{stage}gates.g = {gate}\n")).unwrap();
        let err = PipelinePlan::from_path(&path).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains(why), "{gate}: {err}");
    }
}

/// A pipeline's own error type, classified by the user's classifier.
#[derive(Debug)]
enum FeatureStoreError {
    Hiccup,
    SchemaDrift,
}

impl std::fmt::Display for FeatureStoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hiccup => f.write_str("the feature store hiccuped"),
            Self::SchemaDrift => f.write_str("the feature store's schema drifted"),
        }
    }
}

impl std::error::Error for FeatureStoreError {}

#[test]
fn a_user_error_is_classified_by_the_users_classifier() {
    let dir = tempfile::tempdir().unwrap();
    let classify = |e: &(dyn std::error::Error + Send + Sync + 'static)| match e
        .downcast_ref::<FeatureStoreError>()
    {
        Some(FeatureStoreError::Hiccup) => Some(ErrorClass::Retryable),
        Some(FeatureStoreError::SchemaDrift) => Some(ErrorClass::Validation),
        None => None,
    };
    let mut pipeline = PipelineGuardrails::open(builder_plan(dir.path()))
        .unwrap()
        .with_classifier(classify);
    pipeline
        .run_stage("extract", |ctx| write_csv(ctx, "rows", &csv(4)))
        .unwrap();

    // Wrapped as fatal, classified retryable: `score` (retry = true) tries again.
    let mut calls = 0;
    let outcome = pipeline
        .run_stage("score", |ctx| {
            calls += 1;
            if calls == 1 {
                // Under context too: the classifier sees through it.
                return Err::<(), _>(GuardrailError::external(FeatureStoreError::Hiccup))
                    .operation("read features");
            }
            write_csv(ctx, "scored", "id\n1\n")
        })
        .unwrap();
    assert_eq!(outcome.body_attempts, 2);

    let err = pipeline
        .run_stage("score", |_| {
            Err(GuardrailError::external(FeatureStoreError::SchemaDrift))
        })
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Validation);
    assert!(err.to_string().contains("schema drifted"), "{err}");

    // Without a classifier the wrapped class stands: fatal, one attempt, nothing lost.
    let mut pipeline = PipelineGuardrails::open(builder_plan(dir.path())).unwrap();
    let mut calls = 0;
    let err = pipeline
        .run_stage("extract", |_| {
            calls += 1;
            Err(GuardrailError::external(FeatureStoreError::Hiccup))
        })
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Fatal);
    assert_eq!(calls, 1);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/rows.csv")).unwrap(),
        csv(4)
    );
}

#[test]
fn a_stage_has_its_own_resource_limits() {
    let toml = |b_limit: &str| {
        format!(
            r#"
[pipeline]
name = "limits"

[resources]
min_free_disk_bytes = 1048576
max_disk_bytes = 4611686018427387903
max_memory_bytes = 4611686018427387903

[stages.a]
outputs.t = {{ path = "a.csv" }}

[stages.b]
outputs.t = {{ path = "b.csv" }}
resources.{b_limit}
"#
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    // One byte of memory: no machine meets it, so only b is refused.
    std::fs::write(&path, toml("max_memory_bytes = 1")).unwrap();
    let plan = PipelinePlan::from_path(&path).unwrap();
    let reports = plan.preflight(&[]).unwrap();
    let report = |s: &str| reports.iter().find(|r| r.stage == s).unwrap();
    assert!(report("a").ok, "{:?}", report("a"));
    let b = report("b");
    assert!(!b.ok);
    assert!(
        b.errors
            .iter()
            .any(|e| e.check == "resources" && e.subject == "memory"),
        "{b:?}"
    );

    std::fs::write(&path, toml("max_cpu_percent = -5.0")).unwrap();
    let err = PipelinePlan::from_path(&path).unwrap_err();
    assert!(
        err.to_string()
            .contains("stages.b.resources.max_cpu_percent"),
        "{err}"
    );
}
