//! Preflight: the machine, the prerequisites and the inputs of a stage, all checked, every
//! problem listed; and the data check that preflight and the output checks share.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::PipelinePlan;
use super::gates::{Figures, table_column_figures};
use super::runner::PipelineGuardrails;
use super::spec::{DataKind, DataSpec, OnValidation, StageSpec};
use crate::durable::{AttemptStatus, RunId, RunRegistry};
use crate::error::{ErrorClass, GuardrailError, Result};
use crate::integrity::{DataIntegrityChecker, FindingSeverity, Report};
use crate::resource::ResourceMonitor;
use crate::resource::Severity;

/// Most files one folder input or output may hold; a folder past this is refused rather
/// than listed into memory.
const MAX_FOLDER_FILES: usize = 1_000_000;

/// One problem (or warning) preflight found.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PreflightFinding {
    /// `"resources"`, `"prerequisite"`, `"input"` or `"output_space"`.
    pub check: String,
    /// What it is about: a resource, an upstream stage, an input's name.
    pub subject: String,
    /// What was found, in words.
    pub message: String,
    /// How a caller should react.
    pub class: ErrorClass,
}

/// What [`PipelineGuardrails::preflight`] found for one stage: `ok` when `errors` is empty.
///
/// The seed's `(is_ok, errors, info)` triple, with warnings apart.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PreflightReport {
    /// The stage.
    pub stage: String,
    /// No errors.
    pub ok: bool,
    /// Every problem that stops the stage.
    pub errors: Vec<PreflightFinding>,
    /// What is close to a limit or worth knowing.
    pub warnings: Vec<PreflightFinding>,
    /// What was checked: figures of the inputs, free space, upstream stages.
    pub info: BTreeMap<String, Value>,
    /// The inputs' figures, for the stage's gates.
    #[serde(skip)]
    pub(crate) figures: Figures,
}

impl PreflightReport {
    fn new(stage: &str) -> Self {
        Self {
            stage: stage.to_string(),
            ok: true,
            errors: Vec::new(),
            warnings: Vec::new(),
            info: BTreeMap::new(),
            figures: Figures::default(),
        }
    }

    fn error(&mut self, check: &str, subject: &str, message: String, class: ErrorClass) {
        self.ok = false;
        self.errors.push(PreflightFinding {
            check: check.into(),
            subject: subject.into(),
            message,
            class,
        });
    }

    fn warning(&mut self, check: &str, subject: &str, message: String) {
        self.warnings.push(PreflightFinding {
            check: check.into(),
            subject: subject.into(),
            message,
            class: ErrorClass::Recoverable,
        });
    }

    /// The report as an error when it is not ok: a [`GuardrailError::Stage`] listing every
    /// problem, classed as its first problem is.
    pub fn into_result(self) -> Result<Self> {
        match self.errors.first() {
            None => Ok(self),
            Some(first) => Err(GuardrailError::Stage {
                stage: self.stage.clone(),
                check: "preflight".into(),
                reason: self
                    .errors
                    .iter()
                    .map(|e| format!("{} {}: {}", e.check, e.subject, e.message))
                    .collect::<Vec<_>>()
                    .join("; "),
                class: first.class,
            }),
        }
    }
}

/// The reports and figures of one declared input or output.
#[derive(Debug, Default)]
pub(crate) struct DataCheck {
    pub(crate) reports: Vec<Report>,
    pub(crate) figures: Figures,
}

impl DataCheck {
    /// The first failing report as an error, for the stage.
    pub(crate) fn first_error(&self) -> Option<GuardrailError> {
        self.reports
            .iter()
            .find(|r| fails(r))
            .and_then(|r| r.clone().into_result().err())
    }
}

/// Whether a report stops the data: an error, or a feature the checker cannot verify.
fn fails(report: &Report) -> bool {
    report.findings.iter().any(|f| {
        matches!(
            f.severity,
            FindingSeverity::Error | FindingSeverity::Unsupported
        )
    })
}
/// Whether the data at a path is a folder of files rather than one file: videos always
/// are unless the path names a file, features when the path has no extension.
pub(crate) fn is_folder(spec: &DataSpec) -> bool {
    match spec.kind {
        DataKind::Table => false,
        DataKind::Features | DataKind::Videos => {
            spec.path.is_dir() || spec.path.extension().is_none()
        }
    }
}

/// Checks the data `spec` declares, read at `at` (its own path, or the temporary path of an
/// output not yet committed); reports name `spec.path`. `wanted` are the column figures the
/// gates ask for (`(measure, column)`).
pub(crate) fn check_data(
    checker: &DataIntegrityChecker,
    name: &str,
    spec: &DataSpec,
    at: &Path,
    wanted: &BTreeSet<(String, String)>,
) -> DataCheck {
    let mut out = DataCheck::default();
    let kind = match spec.kind {
        DataKind::Table => "table",
        DataKind::Features => "feature",
        DataKind::Videos => "video",
    };
    let files = if is_folder(spec) {
        match folder_files(at, spec) {
            Ok(files) => files,
            Err(e) => {
                out.reports.push(Report::unreadable(&spec.path, kind, &e));
                return out;
            }
        }
    } else {
        vec![at.to_path_buf()]
    };
    let total = files.len();
    let stride = spec
        .sample
        .map_or(1, |s| ((1.0 / s).round() as usize).max(1));
    let mut rows = 0u64;
    let mut bytes = 0u64;
    for file in files.iter().step_by(stride) {
        let shown = spec.path.join(file.strip_prefix(at).unwrap_or(file));
        let shown = if shown == spec.path.join("") {
            spec.path.clone()
        } else {
            shown
        };
        let result = match spec.kind {
            DataKind::Table => {
                let table_dir = spec.path.parent().unwrap_or(Path::new("."));
                let check = spec.table_check(table_dir);
                if wanted.is_empty() {
                    checker.validate_metadata_file(file, &check)
                } else {
                    checker
                        .load_metadata_file(file, &check)
                        .map(|(r, batches)| {
                            out.figures
                                .extend(table_column_figures(name, &batches, wanted));
                            r
                        })
                }
            }
            DataKind::Features => checker.validate_feature_file(file, &spec.feature_check()),
            DataKind::Videos => checker.validate_video_file(file, &spec.video_check()),
        };
        let mut report = result.unwrap_or_else(|e| Report::unreadable(file, kind, &e));
        report.path = shown;
        rows += report.info.get("rows").and_then(Value::as_u64).unwrap_or(0);
        bytes += report
            .info
            .get("file_bytes")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        out.reports.push(report);
    }
    if spec.kind != DataKind::Videos {
        out.figures.set(format!("{name}.rows"), rows as f64);
    }
    out.figures.set(format!("{name}.files"), total as f64);
    out.figures.set(format!("{name}.bytes"), bytes as f64);
    out
}

/// The files of a folder input or output that its kind checks, sorted, bounded.
fn folder_files(dir: &Path, spec: &DataSpec) -> Result<Vec<PathBuf>> {
    let extensions: &[&str] = match spec.kind {
        DataKind::Features => &["npy", "parquet"],
        DataKind::Videos => &["mp4", "mov", "m4v", "mkv", "webm", "avi"],
        DataKind::Table => &[],
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| GuardrailError::io(dir, e))? {
        let entry = entry.map_err(|e| GuardrailError::io(dir, e))?;
        let path = entry.path();
        let wanted = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| extensions.iter().any(|x| x.eq_ignore_ascii_case(e)));
        if wanted && entry.file_type().is_ok_and(|t| t.is_file()) {
            if files.len() >= MAX_FOLDER_FILES {
                return Err(GuardrailError::DataIntegrity {
                    path: spec.path.clone(),
                    check: "folder_size".into(),
                    expected: format!("at most {MAX_FOLDER_FILES} files"),
                    found: "more".into(),
                });
            }
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The column figures the gates of `stage` ask of the data named `name`.
pub(crate) fn wanted_columns(stage: &StageSpec, name: &str) -> BTreeSet<(String, String)> {
    let prefix = format!("{name}.");
    stage
        .gates
        .values()
        .flat_map(|g| std::iter::once(&g.figure).chain(g.relative_to.as_ref()))
        .filter_map(|f| f.strip_prefix(&prefix))
        .filter_map(|rest| rest.split_once('.'))
        .filter(|(measure, _)| {
            matches!(
                *measure,
                "null_fraction" | "duplicate_fraction" | "min" | "max"
            )
        })
        .map(|(m, c)| (m.to_string(), c.to_string()))
        .collect()
}

/// What preflight reads: the plan, the registry and run it judges prerequisites against
/// (none: nothing is committed), the machine and the data.
pub(crate) struct Preflighter<'a> {
    pub(crate) plan: &'a PipelinePlan,
    pub(crate) committed: Option<(&'a RunRegistry, &'a RunId)>,
    pub(crate) monitor: &'a ResourceMonitor,
    pub(crate) checker: &'a DataIntegrityChecker,
    /// The committed stages of the run, read once for all the stages preflighted together.
    pub(crate) committed_cache: std::cell::OnceCell<BTreeSet<String>>,
}

impl PipelineGuardrails {
    /// Checks whether `stage` can start: resource health of its check paths and of its
    /// outputs' filesystems (free space for `expected_output_bytes` beyond
    /// `min_free_disk_bytes`), each upstream stage committed in this run with its declared
    /// outputs re-validated, and every input validated. Every check runs.
    ///
    /// CPU over its limit is a warning here, not an error: it is a moment's figure, and a
    /// busy machine runs the stage slower rather than not at all.
    pub fn preflight(&self, stage: &str) -> Result<PreflightReport> {
        self.preflighter().stage(stage)
    }

    /// [`preflight`](Self::preflight) for every stage, upstream first.
    pub fn preflight_all(&self) -> Result<Vec<PreflightReport>> {
        let p = self.preflighter();
        self.plan.order.iter().map(|s| p.stage(s)).collect()
    }

    fn preflighter(&self) -> Preflighter<'_> {
        Preflighter {
            plan: &self.plan,
            committed: Some((&self.registry, &self.run)),
            monitor: &self.monitor,
            checker: &self.checker,
            committed_cache: std::cell::OnceCell::new(),
        }
    }
}

impl PipelinePlan {
    /// Preflight without starting a run, as `guardrails preflight` does: prerequisites are
    /// judged against the newest run of this pipeline in its registry, opened read-only
    /// (without a registry or a run, no upstream stage counts as committed). Reports for
    /// `stages`, or for every stage upstream first when `stages` is empty.
    pub fn preflight(&self, stages: &[&str]) -> Result<Vec<PreflightReport>> {
        self.preflight_with_progress(stages, |_| {})
    }

    /// [`preflight`](Self::preflight), calling `progress` with each stage's name before
    /// its checks start (a progress bar's hook).
    pub fn preflight_with_progress(
        &self,
        stages: &[&str],
        mut progress: impl FnMut(&str),
    ) -> Result<Vec<PreflightReport>> {
        let monitor = ResourceMonitor::new(self.resources.clone())?;
        let checker = DataIntegrityChecker::new();
        let registry = if self.registry.exists() {
            Some(RunRegistry::open_read_only(&self.registry)?)
        } else {
            None
        };
        let run = match &registry {
            Some(r) => r
                .runs()?
                .into_iter()
                .filter(|info| info.pipeline == self.name)
                .max_by_key(|info| info.started_ms)
                .map(|info| info.id),
            None => None,
        };
        let p = Preflighter {
            plan: self,
            committed: registry.as_ref().zip(run.as_ref()),
            monitor: &monitor,
            checker: &checker,
            committed_cache: std::cell::OnceCell::new(),
        };
        let names: Vec<&str> = if stages.is_empty() {
            self.order.iter().map(String::as_str).collect()
        } else {
            stages.to_vec()
        };
        names
            .into_iter()
            .map(|s| {
                progress(s);
                p.stage(s)
            })
            .collect()
    }
}

impl Preflighter<'_> {
    pub(crate) fn stage(&self, stage: &str) -> Result<PreflightReport> {
        let spec = self.plan.stage(stage)?;
        let mut report = PreflightReport::new(stage);
        // An input that is an upstream output is read once, checked against both specs.
        let mut merged: BTreeMap<&str, (&str, &str, DataSpec)> = BTreeMap::new();
        for (name, input) in &spec.inputs {
            let producer = spec.depends_on.iter().find_map(|dep| {
                let up = self.plan.stage(dep).ok()?;
                up.outputs.iter().find_map(|(o, out)| {
                    input
                        .merged_with(out)
                        .map(|m| (dep.as_str(), o.as_str(), m))
                })
            });
            if let Some(p) = producer {
                merged.insert(name.as_str(), p);
            }
        }
        self.preflight_resources(spec, &mut report);
        let read_as_inputs: BTreeSet<(&str, &str)> =
            merged.values().map(|(dep, o, _)| (*dep, *o)).collect();
        self.preflight_prerequisites(spec, &read_as_inputs, &mut report);
        for (name, input) in &spec.inputs {
            let producer = merged.get(name.as_str());
            let data = check_data(
                self.checker,
                name,
                producer.map_or(input, |(_, _, m)| m),
                &input.path,
                &wanted_columns(spec, name),
            );
            let failing: Vec<&Report> = data.reports.iter().filter(|r| fails(r)).collect();
            // A folder feeding a stage that skips bad items: its bad files are the items the
            // body will quarantine, so they warn; only a folder with nothing good fails.
            // An upstream stage's committed output is whole or it is not a prerequisite.
            let tolerated = spec.on_validation == OnValidation::Skip
                && is_folder(input)
                && producer.is_none()
                && failing.len() < data.reports.len();
            if let (Some((dep, output, _)), Some(e)) = (producer, data.first_error()) {
                report.error(
                    "prerequisite",
                    dep,
                    format!("output {output} of stage {dep} (input {name} here): {e}"),
                    e.class(),
                );
            } else if tolerated && !failing.is_empty() {
                let names: Vec<String> = failing
                    .iter()
                    .take(5)
                    .map(|r| r.path.display().to_string())
                    .collect();
                report.warning(
                    "input",
                    name,
                    format!(
                        "{} of {} files fail their check and will be skipped: {}",
                        failing.len(),
                        data.reports.len(),
                        names.join(", ")
                    ),
                );
            } else if let Some(e) = data.first_error() {
                report.error("input", name, e.to_string(), e.class());
            }
            report.info.insert(
                format!("input.{name}.files_checked"),
                Value::from(data.reports.len()),
            );
            report.figures.extend(data.figures);
        }
        for (k, v) in &report.figures.values {
            report.info.insert(k.clone(), Value::from(*v));
        }
        if report.ok {
            tracing::info!(stage, warnings = report.warnings.len(), "preflight passed");
        } else {
            tracing::warn!(stage, errors = report.errors.len(), "preflight failed");
        }
        Ok(report)
    }

    fn preflight_resources(&self, spec: &StageSpec, report: &mut PreflightReport) {
        let mut paths: Vec<PathBuf> = spec.resources.check_paths.clone();
        // The outputs' filesystem: the nearest existing folder above each output.
        let mut output_dirs: Vec<PathBuf> = Vec::new();
        for output in spec.outputs.values() {
            let mut dir = output.path.parent().map(Path::to_path_buf);
            while let Some(d) = &dir {
                if d.exists() {
                    break;
                }
                dir = d.parent().map(Path::to_path_buf);
            }
            if let Some(d) = dir
                && !output_dirs.contains(&d)
            {
                output_dirs.push(d);
            }
        }
        for p in &spec.resources.check_paths {
            if !p.exists() {
                report.error(
                    "resources",
                    &p.display().to_string(),
                    "the check path does not exist".into(),
                    ErrorClass::Fatal,
                );
            }
        }
        paths.retain(|p| p.exists());
        paths.extend(output_dirs.iter().cloned());
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let snapshot = self.monitor.snapshot_with(&refs);
        let limits = spec.resources.limits(&self.plan.resources);
        for v in snapshot.check(&limits) {
            let message = v.to_error().to_string();
            match v.severity {
                Severity::Warning => report.warning("resources", &v.resource, message),
                _ if v.resource == "cpu" => report.warning("resources", &v.resource, message),
                _ => report.error("resources", &v.resource, message, ErrorClass::Recoverable),
            }
        }
        if let Some(expected) = spec.resources.expected_output_bytes {
            let need = expected.saturating_add(limits.min_free_disk_bytes);
            for disk in &snapshot.disks {
                if !output_dirs.iter().any(|d| d == disk.path()) {
                    continue;
                }
                match disk.free() {
                    Some(free) if free < need => report.error(
                        "output_space",
                        &disk.path().display().to_string(),
                        format!(
                            "{free} bytes free, the outputs need {expected} bytes beyond the {} bytes kept free",
                            limits.min_free_disk_bytes
                        ),
                        ErrorClass::Recoverable,
                    ),
                    Some(free) => {
                        report.info.insert(
                            format!("free_bytes {}", disk.path().display()),
                            Value::from(free),
                        );
                    }
                    None => report.error(
                        "output_space",
                        &disk.path().display().to_string(),
                        "the filesystem did not answer".into(),
                        ErrorClass::Retryable,
                    ),
                }
            }
        }
    }

    /// Each upstream stage committed, and its outputs still valid; those in
    /// `read_as_inputs` (`(stage, output)`) are checked with the inputs they feed instead.
    fn preflight_prerequisites(
        &self,
        spec: &StageSpec,
        read_as_inputs: &BTreeSet<(&str, &str)>,
        report: &mut PreflightReport,
    ) {
        if spec.depends_on.is_empty() {
            return;
        }
        let (committed, run) = match self.committed {
            None => (
                BTreeSet::new(),
                "(none: the registry holds no run of this pipeline)".to_string(),
            ),
            Some((registry, run)) => match self.committed_cache.get() {
                Some(c) => (c.clone(), run.to_string()),
                None => match committed_stages(registry, run) {
                    Ok(c) => {
                        let _ = self.committed_cache.set(c.clone());
                        (c, run.to_string())
                    }
                    Err(e) => {
                        report.error("prerequisite", "registry", e.to_string(), e.class());
                        return;
                    }
                },
            },
        };
        for dep in &spec.depends_on {
            if !committed.contains(dep) {
                report.error(
                    "prerequisite",
                    dep,
                    format!("stage {dep} has not been committed in run {run}"),
                    ErrorClass::Fatal,
                );
            }
            let Ok(upstream) = self.plan.stage(dep) else {
                continue;
            };
            // Re-validated, not trusted: a file replaced since its commit fails here.
            for (name, output) in &upstream.outputs {
                if read_as_inputs.contains(&(dep.as_str(), name.as_str())) {
                    continue;
                }
                let data = check_data(self.checker, name, output, &output.path, &BTreeSet::new());
                if let Some(e) = data.first_error() {
                    report.error(
                        "prerequisite",
                        dep,
                        format!("output {name} of stage {dep}: {e}"),
                        e.class(),
                    );
                }
            }
        }
        report
            .info
            .insert("upstream".into(), Value::from(spec.depends_on.clone()));
    }
}

/// The stages with a committed attempt in `run`.
pub(crate) fn committed_stages(registry: &RunRegistry, run: &RunId) -> Result<BTreeSet<String>> {
    Ok(registry
        .attempts(run)?
        .into_iter()
        .filter(|a| a.status == AttemptStatus::Committed)
        .map(|a| a.stage)
        .collect())
}
