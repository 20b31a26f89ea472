//! The one way the crate opens its SQLite files (run registry, state store, metrics
//! history) and classifies SQLite's errors.
//!
//! Every database the crate writes carries its own `application_id`, so one kind of file
//! handed where another is expected (a history path given as the registry) is refused
//! instead of having tables added to it; a `user_version` newer than this build knows is
//! refused instead of misread; a truncated file is found by a page check before use.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::error::{ErrorClass, GuardrailError, Result};

/// What a database is and how to create it.
pub(crate) struct Schema {
    /// Its name in errors and logs (`"registry"`, `"state store"`, `"metrics history"`).
    pub what: &'static str,
    /// The `PRAGMA application_id` that marks the file as this kind.
    pub application_id: i64,
    /// The `PRAGMA user_version` this build writes and reads.
    pub version: i64,
    /// Pragmas a fresh file needs before anything is written to it (`auto_vacuum` takes
    /// effect only there: before the journal mode and outside a transaction).
    pub fresh: &'static str,
    /// The statements that create a fresh database.
    pub create: &'static str,
    /// `PRAGMA synchronous`: `FULL` where a commit must be on disk when it returns,
    /// `NORMAL` where losing the last transactions in a power cut is acceptable.
    pub synchronous: &'static str,
}

/// Whether the opener may create and migrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Create the file (and its directory) if absent, create or migrate its tables.
    ReadWrite,
    /// Open an existing file to read (the CLI's reports): nothing is created.
    ReadOnly,
}

/// Opens `path` as `schema`; see the [module docs](self).
pub(crate) fn open(
    path: &Path,
    schema: &Schema,
    access: Access,
    busy_timeout: Duration,
) -> Result<Connection> {
    let what = schema.what;
    let refuse = |reason: String| store_error(path, "open", &reason, ErrorClass::Fatal, None);
    let flags = match access {
        Access::ReadWrite => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    let e = GuardrailError::io(dir, e);
                    store_error(
                        path,
                        &format!("create the {what}'s directory"),
                        &e.to_string(),
                        e.class(),
                        Some(Box::new(e)),
                    )
                })?;
            }
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
        }
        Access::ReadOnly => {
            if !path.is_file() {
                return Err(refuse(format!("no {what} file at this path")));
            }
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
        }
    };
    let err = |operation: &'static str| move |e| sql_error_of(what, path, operation, e);
    let mut conn = Connection::open_with_flags(path, flags).map_err(err("open"))?;
    conn.busy_timeout(busy_timeout)
        .map_err(err("set the busy timeout"))?;
    // Reading the header is the first thing that touches the file: junk fails here.
    let app_id: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(err("read the header"))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err("read the header"))?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(err("read the schema"))?;
    if app_id != schema.application_id && !(app_id == 0 && tables == 0) {
        return Err(refuse(format!(
            "the file is an SQLite database of another program, not a {what}"
        )));
    }
    if version > schema.version {
        return Err(refuse(format!(
            "the {what} has schema version {version}, newer than the {} this build reads; use a newer guardrails",
            schema.version
        )));
    }
    // A truncated file keeps a readable header: only a page check finds the rest gone.
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(err("check the pages"))?;
    if check != "ok" {
        return Err(refuse(format!("the {what} file is damaged: {check}")));
    }
    if access == Access::ReadOnly {
        if tables == 0 {
            return Err(refuse(format!("the file holds no {what}")));
        }
        return Ok(conn);
    }
    if tables == 0 && !schema.fresh.is_empty() {
        conn.execute_batch(schema.fresh)
            .map_err(err("set the pragmas of a fresh file"))?;
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(err("switch to WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), what, mode, "the filesystem does not allow WAL; commits still are durable, readers wait for writers");
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous={}; PRAGMA foreign_keys=ON;",
        schema.synchronous
    ))
    .map_err(err("set the pragmas"))?;
    if version < schema.version {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err("create the tables"))?;
        // Re-read inside the write lock: another process may have created them meanwhile.
        let current: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err("create the tables"))?;
        if current == 0 {
            tx.execute_batch(schema.create)
                .map_err(err("create the tables"))?;
        }
        tx.execute_batch(&format!(
            "PRAGMA application_id={}; PRAGMA user_version={};",
            schema.application_id, schema.version
        ))
        .map_err(err("create the tables"))?;
        tx.commit().map_err(err("create the tables"))?;
        tracing::info!(path = %path.display(), what, from = version, to = schema.version, "schema created or migrated");
    }
    Ok(conn)
}

/// A store error on `path`.
pub(crate) fn store_error(
    path: &Path,
    operation: &str,
    reason: &str,
    class: ErrorClass,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
) -> GuardrailError {
    GuardrailError::Store {
        store: path.display().to_string(),
        operation: operation.to_string(),
        reason: reason.to_string(),
        class,
        source,
    }
}

/// An SQLite error of the database `what` (`"registry"`, `"state store"`), classified:
/// busy past the timeout is retryable, a full disk recoverable, anything else (damage,
/// not a database, permissions) fatal.
pub(crate) fn sql_error_of(
    what: &str,
    path: &Path,
    operation: &str,
    e: rusqlite::Error,
) -> GuardrailError {
    use rusqlite::ErrorCode as C;
    let (class, reason) = match e.sqlite_error_code() {
        Some(C::DatabaseBusy | C::DatabaseLocked) => (
            ErrorClass::Retryable,
            format!("another process held the {what} past the busy timeout"),
        ),
        Some(C::DiskFull) => (
            ErrorClass::Recoverable,
            format!("the disk holding the {what} is full"),
        ),
        Some(C::NotADatabase) => (
            ErrorClass::Fatal,
            format!("the file is not an SQLite database (overwritten or not a {what})"),
        ),
        Some(C::DatabaseCorrupt) => (
            ErrorClass::Fatal,
            format!("the {what} file is damaged (truncated or overwritten)"),
        ),
        _ => (ErrorClass::Fatal, e.to_string()),
    };
    store_error(path, operation, &reason, class, Some(Box::new(e)))
}
