//! `PipelineGuardrails`: stages declared once — what each reads, writes, needs and must
//! reach — and a runner that checks the machine, the inputs and the upstream outputs before
//! a stage starts, runs its body under its guards, quarantines bad items, checks and gates
//! its outputs, and commits them atomically with the run registry.
//!
//! A stage run goes, in this order:
//!
//! 1. **preflight** ([`PipelineGuardrails::preflight`]): resource health of the stage's check
//!    paths and outputs' filesystem (free space for `expected_output_bytes`), every upstream
//!    stage committed in this run and its declared outputs re-validated (not trusted), every
//!    input validated. Every check runs and every problem is listed.
//! 2. **the body**, on the caller's thread, with a [`StageContext`]: under the stage's
//!    deadline (`timeout`, polled with [`StageContext::check_deadline`] and enforced when the
//!    body returns), its breaker, retried on [`Retryable`](crate::ErrorClass::Retryable)
//!    errors when `retry = true`, its `fallback` body run on a
//!    [`Recoverable`](crate::ErrorClass::Recoverable) error. A
//!    [`Fatal`](crate::ErrorClass::Fatal) error stops at once. Per-item errors of class
//!    [`Validation`](crate::ErrorClass::Validation) go through [`StageContext::item`]:
//!    quarantined when `on_validation = "skip"`, failing the stage otherwise.
//! 3. **output checks**: every declared output exists and passes its check, at its
//!    temporary path, before anything is visible.
//! 4. **gates** ([`GateSpec`]): a failed mandatory gate stops the stage (its outputs are
//!    rolled back) and blocks the stages downstream of it; advisory ones are warned.
//! 5. **commit**: all outputs, the figures, the gate results and the quarantine report
//!    become visible together ([`crate::durable::AtomicStage`]).
//!
//! ```
//! use guardrails::pipeline::{DataSpec, GateSpec, PipelineGuardrails, StageSpec};
//! use guardrails::resource::ResourceLimits;
//! use std::io::Write;
//!
//! let root = tempfile::tempdir()?;
//! let plan = PipelineGuardrails::builder("etl")
//!     .root(root.path())
//!     // A toy stage: 1 MiB free is enough (the default keeps 50 GB free).
//!     .resources(ResourceLimits::new().with_min_free_disk_bytes(1 << 20))
//!     .stage(
//!         "extract",
//!         StageSpec::new()
//!             .with_output("rows", DataSpec::table("rows.csv").with_required_columns(["id"]))
//!             .with_gate("enough", GateSpec::new("rows.rows").with_min(2.0)),
//!     )
//!     .plan()?;
//! let mut pipeline = PipelineGuardrails::open(plan)?;
//! let outcome = pipeline.run_stage("extract", |ctx| {
//!     let mut file = std::fs::File::create(ctx.output("rows")?)?;
//!     file.write_all(b"id\n1\n2\n3\n")?;
//!     Ok(())
//! })?;
//! assert_eq!(outcome.figures.get("rows.rows"), Some(3.0));
//! assert!(root.path().join("rows.csv").exists());
//! # Ok::<(), guardrails::GuardrailError>(())
//! ```

mod gates;
mod preflight;
mod runner;
mod spec;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::GuardrailsConfig;
use crate::error::{GuardrailError, Result};
use crate::resilience::{BreakerRegistryConfig, RetryConfig};
use crate::resource::ResourceLimits;

pub use gates::{Figures, GateFn, GateResult};
pub use preflight::{PreflightFinding, PreflightReport};
pub use runner::{
    PipelineGuardrails, PipelineOutcome, QuarantineEntry, StageBody, StageContext, StageOutcome,
    StageStatus,
};
pub use spec::{
    AllowedSpec, DataKind, DataSpec, GateLevel, GateSpec, OnValidation, PipelineConfig,
    StageResources, StageSpec,
};

pub(crate) use spec::plan_problems;

/// A checked pipeline: every stage in dependency order with its paths resolved against the
/// root, and the guard settings the runner uses. The TOML form and the builder form of the
/// same pipeline give equal plans.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PipelinePlan {
    /// The pipeline's name.
    pub name: String,
    /// Where relative paths start.
    pub root: PathBuf,
    /// The run registry's file.
    pub registry: PathBuf,
    /// Stage names, upstream first.
    pub order: Vec<String>,
    /// The stages, their paths absolute.
    pub stages: BTreeMap<String, StageSpec>,
    /// `[retry]`, for stages with `retry = true`.
    pub retry: RetryConfig,
    /// `[breakers]`, for stages with a `breaker`.
    pub breakers: BreakerRegistryConfig,
    /// `[resources]`, judged in preflight.
    pub resources: ResourceLimits,
}

impl PipelinePlan {
    /// The plan of a loaded config document; relative paths start at `[pipeline] root`, or
    /// at `base_dir` (the config file's folder) when it is not set.
    pub fn from_config(config: &GuardrailsConfig, base_dir: impl AsRef<Path>) -> Result<Self> {
        let mut builder = PipelineGuardrails::builder(&config.pipeline.name)
            .root(base_dir.as_ref())
            .retry(config.retry.clone())
            .breakers(config.breakers.clone())
            .resources(config.resources.clone());
        if let Some(root) = &config.pipeline.root {
            builder = builder.root(base_dir.as_ref().join(root));
        }
        if let Some(registry) = &config.pipeline.registry {
            builder = builder.registry(registry);
        }
        for (name, stage) in &config.stages {
            builder = builder.stage(name, stage.clone());
        }
        builder.plan()
    }

    /// Loads the TOML file at `path` and makes its plan; relative paths start at the file's
    /// folder (or its `[pipeline] root`, itself relative to that folder).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let config = GuardrailsConfig::from_path(path)?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let base = std::path::absolute(&base).map_err(|e| GuardrailError::io(&base, e))?;
        Self::from_config(&config, base)
    }

    /// The stage named `name`.
    pub fn stage(&self, name: &str) -> Result<&StageSpec> {
        self.stages.get(name).ok_or_else(|| {
            GuardrailError::config(
                "stage",
                format!(
                    "unknown stage {name}; the pipeline has {}",
                    self.order.join(", ")
                ),
            )
        })
    }

    /// The stages downstream of `name` (its dependents, theirs, …), in dependency order.
    pub fn downstream_of(&self, name: &str) -> Vec<String> {
        let mut below: Vec<String> = Vec::new();
        for stage in &self.order {
            let spec = &self.stages[stage];
            if spec
                .depends_on
                .iter()
                .any(|d| d == name || below.contains(d))
            {
                below.push(stage.clone());
            }
        }
        below
    }
}

/// Builds a [`PipelinePlan`] in code; the same checks as the TOML form.
#[derive(Debug, Clone)]
pub struct PipelineBuilder {
    name: String,
    root: PathBuf,
    registry: Option<PathBuf>,
    stages: BTreeMap<String, StageSpec>,
    retry: RetryConfig,
    breakers: BreakerRegistryConfig,
    resources: ResourceLimits,
}

impl PipelineBuilder {
    /// A pipeline named `name`, rooted at the current directory.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            root: PathBuf::from("."),
            registry: None,
            stages: BTreeMap::new(),
            retry: RetryConfig::new(),
            breakers: BreakerRegistryConfig::default(),
            resources: ResourceLimits::new(),
        }
    }

    /// Where relative paths start.
    #[must_use]
    pub fn root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = root.into();
        self
    }

    /// The run registry's file (relative to the root); default `.guardrails/registry.db`.
    #[must_use]
    pub fn registry(mut self, path: impl Into<PathBuf>) -> Self {
        self.registry = Some(path.into());
        self
    }

    /// A stage.
    #[must_use]
    pub fn stage(mut self, name: impl Into<String>, spec: StageSpec) -> Self {
        self.stages.insert(name.into(), spec);
        self
    }

    /// The retry settings for stages with `retry`.
    #[must_use]
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// The breaker settings for stages with a `breaker`.
    #[must_use]
    pub fn breakers(mut self, breakers: BreakerRegistryConfig) -> Self {
        self.breakers = breakers;
        self
    }

    /// The resource limits preflight judges.
    #[must_use]
    pub fn resources(mut self, limits: ResourceLimits) -> Self {
        self.resources = limits;
        self
    }

    /// Checks everything (each problem a [`GuardrailError::Config`] with its dotted key,
    /// `stages.NAME.…`) and resolves the paths.
    pub fn plan(self) -> Result<PipelinePlan> {
        if let Some(e) = plan_problems(&self.stages).into_iter().next() {
            return Err(e);
        }
        self.retry
            .validate()
            .map_err(|e| crate::config::in_section("retry", e))?;
        self.breakers
            .validate()
            .map_err(|e| crate::config::in_section("breakers", e))?;
        self.resources
            .validate()
            .map_err(|e| crate::config::in_section("resources", e))?;
        for (name, stage) in &self.stages {
            stage
                .resources
                .limits(&self.resources)
                .validate()
                .map_err(|e| crate::config::in_section(&format!("stages.{name}.resources"), e))?;
        }
        let order = spec::dependency_order(&self.stages).map_err(|cycle| {
            GuardrailError::config(
                "stages",
                format!("dependency cycle: {}", cycle.join(" -> ")),
            )
        })?;
        let root =
            std::path::absolute(&self.root).map_err(|e| GuardrailError::io(&self.root, e))?;
        let registry = match &self.registry {
            Some(p) => root.join(p),
            None => crate::durable::RunRegistry::default_path(&root),
        };
        let stages = self
            .stages
            .into_iter()
            .map(|(name, mut spec)| {
                for data in spec.inputs.values_mut().chain(spec.outputs.values_mut()) {
                    data.path = root.join(&data.path);
                }
                for p in &mut spec.resources.check_paths {
                    *p = root.join(&*p);
                }
                (name, spec)
            })
            .collect();
        let name = if self.name.is_empty() {
            "pipeline".to_string()
        } else {
            self.name
        };
        Ok(PipelinePlan {
            name,
            root,
            registry,
            order,
            stages,
            retry: self.retry,
            breakers: self.breakers,
            resources: self.resources,
        })
    }
}
