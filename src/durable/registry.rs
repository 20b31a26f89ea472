//! The run registry: one SQLite database of runs, stage attempts, artifacts, commit intents
//! and checkpoints.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::sqlite::{Access, Schema};
pub(crate) use crate::sqlite::{sql_error_of, store_error};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::clock::{Clock, SystemClock};
use crate::error::{ErrorClass, GuardrailError, Result};

/// The schema this build writes. Older databases are migrated on open; newer ones refused.
pub const SCHEMA_VERSION: i64 = 1;

/// `PRAGMA application_id` of a registry ("GRRR"), so that another program's SQLite file
/// is refused instead of being written into.
const APPLICATION_ID: i64 = 0x4752_5252;

/// The default file of a pipeline's registry, under its root.
pub const DEFAULT_REGISTRY: &str = ".guardrails/registry.db";

const SCHEMA: Schema = Schema {
    what: "registry",
    application_id: APPLICATION_ID,
    version: SCHEMA_VERSION,
    fresh: "",
    create: SCHEMA_V1,
    // FULL: a commit record is on disk when the transaction returns, WAL or not.
    synchronous: "FULL",
};

const SCHEMA_V1: &str = "
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    finished_ms INTEGER,
    pid INTEGER NOT NULL
);
CREATE TABLE stage_attempts (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(id),
    stage TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    status TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    finished_ms INTEGER,
    duration_ms INTEGER,
    error_kind TEXT,
    error_class TEXT,
    error_message TEXT,
    metrics TEXT NOT NULL DEFAULT '{}',
    pid INTEGER NOT NULL,
    UNIQUE (run_id, stage, attempt)
);
CREATE TABLE artifacts (
    run_id TEXT NOT NULL REFERENCES runs(id),
    stage TEXT NOT NULL,
    path TEXT NOT NULL,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    attempt_id INTEGER NOT NULL,
    PRIMARY KEY (run_id, path)
);
CREATE INDEX artifacts_by_path ON artifacts (path);
CREATE TABLE commit_intents (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    attempt_id INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE checkpoints (
    run_id TEXT NOT NULL REFERENCES runs(id),
    stage TEXT NOT NULL,
    version INTEGER NOT NULL,
    value TEXT NOT NULL,
    artifacts TEXT NOT NULL,
    saved_ms INTEGER NOT NULL,
    PRIMARY KEY (run_id, stage, version)
);
";

/// How a [`RunRegistry`] is opened.
///
/// | option | default | meaning |
/// |---|---|---|
/// | `busy_timeout` | 10 s | how long a write waits for another process's transaction before failing (retryable) |
/// | `keep_checkpoints` | 3 | checkpoint versions kept per stage at least (pruned every that many saves, so up to twice as many less one stay) |
/// | `clock` | [`SystemClock`] | where timestamps and durations come from |
#[derive(Clone)]
pub struct RegistryOptions {
    busy_timeout: Duration,
    pub(super) keep_checkpoints: u32,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for RegistryOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryOptions")
            .field("busy_timeout", &self.busy_timeout)
            .field("keep_checkpoints", &self.keep_checkpoints)
            .finish_non_exhaustive()
    }
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(10),
            keep_checkpoints: 3,
            clock: Arc::new(SystemClock),
        }
    }
}

impl RegistryOptions {
    /// The defaults in the table above.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a write waits for another process's transaction.
    #[must_use]
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Checkpoint versions kept per stage (at least 1).
    #[must_use]
    pub fn with_keep_checkpoints(mut self, keep: u32) -> Self {
        self.keep_checkpoints = keep.max(1);
        self
    }

    /// The clock timestamps and durations come from.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

/// The identifier of a run: `<UTC start, basic ISO 8601>-<6 random hex digits>`, so that
/// ids sort by start time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(String);

impl RunId {
    /// Wraps an id read from elsewhere (a CLI argument, a log line).
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunStatus {
    /// Started and its process is alive.
    Running,
    /// Recorded as running, but the process that ran it is gone (killed, crashed).
    Interrupted,
    /// Finished with every stage done.
    Succeeded,
    /// Finished with a failure.
    Failed,
}

impl RunStatus {
    /// The snake_case name, as stored and as printed.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Interrupted => "interrupted",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "interrupted" => Self::Interrupted,
            _ => Self::Running,
        }
    }
}

/// Where one attempt at a stage stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AttemptStatus {
    /// Begun, its process alive.
    Running,
    /// Begun, but its process is gone without a commit or a rollback.
    Interrupted,
    /// Its outputs were committed.
    Committed,
    /// It failed (an error, a panic, a commit rolled back); its outputs were not committed.
    Failed,
}

impl AttemptStatus {
    /// The snake_case name, as stored and as printed.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Interrupted => "interrupted",
            Self::Committed => "committed",
            Self::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "committed" => Self::Committed,
            "failed" => Self::Failed,
            "interrupted" => Self::Interrupted,
            _ => Self::Running,
        }
    }
}

/// One run as the registry records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RunInfo {
    /// The run's id.
    pub id: RunId,
    /// The pipeline's name.
    pub pipeline: String,
    /// A hash of the configuration it ran with, as the caller gave it.
    pub config_hash: String,
    /// Where it stands ([`RunStatus::Interrupted`] when recorded running by a dead process).
    pub status: RunStatus,
    /// Start, milliseconds since the Unix epoch.
    pub started_ms: i64,
    /// End, when it ended.
    pub finished_ms: Option<i64>,
}

/// One attempt at a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StageAttempt {
    /// The stage's name.
    pub stage: String,
    /// 1 for the first attempt in this run, then 2, 3, …
    pub attempt: u32,
    /// Where it stands.
    pub status: AttemptStatus,
    /// Start, milliseconds since the Unix epoch.
    pub started_ms: i64,
    /// How long it ran, when it ended.
    pub duration_ms: Option<i64>,
    /// The error's [`kind`](crate::ErrorKind) when it failed.
    pub error_kind: Option<String>,
    /// The error's [`class`](crate::ErrorClass) when it failed.
    pub error_class: Option<String>,
    /// The error's message when it failed.
    pub error_message: Option<String>,
    /// Figures the stage recorded with [`AtomicStage::record`](super::AtomicStage::record).
    pub metrics: serde_json::Map<String, serde_json::Value>,
}

/// Whether an artifact is a file or a directory tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactKind {
    /// A file.
    File,
    /// A directory, its checksum over the whole tree.
    Dir,
}

impl ArtifactKind {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Dir => "dir",
        }
    }

    fn parse(text: &str) -> Self {
        if text == "dir" { Self::Dir } else { Self::File }
    }
}

/// An output a committed stage wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ArtifactRecord {
    /// The stage that wrote it.
    pub stage: String,
    /// Its absolute path.
    pub path: PathBuf,
    /// File or directory.
    pub kind: ArtifactKind,
    /// Bytes (a directory: the sum of its files).
    pub size: u64,
    /// Modification time after the commit, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// XXH3-128 of the content, 32 hex digits.
    pub checksum: String,
}

/// A checkpoint as loaded: the value, its version and what the stage had produced.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Checkpoint<T> {
    /// The stored value.
    pub value: T,
    /// 1 for the stage's first checkpoint in the run, then 2, 3, …
    pub version: u64,
    /// The artifacts the stage had committed when it was saved.
    pub artifacts: Vec<ArtifactRecord>,
    /// When it was saved, milliseconds since the Unix epoch.
    pub saved_ms: i64,
}

/// The durable record of a pipeline's runs: one SQLite database (WAL, `synchronous=FULL`)
/// that several processes on one machine can share.
///
/// Opening it checks that the file is a registry of a schema this build knows (a damaged
/// file, another program's database or a newer schema is refused, never recreated), migrates
/// an older one, and finishes any stage commit a crashed process left half-done (see
/// [`AtomicStage`](super::AtomicStage)).
///
/// ```
/// use guardrails::durable::{RunRegistry, RunStatus};
///
/// let root = tempfile::tempdir()?;
/// let registry = RunRegistry::open(root.path().join("registry.db"))?;
/// let run = registry.start_run("video", "cfg-1")?;
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct Progress { clips_done: u32 }
/// registry.save_checkpoint(&run, "decode", &Progress { clips_done: 40 })?;
/// let loaded = registry.load_checkpoint::<Progress>(&run, "decode")?.unwrap();
/// assert_eq!((loaded.version, loaded.value.clips_done), (1, 40));
/// registry.finish_run(&run, RunStatus::Succeeded)?;
/// assert_eq!(registry.run(&run)?.unwrap().status, RunStatus::Succeeded);
/// # Ok::<(), guardrails::GuardrailError>(())
/// ```
pub struct RunRegistry {
    pub(super) conn: Mutex<Connection>,
    pub(super) path: PathBuf,
    pub(super) options: RegistryOptions,
}

impl fmt::Debug for RunRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunRegistry")
            .field("path", &self.path)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RunRegistry {
    /// Opens the registry at `path`, creating it (and its directory) if absent; see
    /// [`RunRegistry::open_with`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, RegistryOptions::default())
    }

    /// Opens the registry at `path` with `options`, creating it if absent, and finishes or
    /// undoes the stage commits of processes that died during them.
    pub fn open_with(path: impl AsRef<Path>, options: RegistryOptions) -> Result<Self> {
        let registry = Self::connect(path.as_ref(), options, Access::ReadWrite)?;
        registry.recover()?;
        Ok(registry)
    }

    /// Opens an existing registry to read it (`guardrails runs`): nothing is created,
    /// migrated or recovered, and a missing file is an error.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self> {
        Self::connect(path.as_ref(), RegistryOptions::default(), Access::ReadOnly)
    }

    fn connect(path: &Path, options: RegistryOptions, access: Access) -> Result<Self> {
        let conn = crate::sqlite::open(path, &SCHEMA, access, options.busy_timeout)?;
        Ok(Self {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            options,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The default registry file of a pipeline rooted at `root`
    /// (`<root>/.guardrails/registry.db`).
    pub fn default_path(root: impl AsRef<Path>) -> PathBuf {
        root.as_ref().join(DEFAULT_REGISTRY)
    }

    pub(super) fn now_ms(&self) -> i64 {
        unix_ms(self.options.clock.system_time())
    }

    pub(super) fn clock(&self) -> &dyn Clock {
        &*self.options.clock
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction (the write lock is taken up front, so
    /// two writers wait on the busy timeout instead of failing on a lock upgrade).
    pub(super) fn write<T>(
        &self,
        operation: &str,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_error(&self.path, operation, e))?;
        let value = f(&tx).map_err(|e| sql_error(&self.path, operation, e))?;
        tx.commit()
            .map_err(|e| sql_error(&self.path, operation, e))?;
        Ok(value)
    }

    pub(super) fn read<T>(
        &self,
        operation: &str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let conn = self.conn.lock();
        f(&conn).map_err(|e| sql_error(&self.path, operation, e))
    }

    /// Records a new run of `pipeline` with the hash of its configuration and returns its id.
    pub fn start_run(&self, pipeline: &str, config_hash: &str) -> Result<RunId> {
        let now = self.options.clock.system_time();
        let stamp = humantime::format_rfc3339_seconds(now)
            .to_string()
            .replace(['-', ':'], "");
        let id = RunId(format!("{stamp}-{:06x}", fastrand::u32(..0x0100_0000)));
        let pid = std::process::id();
        self.write("start a run", |tx| {
            tx.execute(
                "INSERT INTO runs (id, pipeline, config_hash, status, started_ms, pid) VALUES (?1, ?2, ?3, 'running', ?4, ?5)",
                params![id.0, pipeline, config_hash, unix_ms(now), pid],
            )
        })?;
        tracing::info!(run_id = %id, pipeline, "run started");
        Ok(id)
    }

    /// Takes up an earlier run again in this process (after a crash): it is marked running
    /// under this process, and its committed stages stay committed. See
    /// [`RunRegistry::resume`] for what is left to do.
    pub fn continue_run(&self, run: &RunId) -> Result<RunInfo> {
        let pid = std::process::id();
        let changed = self.write("continue a run", |tx| {
            tx.execute(
                "UPDATE runs SET status = 'running', finished_ms = NULL, pid = ?2 WHERE id = ?1",
                params![run.0, pid],
            )
        })?;
        if changed == 0 {
            return Err(unknown_run(&self.path, run));
        }
        tracing::info!(run_id = %run, "run continued");
        self.run(run)?.ok_or_else(|| unknown_run(&self.path, run))
    }

    /// Records the end of a run.
    pub fn finish_run(&self, run: &RunId, status: RunStatus) -> Result<()> {
        let now = self.now_ms();
        let changed = self.write("finish a run", |tx| {
            tx.execute(
                "UPDATE runs SET status = ?2, finished_ms = ?3 WHERE id = ?1",
                params![run.0, status.as_str(), now],
            )
        })?;
        if changed == 0 {
            return Err(unknown_run(&self.path, run));
        }
        tracing::info!(run_id = %run, status = status.as_str(), "run finished");
        Ok(())
    }

    /// One run, `None` if the registry has no such id.
    pub fn run(&self, run: &RunId) -> Result<Option<RunInfo>> {
        self.read("read a run", |c| {
            c.query_row(
                "SELECT id, pipeline, config_hash, status, started_ms, finished_ms, pid FROM runs WHERE id = ?1",
                [&run.0],
                run_row,
            )
            .optional()
        })
    }

    /// Every run, newest first.
    pub fn runs(&self) -> Result<Vec<RunInfo>> {
        self.read("list runs", |c| {
            let mut stmt = c.prepare(
                "SELECT id, pipeline, config_hash, status, started_ms, finished_ms, pid FROM runs ORDER BY started_ms DESC, id DESC",
            )?;
            stmt.query_map([], run_row)?.collect()
        })
    }

    /// Every stage attempt of a run, in the order they began.
    pub fn attempts(&self, run: &RunId) -> Result<Vec<StageAttempt>> {
        self.read("list stage attempts", |c| {
            let mut stmt = c.prepare(
                "SELECT stage, attempt, status, started_ms, duration_ms, error_kind, error_class, error_message, metrics, pid FROM stage_attempts WHERE run_id = ?1 ORDER BY id",
            )?;
            stmt.query_map([&run.0], |r| {
                let status = AttemptStatus::parse(&r.get::<_, String>(2)?);
                let pid: i64 = r.get(9)?;
                let metrics: String = r.get(8)?;
                Ok(StageAttempt {
                    stage: r.get(0)?,
                    attempt: r.get(1)?,
                    status: if status == AttemptStatus::Running && !process_alive(pid) {
                        AttemptStatus::Interrupted
                    } else {
                        status
                    },
                    started_ms: r.get(3)?,
                    duration_ms: r.get(4)?,
                    error_kind: r.get(5)?,
                    error_class: r.get(6)?,
                    error_message: r.get(7)?,
                    metrics: serde_json::from_str(&metrics).unwrap_or_default(),
                })
            })?
            .collect()
        })
    }

    /// Every artifact a committed stage of the run wrote, by path.
    pub fn artifacts(&self, run: &RunId) -> Result<Vec<ArtifactRecord>> {
        self.read("list artifacts", |c| {
            let mut stmt = c.prepare(
                "SELECT stage, path, kind, size, mtime_ns, checksum FROM artifacts WHERE run_id = ?1 ORDER BY path",
            )?;
            stmt.query_map([&run.0], artifact_row)?.collect()
        })
    }

    /// Saves `value` as the stage's newest checkpoint, in one transaction: after a crash the
    /// stage loads this version or the one before, never a torn one. Returns its version.
    pub fn save_checkpoint<T: Serialize>(
        &self,
        run: &RunId,
        stage: &str,
        value: &T,
    ) -> Result<u64> {
        let text = serde_json::to_string(value).map_err(|e| {
            store_error(
                &self.path,
                "save a checkpoint",
                &format!("the value of stage {stage} cannot be serialized: {e}"),
                ErrorClass::Fatal,
                None,
            )
        })?;
        let now = self.now_ms();
        let keep = i64::from(self.options.keep_checkpoints);
        let version = self.write("save a checkpoint", |tx| {
            insert_checkpoint(tx, &run.0, stage, &text, now, keep)
        })?;
        tracing::debug!(run_id = %run, stage, version, "checkpoint saved");
        Ok(version)
    }

    /// The stage's newest checkpoint, `None` if it saved none in this run.
    ///
    /// A stored value that does not deserialize as `T` (the struct changed between
    /// versions of the pipeline) is a [`Validation`](ErrorClass::Validation) error naming
    /// the stage and the version.
    pub fn load_checkpoint<T: DeserializeOwned>(
        &self,
        run: &RunId,
        stage: &str,
    ) -> Result<Option<Checkpoint<T>>> {
        let row = self.read("load a checkpoint", |c| {
            c.prepare_cached(
                "SELECT version, value, artifacts, saved_ms FROM checkpoints WHERE run_id = ?1 AND stage = ?2 ORDER BY version DESC LIMIT 1",
            )?
            .query_row(
                params![run.0, stage],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?)),
            )
            .optional()
        })?;
        let Some((version, value, artifacts, saved_ms)) = row else {
            return Ok(None);
        };
        let value = serde_json::from_str(&value).map_err(|e| {
            store_error(
                &self.path,
                "load a checkpoint",
                &format!("checkpoint version {version} of stage {stage} does not read as the type asked for: {e}"),
                ErrorClass::Validation,
                None,
            )
        })?;
        Ok(Some(Checkpoint {
            value,
            version: u64::try_from(version).unwrap_or(0),
            artifacts: serde_json::from_str(&artifacts).unwrap_or_default(),
            saved_ms,
        }))
    }
}

/// Inserts the next checkpoint version with the stage's current artifacts and prunes old
/// versions; shared by [`RunRegistry::save_checkpoint`] and a stage commit.
pub(super) fn insert_checkpoint(
    tx: &rusqlite::Transaction<'_>,
    run: &str,
    stage: &str,
    value: &str,
    now: i64,
    keep: i64,
) -> rusqlite::Result<u64> {
    // Cached statements: parsing the SQL each time cost as much as the rows themselves.
    let version: i64 = tx
        .prepare_cached(
            "SELECT coalesce(max(version), 0) + 1 FROM checkpoints WHERE run_id = ?1 AND stage = ?2",
        )?
        .query_row(params![run, stage], |r| r.get(0))?;
    let artifacts: Vec<ArtifactRecord> = tx
        .prepare_cached(
            "SELECT stage, path, kind, size, mtime_ns, checksum FROM artifacts WHERE run_id = ?1 AND stage = ?2 ORDER BY path",
        )?
        .query_map(params![run, stage], artifact_row)?
        .collect::<rusqlite::Result<_>>()?;
    let artifacts = serde_json::to_string(&artifacts).unwrap_or_else(|_| "[]".into());
    tx.prepare_cached(
        "INSERT INTO checkpoints (run_id, stage, version, value, artifacts, saved_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![run, stage, version, value, artifacts, now])?;
    // Pruned every `keep` saves rather than on each: between `keep` and `2 * keep - 1`
    // versions stay, and most saves write one row instead of two.
    if version % keep == 0 {
        tx.prepare_cached(
            "DELETE FROM checkpoints WHERE run_id = ?1 AND stage = ?2 AND version <= ?3",
        )?
        .execute(params![run, stage, version - keep])?;
    }
    Ok(u64::try_from(version).unwrap_or(0))
}

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunInfo> {
    let status = RunStatus::parse(&r.get::<_, String>(3)?);
    let pid: i64 = r.get(6)?;
    Ok(RunInfo {
        id: RunId(r.get(0)?),
        pipeline: r.get(1)?,
        config_hash: r.get(2)?,
        status: if status == RunStatus::Running && !process_alive(pid) {
            RunStatus::Interrupted
        } else {
            status
        },
        started_ms: r.get(4)?,
        finished_ms: r.get(5)?,
    })
}

pub(super) fn artifact_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ArtifactRecord> {
    Ok(ArtifactRecord {
        stage: r.get(0)?,
        path: PathBuf::from(r.get::<_, String>(1)?),
        kind: ArtifactKind::parse(&r.get::<_, String>(2)?),
        size: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
        mtime_ns: r.get(4)?,
        checksum: r.get(5)?,
    })
}

/// Whether the process `pid` on this machine is alive (a registry is shared by processes
/// of one machine only).
pub(super) fn process_alive(pid: i64) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    if pid == std::process::id() as i32 {
        return true;
    }
    // Signal 0 checks existence; EPERM means it exists under another user.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(errno) => errno != nix::errno::Errno::ESRCH,
    }
}

pub(super) use crate::clock::unix_ms;

fn unknown_run(path: &Path, run: &RunId) -> GuardrailError {
    store_error(
        path,
        "find a run",
        &format!("the registry has no run {run}"),
        ErrorClass::Fatal,
        None,
    )
}

/// An SQLite error, classified: busy past the timeout is retryable, a full disk
/// recoverable, anything else (damage, not a database, permissions) fatal.
pub(crate) fn sql_error(path: &Path, operation: &str, e: rusqlite::Error) -> GuardrailError {
    sql_error_of("registry", path, operation, e)
}
