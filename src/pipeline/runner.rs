//! The guarded runner: one stage, or the whole pipeline in dependency order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::PipelinePlan;
use super::gates::{Figures, GateFn, GateResult, judge, judge_link};
use super::preflight::{check_data, is_folder, wanted_columns};
use super::spec::{GateLevel, OnValidation, StageSpec};
use crate::clock::{SharedClock, SystemClock};
use crate::durable::{
    AtomicStage, RegistryOptions, ResumeOptions, ResumePlan, ResumeState, RunId, RunRegistry,
    RunStatus,
};
use crate::error::{ErrorClass, ErrorContext, GuardrailError, Result, UserClassifier};
use crate::integrity::{DataIntegrityChecker, Format, Report};
use crate::resilience::{BreakerRegistry, RetryPolicy};
use crate::resource::ResourceMonitor;

/// Quarantine entries kept per stage; past this only the count grows, so a stage where
/// every item is bad cannot fill memory or the registry.
const MAX_QUARANTINE: usize = 10_000;

/// A stage body: fills the stage's outputs through its [`StageContext`].
pub type StageBody<'b> = Box<dyn FnMut(&mut StageContext<'_, '_>) -> Result<()> + 'b>;

/// One item a stage skipped: which, why, and the class of why.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct QuarantineEntry {
    /// The stage.
    pub stage: String,
    /// The item's id, as the body named it (a clip's path, a row's id).
    pub item: String,
    /// The error, with its causes.
    pub error: String,
    /// Its class (always validation: other classes are not skipped).
    pub class: ErrorClass,
}

/// What [`PipelineGuardrails::run_stage`] committed.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StageOutcome {
    /// The stage.
    pub stage: String,
    /// Its attempt number in the run.
    pub attempt: u32,
    /// Body attempts made (retries included).
    pub body_attempts: u32,
    /// Whether the fallback body produced the outputs.
    pub fallback_used: bool,
    /// Every figure: inputs', outputs', the body's.
    pub figures: Figures,
    /// Every gate's result (all passed, or advisory).
    pub gates: Vec<GateResult>,
    /// Items skipped into quarantine (at most 10 000 kept; `skipped` counts all).
    pub quarantine: Vec<QuarantineEntry>,
    /// How many items were skipped.
    pub skipped: u64,
    /// The output check reports.
    pub reports: Vec<Report>,
    /// The committed paths.
    pub artifacts: Vec<PathBuf>,
}

/// How one stage ended in [`PipelineGuardrails::run`].
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum StageStatus {
    /// Run and committed.
    Committed(Box<StageOutcome>),
    /// Committed earlier in this run and still valid: not run again.
    Skipped {
        /// Why (from the registry's resume plan).
        reason: String,
    },
    /// Failed; nothing of it was committed.
    Failed {
        /// The error, with its causes.
        error: String,
        /// Its class.
        class: ErrorClass,
    },
    /// Not run: an upstream stage failed or was blocked.
    Blocked {
        /// The upstream stage that failed.
        by: String,
    },
}

/// What [`PipelineGuardrails::run`] did, stage by stage in dependency order.
#[derive(Debug, Serialize)]
#[non_exhaustive]
pub struct PipelineOutcome {
    /// The run.
    pub run: RunId,
    /// Per stage, upstream first.
    pub stages: Vec<(String, StageStatus)>,
    /// Why each stage was skipped or run: done, stale (which artifact changed) or never
    /// committed in this run (how its last attempt ended).
    pub resume: ResumePlan,
}

impl PipelineOutcome {
    /// Whether every stage committed or was already done.
    pub fn is_success(&self) -> bool {
        self.stages
            .iter()
            .all(|(_, s)| matches!(s, StageStatus::Committed(_) | StageStatus::Skipped { .. }))
    }

    /// The status of `stage`.
    pub fn get(&self, stage: &str) -> Option<&StageStatus> {
        self.stages.iter().find(|(s, _)| s == stage).map(|(_, s)| s)
    }
}

/// What a stage body works with: its outputs' temporary paths, its inputs, its deadline,
/// the figures it records and the items it skips.
pub struct StageContext<'a, 'r> {
    stage: &'a mut AtomicStage<'r>,
    spec: &'a StageSpec,
    outputs: &'a mut BTreeMap<String, PathBuf>,
    clock: &'a SharedClock,
    deadline: Option<Instant>,
    body_attempt: u32,
    metrics: BTreeMap<String, f64>,
    items: u64,
    skipped: u64,
    quarantine: Vec<QuarantineEntry>,
}

impl std::fmt::Debug for StageContext<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageContext")
            .field("stage", &self.stage.stage())
            .field("body_attempt", &self.body_attempt)
            .field("items", &self.items)
            .field("skipped", &self.skipped)
            .finish_non_exhaustive()
    }
}

impl StageContext<'_, '_> {
    /// The stage's name.
    pub fn stage(&self) -> &str {
        self.stage.stage()
    }

    /// The run.
    pub fn run_id(&self) -> &RunId {
        self.stage.run_id()
    }

    /// This body attempt (1 for the first; retries and the fallback count up).
    pub fn body_attempt(&self) -> u32 {
        self.body_attempt
    }

    /// The path of the declared input `name`.
    pub fn input(&self, name: &str) -> Result<&Path> {
        self.spec
            .inputs
            .get(name)
            .map(|d| d.path.as_path())
            .ok_or_else(|| self.undeclared("input", name))
    }

    /// Where to write the declared output `name`: a temporary file (a table, a feature
    /// file) or a temporary folder (a video or feature folder) next to its target, put in
    /// place on commit. The same path for every body attempt; a retry starts from empty.
    pub fn output(&mut self, name: &str) -> Result<PathBuf> {
        if let Some(p) = self.outputs.get(name) {
            return Ok(p.clone());
        }
        let spec = self
            .spec
            .outputs
            .get(name)
            .ok_or_else(|| self.undeclared("output", name))?;
        if let Some(parent) = spec.path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| GuardrailError::io(parent, e))?;
        }
        let temp = if is_folder(spec) {
            self.stage.output_dir(&spec.path)?
        } else {
            self.stage.output(&spec.path)?
        };
        self.outputs.insert(name.to_string(), temp.clone());
        Ok(temp)
    }

    /// The target path of the declared output `name` (where it will be after commit).
    pub fn output_target(&self, name: &str) -> Result<&Path> {
        self.spec
            .outputs
            .get(name)
            .map(|d| d.path.as_path())
            .ok_or_else(|| self.undeclared("output", name))
    }

    /// Records a figure of the stage, for gates (`metrics.NAME`) and the registry.
    pub fn record(&mut self, name: impl Into<String>, value: f64) {
        self.metrics.insert(name.into(), value);
    }

    /// Handles one item: runs `f`, counts the item, and on an error of class
    /// [`Validation`](ErrorClass::Validation) either records it in quarantine and returns
    /// `Ok(None)` (`on_validation = "skip"`) or returns the error (`"fail"`). Other
    /// classes are returned as they are.
    pub fn item<T>(
        &mut self,
        id: impl Into<String>,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<Option<T>> {
        self.items = self.items.saturating_add(1);
        match f() {
            Ok(v) => Ok(Some(v)),
            Err(e) => self.skip_or_fail(id.into(), e).map(|()| None),
        }
    }

    /// Counts `n` items handled without [`item`](Self::item), for the skipped share.
    pub fn add_items(&mut self, n: u64) {
        self.items = self.items.saturating_add(n);
    }

    /// Records `error` for item `id` as [`item`](Self::item) does, for bodies that handle
    /// items in batches.
    pub fn skip_or_fail(&mut self, id: String, error: GuardrailError) -> Result<()> {
        if error.class() != ErrorClass::Validation || self.spec.on_validation == OnValidation::Fail
        {
            return Err(error);
        }
        self.skipped = self.skipped.saturating_add(1);
        tracing::warn!(stage = %self.stage.stage(), item = %id, error = %error.report(), "item quarantined");
        crate::events::emit(|| crate::events::GuardEvent {
            guard: crate::events::GuardKind::Stage,
            name: self.stage.stage(),
            decision: crate::events::Decision::Quarantined,
        });
        if self.quarantine.len() < MAX_QUARANTINE {
            self.quarantine.push(QuarantineEntry {
                stage: self.stage.stage().to_string(),
                item: id,
                error: error.report().to_string(),
                class: error.class(),
            });
        }
        Ok(())
    }

    /// Time left before the stage's deadline; `None` without a timeout.
    pub fn time_left(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(self.clock.now()))
    }

    /// A [`GuardrailError::Timeout`] once the deadline has passed: call it between items so
    /// that a slow stage stops soon after its limit instead of at its end.
    pub fn check_deadline(&self) -> Result<()> {
        match (self.deadline, self.spec.timeout) {
            (Some(deadline), Some(limit)) if self.clock.now() >= deadline => {
                Err(GuardrailError::Timeout {
                    operation: format!("stage {}", self.stage.stage()),
                    elapsed: limit + self.clock.now().saturating_duration_since(deadline),
                    limit,
                })
            }
            _ => Ok(()),
        }
    }

    /// Saves `value` as the stage's checkpoint, committed with its outputs.
    pub fn checkpoint<T: Serialize>(&mut self, value: &T) -> Result<()> {
        self.stage.checkpoint(value)
    }

    fn undeclared(&self, what: &str, name: &str) -> GuardrailError {
        let declared: Vec<&String> = if what == "input" {
            self.spec.inputs.keys().collect()
        } else {
            self.spec.outputs.keys().collect()
        };
        GuardrailError::config(
            format!("stages.{}.{what}s.{name}", self.stage.stage()),
            format!("not declared; the stage declares {declared:?}"),
        )
    }

    /// Empties what an earlier body attempt left, so a retry starts clean.
    fn reset(&mut self) -> Result<()> {
        self.metrics.clear();
        self.items = 0;
        self.skipped = 0;
        self.quarantine.clear();
        for temp in self.outputs.values() {
            if temp.is_dir() {
                for entry in std::fs::read_dir(temp).map_err(|e| GuardrailError::io(temp, e))? {
                    let path = entry.map_err(|e| GuardrailError::io(temp, e))?.path();
                    let removed = if path.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                    removed.map_err(|e| GuardrailError::io(&path, e))?;
                }
            } else {
                std::fs::File::create(temp).map_err(|e| GuardrailError::io(temp, e))?;
            }
        }
        Ok(())
    }
}

type FallbackBody = Box<dyn FnMut(&mut StageContext<'_, '_>) -> Result<()>>;

/// A pipeline run: the plan, its run registry, and the guards of its stages; see the
/// [module docs](super).
pub struct PipelineGuardrails {
    pub(super) plan: PipelinePlan,
    pub(super) registry: RunRegistry,
    pub(super) run: RunId,
    pub(super) monitor: ResourceMonitor,
    pub(super) checker: DataIntegrityChecker,
    clock: SharedClock,
    retry: RetryPolicy,
    breakers: BreakerRegistry,
    fallbacks: BTreeMap<String, FallbackBody>,
    gate_fns: BTreeMap<String, Vec<(String, GateLevel, GateFn)>>,
    classifier: Option<Box<UserClassifier>>,
}

impl std::fmt::Debug for PipelineGuardrails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineGuardrails")
            .field("pipeline", &self.plan.name)
            .field("run", &self.run)
            .field("registry", &self.plan.registry)
            .field("stages", &self.plan.order)
            .field("fallbacks", &self.fallbacks.keys().collect::<Vec<_>>())
            .field("classifier", &self.classifier.is_some())
            .finish_non_exhaustive()
    }
}

impl PipelineGuardrails {
    /// A builder for the plan, in code; see [`PipelinePlan::from_path`] for TOML.
    pub fn builder(name: impl Into<String>) -> super::PipelineBuilder {
        super::PipelineBuilder::new(name)
    }

    /// Opens the plan's registry (creating it) and starts a new run.
    pub fn open(plan: PipelinePlan) -> Result<Self> {
        Self::open_with_clock(plan, None, Arc::new(SystemClock))
    }

    /// Opens the plan's registry and continues `run` (after a crash or a failed stage):
    /// [`run`](Self::run) then skips the stages that are done.
    pub fn resume(plan: PipelinePlan, run: &RunId) -> Result<Self> {
        Self::open_with_clock(plan, Some(run), Arc::new(SystemClock))
    }

    /// [`open`](Self::open) or [`resume`](Self::resume) with a clock for deadlines, retry
    /// delays, breakers and the registry's timestamps (a `ManualClock` in tests).
    pub fn open_with_clock(
        plan: PipelinePlan,
        resume: Option<&RunId>,
        clock: SharedClock,
    ) -> Result<Self> {
        if let Some(parent) = plan.registry.parent() {
            std::fs::create_dir_all(parent).map_err(|e| GuardrailError::io(parent, e))?;
        }
        let registry = RunRegistry::open_with(
            &plan.registry,
            RegistryOptions::new().with_clock(clock.clone()),
        )?;
        let run = match resume {
            Some(run) => {
                registry.continue_run(run)?;
                run.clone()
            }
            None => registry.start_run(&plan.name, &config_hash(&plan))?,
        };
        let monitor = ResourceMonitor::new(plan.resources.clone())?;
        let retry = RetryPolicy::new(plan.retry.clone())?.with_clock(clock.clone());
        let breakers = BreakerRegistry::new(plan.breakers.clone())?.with_clock(clock.clone());
        Ok(Self {
            plan,
            registry,
            run,
            monitor,
            checker: DataIntegrityChecker::new(),
            clock,
            retry,
            breakers,
            fallbacks: BTreeMap::new(),
            gate_fns: BTreeMap::new(),
            classifier: None,
        })
    }

    /// Registers the fallback body `name` (a stage names it with `fallback = "name"`): it
    /// runs, with outputs emptied, when the stage's body fails with a recoverable error.
    #[must_use]
    pub fn with_fallback<F>(mut self, name: impl Into<String>, body: F) -> Self
    where
        F: FnMut(&mut StageContext<'_, '_>) -> Result<()> + 'static,
    {
        self.fallbacks.insert(name.into(), Box::new(body));
        self
    }

    /// Classifies the caller's own errors that bodies return (wrapped with
    /// [`GuardrailError::external`], fatal by default): `classify` sees the wrapped error
    /// (downcast it to your type) and gives the class that decides retry, fallback,
    /// quarantine or stop, or `None` to keep the wrapped one.
    ///
    /// ```
    /// # use guardrails::pipeline::{DataSpec, PipelineGuardrails, StageSpec};
    /// # use guardrails::ErrorClass;
    /// #[derive(Debug)]
    /// struct Flaky;
    /// impl std::fmt::Display for Flaky {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         f.write_str("the feature store hiccuped")
    ///     }
    /// }
    /// impl std::error::Error for Flaky {}
    ///
    /// # let dir = tempfile::tempdir()?;
    /// # let plan = PipelineGuardrails::builder("p").root(dir.path())
    /// #     .stage("a", StageSpec::new().with_output("t", DataSpec::table("t.csv")))
    /// #     .plan()?;
    /// let pipeline = PipelineGuardrails::open(plan)?
    ///     .with_classifier(|e| e.is::<Flaky>().then_some(ErrorClass::Retryable));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn with_classifier<F>(mut self, classify: F) -> Self
    where
        F: Fn(&(dyn std::error::Error + Send + Sync + 'static)) -> Option<ErrorClass>
            + Send
            + Sync
            + 'static,
    {
        self.classifier = Some(Box::new(classify));
        self
    }

    /// Adds a gate written in code to `stage`: it judges the stage's [`Figures`] after the
    /// output checks, as the declared gates do.
    #[must_use]
    pub fn with_gate_fn<F>(
        mut self,
        stage: impl Into<String>,
        gate: impl Into<String>,
        level: GateLevel,
        check: F,
    ) -> Self
    where
        F: Fn(&Figures) -> std::result::Result<(), String> + Send + Sync + 'static,
    {
        self.gate_fns
            .entry(stage.into())
            .or_default()
            .push((gate.into(), level, Box::new(check)));
        self
    }

    /// The run.
    pub fn run_id(&self) -> &RunId {
        &self.run
    }

    /// The plan.
    pub fn plan(&self) -> &PipelinePlan {
        &self.plan
    }

    /// The run registry.
    pub fn registry(&self) -> &RunRegistry {
        &self.registry
    }

    /// Marks the run finished with `status`.
    pub fn finish(&self, status: RunStatus) -> Result<()> {
        self.registry.finish_run(&self.run, status)
    }

    /// Runs one stage: preflight, the body under its guards, output checks, gates, and the
    /// atomic commit of its outputs with its figures, gate results and quarantine report.
    ///
    /// Every error names the stage in its context. Nothing of the stage is visible unless
    /// this returns `Ok`.
    pub fn run_stage<F>(&mut self, stage: &str, mut body: F) -> Result<StageOutcome>
    where
        F: FnMut(&mut StageContext<'_, '_>) -> Result<()>,
    {
        let span = tracing::info_span!("stage", run_id = %self.run, stage);
        let _entered = span.enter();
        self.run_stage_inner(stage, &mut body).map_err(|e| {
            if e.kind() == crate::error::ErrorKind::Stage {
                e
            } else {
                e.with_context(ErrorContext::new().stage(stage))
            }
        })
    }

    fn run_stage_inner(
        &mut self,
        stage: &str,
        body: &mut dyn FnMut(&mut StageContext<'_, '_>) -> Result<()>,
    ) -> Result<StageOutcome> {
        let preflight = self.preflight(stage)?.into_result()?;
        let spec = self.plan.stage(stage)?;
        let breaker = match &spec.breaker {
            Some(name) => Some(self.breakers.get(name)?),
            None => None,
        };
        let fallback = match &spec.fallback {
            Some(name) => Some(self.fallbacks.get_mut(name).ok_or_else(|| {
                GuardrailError::config(
                    format!("stages.{stage}.fallback"),
                    format!("no fallback body is registered as {name}"),
                )
            })?),
            None => None,
        };
        let classifier = self.classifier.as_deref();
        let mut attempt = self.registry.begin_stage(&self.run, stage)?;
        let mut outputs = BTreeMap::new();
        let started = self.clock.now();
        let mut ctx = StageContext {
            stage: &mut attempt,
            spec,
            outputs: &mut outputs,
            clock: &self.clock,
            deadline: spec.timeout.map(|t| started + t),
            body_attempt: 0,
            metrics: BTreeMap::new(),
            items: 0,
            skipped: 0,
            quarantine: Vec::new(),
        };
        // The order of `guarded_execution`: retry outside the breaker, the deadline inside.
        // The body runs on this thread (it borrows the stage's outputs), so the timeout is a
        // deadline the body polls and that is enforced when it returns.
        let one_attempt = |ctx: &mut StageContext<'_, '_>,
                           body: &mut dyn FnMut(&mut StageContext<'_, '_>) -> Result<()>|
         -> Result<()> {
            ctx.body_attempt += 1;
            if ctx.body_attempt > 1 {
                ctx.reset()?;
            }
            ctx.check_deadline()?;
            let permit = match &breaker {
                Some(b) => Some(b.try_acquire()?),
                None => None,
            };
            // A panic in the body fails the stage like an error (its outputs roll back and
            // the attempt records why) instead of unwinding through the pipeline.
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(ctx)));
            let result = match caught {
                Ok(r) => r,
                Err(payload) => Err(GuardrailError::Stage {
                    stage: ctx.stage().to_string(),
                    check: "body".into(),
                    reason: format!(
                        "the stage body panicked: {}",
                        crate::error::panic_message(payload.as_ref())
                    ),
                    class: ErrorClass::Fatal,
                }),
            }
            .and_then(|()| ctx.check_deadline())
            .map_err(|e| match classifier {
                Some(c) => e.reclassify_external(c),
                None => e,
            });
            if let Some(p) = permit {
                match &result {
                    Ok(()) => p.record_success(),
                    Err(e) => p.record_error(e),
                }
            }
            result
        };
        let mut result = if spec.retry {
            self.retry.call(|| one_attempt(&mut ctx, body))
        } else {
            one_attempt(&mut ctx, body)
        };
        let mut fallback_used = false;
        if let (Err(e), Some(fallback)) = (&result, fallback)
            && e.class() == ErrorClass::Recoverable
        {
            tracing::warn!(stage, error = %e.report(), "stage body failed; running its fallback");
            fallback_used = true;
            result = one_attempt(&mut ctx, fallback.as_mut());
        }
        if let Err(e) = result {
            drop(ctx);
            attempt.fail(&e);
            return Err(e);
        }

        // Output checks, at the temporary paths, before anything is visible.
        let mut figures = preflight.figures.clone();
        let mut reports = Vec::new();
        let mut problem = None;
        for (name, out) in &spec.outputs {
            let Some(temp) = ctx.outputs.get(name).cloned() else {
                problem.get_or_insert(GuardrailError::Stage {
                    stage: stage.into(),
                    check: format!("output {name}"),
                    reason: format!(
                        "the body did not write it (call ctx.output(\"{name}\") for {})",
                        out.path.display()
                    ),
                    class: ErrorClass::Fatal,
                });
                continue;
            };
            let data = check_data(&self.checker, name, out, &temp, &wanted_columns(spec, name));
            if let Some(e) = data.first_error() {
                problem.get_or_insert(e);
            }
            figures.extend(data.figures);
            reports.extend(data.reports);
        }
        let items = ctx.items;
        let skipped = ctx.skipped;
        figures.set("items", items as f64);
        figures.set("skipped", skipped as f64);
        figures.set_share("skipped_fraction", skipped, items);
        for (k, v) in &ctx.metrics {
            figures.set(format!("metrics.{k}"), *v);
        }
        let quarantine = std::mem::take(&mut ctx.quarantine);
        let body_attempts = ctx.body_attempt;
        let written = ctx.outputs.clone();
        drop(ctx);

        // Gates, declared and in code. Link gates read the outputs where they are now.
        let locate = |data: &str| -> Option<(PathBuf, Option<Format>)> {
            let declared = spec.data(data)?;
            let at = if spec.outputs.contains_key(data) {
                written.get(data)?.clone()
            } else {
                declared.path.clone()
            };
            Some((at, Format::from_extension(&declared.path)))
        };
        let mut gates: Vec<GateResult> = spec
            .gates
            .iter()
            .map(|(name, g)| {
                if g.is_link() {
                    judge_link(&self.checker, stage, name, g, &figures, &locate)
                } else {
                    judge(stage, name, g, &figures)
                }
            })
            .collect();
        for (name, level, check) in self.gate_fns.get(stage).into_iter().flatten() {
            let outcome = check(&figures);
            gates.push(GateResult {
                stage: stage.into(),
                gate: name.clone(),
                figure: "(code)".into(),
                value: None,
                min: None,
                max: None,
                mandatory: *level == GateLevel::Mandatory,
                passed: outcome.is_ok(),
                message: outcome.err().unwrap_or_else(|| "passed".into()),
            });
        }
        for g in &gates {
            crate::events::emit(|| crate::events::GuardEvent {
                guard: crate::events::GuardKind::Stage,
                name: stage,
                decision: crate::events::Decision::GateResult {
                    gate: &g.gate,
                    passed: g.passed,
                    mandatory: g.mandatory,
                },
            });
            if g.passed {
                tracing::info!(stage, gate = %g.gate, message = %g.message, "gate passed");
            } else if g.mandatory {
                tracing::error!(stage, gate = %g.gate, message = %g.message, "mandatory gate failed");
            } else {
                tracing::warn!(stage, gate = %g.gate, message = %g.message, "advisory gate failed");
            }
        }
        attempt.record(
            "figures",
            serde_json::to_value(&figures).unwrap_or(Value::Null),
        );
        attempt.record("gates", serde_json::to_value(&gates).unwrap_or(Value::Null));
        attempt.record("skipped", skipped);
        attempt.record(
            "quarantine",
            serde_json::to_value(&quarantine).unwrap_or(Value::Null),
        );
        if fallback_used {
            attempt.record("fallback_used", true);
        }
        if problem.is_none()
            && let Some(g) = gates.iter().find(|g| g.mandatory && !g.passed)
        {
            problem = Some(GuardrailError::Stage {
                stage: stage.into(),
                check: format!("gate {}", g.gate),
                reason: g.message.clone(),
                class: ErrorClass::Validation,
            });
        }
        if let Some(e) = problem {
            attempt.fail(&e);
            return Err(e);
        }
        let number = attempt.attempt();
        let commit = attempt.commit()?;
        let elapsed = self.clock.now().saturating_duration_since(started);
        tracing::info!(
            stage,
            attempt = number,
            skipped,
            elapsed_ms = elapsed.as_millis() as u64,
            "stage committed"
        );
        Ok(StageOutcome {
            stage: stage.into(),
            attempt: number,
            body_attempts,
            fallback_used,
            figures,
            gates,
            quarantine,
            skipped,
            reports,
            artifacts: commit.artifacts,
        })
    }

    /// Runs every stage in dependency order with its body from `bodies` (by stage name).
    /// A stage already committed in this run whose outputs are unchanged is skipped and
    /// says why; a stage whose upstream failed is blocked, and the stages that do not
    /// depend on it still run. A [`Fatal`](ErrorClass::Fatal) error stops the run at once.
    pub fn run(&mut self, mut bodies: BTreeMap<String, StageBody<'_>>) -> Result<PipelineOutcome> {
        for name in bodies.keys() {
            self.plan.stage(name)?;
        }
        let order = self.plan.order.clone();
        let mut resume = self
            .registry
            .resume(&self.run, &ResumeOptions::new().with_stages(order.iter()))?;
        let mut stages: Vec<(String, StageStatus)> = Vec::new();
        let mut stopped = false;
        for name in &order {
            let spec = self.plan.stage(name)?;
            let blocked_by = spec.depends_on.iter().find(|d| {
                stages.iter().any(|(s, st)| {
                    s == *d
                        && matches!(st, StageStatus::Failed { .. } | StageStatus::Blocked { .. })
                })
            });
            if let Some(by) = blocked_by {
                tracing::warn!(stage = %name, by = %by, "stage blocked by a failed upstream stage");
                stages.push((name.clone(), StageStatus::Blocked { by: by.clone() }));
                continue;
            }
            if stopped {
                stages.push((
                    name.clone(),
                    StageStatus::Blocked {
                        by: "a fatal error".into(),
                    },
                ));
                continue;
            }
            // A stage whose upstream ran again read other inputs than its outputs came from.
            if resume.is_done(name)
                && let Some(up) = spec.depends_on.iter().find(|d| {
                    stages
                        .iter()
                        .any(|(s, st)| s == *d && matches!(st, StageStatus::Committed(_)))
                })
                && let Some(entry) = resume.stages.iter_mut().find(|s| s.stage == *name)
            {
                entry.state = ResumeState::Stale;
                entry.reason = format!("upstream stage {up} ran again, so its outputs are stale");
            }
            if resume.is_done(name) {
                let reason = resume
                    .get(name)
                    .map(|s| s.reason.clone())
                    .unwrap_or_default();
                tracing::info!(stage = %name, %reason, "stage done earlier in this run; skipped");
                stages.push((name.clone(), StageStatus::Skipped { reason }));
                continue;
            }
            if let Some(why) = resume.get(name) {
                tracing::info!(stage = %name, state = ?why.state, reason = %why.reason, "stage runs");
            }
            let Some(body) = bodies.get_mut(name) else {
                return Err(GuardrailError::config(
                    "stages",
                    format!("no body given for stage {name}"),
                ));
            };
            let status = match self.run_stage(name, body) {
                Ok(outcome) => StageStatus::Committed(Box::new(outcome)),
                Err(e) => {
                    stopped = e.class() == ErrorClass::Fatal;
                    StageStatus::Failed {
                        error: e.report().to_string(),
                        class: e.class(),
                    }
                }
            };
            stages.push((name.clone(), status));
        }
        let outcome = PipelineOutcome {
            run: self.run.clone(),
            stages,
            resume,
        };
        self.finish(if outcome.is_success() {
            RunStatus::Succeeded
        } else {
            RunStatus::Failed
        })?;
        Ok(outcome)
    }
}

/// A stable digest of the plan, recorded with each run so a resumed run can tell the config
/// changed.
fn config_hash(plan: &PipelinePlan) -> String {
    let text = serde_json::to_string(plan).unwrap_or_default();
    format!("{:032x}", twox_hash::XxHash3_128::oneshot(text.as_bytes()))
}
