//! Whether a table agrees with the files and tables around it: paths that exist, ids found
//! in a reference table. Neither table is held in memory: ids are streamed into
//! [`spill::SpillSort`]s and the two sides are merged in key order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use parking_lot::Mutex;

use super::spill::{FirstRows, KeyHasher, SpillSort};
use super::table::DEFAULT_MEMORY_LIMIT;
use super::{DataIntegrityChecker, Report, TableCheck};
use crate::error::Result;

impl DataIntegrityChecker {
    /// Checks that a table agrees with the files and tables around it: the paths in its
    /// path columns exist, and its id columns only hold ids found in reference tables (ids
    /// compare by their text, so the integer `7` matches the string `"7"`). Memory stays
    /// within [`ConsistencyCheck::with_memory_limit`] per id column whatever the sizes of
    /// the tables.
    pub fn validate_data_consistency(
        &self,
        path: impl AsRef<Path>,
        check: &ConsistencyCheck,
    ) -> Result<Report> {
        let path = path.as_ref();
        let hasher = KeyHasher::random();
        let mut table = TableCheck::new()
            .with_allow_empty(true)
            .with_max_examples(check.max_examples)
            .with_required_columns(check.id_subsets.iter().map(|s| s.column.clone()));
        for column in &check.path_columns {
            table = table
                .with_paths_exist(column.clone())
                .with_required_columns([column.clone()]);
        }
        if let Some(root) = &check.root {
            table = table.with_root(root.clone());
        }
        if let Some(format) = check.format_hint {
            table = table.with_format_hint(format);
        }
        let mut ids = Vec::with_capacity(check.id_subsets.len());
        for subset in &check.id_subsets {
            let collector = IdCollector::new(&subset.column, check.memory_limit, hasher);
            table = collector.attach(table);
            ids.push(collector);
        }
        let mut report = self.validate_metadata_file(path, &table)?;
        report.kind = "consistency";
        for (subset, ids) in check.id_subsets.iter().zip(ids) {
            let reference = IdCollector::new(&subset.reference_column, check.memory_limit, hasher);
            let mut ref_check = TableCheck::new()
                .with_allow_empty(true)
                .with_required_columns([subset.reference_column.clone()]);
            // A named reference goes by its extension, as any table does.
            if let Some(format) = check.format_hint
                && subset.reference.extension().is_none()
            {
                ref_check = ref_check.with_format_hint(format);
            }
            let ref_check = reference.attach(ref_check);
            let ref_report = self.validate_metadata_file(&subset.reference, &ref_check)?;
            if !ref_report.ok {
                report.error(
                    "id_subset",
                    format!(
                        "the reference table {} cannot be used: {}",
                        subset.reference.display(),
                        ref_report
                            .findings
                            .first()
                            .map_or("", |f| f.message.as_str())
                    ),
                    Some("a readable reference table".into()),
                    None,
                );
                continue;
            }
            let checked = ids.len();
            let unknown = match unknown_ids(ids, reference, check.max_examples) {
                Ok(u) => u,
                Err(problem) => {
                    report.error(
                        "id_subset",
                        format!("column {}: {problem}", subset.column),
                        None,
                        None,
                    );
                    continue;
                }
            };
            report.info(&format!("ids_checked.{}", subset.column), checked);
            let Some((count, rows)) = unknown else {
                report.info(&format!("ids_unknown.{}", subset.column), 0);
                continue;
            };
            report.info(&format!("ids_unknown.{}", subset.column), count);
            let shown = self.values_at(path, &subset.column, &rows)?;
            let first: Vec<String> = rows
                .iter()
                .map(|r| shown.get(r).cloned().unwrap_or_else(|| format!("row {r}")))
                .collect();
            report.error(
                "id_subset",
                format!(
                    "{count} id(s) in column {} are not in {} column {}; first: {}",
                    subset.column,
                    subset.reference.display(),
                    subset.reference_column,
                    first.join(", ")
                ),
                Some(format!("every id in {}", subset.reference.display())),
                Some(format!("{count} unknown ids")),
            );
        }
        Ok(report)
    }

    /// The text of `column` at the given rows: a second streaming read, made only when
    /// there are unknown ids to show.
    fn values_at(&self, path: &Path, column: &str, rows: &[u64]) -> Result<BTreeMap<u64, String>> {
        if rows.is_empty() {
            return Ok(BTreeMap::new());
        }
        let wanted: Arc<Vec<u64>> = Arc::new(rows.to_vec());
        let found = Arc::new(Mutex::new((0u64, BTreeMap::new())));
        let (w, f, col) = (Arc::clone(&wanted), Arc::clone(&found), column.to_string());
        let check =
            TableCheck::new()
                .with_allow_empty(true)
                .with_batch_check("id values", move |batch| {
                    let mut guard = f.lock();
                    let (next, values) = &mut *guard;
                    let start = *next;
                    *next += batch.num_rows() as u64;
                    if let Some(strings) = text_column(batch, &col) {
                        let strings = strings.as_string::<i32>();
                        for &row in w.iter().filter(|r| (start..*next).contains(*r)) {
                            let i = (row - start) as usize;
                            if strings.is_valid(i) {
                                values.insert(row, strings.value(i).to_string());
                            }
                        }
                    }
                    Ok(())
                });
        self.validate_metadata_file(path, &check)?;
        let values = std::mem::take(&mut found.lock().1);
        Ok(values)
    }
}

/// The non-null ids of one column, keyed by their text and numbered by row, fed batch by
/// batch from a [`TableCheck`] batch check.
struct IdCollector {
    state: Arc<Mutex<IdState>>,
    column: String,
}

struct IdState {
    keys: SpillSort,
    next_row: u64,
    hasher: KeyHasher,
    failed: Option<String>,
}

impl IdCollector {
    fn new(column: &str, memory_limit: usize, hasher: KeyHasher) -> Self {
        Self {
            state: Arc::new(Mutex::new(IdState {
                keys: SpillSort::new(memory_limit),
                next_row: 0,
                hasher,
                failed: None,
            })),
            column: column.to_string(),
        }
    }

    fn attach(&self, check: TableCheck) -> TableCheck {
        let state = Arc::clone(&self.state);
        let column = self.column.clone();
        check.with_batch_check(format!("ids of {}", self.column), move |batch| {
            let mut s = state.lock();
            let start = s.next_row;
            s.next_row += batch.num_rows() as u64;
            if s.failed.is_some() {
                return Ok(());
            }
            if let Some(strings) = text_column(batch, &column) {
                let strings = strings.as_string::<i32>();
                for (i, v) in strings.iter().enumerate() {
                    let Some(v) = v else { continue };
                    let key = s.hasher.key(v.as_bytes());
                    if let Err(e) = s.keys.push(key, start + i as u64) {
                        s.failed = Some(format!(
                            "cannot write sorted ids to a temporary file in {}: {e}",
                            std::env::temp_dir().display()
                        ));
                        break;
                    }
                }
            }
            Ok(())
        })
    }

    fn len(&self) -> u64 {
        self.state.lock().keys.len()
    }

    /// The ids gathered; the check that fed them may still exist but is done.
    fn into_keys(self) -> std::result::Result<SpillSort, String> {
        let mut state = self.state.lock();
        match state.failed.take() {
            Some(problem) => Err(problem),
            None => Ok(std::mem::replace(&mut state.keys, SpillSort::new(0))),
        }
    }
}

/// A column as text, if the batch has it and it can be cast (ints and strings compare by
/// their text).
pub(crate) fn text_column(batch: &RecordBatch, column: &str) -> Option<arrow_array::ArrayRef> {
    batch
        .column_by_name(column)
        .and_then(|a| arrow_cast::cast(a, &DataType::Utf8).ok())
}

/// How many ids are not among the reference ids, and the first rows holding one; `None`
/// when every id is known. Both sides are read in key order, as a merge join.
fn unknown_ids(
    ids: IdCollector,
    reference: IdCollector,
    max_examples: usize,
) -> std::result::Result<Option<(u64, Vec<u64>)>, String> {
    let read_back = |e: std::io::Error| format!("cannot read back sorted ids: {e}");
    let ids = ids.into_keys()?.into_sorted().map_err(read_back)?;
    let mut refs = reference.into_keys()?.into_sorted().map_err(read_back)?;
    let mut current = refs.next().transpose().map_err(read_back)?;
    let mut count = 0u64;
    let mut first = FirstRows::new(max_examples);
    for id in ids {
        let id = id.map_err(read_back)?;
        while let Some(r) = current
            && r.key() < id.key()
        {
            current = refs.next().transpose().map_err(read_back)?;
        }
        if current.is_none_or(|r| r.key() != id.key()) {
            count += 1;
            first.offer(id.row);
        }
    }
    Ok((count > 0).then(|| (count, first.into_sorted())))
}

/// What [`DataIntegrityChecker::validate_data_consistency`] checks.
///
/// ```
/// use guardrails::integrity::ConsistencyCheck;
///
/// let check = ConsistencyCheck::new()
///     .with_paths_exist("video_path")
///     .with_paths_exist("feature_path")
///     .with_root("/data")
///     .with_ids_subset_of("clip_id", "clips.parquet", "id");
/// assert_eq!(check.path_columns().len(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct ConsistencyCheck {
    path_columns: Vec<String>,
    root: Option<PathBuf>,
    id_subsets: Vec<IdSubset>,
    max_examples: usize,
    memory_limit: usize,
    format_hint: Option<super::Format>,
}

#[derive(Debug, Clone)]
struct IdSubset {
    column: String,
    reference: PathBuf,
    reference_column: String,
}

impl Default for ConsistencyCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsistencyCheck {
    /// Nothing to check yet.
    pub fn new() -> Self {
        Self {
            path_columns: Vec::new(),
            root: None,
            id_subsets: Vec::new(),
            max_examples: 10,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            format_hint: None,
        }
    }

    /// A column of paths that must exist (checked with parallel `stat` calls).
    #[must_use]
    pub fn with_paths_exist(mut self, column: impl Into<String>) -> Self {
        self.path_columns.push(column.into());
        self
    }

    /// The folder relative paths are resolved against (default: the table's folder).
    #[must_use]
    pub fn with_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
        self
    }

    /// Every value of `column` must appear in `reference_column` of the table at `reference`.
    pub fn with_ids_subset_of(
        mut self,
        column: impl Into<String>,
        reference: impl Into<PathBuf>,
        reference_column: impl Into<String>,
    ) -> Self {
        self.id_subsets.push(IdSubset {
            column: column.into(),
            reference: reference.into(),
            reference_column: reference_column.into(),
        });
        self
    }

    /// How many missing paths or unknown ids a finding lists (default 10).
    #[must_use]
    pub fn with_max_examples(mut self, n: usize) -> Self {
        self.max_examples = n;
        self
    }

    /// The most memory each side of an id check holds (default 64 MiB): the ids of the
    /// table and those of the reference are keyed by a 128-bit hash of their text (24 bytes
    /// each with the row) and, past the limit, sorted into anonymous temporary files and
    /// merged, so neither table has to fit in memory. An id whose hash collides with a
    /// reference id would pass; for `n` ids against `m` reference ids the chance is below
    /// `n·m / 2¹²⁸`.
    #[must_use]
    pub fn with_memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// The format of the table, and of each reference table whose name has no extension,
    /// where the bytes cannot tell (a one-column CSV): see [`TableCheck::with_format_hint`].
    #[must_use]
    pub fn with_format_hint(mut self, format: super::Format) -> Self {
        self.format_hint = Some(format);
        self
    }

    /// The path columns to check.
    pub fn path_columns(&self) -> &[String] {
        &self.path_columns
    }
}
