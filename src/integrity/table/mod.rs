//! Metadata tables: what a [`TableCheck`] asks of a table and the scan that answers it over
//! Arrow record batches, whatever the file format (Parquet, Arrow IPC, CSV).

mod csv;
mod ipc;
mod parquet;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Schema};

use super::{Format, Report, refs, spill};
use crate::error::Result;

pub(crate) use self::csv::{looks_like_csv, looks_like_text};
pub(crate) use self::ipc::is_legacy_stream;
pub(crate) use self::parquet::check_features as check_parquet_features;

/// A check over each record batch that the built-in checks do not cover. `Err(message)`
/// fails the table; the message names what was wrong.
pub type BatchCheckFn = dyn Fn(&RecordBatch) -> std::result::Result<(), String> + Send + Sync;

/// The values a column may hold.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AllowedValues {
    /// One of these, compared as the value's text (`"cat"`, `"3"`, `"true"`).
    OneOf(BTreeSet<String>),
    /// A number within `min..=max` (either bound may be open). NaN is outside every range.
    Range {
        /// Smallest allowed value.
        min: Option<f64>,
        /// Largest allowed value.
        max: Option<f64>,
    },
}

impl AllowedValues {
    /// A set of allowed values.
    pub fn one_of<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::OneOf(values.into_iter().map(Into::into).collect())
    }

    /// A closed numeric range.
    pub fn range(min: f64, max: f64) -> Self {
        Self::Range {
            min: Some(min),
            max: Some(max),
        }
    }
}

impl fmt::Display for AllowedValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OneOf(set) => {
                let items: Vec<&str> = set.iter().map(String::as_str).collect();
                write!(f, "one of [{}]", items.join(", "))
            }
            Self::Range { min, max } => {
                let lo = min.map_or("-inf".to_string(), |v| v.to_string());
                let hi = max.map_or("+inf".to_string(), |v| v.to_string());
                write!(f, "a number in [{lo}, {hi}]")
            }
        }
    }
}

/// What a metadata table must satisfy.
///
/// ```
/// use guardrails::integrity::{AllowedValues, TableCheck};
/// use arrow_schema::DataType;
///
/// let check = TableCheck::new()
///     .with_required_columns(["id", "path", "label"])
///     .with_column_type("id", DataType::Int64)
///     .with_min_rows(1000)
///     .with_not_null(["id", "path"])
///     .with_unique(["id"])
///     .with_allowed("label", AllowedValues::one_of(["cat", "dog"]))
///     .with_paths_exist("path");
/// assert_eq!(check.min_rows(), Some(1000));
/// ```
#[derive(Clone)]
pub struct TableCheck {
    required: Vec<String>,
    types: Vec<(String, DataType)>,
    min_rows: Option<u64>,
    max_rows: Option<u64>,
    allow_empty: bool,
    not_null: Vec<String>,
    unique: Vec<String>,
    allowed: Vec<(String, AllowedValues)>,
    paths_columns: Vec<String>,
    root: Option<PathBuf>,
    quick: bool,
    pub(crate) csv_final_newline: bool,
    batch_checks: Vec<(String, Arc<BatchCheckFn>)>,
    max_examples: usize,
    memory_limit: usize,
    pub(crate) format_hint: Option<crate::integrity::Format>,
}

/// What one `unique` column may hold in memory before it spills sorted runs to disk.
pub const DEFAULT_MEMORY_LIMIT: usize = 64 << 20;

/// The same as [`TableCheck::new`].
impl Default for TableCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for TableCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.batch_checks.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("TableCheck")
            .field("required", &self.required)
            .field("types", &self.types)
            .field("min_rows", &self.min_rows)
            .field("max_rows", &self.max_rows)
            .field("allow_empty", &self.allow_empty)
            .field("not_null", &self.not_null)
            .field("unique", &self.unique)
            .field("allowed", &self.allowed)
            .field("paths_columns", &self.paths_columns)
            .field("root", &self.root)
            .field("quick", &self.quick)
            .field("csv_final_newline", &self.csv_final_newline)
            .field("batch_checks", &names)
            .field("max_examples", &self.max_examples)
            .field("memory_limit", &self.memory_limit)
            .field("format_hint", &self.format_hint)
            .finish()
    }
}

impl TableCheck {
    /// No requirement beyond a readable, non-empty table.
    pub fn new() -> Self {
        Self {
            required: Vec::new(),
            types: Vec::new(),
            min_rows: None,
            max_rows: None,
            allow_empty: false,
            not_null: Vec::new(),
            unique: Vec::new(),
            allowed: Vec::new(),
            paths_columns: Vec::new(),
            root: None,
            quick: false,
            csv_final_newline: false,
            batch_checks: Vec::new(),
            max_examples: 10,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            format_hint: None,
        }
    }

    /// Columns that must be present.
    #[must_use]
    pub fn with_required_columns<I, S>(mut self, columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.required.extend(columns.into_iter().map(Into::into));
        self
    }

    /// A column that must be present with this type. Strings match whatever their layout
    /// (`Utf8`, `LargeUtf8`, `Utf8View`, dictionary-encoded), as do binaries.
    #[must_use]
    pub fn with_column_type(mut self, column: impl Into<String>, data_type: DataType) -> Self {
        self.types.push((column.into(), data_type));
        self
    }

    /// At least this many rows.
    #[must_use]
    pub fn with_min_rows(mut self, rows: u64) -> Self {
        self.min_rows = Some(rows);
        self
    }

    /// At most this many rows.
    #[must_use]
    pub fn with_max_rows(mut self, rows: u64) -> Self {
        self.max_rows = Some(rows);
        self
    }

    /// Whether a table with no rows passes (default: no).
    #[must_use]
    pub fn with_allow_empty(mut self, allow: bool) -> Self {
        self.allow_empty = allow;
        self
    }

    /// Columns that must hold no null.
    #[must_use]
    pub fn with_not_null<I, S>(mut self, columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.not_null.extend(columns.into_iter().map(Into::into));
        self
    }

    /// Columns whose values must all differ (nulls are not compared).
    #[must_use]
    pub fn with_unique<I, S>(mut self, columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.unique.extend(columns.into_iter().map(Into::into));
        self
    }

    /// The values a column may hold (nulls are left to [`with_not_null`](Self::with_not_null)).
    #[must_use]
    pub fn with_allowed(mut self, column: impl Into<String>, allowed: AllowedValues) -> Self {
        self.allowed.push((column.into(), allowed));
        self
    }

    /// A column of file paths that must exist (call again for more columns). Relative
    /// paths are resolved against [`with_root`](Self::with_root), by default the table's
    /// folder.
    #[must_use]
    pub fn with_paths_exist(mut self, column: impl Into<String>) -> Self {
        self.paths_columns.push(column.into());
        self
    }

    /// The folder relative paths are resolved against.
    #[must_use]
    pub fn with_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
        self
    }

    /// Trusts what the file says about itself where it can: Parquet footer statistics
    /// answer the row count and null checks without reading pages. Columns whose
    /// statistics are missing are scanned, and the report says so. Value checks (unique,
    /// allowed values, paths, batch checks) always read their columns.
    #[must_use]
    pub fn with_quick(mut self, quick: bool) -> Self {
        self.quick = quick;
        self
    }

    /// Whether a CSV whose last line has no line terminator fails (default: no, it is a
    /// warning). RFC 4180 allows the last record to end without one, and many writers
    /// omit it; but a cut at any byte but a line end leaves such a line, and it is the
    /// only sign of it, so turn this on where files come from a writer that always ends
    /// its lines.
    #[must_use]
    pub fn with_csv_final_newline(mut self, require: bool) -> Self {
        self.csv_final_newline = require;
        self
    }

    /// A named check run over every record batch.
    #[must_use]
    pub fn with_batch_check<F>(mut self, name: impl Into<String>, check: F) -> Self
    where
        F: Fn(&RecordBatch) -> std::result::Result<(), String> + Send + Sync + 'static,
    {
        self.batch_checks.push((name.into(), Arc::new(check)));
        self
    }

    /// How many offending rows or paths a finding lists (default 10).
    #[must_use]
    pub fn with_max_examples(mut self, n: usize) -> Self {
        self.max_examples = n;
        self
    }

    /// The most memory the `unique` check holds for one column (default
    /// [`DEFAULT_MEMORY_LIMIT`], 64 MiB). Each value costs 24 bytes whatever its size:
    /// integers are kept exactly, other values as a 128-bit XXH3 hash seeded at random per
    /// check (for `n` distinct values two collide with a chance below `n² / 2¹²⁹`, and a
    /// collision can only report a duplicate, never hide one). Past the limit the values are
    /// sorted and written to an anonymous temporary file and the runs are merged at the end,
    /// so memory stays bounded whatever the row count; the disk holds 24 bytes per value.
    /// Examples of repeated non-integer values name the earlier row they repeat.
    ///
    /// The same limit (but never less than 32 MiB) bounds decoding: a Parquet column one
    /// row of which decodes to more than this (a gigabyte string) is not decoded; its page headers are walked instead,
    /// and a check that needs its values reports the file as unsupported.
    #[must_use]
    pub fn with_memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// The format to read the file as when its content does not say: a CSV file of one
    /// column has no delimiter to detect, so it is read as CSV when this (or, without it,
    /// the file's extension) says CSV and its start is text. Magic bytes always win.
    #[must_use]
    pub fn with_format_hint(mut self, format: crate::integrity::Format) -> Self {
        self.format_hint = Some(format);
        self
    }

    /// The minimum row count, if any.
    pub fn min_rows(&self) -> Option<u64> {
        self.min_rows
    }

    /// Whether quick mode is on.
    pub fn is_quick(&self) -> bool {
        self.quick
    }

    /// Columns whose values some check must read; `None` means every column.
    pub(crate) fn value_columns(&self) -> Option<BTreeSet<String>> {
        if !self.batch_checks.is_empty() {
            return None;
        }
        let mut cols: BTreeSet<String> = self.unique.iter().cloned().collect();
        cols.extend(self.allowed.iter().map(|(c, _)| c.clone()));
        cols.extend(self.paths_columns.iter().cloned());
        Some(cols)
    }
}

/// Reads a table file and hands its batches to a [`TableScan`]. Format modules implement it.
pub(crate) struct TableSource<'a> {
    pub path: &'a Path,
    pub check: &'a TableCheck,
    pub keep_batches: bool,
}

/// Checks a table file; `keep` asks for the batches back.
pub(crate) fn check_table(
    path: &Path,
    format: Format,
    check: &TableCheck,
    keep: bool,
    report: &mut Report,
) -> Result<Option<Vec<RecordBatch>>> {
    let src = TableSource {
        path,
        check,
        keep_batches: keep,
    };
    let batches = match format {
        Format::Parquet => parquet::check(&src, report)?,
        Format::ArrowIpc => ipc::check_file(&src, report)?,
        Format::ArrowStream => ipc::check_stream(&src, report)?,
        Format::Csv => csv::check(&src, report)?,
        other => {
            report.error(
                "format",
                "not a table format this checker reads",
                Some("parquet, arrow ipc (file or stream) or csv".into()),
                Some(format!("{other:?}").to_lowercase()),
            );
            None
        }
    };
    Ok(batches)
}

/// Schema-level checks: required columns and their types.
pub(crate) fn check_schema(schema: &Schema, check: &TableCheck, report: &mut Report) {
    let columns: Vec<serde_json::Value> = schema
        .fields()
        .iter()
        .map(|f| {
            serde_json::json!({
                "name": f.name(),
                "type": f.data_type().to_string(),
                "nullable": f.is_nullable(),
            })
        })
        .collect();
    report.info("columns", columns);
    let missing: Vec<&str> = check
        .required
        .iter()
        .chain(check.types.iter().map(|(c, _)| c))
        .filter(|c| schema.field_with_name(c).is_err())
        .map(String::as_str)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !missing.is_empty() {
        let present: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        report.error(
            "required_columns",
            format!("missing column(s): {}", missing.join(", ")),
            Some(format!("columns {}", missing.join(", "))),
            Some(format!("columns {}", present.join(", "))),
        );
    }
    for (column, want) in &check.types {
        if let Ok(field) = schema.field_with_name(column)
            && !types_match(field.data_type(), want)
        {
            report.error(
                "column_type",
                format!("column {column} has type {}", field.data_type()),
                Some(want.to_string()),
                Some(field.data_type().to_string()),
            );
        }
    }
}

fn types_match(found: &DataType, want: &DataType) -> bool {
    fn logical(t: &DataType) -> &DataType {
        match t {
            DataType::Dictionary(_, value) => logical(value),
            DataType::LargeUtf8 | DataType::Utf8View => &DataType::Utf8,
            DataType::LargeBinary | DataType::BinaryView => &DataType::Binary,
            other => other,
        }
    }
    logical(found) == logical(want)
}

/// Row-count checks once the count is known.
pub(crate) fn check_rows(rows: u64, check: &TableCheck, report: &mut Report) {
    report.info("rows", rows);
    if rows == 0 && !check.allow_empty {
        report.error(
            "rows",
            "the table is empty",
            Some("at least 1 row".into()),
            Some("0 rows".into()),
        );
    }
    if let Some(min) = check.min_rows
        && rows < min
    {
        report.error(
            "min_rows",
            format!("{rows} rows, fewer than {min}"),
            Some(format!("at least {min} rows")),
            Some(format!("{rows} rows")),
        );
    }
    if let Some(max) = check.max_rows
        && rows > max
    {
        report.error(
            "max_rows",
            format!("{rows} rows, more than {max}"),
            Some(format!("at most {max} rows")),
            Some(format!("{rows} rows")),
        );
    }
}

/// The value-level checks, fed one batch at a time; findings come out in [`finish`](Self::finish).
pub(crate) struct TableScan<'a> {
    check: &'a TableCheck,
    root: PathBuf,
    rows: u64,
    /// Null counts per not-null column; columns answered by footer statistics are absent.
    nulls: Vec<(String, u64, Option<u64>)>,
    scan_nulls: BTreeSet<String>,
    unique: HashMap<String, UniqueState>,
    allowed: Vec<ValueViolations>,
    /// One checker per path column, fed batch by batch.
    paths: Vec<refs::PathChecker>,
    batch_failures: Vec<(u64, Option<String>)>,
    kept: Option<Vec<RecordBatch>>,
}

/// The `unique` check of one column: every non-null value's key and row, sorted at the end
/// (see [`spill`] for the memory bound and the collision bound).
struct UniqueState {
    keys: spill::SpillSort,
    kind: KeyKind,
    /// Set when the column cannot be checked; the finding says why.
    unsupported: Option<String>,
}

/// How a column's values become keys.
enum KeyKind {
    /// Signed or small unsigned integers, widened to i64: the key is the value.
    Signed,
    /// u64: the key is the value.
    Unsigned,
    /// Anything else arrow can order: a hash of its row-format bytes.
    Hashed(arrow_row::RowConverter, spill::KeyHasher),
}

struct ValueViolations {
    count: u64,
    examples: Vec<String>,
    problem: Option<String>,
}

impl<'a> TableScan<'a> {
    pub(crate) fn new(path: &Path, check: &'a TableCheck, keep: bool) -> Self {
        let root = check.root.clone().unwrap_or_else(|| {
            path.parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        });
        Self {
            check,
            rows: 0,
            nulls: Vec::new(),
            scan_nulls: check.not_null.iter().cloned().collect(),
            unique: HashMap::new(),
            allowed: check
                .allowed
                .iter()
                .map(|_| ValueViolations {
                    count: 0,
                    examples: Vec::new(),
                    problem: None,
                })
                .collect(),
            paths: check
                .paths_columns
                .iter()
                .map(|_| refs::PathChecker::new(&root, check.max_examples))
                .collect(),
            root,
            batch_failures: vec![(0, None); check.batch_checks.len()],
            kept: keep.then(Vec::new),
        }
    }

    /// Null counts that footer statistics already answered, so the scan skips them.
    pub(crate) fn nulls_from_statistics(&mut self, column: &str, nulls: u64) {
        self.scan_nulls.remove(column);
        self.nulls.push((column.to_string(), nulls, None));
    }

    /// Not-null columns still to be counted by reading pages.
    pub(crate) fn columns_needing_null_scan(&self) -> impl Iterator<Item = &String> {
        self.scan_nulls.iter()
    }

    pub(crate) fn push(&mut self, batch: RecordBatch) {
        let offset = self.rows;
        let schema = batch.schema();
        for column in &self.scan_nulls {
            if let Ok(idx) = schema.index_of(column) {
                let array = batch.column(idx);
                let mask = array.logical_nulls();
                let n = mask.as_ref().map_or(0, |m| m.null_count()) as u64;
                let first = mask
                    .filter(|_| n > 0)
                    .and_then(|m| m.iter().position(|valid| !valid))
                    .map(|i| offset + i as u64);
                match self.nulls.iter_mut().find(|(c, _, _)| c == column) {
                    Some(entry) => {
                        entry.1 += n;
                        if entry.2.is_none() {
                            entry.2 = first;
                        }
                    }
                    None => self.nulls.push((column.clone(), n, first)),
                }
            }
        }
        for column in &self.check.unique {
            if let Ok(idx) = schema.index_of(column) {
                let state = self.unique.entry(column.clone()).or_insert_with(|| {
                    UniqueState::new(batch.column(idx).data_type(), self.check.memory_limit)
                });
                state.push(batch.column(idx), offset);
            }
        }
        for (i, (column, allowed)) in self.check.allowed.iter().enumerate() {
            if let Ok(idx) = schema.index_of(column) {
                check_allowed(
                    batch.column(idx),
                    allowed,
                    offset,
                    self.check.max_examples,
                    &mut self.allowed[i],
                );
            }
        }
        for (column, paths) in self.check.paths_columns.iter().zip(&mut self.paths) {
            if let Ok(idx) = schema.index_of(column)
                && let Ok(strings) = arrow_cast::cast(batch.column(idx), &DataType::Utf8)
            {
                paths.add(strings.as_string::<i32>().iter().flatten());
            }
        }
        for (i, (_, f)) in self.check.batch_checks.iter().enumerate() {
            if let Err(message) = f(&batch) {
                let entry = &mut self.batch_failures[i];
                entry.0 += 1;
                if entry.1.is_none() {
                    entry.1 = Some(format!(
                        "rows {offset}..{}: {message}",
                        offset + batch.num_rows() as u64
                    ));
                }
            }
        }
        self.rows += batch.num_rows() as u64;
        if let Some(kept) = &mut self.kept {
            kept.push(batch);
        }
    }

    /// Feeds every batch `open` yields; a read error or panic stops the scan and comes
    /// back as its message.
    pub(crate) fn drain<I, E, F>(&mut self, open: F) -> Option<String>
    where
        F: FnOnce() -> std::result::Result<I, String>,
        I: Iterator<Item = std::result::Result<RecordBatch, E>>,
        E: fmt::Display,
    {
        crate::integrity::catch_read(|| -> std::result::Result<(), String> {
            for batch in open()? {
                self.push(batch.map_err(|e| e.to_string())?);
            }
            Ok(())
        })
        .err()
    }

    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// Emits every finding; `schema` tells which checked columns exist at all.
    pub(crate) fn finish(self, schema: &Schema, report: &mut Report) -> Option<Vec<RecordBatch>> {
        let check = self.check;
        for column in &check.not_null {
            if schema.field_with_name(column).is_err() {
                continue;
            }
            if let Some((_, n, first)) = self.nulls.iter().find(|(c, _, _)| c == column)
                && *n > 0
            {
                let at = first
                    .map(|r| format!("; first at row {r}"))
                    .unwrap_or_default();
                report.error(
                    "not_null",
                    format!("column {column} has {n} null(s){at}"),
                    Some("no nulls".into()),
                    Some(format!("{n} nulls")),
                );
            }
        }
        let mut unique = self.unique;
        for column in &check.unique {
            let Some(state) = unique.remove(column) else {
                continue;
            };
            if let Some(problem) = &state.unsupported {
                report.error("unique", format!("column {column}: {problem}"), None, None);
                continue;
            }
            let spilled = state.keys.runs();
            let values = state.keys.len();
            match state.duplicates(check.max_examples) {
                Err(problem) => {
                    report.error("unique", format!("column {column}: {problem}"), None, None);
                }
                Ok((0, _)) => {}
                Ok((n, examples)) => report.error(
                    "unique",
                    format!(
                        "column {column} has {n} duplicate value(s), e.g. {}",
                        examples.join("; ")
                    ),
                    Some("unique values".into()),
                    Some(format!("{n} duplicates")),
                ),
            }
            if spilled > 0 {
                report.info(
                    &format!("unique_spilled_runs.{column}"),
                    serde_json::json!({ "runs": spilled, "values": values }),
                );
            }
        }
        for ((column, allowed), v) in check.allowed.iter().zip(&self.allowed) {
            if let Some(problem) = &v.problem {
                report.error(
                    "allowed_values",
                    format!("column {column}: {problem}"),
                    Some(allowed.to_string()),
                    None,
                );
            } else if v.count > 0 {
                report.error(
                    "allowed_values",
                    format!(
                        "column {column} has {} value(s) outside {allowed}, e.g. {}",
                        v.count,
                        v.examples.join("; ")
                    ),
                    Some(allowed.to_string()),
                    Some(format!("{} values outside", v.count)),
                );
            }
        }
        let root = &self.root;
        for (column, paths) in check.paths_columns.iter().zip(self.paths) {
            if schema.field_with_name(column).is_err() {
                continue;
            }
            let outcome = paths.finish();
            report.info(&format!("paths_checked.{column}"), outcome.checked);
            if outcome.missing > 0 {
                report.error(
                    "paths_exist",
                    format!(
                        "{} of {} path(s) in column {column} do not exist under {}; first: {}",
                        outcome.missing,
                        outcome.checked,
                        root.display(),
                        outcome.first_missing.join(", ")
                    ),
                    Some("every path exists".into()),
                    Some(format!("{} missing", outcome.missing)),
                );
            }
        }
        for ((name, _), (failed, first)) in check.batch_checks.iter().zip(&self.batch_failures) {
            if *failed > 0 {
                report.error(
                    &format!("batch_check:{name}"),
                    format!(
                        "{failed} batch(es) failed {name}; first: {}",
                        first.as_deref().unwrap_or("")
                    ),
                    None,
                    None,
                );
            }
        }
        self.kept
    }
}

impl UniqueState {
    fn new(data_type: &DataType, memory_limit: usize) -> Self {
        let mut unsupported = None;
        let kind = if is_int(data_type) {
            KeyKind::Signed
        } else if *data_type == DataType::UInt64 {
            KeyKind::Unsigned
        } else {
            match arrow_row::RowConverter::new(vec![arrow_row::SortField::new(data_type.clone())]) {
                Ok(c) => KeyKind::Hashed(c, spill::KeyHasher::random()),
                Err(e) => {
                    unsupported = Some(format!(
                        "values of type {data_type} cannot be compared: {e}"
                    ));
                    KeyKind::Signed
                }
            }
        };
        Self {
            keys: spill::SpillSort::new(memory_limit),
            kind,
            unsupported,
        }
    }

    fn push(&mut self, array: &ArrayRef, offset: u64) {
        if self.unsupported.is_some() {
            return;
        }
        if let Err(problem) = self.push_keys(array, offset) {
            self.unsupported = Some(problem);
        }
    }

    fn push_keys(&mut self, array: &ArrayRef, offset: u64) -> std::result::Result<(), String> {
        let spill_failed = |e: io::Error| {
            format!(
                "cannot write sorted values to a temporary file in {}: {e}",
                std::env::temp_dir().display()
            )
        };
        match &self.kind {
            KeyKind::Signed | KeyKind::Unsigned => {
                let unsigned = matches!(self.kind, KeyKind::Unsigned);
                let target = if unsigned {
                    DataType::UInt64
                } else {
                    DataType::Int64
                };
                let ints = arrow_cast::cast(array, &target)
                    .map_err(|_| format!("cannot read {} as integers", array.data_type()))?;
                let bits: Box<dyn Iterator<Item = Option<u64>>> = if unsigned {
                    Box::new(ints.as_primitive::<UInt64Type>().iter())
                } else {
                    Box::new(
                        ints.as_primitive::<Int64Type>()
                            .iter()
                            .map(|v| v.map(|v| v as u64)),
                    )
                };
                for (i, v) in bits.enumerate() {
                    if let Some(v) = v {
                        self.keys
                            .push(u128::from(v), offset + i as u64)
                            .map_err(spill_failed)?;
                    }
                }
            }
            KeyKind::Hashed(converter, hasher) => {
                let rows = converter
                    .convert_columns(std::slice::from_ref(array))
                    .map_err(|e| format!("cannot compare values: {e}"))?;
                for i in 0..array.len() {
                    if array.is_valid(i) {
                        self.keys
                            .push(hasher.key(rows.row(i).as_ref()), offset + i as u64)
                            .map_err(spill_failed)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The number of values that repeat an earlier one, and the first `max_examples` of
    /// them by row.
    fn duplicates(self, max_examples: usize) -> std::result::Result<(u64, Vec<String>), String> {
        let sorted = self.keys.into_sorted().map_err(|e| {
            format!("cannot read back the sorted values from a temporary file: {e}")
        })?;
        let mut count = 0u64;
        let mut first = FirstRowsOf::new(max_examples);
        let mut group: Option<spill::Keyed> = None;
        for e in sorted {
            let e = e.map_err(|e| {
                format!("cannot read back the sorted values from a temporary file: {e}")
            })?;
            match group {
                Some(g) if g.key() == e.key() => {
                    count += 1;
                    first.offer((e.row, g.row, e.key()));
                }
                _ => group = Some(e),
            }
        }
        let examples = first
            .into_sorted()
            .into_iter()
            .map(|(row, earlier, key)| match self.kind {
                KeyKind::Signed => format!("row {row}: {}", key as u64 as i64),
                KeyKind::Unsigned => format!("row {row}: {}", key as u64),
                KeyKind::Hashed(..) => format!("row {row}: the value of row {earlier}"),
            })
            .collect();
        Ok((count, examples))
    }
}

type FirstRowsOf = spill::FirstRows<(u64, u64, u128)>;

fn is_int(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
    )
}

fn check_allowed(
    array: &ArrayRef,
    allowed: &AllowedValues,
    offset: u64,
    max_examples: usize,
    out: &mut ValueViolations,
) {
    if out.problem.is_some() {
        return;
    }
    let note = |out: &mut ValueViolations, i: usize, shown: String| {
        out.count += 1;
        if out.examples.len() < max_examples {
            out.examples
                .push(format!("row {}: {shown}", offset + i as u64));
        }
    };
    match allowed {
        AllowedValues::OneOf(set) => {
            let strings = match arrow_cast::cast(array, &DataType::Utf8) {
                Ok(s) => s,
                Err(e) => {
                    out.problem = Some(format!(
                        "values of type {} have no text form: {e}",
                        array.data_type()
                    ));
                    return;
                }
            };
            for (i, v) in strings.as_string::<i32>().iter().enumerate() {
                if let Some(v) = v
                    && !set.contains(v)
                {
                    note(out, i, v.to_string());
                }
            }
        }
        AllowedValues::Range { min, max } => {
            let numbers = match arrow_cast::cast(array, &DataType::Float64) {
                Ok(n) if array.data_type().is_numeric() => n,
                _ => {
                    out.problem = Some(format!("type {} is not numeric", array.data_type()));
                    return;
                }
            };
            let lo = min.unwrap_or(f64::NEG_INFINITY);
            let hi = max.unwrap_or(f64::INFINITY);
            for (i, v) in numbers.as_primitive::<Float64Type>().iter().enumerate() {
                if let Some(v) = v
                    && !(lo <= v && v <= hi)
                {
                    note(out, i, v.to_string());
                }
            }
        }
    }
}
