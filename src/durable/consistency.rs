//! Registry against filesystem: what a run can skip on resume, what `verify` finds wrong,
//! and what `repair` may clean up.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::digest::digest;
use super::is_temp_name;
use super::registry::{ArtifactRecord, AttemptStatus, RunId, RunRegistry};
use super::stage::mtime_ns;
use crate::error::{GuardrailError, Result};

/// What [`RunRegistry::resume`] checks.
#[derive(Debug, Clone, Default)]
pub struct ResumeOptions {
    stages: Vec<String>,
    checksums: bool,
}

impl ResumeOptions {
    /// Checks size and modification time of every artifact; no checksums; the stages the
    /// registry knows for the run.
    pub fn new() -> Self {
        Self::default()
    }

    /// The pipeline's stages, in order: a stage with no attempt yet is reported to-run.
    #[must_use]
    pub fn with_stages<I, S>(mut self, stages: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.stages = stages.into_iter().map(Into::into).collect();
        self
    }

    /// Also reads every artifact and compares its checksum (slower; catches a change that
    /// kept size and modification time).
    #[must_use]
    pub fn with_checksums(mut self, on: bool) -> Self {
        self.checksums = on;
        self
    }
}

/// What resume decided for a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ResumeState {
    /// Committed, and every artifact is as recorded: skip it.
    Done,
    /// Committed, but an artifact changed or vanished: run it again.
    Stale,
    /// Never committed in this run: run it.
    ToRun,
}

/// One stage's answer in a [`ResumePlan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StageResume {
    /// The stage.
    pub stage: String,
    /// Done, stale or to-run.
    pub state: ResumeState,
    /// Why, in words (which artifact changed, how the last attempt ended).
    pub reason: String,
}

/// Per stage, whether a resumed run can skip it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ResumePlan {
    /// The run.
    pub run: RunId,
    /// One entry per stage, in the order asked for (else the order they first ran).
    pub stages: Vec<StageResume>,
}

impl ResumePlan {
    /// The answer for `stage`.
    pub fn get(&self, stage: &str) -> Option<&StageResume> {
        self.stages.iter().find(|s| s.stage == stage)
    }

    /// Whether `stage` can be skipped.
    pub fn is_done(&self, stage: &str) -> bool {
        self.get(stage)
            .is_some_and(|s| s.state == ResumeState::Done)
    }
}

/// One problem [`RunRegistry::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Inconsistency {
    /// An artifact the registry names is not there.
    Missing {
        /// The stage that wrote it.
        stage: String,
        /// Its path.
        path: PathBuf,
    },
    /// An artifact is there but not as recorded.
    Changed {
        /// The stage that wrote it.
        stage: String,
        /// Its path.
        path: PathBuf,
        /// What differs: size, modification time or checksum, recorded vs found.
        what: String,
    },
    /// A temporary file or directory of a writer that did not finish.
    LeftoverTemp {
        /// Its path.
        path: PathBuf,
    },
    /// A file in a stage's output folder that no committed stage wrote.
    Unknown {
        /// Its path.
        path: PathBuf,
    },
    /// A commit whose process died before it finished (the next writable open settles it).
    PendingCommit {
        /// The stage.
        stage: String,
    },
}

/// What [`RunRegistry::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The run.
    pub run: RunId,
    /// Artifacts checked.
    pub artifacts_checked: usize,
    /// Every problem.
    pub problems: Vec<Inconsistency>,
}

impl VerifyReport {
    /// No problems.
    pub fn is_consistent(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What [`RunRegistry::repair`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RepairReport {
    /// Temporary files and directories removed.
    pub removed: Vec<PathBuf>,
    /// Temporaries left because they are younger than the minimum age (a writer may still
    /// be filling them).
    pub kept_young: Vec<PathBuf>,
}

impl RunRegistry {
    /// Per stage, whether a resumed run can skip it: [`Done`](ResumeState::Done) when its
    /// last committed attempt's artifacts are all present with the recorded size and
    /// modification time (and checksum, when asked), [`Stale`](ResumeState::Stale) naming
    /// the artifact that changed or vanished, [`ToRun`](ResumeState::ToRun) naming how the
    /// last attempt ended. Each decision is a `tracing` event with `run_id` and `stage`.
    pub fn resume(&self, run: &RunId, options: &ResumeOptions) -> Result<ResumePlan> {
        self.resume_with(run, options, |_, _| Ok(()))
    }

    /// [`RunRegistry::resume`], with `revalidate` run on each stage that passes the
    /// artifact checks (the stage's own output checks, e.g. an integrity check of its
    /// Parquet file); an error makes the stage stale with the error as the reason.
    pub fn resume_with(
        &self,
        run: &RunId,
        options: &ResumeOptions,
        mut revalidate: impl FnMut(&str, &[ArtifactRecord]) -> Result<()>,
    ) -> Result<ResumePlan> {
        let attempts = self.attempts(run)?;
        let artifacts = self.artifacts(run)?;
        let mut order: Vec<String> = options.stages.clone();
        for a in &attempts {
            if !order.contains(&a.stage) {
                order.push(a.stage.clone());
            }
        }
        let mut by_stage: BTreeMap<&str, Vec<ArtifactRecord>> = BTreeMap::new();
        for a in &artifacts {
            by_stage
                .entry(a.stage.as_str())
                .or_default()
                .push(a.clone());
        }
        let mut stages = Vec::with_capacity(order.len());
        for stage in order {
            let committed = attempts
                .iter()
                .any(|a| a.stage == stage && a.status == AttemptStatus::Committed);
            let (state, reason) = if committed {
                let records = by_stage.get(stage.as_str()).map_or(&[][..], Vec::as_slice);
                match records
                    .iter()
                    .find_map(|r| artifact_problem(r, options.checksums))
                {
                    Some(problem) => (ResumeState::Stale, problem),
                    None => match revalidate(&stage, records) {
                        Ok(()) => (
                            ResumeState::Done,
                            format!("committed; {} artifact(s) as recorded", records.len()),
                        ),
                        Err(e) => (
                            ResumeState::Stale,
                            format!("its outputs fail their checks: {}", e.report()),
                        ),
                    },
                }
            } else {
                let reason = match attempts.iter().rev().find(|a| a.stage == stage) {
                    None => "never attempted in this run".to_string(),
                    Some(a) => match a.status {
                        AttemptStatus::Interrupted => {
                            format!("attempt {} was interrupted", a.attempt)
                        }
                        AttemptStatus::Running => {
                            format!("attempt {} is still running", a.attempt)
                        }
                        _ => format!(
                            "attempt {} failed: {}",
                            a.attempt,
                            a.error_message.as_deref().unwrap_or("no error recorded")
                        ),
                    },
                };
                (ResumeState::ToRun, reason)
            };
            tracing::info!(run_id = %run, stage = %stage, state = ?state, reason = %reason, "resume decision");
            stages.push(StageResume {
                stage,
                state,
                reason,
            });
        }
        Ok(ResumePlan {
            run: run.clone(),
            stages,
        })
    }

    /// Compares the registry with the filesystem for `run`: artifacts missing or changed
    /// (size, modification time, checksum), temporaries left by crashed writers and files
    /// no committed stage wrote in the run's output folders, and commits still pending.
    pub fn verify(&self, run: &RunId) -> Result<VerifyReport> {
        if self.run(run)?.is_none() {
            return Err(super::registry::store_error(
                self.path(),
                "verify",
                &format!("the registry has no run {run}"),
                crate::ErrorClass::Fatal,
                None,
            ));
        }
        let artifacts = self.artifacts(run)?;
        let mut problems = Vec::new();
        for a in &artifacts {
            if let Some(what) = artifact_problem(a, true) {
                if fs::symlink_metadata(&a.path).is_err() {
                    problems.push(Inconsistency::Missing {
                        stage: a.stage.clone(),
                        path: a.path.clone(),
                    });
                } else {
                    problems.push(Inconsistency::Changed {
                        stage: a.stage.clone(),
                        path: a.path.clone(),
                        what,
                    });
                }
            }
        }
        let known = self.known_paths()?;
        for dir in output_folders(&artifacts) {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            names.sort();
            for path in names {
                let Some(name) = path.file_name() else {
                    continue;
                };
                if is_temp_name(name) {
                    problems.push(Inconsistency::LeftoverTemp { path });
                } else if !known.contains(&path) && !is_registry_file(self.path(), &path) {
                    problems.push(Inconsistency::Unknown { path });
                }
            }
        }
        for stage in self.pending_commits(run)? {
            problems.push(Inconsistency::PendingCommit { stage });
        }
        tracing::info!(run_id = %run, problems = problems.len(), "run verified");
        Ok(VerifyReport {
            run: run.clone(),
            artifacts_checked: artifacts.len(),
            problems,
        })
    }

    /// Settles commits of dead processes ([`RunRegistry::recover`]), then removes the
    /// temporaries in `run`'s output folders that are at least `min_age` old (a live writer
    /// may be filling a younger one). User files are never touched.
    pub fn repair(&self, run: &RunId, min_age: Duration) -> Result<RepairReport> {
        self.recover()?;
        let artifacts = self.artifacts(run)?;
        let now = SystemTime::now();
        let mut removed = Vec::new();
        let mut kept_young = Vec::new();
        for dir in output_folders(&artifacts) {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if !path.file_name().is_some_and(is_temp_name) {
                    continue;
                }
                let Ok(meta) = fs::symlink_metadata(&path) else {
                    continue;
                };
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .unwrap_or_default();
                if age < min_age {
                    kept_young.push(path);
                    continue;
                }
                let result = if meta.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                match result {
                    Ok(()) => {
                        tracing::info!(run_id = %run, path = %path.display(), "leftover temporary removed");
                        removed.push(path);
                    }
                    Err(e) => return Err(GuardrailError::io(&path, e)),
                }
            }
        }
        removed.sort();
        kept_young.sort();
        Ok(RepairReport {
            removed,
            kept_young,
        })
    }

    /// Every path any run's committed stage wrote.
    fn known_paths(&self) -> Result<HashSet<PathBuf>> {
        self.read("list artifact paths", |c| {
            let mut stmt = c.prepare("SELECT path FROM artifacts")?;
            stmt.query_map([], |r| r.get::<_, String>(0).map(PathBuf::from))?
                .collect()
        })
    }

    fn pending_commits(&self, run: &RunId) -> Result<Vec<String>> {
        self.read("list pending commits", |c| {
            let mut stmt =
                c.prepare("SELECT stage FROM commit_intents WHERE run_id = ?1 ORDER BY id")?;
            stmt.query_map([run.as_str()], |r| r.get(0))?.collect()
        })
    }
}

/// Why an artifact is not as recorded, `None` when it is.
fn artifact_problem(record: &ArtifactRecord, checksums: bool) -> Option<String> {
    let path = record.path.display();
    let meta = match fs::symlink_metadata(&record.path) {
        Ok(m) => m,
        Err(_) => return Some(format!("{path} is gone")),
    };
    if record.kind == super::ArtifactKind::File {
        if meta.len() != record.size {
            return Some(format!(
                "{path} changed: size {} recorded, {} found",
                record.size,
                meta.len()
            ));
        }
        if mtime_ns(&meta) != record.mtime_ns {
            return Some(format!(
                "{path} changed: modification time differs from the commit's"
            ));
        }
    } else if !meta.is_dir() {
        return Some(format!(
            "{path} changed: recorded as a directory, found a file"
        ));
    }
    if checksums {
        match digest(&record.path) {
            Ok((size, sum)) if size == record.size && sum == record.checksum => {}
            Ok(_) => {
                return Some(format!(
                    "{path} changed: checksum differs from the commit's"
                ));
            }
            Err(e) => return Some(format!("{path} cannot be read: {e}")),
        }
    }
    None
}

/// The folders the run's artifacts sit in.
fn output_folders(artifacts: &[ArtifactRecord]) -> BTreeSet<PathBuf> {
    artifacts
        .iter()
        .filter_map(|a| a.path.parent().map(Path::to_path_buf))
        .collect()
}

/// The registry's own files (`registry.db`, `-wal`, `-shm`, `-journal`) and the folders
/// holding them are not outputs.
fn is_registry_file(registry: &Path, path: &Path) -> bool {
    let Ok(db) = std::path::absolute(registry) else {
        return false;
    };
    let Ok(path) = std::path::absolute(path) else {
        return false;
    };
    if db.starts_with(&path) {
        return true;
    }
    let (db, path) = (
        db.as_os_str().as_encoded_bytes(),
        path.as_os_str().as_encoded_bytes(),
    );
    path.strip_prefix(db)
        .is_some_and(|rest| [&b""[..], b"-wal", b"-shm", b"-journal"].contains(&rest))
}
