//! The durable metrics history behind feature `history`; see `SqliteHistory`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::event_sample;
use crate::clock::{Clock, RecentWallMs, SharedClock, SystemClock, unix_ms};
use crate::error::{ErrorClass, GuardrailError, Result};
use crate::events::{self, Subscription};
use crate::observe::detect::{AnomalyState, Baseline, DetectorConfig};
use crate::observe::series::{SeriesKey, SeriesTable};
use crate::sqlite::{self, Access, Schema, sql_error_of, store_error};

const WHAT: &str = "metrics history";
const ROLLUP_MS: i64 = 60_000;

const SCHEMA: Schema = Schema {
    what: WHAT,
    application_id: 0x4752_4d48, // "GRMH"
    version: 1,
    // Only a fresh file can take it: deleted rows then give their pages back to the file
    // (the size bound is on the file).
    fresh: "PRAGMA auto_vacuum = INCREMENTAL;",
    create: "
CREATE TABLE series (
    id INTEGER PRIMARY KEY,
    component TEXT NOT NULL,
    metric TEXT NOT NULL,
    tags TEXT NOT NULL,
    UNIQUE (component, metric, tags)
);
CREATE TABLE samples (series INTEGER NOT NULL, at_ms INTEGER NOT NULL, value REAL NOT NULL);
CREATE INDEX samples_by_series ON samples (series, at_ms);
CREATE INDEX samples_by_time ON samples (at_ms);
CREATE TABLE rollups (
    series INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    count INTEGER NOT NULL,
    sum REAL NOT NULL,
    min REAL NOT NULL,
    max REAL NOT NULL,
    PRIMARY KEY (series, at_ms)
) WITHOUT ROWID;
CREATE INDEX rollups_by_time ON rollups (at_ms);
CREATE TABLE baselines (
    series INTEGER PRIMARY KEY,
    baseline TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE anomalies (
    id INTEGER PRIMARY KEY,
    series INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    value REAL NOT NULL,
    z REAL,
    threshold REAL,
    state TEXT NOT NULL
);
CREATE INDEX anomalies_by_time ON anomalies (at_ms);
",
    // NORMAL in WAL: a power cut may lose the last batches, never damages the file; a
    // history is not worth an fsync per batch.
    synchronous: "NORMAL",
};

/// How the durable history writes and what it keeps; the `[history]` section of the
/// [config document](crate::config::GuardrailsConfig).
///
/// | key | default | |
/// |---|---|---|
/// | `flush_interval` | 1 s | the writer's longest wait between batches |
/// | `batch_size` | 10 000 | queued samples that wake the writer early |
/// | `max_pending` | 1 000 000 | queued samples past which new ones are dropped and counted |
/// | `max_series` | 100 000 | distinct series past which new ones are dropped and counted |
/// | `downsample_after` | 1 h | raw samples older than this are folded into 1-minute rollups (count, sum, min, max) |
/// | `max_age` | 7 days | anything older is deleted |
/// | `max_bytes` | 1 GiB | past this the oldest data is deleted until the file fits |
/// | `maintenance_interval` | 60 s | how often the writer downsamples and applies retention |
/// | `busy_timeout` | 10 s | how long a write waits for another connection |
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SqliteHistoryConfig {
    /// The writer's longest wait between batches.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Queued samples that wake the writer early.
    pub batch_size: usize,
    /// Queued samples past which new ones are dropped (and counted).
    pub max_pending: usize,
    /// Distinct series past which new ones are dropped (and counted).
    pub max_series: usize,
    /// Raw samples older than this are folded into one-minute rollups.
    #[serde(with = "humantime_serde")]
    pub downsample_after: Duration,
    /// Anything older than this is deleted.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// The file's size bound: past it the oldest data is deleted until it fits.
    pub max_bytes: u64,
    /// How often the writer downsamples and applies retention.
    #[serde(with = "humantime_serde")]
    pub maintenance_interval: Duration,
    /// How long a write waits for another connection.
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
}

impl Default for SqliteHistoryConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl SqliteHistoryConfig {
    /// The defaults in the table above.
    pub const fn new() -> Self {
        Self {
            flush_interval: Duration::from_secs(1),
            batch_size: 10_000,
            max_pending: 1_000_000,
            max_series: 100_000,
            downsample_after: Duration::from_secs(3600),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 1 << 30,
            maintenance_interval: Duration::from_secs(60),
            busy_timeout: Duration::from_secs(10),
        }
    }
}

impl SqliteHistoryConfig {
    /// Checks the ranges.
    ///
    /// # Errors
    /// [`GuardrailError::Config`] naming the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |k: &str, why: &str| Err(GuardrailError::config(k, why));
        if self.flush_interval.is_zero() {
            return bad("flush_interval", "must be above zero");
        }
        if self.batch_size == 0 || self.max_pending < self.batch_size {
            return bad("batch_size", "must be at least 1 and at most max_pending");
        }
        if self.max_series == 0 || self.max_series > u32::MAX as usize {
            return bad("max_series", "must be within 1..=4294967295");
        }
        if self.max_age.is_zero() {
            return bad("max_age", "must be above zero");
        }
        if self.max_bytes < 64 * 1024 {
            return bad("max_bytes", "must be at least 64 KiB");
        }
        if self.maintenance_interval.is_zero() {
            return bad("maintenance_interval", "must be above zero");
        }
        Ok(())
    }
}

/// What the history did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HistoryStats {
    /// Samples accepted into the queue.
    pub recorded: u64,
    /// Samples written to the file.
    pub written: u64,
    /// Samples dropped because the queue was full.
    pub dropped: u64,
    /// Samples dropped because they would have made a series past `max_series`.
    pub dropped_series: u64,
    /// Batches whose write failed (their samples are lost; the error is logged).
    pub write_errors: u64,
    /// Samples queued now.
    pub pending: u64,
}

/// What one maintenance pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Maintenance {
    /// Raw samples folded into rollups.
    pub downsampled: u64,
    /// Rows (samples, rollups, anomalies) deleted for their age.
    pub expired: u64,
    /// Rows deleted to bring the file under `max_bytes`.
    pub evicted: u64,
    /// The file's size after the pass (database and write-ahead log).
    pub bytes: u64,
}

#[derive(Clone, Copy)]
struct Pending {
    series: u32,
    at_ms: i64,
    value: f64,
}

struct SeriesDef {
    component: String,
    metric: String,
    /// Sorted, so one set of tags in two orders is one series in the file.
    tags: String,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    /// Counted under the lock the push takes anyway (an atomic would be a second
    /// cache-line write per sample).
    recorded: u64,
    dropped: u64,
    flush_requested: u64,
    flush_done: u64,
    maintain_requested: bool,
    stop: bool,
    /// The first error of a write since the last flush, reported by that flush.
    error: Option<GuardrailError>,
    maintenance: Maintenance,
    writer_gone: bool,
}

struct Watch {
    component: String,
    metric: String,
    config: DetectorConfig,
}

struct Shared {
    path: PathBuf,
    config: SqliteHistoryConfig,
    clock: SharedClock,
    /// Stamps for the real clock, cheaper than a `clock_gettime` per sample; `None` on an
    /// injected clock, which is read as it is.
    recent: Option<RecentWallMs>,
    series: SeriesTable<u32>,
    defs: Mutex<Vec<Arc<SeriesDef>>>,
    queue: Mutex<Queue>,
    work: Condvar,
    done: Condvar,
    watches: Mutex<(u64, Vec<Arc<Watch>>)>,
    written: AtomicU64,
    dropped_series: AtomicU64,
    write_errors: AtomicU64,
}

/// The durable history: samples batched into one SQLite file by a writer thread, raw data
/// folded into one-minute rollups once it is old, kept within an age and a size, and
/// baselines that survive restarts.
///
/// The recording call only enqueues (a series lookup, a clock read and a push under a
/// short lock); one writer thread per history wakes every `flush_interval` or at
/// `batch_size` samples and writes the batch in one transaction. A full queue drops the
/// sample and counts it (`stats().dropped`): recording never blocks or fails the caller.
/// Samples still queued when the process is killed are lost (at most `flush_interval` of
/// them); what was written survives. [`SqliteHistory::flush`] waits until everything
/// recorded before it is written.
///
/// ```
/// use std::time::Duration;
/// use guardrails::observe::detect::DetectorConfig;
/// use guardrails::observe::history::{HistoryReader, SqliteHistory, SqliteHistoryConfig};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("history.db");
/// let history = SqliteHistory::open(&path, SqliteHistoryConfig::default())?;
/// history.watch("training", "loss", DetectorConfig { warmup: 5, ..Default::default() })?;
/// for loss in [0.9, 0.8, 0.85, 0.82, 0.81, 0.8, 9.0] {
///     history.record_metric("training", "loss", loss, &[("run", "r1")]);
/// }
/// history.flush()?;
/// drop(history); // the writer finishes and the file is closed
///
/// let reader = HistoryReader::open(&path)?;
/// let points = reader.query("training", "loss", Duration::from_secs(3600))?;
/// assert_eq!(points.len(), 7);
/// let anomalies = reader.anomalies(Duration::from_secs(3600))?;
/// assert_eq!(anomalies[0].value, 9.0);
/// # Ok::<(), guardrails::GuardrailError>(())
/// ```
///
/// What it keeps is set by [`SqliteHistoryConfig`].
pub struct SqliteHistory {
    shared: Arc<Shared>,
    reader: HistoryReader,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SqliteHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteHistory")
            .field("path", &self.shared.path)
            .field("config", &self.shared.config)
            .field("series", &self.shared.series.len())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// One series of a [`SqliteHistory`], looked up once: recording through it skips the
/// lookup. Cheap to clone.
#[derive(Clone)]
pub struct SeriesHandle {
    shared: Arc<Shared>,
    id: Option<u32>,
}

impl std::fmt::Debug for SeriesHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeriesHandle")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SeriesHandle {
    /// Records `value` now (only enqueues).
    #[inline]
    pub fn record(&self, value: f64) {
        match self.id {
            Some(id) => self.shared.push(id, value),
            None => {
                self.shared.dropped_series.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl SqliteHistory {
    /// Opens (creating) the history at `path` and starts its writer thread.
    ///
    /// # Errors
    /// [`GuardrailError::Config`] for a bad `config`; [`GuardrailError::Store`] when the
    /// file cannot be opened or is not a metrics history.
    pub fn open(path: impl AsRef<Path>, config: SqliteHistoryConfig) -> Result<Self> {
        Self::start(path.as_ref(), config, Arc::new(SystemClock), true)
    }

    /// [`SqliteHistory::open`] with timestamps and retention on `clock` (a `ManualClock` in
    /// tests; the writer's cadence stays on real time).
    ///
    /// # Errors
    /// As [`SqliteHistory::open`].
    pub fn open_with_clock(
        path: impl AsRef<Path>,
        config: SqliteHistoryConfig,
        clock: impl Clock + 'static,
    ) -> Result<Self> {
        Self::start(path.as_ref(), config, Arc::new(clock), false)
    }

    fn start(
        path: &Path,
        config: SqliteHistoryConfig,
        clock: SharedClock,
        real_clock: bool,
    ) -> Result<Self> {
        config
            .validate()
            .map_err(|e| crate::config::in_section("history", e))?;
        let path = path.to_path_buf();
        let conn = sqlite::open(&path, &SCHEMA, Access::ReadWrite, config.busy_timeout)?;
        let reader = HistoryReader::connect(&path, Arc::clone(&clock))?;
        let shared = Arc::new(Shared {
            path: path.clone(),
            clock,
            recent: real_clock.then(RecentWallMs::new),
            series: SeriesTable::default(),
            defs: Mutex::new(Vec::new()),
            queue: Mutex::new(Queue {
                pending: Vec::with_capacity(config.batch_size),
                ..Queue::default()
            }),
            config,
            work: Condvar::new(),
            done: Condvar::new(),
            watches: Mutex::new((0, Vec::new())),
            written: AtomicU64::new(0),
            dropped_series: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
        });
        let mut writer = Writer::new(Arc::clone(&shared), conn);
        let handle = std::thread::Builder::new()
            .name("guardrails-history".into())
            .spawn(move || writer.run())
            .map_err(|e| {
                store_error(
                    &path,
                    "start the writer thread",
                    &e.to_string(),
                    ErrorClass::Recoverable,
                    None,
                )
            })?;
        Ok(Self {
            shared,
            reader,
            writer: Some(handle),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Records one sample now (only enqueues; see the [`SqliteHistory`]).
    #[inline]
    pub fn record_metric(&self, component: &str, metric: &str, value: f64, tags: &[(&str, &str)]) {
        let key = SeriesKey {
            parts: &[component, metric],
            labels: tags,
        };
        match self.shared.series_id(&key) {
            Some(id) => self.shared.push(id, value),
            None => {
                self.shared.dropped_series.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The handle of one series, for a loop that records it often.
    pub fn series(&self, component: &str, metric: &str, tags: &[(&str, &str)]) -> SeriesHandle {
        let key = SeriesKey {
            parts: &[component, metric],
            labels: tags,
        };
        SeriesHandle {
            shared: Arc::clone(&self.shared),
            id: self.shared.series_id(&key),
        }
    }

    /// Judges every sample of `component` / `metric` (each tag set its own series) against
    /// a baseline learned from the series, on the writer thread: a raised or cleared alarm
    /// is written to the `anomalies` table, the baseline to `baselines` after each batch.
    /// A baseline written by an earlier process with the same `config` is taken up again
    /// (a changed config starts a fresh one).
    ///
    /// # Errors
    /// [`GuardrailError::Config`] for an invalid `config`.
    pub fn watch(&self, component: &str, metric: &str, config: DetectorConfig) -> Result<()> {
        config.validate()?;
        let mut watches = self.shared.watches.lock();
        watches
            .1
            .retain(|w| w.component != component || w.metric != metric);
        watches.1.push(Arc::new(Watch {
            component: component.to_string(),
            metric: metric.to_string(),
            config,
        }));
        watches.0 += 1;
        Ok(())
    }

    /// Records every guard decision as a sample (the mapping of
    /// [`MetricsHistory::subscribe`](super::MetricsHistory::subscribe)).
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let this = Arc::downgrade(self);
        events::subscribe(move |e| {
            if let Some(h) = this.upgrade() {
                let (component, metric, value) = event_sample(e);
                h.record_metric(component, metric, value, &[("name", e.name)]);
            }
        })
    }

    /// Waits until every sample recorded before the call is written.
    ///
    /// # Errors
    /// The first error of a write since the last flush (those samples are lost), or
    /// [`GuardrailError::Store`] when the writer thread is gone.
    pub fn flush(&self) -> Result<()> {
        let mut q = self.shared.queue.lock();
        q.flush_requested += 1;
        let target = q.flush_requested;
        self.shared.work.notify_one();
        while q.flush_done < target && !q.writer_gone {
            self.shared.done.wait(&mut q);
        }
        if let Some(e) = q.error.take() {
            return Err(e);
        }
        if q.flush_done < target {
            return Err(self.shared.writer_gone());
        }
        Ok(())
    }

    /// Writes what is queued, then downsamples and applies retention now (the writer also
    /// does every `maintenance_interval`).
    ///
    /// # Errors
    /// As [`SqliteHistory::flush`].
    pub fn maintain(&self) -> Result<Maintenance> {
        self.shared.queue.lock().maintain_requested = true;
        self.flush()?;
        Ok(self.shared.queue.lock().maintenance)
    }

    /// The counts so far.
    pub fn stats(&self) -> HistoryStats {
        let s = &self.shared;
        let q = s.queue.lock();
        HistoryStats {
            recorded: q.recorded,
            written: s.written.load(Ordering::Relaxed),
            dropped: q.dropped,
            dropped_series: s.dropped_series.load(Ordering::Relaxed),
            write_errors: s.write_errors.load(Ordering::Relaxed),
            pending: q.pending.len() as u64,
        }
    }

    /// The written points of `component` / `metric` from the last `since` (call
    /// [`flush`](Self::flush) first to include what is queued); see
    /// [`HistoryReader::query`].
    ///
    /// # Errors
    /// [`GuardrailError::Store`] when the file cannot be read.
    pub fn query(&self, component: &str, metric: &str, since: Duration) -> Result<Vec<Point>> {
        self.reader.query(component, metric, since)
    }

    /// The reader of this history's file.
    pub fn reader(&self) -> &HistoryReader {
        &self.reader
    }
}

impl Drop for SqliteHistory {
    fn drop(&mut self) {
        self.shared.queue.lock().stop = true;
        self.shared.work.notify_one();
        if let Some(h) = self.writer.take()
            && h.join().is_err()
        {
            tracing::error!(path = %self.shared.path.display(), "the history writer panicked");
        }
    }
}

impl Shared {
    #[inline]
    fn series_id(&self, key: &SeriesKey<'_>) -> Option<u32> {
        let hash = self.series.hash(key);
        self.series
            .with(hash, key, |id| *id)
            .or_else(|| self.new_series(hash, key))
    }

    #[cold]
    fn new_series(&self, hash: u64, key: &SeriesKey<'_>) -> Option<u32> {
        // The cap is checked under the table's write lock, so racing threads cannot pass it.
        self.series.insert_with(
            hash,
            key,
            || {
                let mut defs = self.defs.lock();
                if defs.len() >= self.config.max_series {
                    tracing::warn!(path = %self.path.display(), max_series = self.config.max_series, component = key.parts[0], "metrics history: series cap reached, new series are dropped");
                    return None;
                }
                let id = u32::try_from(defs.len()).ok()?;
                let mut tags: Vec<(&str, &str)> = key.labels.to_vec();
                tags.sort_unstable();
                defs.push(Arc::new(SeriesDef {
                    component: key.parts[0].to_string(),
                    metric: key.parts.get(1).copied().unwrap_or_default().to_string(),
                    tags: serde_json::to_string(&tags).unwrap_or_else(|_| "[]".into()),
                }));
                Some(id)
            },
            |id| *id,
        )
    }

    #[inline]
    fn push(&self, series: u32, value: f64) {
        let at_ms = match &self.recent {
            Some(recent) => recent.now_ms(),
            None => unix_ms(self.clock.system_time()),
        };
        let mut q = self.queue.lock();
        if q.pending.len() >= self.config.max_pending {
            q.dropped += 1;
            return;
        }
        q.pending.push(Pending {
            series,
            at_ms,
            value,
        });
        q.recorded += 1;
        let wake = q.pending.len() == self.config.batch_size;
        drop(q);
        if wake {
            self.work.notify_one();
        }
    }

    fn writer_gone(&self) -> GuardrailError {
        store_error(
            &self.path,
            "flush",
            "the history's writer thread is gone",
            ErrorClass::Fatal,
            None,
        )
    }
}

/// Per in-memory series id, what the writer knows of it.
struct WriterSeries {
    def: Arc<SeriesDef>,
    db_id: Option<i64>,
    /// The watch generation this entry's `baseline` was decided at.
    watch_gen: u64,
    baseline: Option<Baseline>,
    touched: bool,
}

struct Writer {
    shared: Arc<Shared>,
    conn: Connection,
    series: Vec<WriterSeries>,
    last_maintenance: Instant,
}

impl Writer {
    fn new(shared: Arc<Shared>, conn: Connection) -> Self {
        Self {
            shared,
            conn,
            series: Vec::new(),
            last_maintenance: Instant::now(),
        }
    }

    fn run(&mut self) {
        let interval = self.shared.config.flush_interval;
        let mut batch = Vec::with_capacity(self.shared.config.batch_size);
        loop {
            let (target, maintain, stop) = {
                let mut q = self.shared.queue.lock();
                let deadline = Instant::now() + interval;
                while !q.stop
                    && q.flush_requested == q.flush_done
                    && q.pending.len() < self.shared.config.batch_size
                {
                    if self.shared.work.wait_until(&mut q, deadline).timed_out() {
                        break;
                    }
                }
                std::mem::swap(&mut q.pending, &mut batch);
                let maintain = std::mem::take(&mut q.maintain_requested);
                (q.flush_requested, maintain, q.stop)
            };
            let written = self.write(&batch);
            batch.clear();
            let mut report = None;
            if maintain
                || self.last_maintenance.elapsed() >= self.shared.config.maintenance_interval
            {
                self.last_maintenance = Instant::now();
                report = Some(self.maintain());
            }
            let mut q = self.shared.queue.lock();
            let failed = match report {
                Some(Ok(m)) => {
                    q.maintenance = m;
                    written.err()
                }
                Some(Err(e)) => written.err().or(Some(e)),
                None => written.err(),
            };
            if q.error.is_none() {
                q.error = failed;
            }
            q.flush_done = target;
            let finished = stop && q.pending.is_empty();
            if finished {
                q.writer_gone = true;
            }
            drop(q);
            self.shared.done.notify_all();
            if finished {
                self.checkpoint();
                return;
            }
        }
    }

    /// Writes `batch` (and the series and baselines it touches) in one transaction.
    fn write(&mut self, batch: &[Pending]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let result = self.write_batch(batch);
        match &result {
            Ok(()) => {
                self.shared
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %self.shared.path.display(), samples = batch.len(), error = %e, "metrics history: a batch could not be written and is lost");
                // A later batch must not assume the rolled-back series rows exist.
                for s in &mut self.series {
                    s.db_id = None;
                    s.touched = false;
                }
            }
        }
        result
    }

    fn write_batch(&mut self, batch: &[Pending]) -> Result<()> {
        let watches = {
            let w = self.shared.watches.lock();
            (w.0, w.1.clone())
        };
        {
            // Only the series made since the last batch are copied (series ids only grow).
            let defs = self.shared.defs.lock();
            for def in &defs[self.series.len().min(defs.len())..] {
                self.series.push(WriterSeries {
                    def: Arc::clone(def),
                    db_id: None,
                    watch_gen: 0,
                    baseline: None,
                    touched: false,
                });
            }
        }
        let now_ms = unix_ms(self.shared.clock.system_time());
        let path = self.shared.path.clone();
        let err = |op: &'static str| {
            let path = path.clone();
            move |e| sql_error_of(WHAT, &path, op, e)
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err("begin a batch"))?;
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO series (component, metric, tags) VALUES (?1, ?2, ?3)
                     ON CONFLICT (component, metric, tags) DO UPDATE SET component = excluded.component
                     RETURNING id",
                )
                .map_err(err("prepare the series upsert"))?;
            let mut insert = tx
                .prepare_cached("INSERT INTO samples (series, at_ms, value) VALUES (?1, ?2, ?3)")
                .map_err(err("prepare the sample insert"))?;
            let mut load = tx
                .prepare_cached("SELECT baseline FROM baselines WHERE series = ?1")
                .map_err(err("prepare the baseline read"))?;
            let mut alarm = tx
                .prepare_cached(
                    "INSERT INTO anomalies (series, at_ms, value, z, threshold, state)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(err("prepare the anomaly insert"))?;
            for p in batch {
                let Some(ws) = self.series.get_mut(p.series as usize) else {
                    continue;
                };
                let db_id = match ws.db_id {
                    Some(id) => id,
                    None => {
                        let id: i64 = upsert
                            .query_row(params![ws.def.component, ws.def.metric, ws.def.tags], |r| {
                                r.get(0)
                            })
                            .map_err(err("record a series"))?;
                        ws.db_id = Some(id);
                        ws.watch_gen = u64::MAX;
                        id
                    }
                };
                insert
                    .execute(params![db_id, p.at_ms, p.value])
                    .map_err(err("write samples"))?;
                if ws.watch_gen != watches.0 {
                    ws.watch_gen = watches.0;
                    ws.baseline = match watches
                        .1
                        .iter()
                        .find(|w| w.component == ws.def.component && w.metric == ws.def.metric)
                    {
                        None => None,
                        Some(w) => {
                            let stored: Option<String> = load
                                .query_row(params![db_id], |r| r.get(0))
                                .optional()
                                .map_err(err("read a baseline"))?;
                            resume_baseline(stored.as_deref(), &w.config)
                        }
                    };
                }
                if let Some(b) = ws.baseline.as_mut() {
                    let j = b.observe(p.value);
                    ws.touched = true;
                    if j.changed && j.state != AnomalyState::WarmingUp {
                        alarm
                            .execute(params![
                                db_id,
                                p.at_ms,
                                p.value,
                                j.z,
                                j.threshold,
                                state_name(j.state)
                            ])
                            .map_err(err("write an anomaly"))?;
                    }
                }
            }
            let mut save = tx
                .prepare_cached(
                    "INSERT INTO baselines (series, baseline, state, updated_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (series) DO UPDATE SET baseline = excluded.baseline,
                        state = excluded.state, updated_ms = excluded.updated_ms",
                )
                .map_err(err("prepare the baseline write"))?;
            for ws in self.series.iter_mut().filter(|s| s.touched) {
                ws.touched = false;
                if let (Some(id), Some(b)) = (ws.db_id, ws.baseline.as_ref()) {
                    let json = serde_json::to_string(b).map_err(|e| {
                        store_error(
                            &path,
                            "write a baseline",
                            &e.to_string(),
                            ErrorClass::Fatal,
                            None,
                        )
                    })?;
                    save.execute(params![id, json, state_name(b.state()), now_ms])
                        .map_err(err("write a baseline"))?;
                }
            }
        }
        tx.commit().map_err(err("commit a batch"))
    }

    /// Downsampling, then retention by age, then by size.
    fn maintain(&mut self) -> Result<Maintenance> {
        let now_ms = unix_ms(self.shared.clock.system_time());
        let cfg = &self.shared.config;
        let to_ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        // Whole minutes only, so a minute's rollup is made once from all its samples.
        let fold_before =
            now_ms.saturating_sub(to_ms(cfg.downsample_after)) / ROLLUP_MS * ROLLUP_MS;
        let expire_before = now_ms.saturating_sub(to_ms(cfg.max_age));
        let max_bytes = cfg.max_bytes;
        let mut m = Maintenance::default();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql(&self.shared.path, "begin maintenance"))?;
        tx.execute(
            "INSERT INTO rollups (series, at_ms, count, sum, min, max)
             SELECT series, (at_ms / ?2) * ?2, count(*), sum(value), min(value), max(value)
             FROM samples WHERE at_ms < ?1 GROUP BY 1, 2
             ON CONFLICT (series, at_ms) DO UPDATE SET count = count + excluded.count,
                sum = sum + excluded.sum, min = min(min, excluded.min), max = max(max, excluded.max)",
            params![fold_before, ROLLUP_MS],
        )
        .map_err(sql(&self.shared.path, "downsample"))?;
        m.downsampled = tx
            .execute("DELETE FROM samples WHERE at_ms < ?1", params![fold_before])
            .map_err(sql(&self.shared.path, "downsample"))? as u64;
        for table in ["samples", "rollups", "anomalies"] {
            m.expired +=
                tx.execute(
                    &format!("DELETE FROM {table} WHERE at_ms < ?1"),
                    params![expire_before],
                )
                .map_err(sql(&self.shared.path, "expire old data"))? as u64;
        }
        tx.commit()
            .map_err(sql(&self.shared.path, "commit maintenance"))?;
        // Past the size bound: drop the oldest tenth of what is kept until the live pages
        // fit (bounded: each round halves nothing away only when nothing is left).
        for _ in 0..32 {
            if self.used_bytes()? <= max_bytes {
                break;
            }
            let oldest: Option<i64> = self
                .conn
                .query_row(
                    "SELECT min(t) FROM (SELECT min(at_ms) AS t FROM samples
                     UNION ALL SELECT min(at_ms) FROM rollups)",
                    [],
                    |r| r.get(0),
                )
                .map_err(sql(&self.shared.path, "find the oldest data"))?;
            let Some(oldest) = oldest else { break };
            let cut = oldest + ((now_ms - oldest) / 10).max(1);
            for table in ["samples", "rollups", "anomalies"] {
                m.evicted += self
                    .conn
                    .execute(
                        &format!("DELETE FROM {table} WHERE at_ms < ?1"),
                        params![cut],
                    )
                    .map_err(sql(&self.shared.path, "evict old data"))?
                    as u64;
            }
        }
        // Each step of the pragma gives back pages: it runs to its end.
        self.conn
            .prepare("PRAGMA incremental_vacuum")
            .and_then(|mut stmt| {
                let mut rows = stmt.query([])?;
                while rows.next()?.is_some() {}
                Ok(())
            })
            .map_err(sql(&self.shared.path, "return freed pages"))?;
        self.checkpoint();
        m.bytes = file_bytes(&self.shared.path);
        Ok(m)
    }

    /// Pages in use (the file minus its free list).
    fn used_bytes(&self) -> Result<u64> {
        let pragma = |name: &str| -> Result<i64> {
            self.conn
                .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
                .map_err(|e| sql_error_of(WHAT, &self.shared.path, "measure the file", e))
        };
        let used = (pragma("page_count")? - pragma("freelist_count")?) * pragma("page_size")?;
        Ok(u64::try_from(used).unwrap_or(0))
    }

    /// Folds the write-ahead log back into the file so the log does not grow past a batch.
    fn checkpoint(&self) {
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::debug!(path = %self.shared.path.display(), error = %e, "metrics history: checkpoint skipped");
        }
    }
}

/// A baseline an earlier process stored, when it was learned with the same config.
fn resume_baseline(stored: Option<&str>, config: &DetectorConfig) -> Option<Baseline> {
    if let Some(json) = stored {
        match serde_json::from_str::<Baseline>(json) {
            Ok(b) if b.config() == config => return Some(b),
            Ok(_) => tracing::info!(
                "metrics history: the detector config changed, the baseline starts afresh"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "metrics history: a stored baseline is unreadable and starts afresh")
            }
        }
    }
    Baseline::new(config.clone()).ok()
}

fn state_name(s: AnomalyState) -> &'static str {
    match s {
        AnomalyState::WarmingUp => "warming_up",
        AnomalyState::Normal => "normal",
        AnomalyState::Anomalous => "anomalous",
    }
}

fn file_bytes(path: &Path) -> u64 {
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    len(path) + len(Path::new(&wal))
}

/// One point of a series: a raw sample (`count` 1) or a one-minute rollup (`value` the
/// mean of its `count` samples).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// The series' tags, sorted by name.
    pub tags: Vec<(String, String)>,
    /// Milliseconds since the Unix epoch (a rollup: the start of its minute).
    pub at_ms: i64,
    /// The sample, or the rollup's mean.
    pub value: f64,
    /// The smallest sample it covers.
    pub min: f64,
    /// The largest sample it covers.
    pub max: f64,
    /// The samples it covers.
    pub count: u64,
    /// `"raw"` or `"1m"`.
    pub resolution: &'static str,
}

impl Point {
    /// When, as a wall-clock time.
    pub fn at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(self.at_ms).unwrap_or(0))
    }
}

/// A raised or cleared alarm the history's detectors wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnomalyRecord {
    /// The series' component.
    pub component: String,
    /// The series' metric.
    pub metric: String,
    /// The series' tags, sorted by name.
    pub tags: Vec<(String, String)>,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The sample that raised or cleared it.
    pub value: f64,
    /// Its z-score (z-score judge).
    pub z: Option<f64>,
    /// The threshold it was compared with (percentile judge).
    pub threshold: Option<f64>,
    /// `"anomalous"` (raised) or `"normal"` (cleared).
    pub state: String,
}

/// Where a watched series' baseline stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineRecord {
    /// The series' component.
    pub component: String,
    /// The series' metric.
    pub metric: String,
    /// The series' tags, sorted by name.
    pub tags: Vec<(String, String)>,
    /// `"warming_up"`, `"normal"` or `"anomalous"`.
    pub state: String,
    /// Samples learned.
    pub count: u64,
    /// The learned mean.
    pub mean: f64,
    /// The learned standard deviation.
    pub stddev: f64,
    /// When it was last written (ms since the Unix epoch).
    pub updated_ms: i64,
}

/// Reads a history file, also while another process writes it (`guardrails history`).
pub struct HistoryReader {
    conn: Mutex<Connection>,
    path: PathBuf,
    clock: SharedClock,
}

impl std::fmt::Debug for HistoryReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryReader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The rows one query reads at most: a range query over a year of raw samples cannot take
/// the process's memory.
pub const MAX_QUERY_POINTS: usize = 1_000_000;

impl HistoryReader {
    /// Opens an existing history to read; nothing is created.
    ///
    /// # Errors
    /// [`GuardrailError::Store`] when there is no history at `path` or it cannot be read.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::connect(path.as_ref(), Arc::new(SystemClock))
    }

    /// Ranges measured back from `clock`'s now.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    fn connect(path: &Path, clock: SharedClock) -> Result<Self> {
        let conn = sqlite::open(path, &SCHEMA, Access::ReadOnly, Duration::from_secs(10))?;
        Ok(Self {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            clock,
        })
    }

    fn since_ms(&self, since: Duration) -> i64 {
        unix_ms(self.clock.system_time())
            .saturating_sub(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
    }

    /// The points of `component` / `metric` (every tag set) from the last `since`, oldest
    /// first: rollups where the raw samples were folded, raw samples after. At most
    /// [`MAX_QUERY_POINTS`].
    ///
    /// # Errors
    /// [`GuardrailError::Store`] when the file cannot be read.
    pub fn query(&self, component: &str, metric: &str, since: Duration) -> Result<Vec<Point>> {
        let from = self.since_ms(since);
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(
                // Each half starts from the series of component/metric and walks their
                // (series, at_ms) index: a range over one metric never reads the others'.
                "SELECT s.tags, r.at_ms, r.sum / r.count, r.min, r.max, r.count, 0, s.id
                 FROM series s JOIN rollups r ON r.series = s.id
                 WHERE s.component = ?1 AND s.metric = ?2 AND r.at_ms >= ?3
                 UNION ALL
                 SELECT s.tags, p.at_ms, p.value, p.value, p.value, 1, 1, s.id
                 FROM series s JOIN samples p ON p.series = s.id
                 WHERE s.component = ?1 AND s.metric = ?2 AND p.at_ms >= ?3
                 ORDER BY 2, 7, 8 LIMIT ?4",
            )
            .map_err(sql(&self.path, "query"))?;
        let rows = stmt
            .query_map(
                params![component, metric, from, MAX_QUERY_POINTS as i64],
                |r| {
                    Ok(Point {
                        tags: parse_tags(&r.get::<_, String>(0)?),
                        at_ms: r.get(1)?,
                        value: r.get(2)?,
                        min: r.get(3)?,
                        max: r.get(4)?,
                        count: u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
                        resolution: if r.get::<_, i64>(6)? == 1 {
                            "raw"
                        } else {
                            "1m"
                        },
                    })
                },
            )
            .map_err(sql(&self.path, "query"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sql(&self.path, "query"))
    }

    /// The alarms raised and cleared in the last `since`, oldest first (at most
    /// [`MAX_QUERY_POINTS`]).
    ///
    /// # Errors
    /// [`GuardrailError::Store`] when the file cannot be read.
    pub fn anomalies(&self, since: Duration) -> Result<Vec<AnomalyRecord>> {
        let from = self.since_ms(since);
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT s.component, s.metric, s.tags, a.at_ms, a.value, a.z, a.threshold, a.state
                 FROM anomalies a JOIN series s ON s.id = a.series
                 WHERE a.at_ms >= ?1 ORDER BY a.at_ms, a.id LIMIT ?2",
            )
            .map_err(sql(&self.path, "read anomalies"))?;
        let rows = stmt
            .query_map(params![from, MAX_QUERY_POINTS as i64], |r| {
                Ok(AnomalyRecord {
                    component: r.get(0)?,
                    metric: r.get(1)?,
                    tags: parse_tags(&r.get::<_, String>(2)?),
                    at_ms: r.get(3)?,
                    value: r.get(4)?,
                    z: r.get(5)?,
                    threshold: r.get(6)?,
                    state: r.get(7)?,
                })
            })
            .map_err(sql(&self.path, "read anomalies"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sql(&self.path, "read anomalies"))
    }

    /// Every watched series' baseline as last written.
    ///
    /// # Errors
    /// [`GuardrailError::Store`] when the file cannot be read.
    pub fn baselines(&self) -> Result<Vec<BaselineRecord>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT s.component, s.metric, s.tags, b.baseline, b.state, b.updated_ms
                 FROM baselines b JOIN series s ON s.id = b.series
                 ORDER BY s.component, s.metric, s.tags LIMIT ?1",
            )
            .map_err(sql(&self.path, "read baselines"))?;
        let rows = stmt
            .query_map(params![MAX_QUERY_POINTS as i64], |r| {
                let baseline: Option<Baseline> = serde_json::from_str(&r.get::<_, String>(3)?).ok();
                Ok(BaselineRecord {
                    component: r.get(0)?,
                    metric: r.get(1)?,
                    tags: parse_tags(&r.get::<_, String>(2)?),
                    state: r.get(4)?,
                    count: baseline.as_ref().map_or(0, Baseline::count),
                    mean: baseline.as_ref().map_or(f64::NAN, Baseline::mean),
                    stddev: baseline.as_ref().map_or(f64::NAN, Baseline::stddev),
                    updated_ms: r.get(5)?,
                })
            })
            .map_err(sql(&self.path, "read baselines"))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sql(&self.path, "read baselines"))
    }
}

fn sql<'a>(
    path: &'a Path,
    operation: &'static str,
) -> impl Fn(rusqlite::Error) -> GuardrailError + 'a {
    move |e| sql_error_of(WHAT, path, operation, e)
}

fn parse_tags(json: &str) -> Vec<(String, String)> {
    serde_json::from_str(json).unwrap_or_default()
}
