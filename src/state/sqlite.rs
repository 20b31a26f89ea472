//! The embedded store: one SQLite file shared by the processes of one machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    Claim, ClaimRequest, Fence, Record, RecordState, StateStore, check_fence, check_key, decide,
    finish_operation, ms, now_ms,
};
use crate::clock::{Clock, SystemClock};
use crate::error::{GuardrailError, Result};
use crate::sqlite::{self, Access, Schema, sql_error_of};

const WHAT: &str = "state store";
const APPLICATION_ID: i64 = 0x4752_5354; // "GRST"
const DB: Schema = Schema {
    what: WHAT,
    application_id: APPLICATION_ID,
    version: 1,
    fresh: "",
    create: SCHEMA,
    synchronous: "FULL",
};
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY,
    fence INTEGER NOT NULL,
    owner TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    lease_until_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS claims_expiry ON claims (expires_ms);
CREATE TABLE IF NOT EXISTS fences (id INTEGER PRIMARY KEY CHECK (id = 1), last INTEGER NOT NULL);
INSERT OR IGNORE INTO fences (id, last) VALUES (1, 0);
";

/// Guard state in one SQLite file (WAL, `synchronous=FULL`): shared by the processes of one
/// machine, it survives their crashes and restarts. Claims are decided inside an immediate
/// transaction, so two processes never both acquire a key; fences come from one counter in
/// the file, so they grow across every key, even past a record's expiry. Time is the
/// machine's clock (injectable), which every process on it shares.
///
/// ```
/// use std::sync::Arc;
/// use guardrails::state::{Idempotency, Outcome, SqliteStore};
///
/// let dir = tempfile::tempdir()?;
/// let store = Arc::new(SqliteStore::open(dir.path().join("state.db"))?);
/// let effects = Idempotency::new(store);
/// let key = effects.key("email", "user-9");
/// assert_eq!(effects.run(&key, "welcome", |_| Ok("sent".to_string()))?, Outcome::Executed("sent".into()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
    clock: Arc<dyn Clock>,
}

impl SqliteStore {
    /// Opens (creating) the store at `path`; a file of another program is refused.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let conn = sqlite::open(&path, &DB, Access::ReadWrite, Duration::from_secs(10))?;
        Ok(Self {
            conn: Mutex::new(conn),
            path,
            clock: Arc::new(SystemClock),
        })
    }

    /// Leases and expiries on `clock` (a `ManualClock` in tests).
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn now_ms(&self) -> i64 {
        now_ms(self.clock.as_ref())
    }

    fn err(&self, operation: &str) -> impl FnOnce(rusqlite::Error) -> GuardrailError + '_ {
        let operation = operation.to_string();
        move |e| sql_error_of(WHAT, &self.path, &operation, e)
    }

    /// Runs `f` in an immediate (write-locked) transaction.
    fn write<T>(
        &self,
        operation: &str,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.conn.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.err(operation))?;
        let out = f(&tx)?;
        tx.commit().map_err(self.err(operation))?;
        Ok(out)
    }

    fn finish(
        &self,
        key: &str,
        fence: Fence,
        state: RecordState,
        payload: &[u8],
        ttl: Duration,
    ) -> Result<()> {
        check_key(key)?;
        let now = self.now_ms();
        let operation = finish_operation(state);
        self.write(operation, |tx| {
            let record = read(tx, key, now).map_err(self.err(operation))?;
            check_fence(
                &self.path.display().to_string(),
                key,
                record.as_ref(),
                fence,
                operation,
            )?;
            tx.execute(
                "UPDATE claims SET state = ?1, payload = ?2, expires_ms = ?3 WHERE key = ?4 AND fence = ?5",
                params![state.as_str(), payload, now.saturating_add(ms(ttl)), key, fence.0 as i64],
            )
            .map_err(self.err(operation))?;
            Ok(())
        })
    }
}

/// The live record of `key` (one past its expiry counts as absent).
fn read(tx: &rusqlite::Transaction<'_>, key: &str, now: i64) -> rusqlite::Result<Option<Record>> {
    tx.query_row(
        "SELECT fence, owner, fingerprint, state, lease_until_ms, expires_ms, payload
         FROM claims WHERE key = ?1 AND expires_ms > ?2",
        params![key, now],
        |r| {
            let state: String = r.get(3)?;
            Ok(Record {
                fence: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                owner: r.get(1)?,
                fingerprint: r.get(2)?,
                // An unknown state (a newer build's) is taken as in progress: never served.
                state: RecordState::parse(&state).unwrap_or(RecordState::InProgress),
                lease_until_ms: r.get(4)?,
                expires_ms: r.get(5)?,
                payload: r.get(6)?,
            })
        },
    )
    .optional()
}

impl StateStore for SqliteStore {
    fn claim(&self, request: &ClaimRequest<'_>) -> Result<Claim> {
        check_key(request.key)?;
        let now = self.now_ms();
        self.write("claim", |tx| {
            let existing = read(tx, request.key, now).map_err(self.err("claim"))?;
            let (write, claim) = decide(existing.as_ref(), request, now, || {
                tx.query_row(
                    "UPDATE fences SET last = last + 1 WHERE id = 1 RETURNING last",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map(|f| u64::try_from(f).unwrap_or(0))
                .map_err(self.err("draw a fence"))
            })?;
            if let Some(r) = write {
                tx.execute(
                    "INSERT OR REPLACE INTO claims
                     (key, fence, owner, fingerprint, state, lease_until_ms, expires_ms, payload)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        request.key,
                        r.fence as i64,
                        r.owner,
                        r.fingerprint,
                        r.state.as_str(),
                        r.lease_until_ms,
                        r.expires_ms,
                        r.payload
                    ],
                )
                .map_err(self.err("claim"))?;
                // Expired records go a few at a time, so no claim pays for a big sweep.
                tx.execute(
                    "DELETE FROM claims WHERE rowid IN
                     (SELECT rowid FROM claims WHERE expires_ms <= ?1 LIMIT 16)",
                    params![now],
                )
                .map_err(self.err("drop expired claims"))?;
            }
            Ok(claim)
        })
    }

    fn renew(&self, key: &str, fence: Fence, lease: Duration) -> Result<bool> {
        let now = self.now_ms();
        self.write("renew", |tx| {
            let n = tx
                .execute(
                    "UPDATE claims SET lease_until_ms = ?1
                     WHERE key = ?2 AND fence = ?3 AND state = 'in_progress' AND expires_ms > ?4",
                    params![now.saturating_add(ms(lease)), key, fence.0 as i64, now],
                )
                .map_err(self.err("renew"))?;
            Ok(n == 1)
        })
    }

    fn complete(&self, key: &str, fence: Fence, result: &[u8], ttl: Duration) -> Result<()> {
        self.finish(key, fence, RecordState::Completed, result, ttl)
    }

    fn fail(&self, key: &str, fence: Fence, message: &str, ttl: Duration) -> Result<()> {
        self.finish(key, fence, RecordState::Failed, message.as_bytes(), ttl)
    }

    fn release(&self, key: &str, fence: Fence) -> Result<()> {
        self.write("release", |tx| {
            tx.execute(
                "DELETE FROM claims WHERE key = ?1 AND fence = ?2 AND state = 'in_progress'",
                params![key, fence.0 as i64],
            )
            .map_err(self.err("release"))?;
            Ok(())
        })
    }
}
