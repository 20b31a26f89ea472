//! `AtomicStage`: several outputs, rollback actions and registry updates made visible
//! together, through a commit intent in the run registry.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::TEMP_SUFFIX;
use super::atomic::{
    BUFFER, replace_dir, resolve_links, sync_dir, sync_tree, temp_dir_next_to, temp_file_next_to,
};
use super::digest::digest;
use super::registry::{
    ArtifactKind, RunId, RunRegistry, insert_checkpoint, process_alive, store_error,
};
use crate::error::{ErrorClass, GuardrailError, Result, ResultExt};

type RollbackAction<'r> = Box<dyn FnOnce() -> Result<()> + Send + 'r>;

/// Commit intents this process is carrying out, by registry file and intent id, so that
/// recovery (another `open` of the same file in this process) leaves them alone, while an
/// intent recorded under this process's pid by an earlier process (pids are reused, in
/// containers often) is recovered.
static IN_FLIGHT: parking_lot::Mutex<Vec<(PathBuf, i64)>> = parking_lot::Mutex::new(Vec::new());

/// Marks an intent in flight until dropped.
struct InFlight(PathBuf, i64);

impl InFlight {
    fn new(registry: &Path, id: i64) -> Self {
        IN_FLIGHT.lock().push((registry.to_path_buf(), id));
        Self(registry.to_path_buf(), id)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT
            .lock()
            .retain(|(p, i)| !(p == &self.0 && *i == self.1));
    }
}

/// Test hook: stop a commit after this many renames, as a crash would (nothing cleaned up).
#[cfg(test)]
pub(super) static CRASH_AFTER_RENAMES: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(usize::MAX);

/// An output registered with a stage: where it goes and the temporary path it is written at.
#[derive(Debug)]
struct Pending {
    target: PathBuf,
    temp: PathBuf,
    kind: ArtifactKind,
}

/// One artifact of a commit intent, as written to the registry before the renames.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IntentArtifact {
    target: PathBuf,
    temp: PathBuf,
    kind: ArtifactKind,
    size: u64,
    checksum: String,
    /// A hard link to the old file, kept until the commit is done so it can be undone.
    backup: Option<PathBuf>,
    had_old: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Intent {
    artifacts: Vec<IntentArtifact>,
    checkpoint: Option<String>,
    metrics: serde_json::Map<String, serde_json::Value>,
}

/// What a stage commit made visible.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StageCommit {
    /// The stage.
    pub stage: String,
    /// Its attempt number in the run.
    pub attempt: u32,
    /// The committed paths, in the order they were registered.
    pub artifacts: Vec<PathBuf>,
}

/// One attempt at a stage whose outputs become visible together on [`commit`](Self::commit)
/// or not at all.
///
/// Each output is written at a temporary path next to its target ([`output`](Self::output),
/// [`write`](Self::write), [`output_dir`](Self::output_dir)). `commit` `fsync`s and
/// checksums every one, writes a commit intent (every target, its temporary path, size and
/// checksum) to the registry, renames them all into place, and then records the artifacts,
/// the stage's figures and its checkpoint and removes the intent, in one transaction. If the
/// process dies between the intent and that transaction, the next [`RunRegistry::open`]
/// finishes the commit (every temporary file is complete and checksummed) or, when one has
/// gone missing, undoes the renames already made from the old files kept for that purpose.
///
/// Dropping the stage without committing — an early return, an error, a panic — removes the
/// temporary outputs and runs the rollback actions in reverse order (each failure is logged;
/// none stops the rest); the attempt is recorded as failed.
///
/// | crash point | after the next `open` |
/// |---|---|
/// | while writing, before `commit` | old outputs; the attempt shows as interrupted; temporaries left for [`RunRegistry::repair`] |
/// | during `commit`, before the intent is durable | old outputs, as above |
/// | after the intent, during the renames | all new outputs (rolled forward), the stage committed |
/// | after the final transaction | all new outputs, the stage committed |
///
/// ```
/// use guardrails::durable::RunRegistry;
/// use std::io::Write;
///
/// let root = tempfile::tempdir()?;
/// let registry = RunRegistry::open(root.path().join("registry.db"))?;
/// let run = registry.start_run("etl", "cfg")?;
/// registry.run_stage(&run, "split", |stage| {
///     stage.write(root.path().join("train.csv"), |w| Ok(w.write_all(b"id\n1\n")?))?;
///     stage.write(root.path().join("test.csv"), |w| Ok(w.write_all(b"id\n2\n")?))?;
///     stage.record("rows", 2);
///     Ok(())
/// })?;
/// assert_eq!(registry.artifacts(&run)?.len(), 2);
/// # Ok::<(), guardrails::GuardrailError>(())
/// ```
pub struct AtomicStage<'r> {
    registry: &'r RunRegistry,
    run: RunId,
    stage: String,
    attempt: u32,
    attempt_id: i64,
    started: Instant,
    pending: Vec<Pending>,
    rollbacks: Vec<(String, RollbackAction<'r>)>,
    checkpoint: Option<String>,
    metrics: serde_json::Map<String, serde_json::Value>,
    finished: bool,
}

impl fmt::Debug for AtomicStage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AtomicStage")
            .field("run", &self.run)
            .field("stage", &self.stage)
            .field("attempt", &self.attempt)
            .field("pending", &self.pending)
            .field("rollbacks", &self.rollbacks.len())
            .finish_non_exhaustive()
    }
}

impl RunRegistry {
    /// Begins an attempt at `stage` in `run`; see [`AtomicStage`].
    pub fn begin_stage(&self, run: &RunId, stage: &str) -> Result<AtomicStage<'_>> {
        let now = self.now_ms();
        let pid = std::process::id();
        let (attempt_id, attempt) = self.write("begin a stage", |tx| {
            let attempt: u32 = tx.query_row(
                "SELECT coalesce(max(attempt), 0) + 1 FROM stage_attempts WHERE run_id = ?1 AND stage = ?2",
                params![run.as_str(), stage],
                |r| r.get(0),
            )?;
            tx.execute(
                "INSERT INTO stage_attempts (run_id, stage, attempt, status, started_ms, pid) VALUES (?1, ?2, ?3, 'running', ?4, ?5)",
                params![run.as_str(), stage, attempt, now, pid],
            )?;
            Ok((tx.last_insert_rowid(), attempt))
        })?;
        tracing::info!(run_id = %run, stage, attempt, "stage begun");
        Ok(AtomicStage {
            registry: self,
            run: run.clone(),
            stage: stage.to_string(),
            attempt,
            attempt_id,
            started: self.clock().now(),
            pending: Vec::new(),
            rollbacks: Vec::new(),
            checkpoint: None,
            metrics: serde_json::Map::new(),
            finished: false,
        })
    }

    /// Runs `body` as an attempt at `stage`: its outputs are committed when it returns `Ok`,
    /// and rolled back (the error recorded with its kind and class) when it returns `Err`
    /// or panics.
    pub fn run_stage<T>(
        &self,
        run: &RunId,
        stage: &str,
        body: impl FnOnce(&mut AtomicStage<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut attempt = self.begin_stage(run, stage)?;
        match body(&mut attempt) {
            Ok(value) => {
                attempt.commit()?;
                Ok(value)
            }
            Err(error) => {
                attempt.fail(&error);
                Err(error)
            }
        }
    }
}

impl<'r> AtomicStage<'r> {
    /// The run.
    pub fn run_id(&self) -> &RunId {
        &self.run
    }

    /// The stage's name.
    pub fn stage(&self) -> &str {
        &self.stage
    }

    /// This attempt's number in the run (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Registers the file output `target` and returns the temporary path to write it at
    /// (created empty, in `target`'s directory), for writers that take a path (a Parquet
    /// or video encoder). The file is put in place on [`commit`](Self::commit).
    pub fn output(&mut self, target: impl AsRef<Path>) -> Result<PathBuf> {
        let target = self.check_target(target.as_ref())?;
        let temp = temp_file_next_to(&target)?
            .into_temp_path()
            .keep()
            .map_err(|e| GuardrailError::io(&target, e.error))?;
        self.pending.push(Pending {
            target,
            temp: temp.clone(),
            kind: ArtifactKind::File,
        });
        Ok(temp)
    }

    /// Registers the file output `target` and fills it through `write`, as
    /// [`atomic_write`](super::atomic_write) does, but made visible only on commit.
    pub fn write<T>(
        &mut self,
        target: impl AsRef<Path>,
        write: impl FnOnce(&mut BufWriter<File>) -> Result<T>,
    ) -> Result<T> {
        let temp = self.output(target.as_ref())?;
        let file = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&temp)
            .path(&temp)?;
        let mut writer = BufWriter::with_capacity(BUFFER, file);
        let value = write(&mut writer).path(target.as_ref())?;
        writer
            .into_inner()
            .map_err(|e| GuardrailError::io(&temp, e.into_error()))
            .operation("flush a stage output")?;
        Ok(value)
    }

    /// Registers the directory output `target` (a folder of shards) and returns the
    /// temporary directory to fill; it takes `target`'s place on commit.
    pub fn output_dir(&mut self, target: impl AsRef<Path>) -> Result<PathBuf> {
        let target = self.check_target(target.as_ref())?;
        let temp = temp_dir_next_to(&target)?.keep();
        self.pending.push(Pending {
            target,
            temp: temp.clone(),
            kind: ArtifactKind::Dir,
        });
        Ok(temp)
    }

    /// Adds an action to run if the stage rolls back (a row written elsewhere to delete, a
    /// message to retract); actions run in reverse order of registration.
    pub fn on_rollback(
        &mut self,
        name: impl Into<String>,
        action: impl FnOnce() -> Result<()> + Send + 'r,
    ) {
        self.rollbacks.push((name.into(), Box::new(action)));
    }

    /// Records a figure of the stage (rows written, accuracy), committed with its outputs.
    pub fn record(&mut self, name: impl Into<String>, value: impl Into<serde_json::Value>) {
        self.metrics.insert(name.into(), value.into());
    }

    /// Saves `value` as the stage's checkpoint in the commit's own transaction, so the
    /// checkpoint and the outputs it describes become visible together.
    pub fn checkpoint<T: Serialize>(&mut self, value: &T) -> Result<()> {
        let text = serde_json::to_string(value).map_err(|e| {
            store_error(
                self.registry.path(),
                "stage a checkpoint",
                &format!(
                    "the value of stage {} cannot be serialized: {e}",
                    self.stage
                ),
                ErrorClass::Fatal,
                None,
            )
        })?;
        self.checkpoint = Some(text);
        Ok(())
    }

    /// Makes every output, figure and the checkpoint visible together; see [`AtomicStage`].
    ///
    /// On an error nothing is committed: the outputs renamed so far are put back, the
    /// temporary outputs removed, the rollback actions run.
    pub fn commit(mut self) -> Result<StageCommit> {
        let result = self.try_commit();
        if let Err(error) = &result {
            self.fail(error);
        }
        result
    }

    fn try_commit(&mut self) -> Result<StageCommit> {
        let mut artifacts = Vec::with_capacity(self.pending.len());
        for p in &self.pending {
            match p.kind {
                ArtifactKind::File => File::open(&p.temp)
                    .and_then(|f| f.sync_all())
                    .path(&p.temp)
                    .operation("fsync a stage output")?,
                ArtifactKind::Dir => sync_tree(&p.temp)?,
            }
            let (size, checksum) = digest(&p.temp)?;
            let old = fs::symlink_metadata(&p.target).ok();
            let backup = match &old {
                Some(meta) if meta.is_file() && p.kind == ArtifactKind::File => {
                    let backup = backup_path(&p.target);
                    fs::hard_link(&p.target, &backup)
                        .path(&p.target)
                        .operation("keep the old output until the commit is done")?;
                    Some(backup)
                }
                _ => None,
            };
            artifacts.push(IntentArtifact {
                target: p.target.clone(),
                temp: p.temp.clone(),
                kind: p.kind,
                size,
                checksum,
                backup,
                had_old: old.is_some(),
            });
        }
        let intent = Intent {
            artifacts,
            checkpoint: self.checkpoint.take(),
            metrics: self.metrics.clone(),
        };
        let payload = serde_json::to_string(&intent).map_err(GuardrailError::external)?;
        let now = self.registry.now_ms();
        let pid = std::process::id();
        // The in-flight mark is taken under the registry's lock, before the intent is
        // visible to another connection of this process.
        let mut in_flight = None;
        let intent_id = self.registry.write("write a commit intent", |tx| {
            tx.execute(
                "INSERT INTO commit_intents (run_id, stage, attempt_id, pid, created_ms, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![self.run.as_str(), self.stage, self.attempt_id, pid, now, payload],
            )?;
            let id = tx.last_insert_rowid();
            in_flight = Some(InFlight::new(self.registry.path(), id));
            Ok(id)
        })?;
        tracing::debug!(run_id = %self.run, stage = %self.stage, artifacts = intent.artifacts.len(), "commit intent written");
        // From here the temporaries belong to the intent: a failure undoes through it.
        self.pending.clear();
        #[cfg(test)]
        {
            let stop = CRASH_AFTER_RENAMES.load(std::sync::atomic::Ordering::SeqCst);
            if stop != usize::MAX {
                for a in intent.artifacts.iter().take(stop) {
                    rename_one(a)?;
                }
                self.finished = true;
                self.rollbacks.clear();
                drop(in_flight);
                return Err(GuardrailError::external("simulated crash"));
            }
        }
        let renamed = match rename_all(&intent.artifacts) {
            Ok(()) => intent.artifacts.len(),
            Err((done, error)) => {
                undo(&intent.artifacts[..done]);
                discard(&intent.artifacts);
                let _ = self.registry.write("drop a commit intent", |tx| {
                    tx.execute("DELETE FROM commit_intents WHERE id = ?1", [intent_id])
                });
                return Err(error);
            }
        };
        debug_assert_eq!(renamed, intent.artifacts.len());
        let duration = self.clock_elapsed_ms();
        finish(
            self.registry,
            &self.run,
            &self.stage,
            self.attempt_id,
            intent_id,
            &intent,
            Some(duration),
        )?;
        self.finished = true;
        drop(in_flight);
        tracing::info!(run_id = %self.run, stage = %self.stage, attempt = self.attempt, artifacts = intent.artifacts.len(), "stage committed");
        Ok(StageCommit {
            stage: self.stage.clone(),
            attempt: self.attempt,
            artifacts: intent.artifacts.iter().map(|a| a.target.clone()).collect(),
        })
    }

    /// Rolls the stage back without an error to record (the attempt is marked failed
    /// with "rolled back").
    pub fn rollback(mut self) {
        self.roll_back(None);
    }

    /// Rolls the stage back and records `error` as why.
    pub fn fail(mut self, error: &GuardrailError) {
        self.roll_back(Some(error));
    }

    fn roll_back(&mut self, error: Option<&GuardrailError>) {
        if self.finished {
            return;
        }
        self.finished = true;
        for p in self.pending.drain(..) {
            remove_any(&p.temp);
        }
        while let Some((name, action)) = self.rollbacks.pop() {
            if let Err(e) = action() {
                tracing::warn!(run_id = %self.run, stage = %self.stage, action = %name, error = %e, "rollback action failed");
            }
        }
        let (kind, class, message) = match error {
            Some(e) => (
                Some(e.kind().as_str()),
                Some(e.class().as_str()),
                e.report().to_string(),
            ),
            None if std::thread::panicking() => (None, None, "the stage panicked".to_string()),
            None => (None, None, "rolled back".to_string()),
        };
        let now = self.registry.now_ms();
        let duration = self.clock_elapsed_ms();
        // The figures are kept with a failed attempt too: a gate that stopped the stage is
        // judged on them, and the record says why.
        let metrics = serde_json::Value::Object(std::mem::take(&mut self.metrics)).to_string();
        let recorded = self.registry.write("record a failed stage", |tx| {
            tx.execute(
                "UPDATE stage_attempts SET status = 'failed', finished_ms = ?2, duration_ms = ?3, error_kind = ?4, error_class = ?5, error_message = ?6, metrics = ?7 WHERE id = ?1",
                params![self.attempt_id, now, duration, kind, class, message, metrics],
            )
        });
        if let Err(e) = recorded {
            tracing::warn!(run_id = %self.run, stage = %self.stage, error = %e, "could not record the stage's failure");
        }
        tracing::warn!(run_id = %self.run, stage = %self.stage, attempt = self.attempt, reason = %message, "stage rolled back");
    }

    fn clock_elapsed_ms(&self) -> i64 {
        let elapsed = self
            .registry
            .clock()
            .now()
            .saturating_duration_since(self.started);
        i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
    }

    fn check_target(&self, target: &Path) -> Result<PathBuf> {
        let target = std::path::absolute(resolve_links(target)).path(target)?;
        if target.to_str().is_none() {
            return Err(GuardrailError::io(
                &target,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the run registry records paths as UTF-8; this one is not",
                ),
            ));
        }
        if self.pending.iter().any(|p| p.target == target) {
            return Err(GuardrailError::config(
                "stage.output",
                format!("stage {} registers {} twice", self.stage, target.display()),
            ));
        }
        Ok(target)
    }
}

impl Drop for AtomicStage<'_> {
    fn drop(&mut self) {
        self.roll_back(None);
    }
}

/// `.<name>.<random>.old.guardrails-tmp` next to `target`.
fn backup_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(
        ".{name}.{:08x}.old{TEMP_SUFFIX}",
        fastrand::u32(..)
    ))
}

/// Renames every temporary into place and `fsync`s their directories; on a failure, how
/// many were renamed and the error.
fn rename_all(artifacts: &[IntentArtifact]) -> std::result::Result<(), (usize, GuardrailError)> {
    for (i, a) in artifacts.iter().enumerate() {
        rename_one(a).map_err(|e| (i, e))?;
    }
    sync_parents(artifacts).map_err(|e| (artifacts.len(), e))
}

fn rename_one(a: &IntentArtifact) -> Result<()> {
    let exists = fs::symlink_metadata(&a.target).is_ok();
    if a.kind == ArtifactKind::Dir && exists {
        // The old directory ends at the temporary path, removed once the commit is done.
        replace_dir(&a.temp, &a.target)
    } else {
        fs::rename(&a.temp, &a.target)
            .path(&a.target)
            .operation("rename a stage output into place")
    }
}

fn sync_parents(artifacts: &[IntentArtifact]) -> Result<()> {
    let dirs: BTreeSet<&Path> = artifacts.iter().filter_map(|a| a.target.parent()).collect();
    for dir in dirs {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Puts back the old outputs of artifacts already renamed.
fn undo(renamed: &[IntentArtifact]) {
    for a in renamed.iter().rev() {
        let result = match (a.kind, &a.backup, a.had_old) {
            (ArtifactKind::File, Some(backup), _) => fs::rename(backup, &a.target),
            (ArtifactKind::Dir, _, true) if a.temp.exists() => {
                replace_dir(&a.temp, &a.target).map_err(|e| io::Error::other(e.to_string()))
            }
            (_, _, false) => {
                // No old output: the new one goes to the temporary name, then away.
                fs::rename(&a.target, &a.temp)
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::error!(path = %a.target.display(), error = %e, "could not put the old output back");
        }
    }
    if let Err(e) = sync_parents(renamed) {
        tracing::warn!(error = %e, "could not fsync after putting old outputs back");
    }
}

/// Removes the temporaries and backups of an intent.
fn discard(artifacts: &[IntentArtifact]) {
    for a in artifacts {
        remove_any(&a.temp);
        if let Some(b) = &a.backup {
            remove_any(b);
        }
    }
}

fn remove_any(path: &Path) {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => return,
    };
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "could not remove a temporary output");
    }
}

/// The final transaction of a commit (artifacts, figures, checkpoint, attempt committed,
/// intent removed), then the backups and replaced directories go.
fn finish(
    registry: &RunRegistry,
    run: &RunId,
    stage: &str,
    attempt_id: i64,
    intent_id: i64,
    intent: &Intent,
    duration: Option<i64>,
) -> Result<()> {
    let mut stats = Vec::with_capacity(intent.artifacts.len());
    for a in &intent.artifacts {
        let meta = fs::symlink_metadata(&a.target)
            .path(&a.target)
            .operation("stat a committed output")?;
        stats.push(mtime_ns(&meta));
    }
    let now = registry.now_ms();
    let metrics = serde_json::to_string(&intent.metrics).unwrap_or_else(|_| "{}".into());
    let keep = i64::from(registry.options.keep_checkpoints);
    registry.write("commit a stage", |tx| {
        for (a, mtime) in intent.artifacts.iter().zip(&stats) {
            tx.execute(
                "INSERT INTO artifacts (run_id, stage, path, kind, size, mtime_ns, checksum, attempt_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (run_id, path) DO UPDATE SET stage = excluded.stage, kind = excluded.kind, size = excluded.size, mtime_ns = excluded.mtime_ns, checksum = excluded.checksum, attempt_id = excluded.attempt_id",
                params![
                    run.as_str(),
                    stage,
                    a.target.to_string_lossy(),
                    a.kind.as_str(),
                    i64::try_from(a.size).unwrap_or(i64::MAX),
                    mtime,
                    a.checksum,
                    attempt_id
                ],
            )?;
        }
        tx.execute(
            "UPDATE stage_attempts SET status = 'committed', finished_ms = ?2, duration_ms = coalesce(?3, ?2 - started_ms), metrics = ?4, error_kind = NULL, error_class = NULL, error_message = NULL WHERE id = ?1",
            params![attempt_id, now, duration, metrics],
        )?;
        if let Some(value) = &intent.checkpoint {
            insert_checkpoint(tx, run.as_str(), stage, value, now, keep)?;
        }
        tx.execute("DELETE FROM commit_intents WHERE id = ?1", [intent_id])?;
        Ok(())
    })?;
    // Old versions: no longer visible, so a failure here costs space, not correctness.
    discard(&intent.artifacts);
    Ok(())
}

pub(super) fn mtime_ns(meta: &fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

/// What recovery did with one interrupted commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Recovered {
    /// The run.
    pub run: RunId,
    /// The stage whose commit was interrupted.
    pub stage: String,
    /// `true`: finished (rolled forward); `false`: undone (rolled back).
    pub rolled_forward: bool,
    /// Why it was undone, when it was.
    pub reason: Option<String>,
}

impl RunRegistry {
    /// Finishes or undoes the stage commits that processes now dead left half-done; run by
    /// [`RunRegistry::open`], and callable again (a commit of a process that is still alive
    /// is left to it).
    ///
    /// A commit is rolled forward when each of its outputs is in place with its recorded
    /// checksum or still complete at its temporary path; otherwise it is rolled back: the
    /// outputs already renamed are replaced by the old ones kept for this, and the attempt
    /// is recorded as failed, naming what was missing.
    pub fn recover(&self) -> Result<Vec<Recovered>> {
        let intents = self.read("read commit intents", |c| {
            let mut stmt = c.prepare(
                "SELECT id, run_id, stage, attempt_id, pid, payload FROM commit_intents ORDER BY id",
            )?;
            stmt.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, String>(5)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        let mut done = Vec::new();
        for (id, run, stage, attempt_id, pid, payload) in intents {
            let own = i64::from(std::process::id()) == pid;
            let ours_in_flight = IN_FLIGHT
                .lock()
                .iter()
                .any(|(p, i)| p == self.path() && *i == id);
            if ours_in_flight || (!own && process_alive(pid)) {
                continue;
            }
            let run = RunId::new(run);
            let intent: Intent = serde_json::from_str(&payload).map_err(|e| {
                store_error(
                    self.path(),
                    "recover a commit",
                    &format!("the commit intent of stage {stage} in run {run} is unreadable: {e}"),
                    ErrorClass::Fatal,
                    None,
                )
            })?;
            let outcome = self.recover_one(&run, &stage, attempt_id, id, &intent)?;
            done.push(outcome);
        }
        Ok(done)
    }

    fn recover_one(
        &self,
        run: &RunId,
        stage: &str,
        attempt_id: i64,
        intent_id: i64,
        intent: &Intent,
    ) -> Result<Recovered> {
        let mut missing = None;
        let mut to_rename = Vec::new();
        let mut renamed = Vec::new();
        for a in &intent.artifacts {
            if matches!(digest(&a.target), Ok((s, c)) if s == a.size && c == a.checksum) {
                renamed.push(a.clone());
            } else if matches!(digest(&a.temp), Ok((s, c)) if s == a.size && c == a.checksum) {
                to_rename.push(a.clone());
            } else if missing.is_none() {
                missing = Some(a.target.clone());
            }
        }
        if let Some(path) = missing {
            undo(&renamed);
            discard(&intent.artifacts);
            let reason = format!(
                "the commit was interrupted and the new content of {} is gone; rolled back",
                path.display()
            );
            let now = self.now_ms();
            self.write("roll back an interrupted commit", |tx| {
                tx.execute(
                    "UPDATE stage_attempts SET status = 'failed', finished_ms = ?2, error_kind = 'io', error_class = 'fatal', error_message = ?3 WHERE id = ?1",
                    params![attempt_id, now, reason],
                )?;
                tx.execute("DELETE FROM commit_intents WHERE id = ?1", [intent_id])
            })?;
            tracing::warn!(run_id = %run, stage, reason = %reason, "interrupted commit rolled back");
            return Ok(Recovered {
                run: run.clone(),
                stage: stage.to_string(),
                rolled_forward: false,
                reason: Some(reason),
            });
        }
        for a in &to_rename {
            rename_one(a)?;
        }
        sync_parents(&intent.artifacts)?;
        finish(self, run, stage, attempt_id, intent_id, intent, None)?;
        tracing::info!(run_id = %run, stage, "interrupted commit rolled forward");
        Ok(Recovered {
            run: run.clone(),
            stage: stage.to_string(),
            rolled_forward: true,
            reason: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::AttemptStatus;
    use std::io::Write;
    use std::sync::atomic::Ordering;

    fn write_three(
        registry: &RunRegistry,
        run: &RunId,
        dir: &Path,
        tag: &str,
    ) -> Result<StageCommit> {
        let mut stage = registry.begin_stage(run, "split")?;
        for name in ["a.csv", "b.csv"] {
            stage.write(dir.join(name), |w| {
                Ok(w.write_all(format!("{tag} {name}").as_bytes())?)
            })?;
        }
        let shards = stage.output_dir(dir.join("shards"))?;
        fs::write(shards.join("part-0"), tag).path(&shards)?;
        stage.checkpoint(&tag)?;
        stage.commit()
    }

    fn contents(dir: &Path) -> Vec<String> {
        ["a.csv", "b.csv", "shards/part-0"]
            .iter()
            .map(|n| fs::read_to_string(dir.join(n)).unwrap_or_default())
            .collect()
    }

    /// Both ways out of a commit interrupted after its intent: with every temporary
    /// complete it is finished; with one gone, the renames already made are undone from the
    /// kept old versions. One test, as the crash hook is process-wide.
    #[test]
    fn an_interrupted_commit_is_rolled_forward_or_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let registry = RunRegistry::open(dir.path().join("reg.db")).unwrap();
        let run = registry.start_run("p", "h").unwrap();
        write_three(&registry, &run, dir.path(), "old").unwrap();
        let old = contents(dir.path());

        CRASH_AFTER_RENAMES.store(1, Ordering::SeqCst);
        assert!(write_three(&registry, &run, dir.path(), "new").is_err());
        CRASH_AFTER_RENAMES.store(usize::MAX, Ordering::SeqCst);
        // Half-way: the first output is new, the others old.
        assert_eq!(contents(dir.path())[0], "new a.csv");
        assert_eq!(contents(dir.path())[1], "old b.csv");
        let recovered = registry.recover().unwrap();
        assert_eq!(recovered.len(), 1);
        assert!(recovered[0].rolled_forward);
        assert_eq!(contents(dir.path()), ["new a.csv", "new b.csv", "new"]);
        let cp = registry
            .load_checkpoint::<String>(&run, "split")
            .unwrap()
            .unwrap();
        assert_eq!((cp.version, cp.value.as_str()), (2, "new"));
        assert!(
            registry.verify(&run).unwrap().is_consistent(),
            "{:?}",
            registry.verify(&run)
        );

        CRASH_AFTER_RENAMES.store(2, Ordering::SeqCst);
        assert!(write_three(&registry, &run, dir.path(), "newer").is_err());
        CRASH_AFTER_RENAMES.store(usize::MAX, Ordering::SeqCst);
        // The directory's temporary goes missing (a cleaner ran, a disk lost it).
        for e in fs::read_dir(dir.path()).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".shards.") {
                fs::remove_dir_all(e.path()).unwrap();
            }
        }
        let recovered = registry.recover().unwrap();
        assert!(!recovered[0].rolled_forward);
        assert!(recovered[0].reason.as_deref().unwrap().contains("shards"));
        assert_eq!(contents(dir.path()), ["new a.csv", "new b.csv", "new"]);
        let cp = registry
            .load_checkpoint::<String>(&run, "split")
            .unwrap()
            .unwrap();
        assert_eq!(cp.value, "new");
        let last = registry.attempts(&run).unwrap().pop().unwrap();
        assert_eq!(last.status, AttemptStatus::Failed);
        let report = registry.verify(&run).unwrap();
        assert!(report.is_consistent(), "{report:?}");
        assert_ne!(old, contents(dir.path()));
    }
}
