//! Stage specs: what a stage reads, writes, needs and must reach, as TOML and as a builder.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::GuardrailError;
use crate::integrity::{AllowedValues, FeatureCheck, TableCheck, VideoCheck};
use crate::resource::ResourceLimits;

/// `[pipeline]`: the pipeline's name and where it keeps its files.
///
/// | key | default | meaning |
/// |---|---|---|
/// | `name` | `"pipeline"` | recorded with every run |
/// | `root` | the config file's folder | relative data paths start here |
/// | `registry` | `<root>/.guardrails/registry.db` | the run registry (SQLite) |
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct PipelineConfig {
    /// The pipeline's name.
    pub name: String,
    /// The folder relative data paths start from; `None`: the config file's folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// The run registry's file; `None`: `<root>/.guardrails/registry.db`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<PathBuf>,
}

impl PipelineConfig {
    /// The defaults.
    pub const fn new() -> Self {
        Self {
            name: String::new(),
            root: None,
            registry: None,
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// What a declared input or output is, and so which check it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DataKind {
    /// A metadata table (Parquet, Arrow IPC, CSV), checked with a [`TableCheck`].
    #[default]
    Table,
    /// A feature file, or a folder of them (NPY, Parquet), checked with a [`FeatureCheck`].
    Features,
    /// A folder of videos (or one video), checked with a [`VideoCheck`].
    Videos,
}

impl DataKind {
    /// The lowercase name used in TOML and reports.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Table => "table",
            Self::Features => "features",
            Self::Videos => "videos",
        }
    }
}

/// Allowed values of one column in a [`DataSpec`]: a list of values or a numeric range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum AllowedSpec {
    /// One of these values, compared as text.
    OneOf(Vec<String>),
    /// A number within `min..=max`; either bound may be left out.
    Range {
        /// Smallest allowed value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        /// Largest allowed value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
    },
}

/// One declared input or output of a stage (`[stages.NAME.inputs.X]`,
/// `[stages.NAME.outputs.X]`): its path, its kind and the check it must pass.
///
/// Keys that do not belong to the kind (`dtypes` on a table) are refused at load time.
///
/// | key | kinds | meaning |
/// |---|---|---|
/// | `path` | all | file or folder, relative to the pipeline root |
/// | `kind` | | `table` (default), `features` or `videos` |
/// | `required_columns`, `not_null`, `unique` | table | column lists |
/// | `allowed` | table | `{ column = ["a", "b"] }` or `{ column = { min = 0, max = 1 } }` |
/// | `paths_exist` | table | a column of file paths that must exist (relative to the table's folder) |
/// | `min_rows`, `max_rows` | table, features | row bounds (features: per file) |
/// | `allow_empty` | table | a table with no rows passes |
/// | `dtypes`, `rank`, `finite` | features | element types, dimensions, no NaN/inf |
/// | `codecs`, `min_duration`, `min_frames`, `decode` | videos | as in [`VideoCheck`] |
/// | `sample` | features, videos folders | share of the folder's files checked, in (0, 1]; default 1 |
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
#[non_exhaustive]
pub struct DataSpec {
    /// The file or folder.
    pub path: PathBuf,
    /// What it is.
    pub kind: DataKind,
    /// Table: columns that must be present.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub required_columns: Vec<String>,
    /// Table: columns with no nulls.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_null: Vec<String>,
    /// Table: columns whose values all differ.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unique: Vec<String>,
    /// Table: allowed values per column.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub allowed: BTreeMap<String, AllowedSpec>,
    /// Table: a column of paths that must exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths_exist: Option<String>,
    /// Table and features: fewest rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_rows: Option<u64>,
    /// Table: most rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rows: Option<u64>,
    /// Table: an empty table passes.
    #[serde(skip_serializing_if = "is_false")]
    pub allow_empty: bool,
    /// Features: allowed element types (`float32`, …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dtypes: Vec<String>,
    /// Features: number of dimensions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    /// Features: no NaN or infinity.
    #[serde(skip_serializing_if = "is_false")]
    pub finite: bool,
    /// Videos: allowed codecs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub codecs: Vec<String>,
    /// Videos: shortest duration.
    #[serde(
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub min_duration: Option<Duration>,
    /// Videos: fewest frames.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_frames: Option<u64>,
    /// Videos: decode with ffmpeg too.
    #[serde(skip_serializing_if = "is_false")]
    pub decode: bool,
    /// Folders: share of the files checked, in (0, 1].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample: Option<f64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl DataSpec {
    /// One spec holding both this (a stage's input) and `producer` (the upstream output at
    /// the same path), so preflight reads the file once for both; `None` when they cannot
    /// be one check (different kinds, or the same key with different values where neither
    /// bound is simply the stricter one).
    pub(crate) fn merged_with(&self, producer: &DataSpec) -> Option<DataSpec> {
        fn union(a: &[String], b: &[String]) -> Vec<String> {
            let mut out = a.to_vec();
            out.extend(b.iter().filter(|x| !a.contains(x)).cloned());
            out
        }
        /// Both, or the one given; `None` in the outer option when they differ.
        fn same<T: Clone + PartialEq>(a: &Option<T>, b: &Option<T>) -> Option<Option<T>> {
            match (a, b) {
                (Some(x), Some(y)) if x != y => None,
                _ => Some(a.clone().or_else(|| b.clone())),
            }
        }
        fn same_list(a: &[String], b: &[String]) -> Option<Vec<String>> {
            match (a.is_empty(), b.is_empty()) {
                (false, false) if a != b => None,
                (true, _) => Some(b.to_vec()),
                _ => Some(a.to_vec()),
            }
        }
        if self.kind != producer.kind || self.path != producer.path {
            return None;
        }
        let mut allowed = self.allowed.clone();
        for (column, a) in &producer.allowed {
            match allowed.get(column) {
                Some(mine) if mine != a => return None,
                _ => {
                    allowed.insert(column.clone(), a.clone());
                }
            }
        }
        Some(DataSpec {
            path: self.path.clone(),
            kind: self.kind,
            required_columns: union(&self.required_columns, &producer.required_columns),
            not_null: union(&self.not_null, &producer.not_null),
            unique: union(&self.unique, &producer.unique),
            allowed,
            paths_exist: same(&self.paths_exist, &producer.paths_exist)?,
            min_rows: self.min_rows.max(producer.min_rows),
            max_rows: match (self.max_rows, producer.max_rows) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            allow_empty: self.allow_empty && producer.allow_empty,
            dtypes: same_list(&self.dtypes, &producer.dtypes)?,
            rank: same(&self.rank, &producer.rank)?,
            finite: self.finite || producer.finite,
            codecs: same_list(&self.codecs, &producer.codecs)?,
            min_duration: self.min_duration.max(producer.min_duration),
            min_frames: self.min_frames.max(producer.min_frames),
            decode: self.decode || producer.decode,
            // Every file when either side checks every file.
            sample: match (self.sample, producer.sample) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            },
        })
    }

    /// A table at `path`.
    pub fn table(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            kind: DataKind::Table,
            ..Self::default()
        }
    }

    /// A feature file or folder at `path`.
    pub fn features(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            kind: DataKind::Features,
            ..Self::default()
        }
    }

    /// A video folder (or file) at `path`.
    pub fn videos(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            kind: DataKind::Videos,
            ..Self::default()
        }
    }

    /// Columns that must be present.
    #[must_use]
    pub fn with_required_columns<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        c: I,
    ) -> Self {
        self.required_columns = c.into_iter().map(Into::into).collect();
        self
    }

    /// Columns with no nulls.
    #[must_use]
    pub fn with_not_null<I: IntoIterator<Item = S>, S: Into<String>>(mut self, c: I) -> Self {
        self.not_null = c.into_iter().map(Into::into).collect();
        self
    }

    /// Columns whose values all differ.
    #[must_use]
    pub fn with_unique<I: IntoIterator<Item = S>, S: Into<String>>(mut self, c: I) -> Self {
        self.unique = c.into_iter().map(Into::into).collect();
        self
    }

    /// Allowed values of `column`.
    #[must_use]
    pub fn with_allowed(mut self, column: impl Into<String>, allowed: AllowedSpec) -> Self {
        self.allowed.insert(column.into(), allowed);
        self
    }

    /// A column of paths that must exist.
    #[must_use]
    pub fn with_paths_exist(mut self, column: impl Into<String>) -> Self {
        self.paths_exist = Some(column.into());
        self
    }

    /// Fewest rows.
    #[must_use]
    pub fn with_min_rows(mut self, rows: u64) -> Self {
        self.min_rows = Some(rows);
        self
    }

    /// Most rows.
    #[must_use]
    pub fn with_max_rows(mut self, rows: u64) -> Self {
        self.max_rows = Some(rows);
        self
    }

    /// Lets an empty table pass its check.
    #[must_use]
    pub fn with_allow_empty(mut self, allow: bool) -> Self {
        self.allow_empty = allow;
        self
    }

    /// Allowed element types of a feature file.
    #[must_use]
    pub fn with_dtypes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, d: I) -> Self {
        self.dtypes = d.into_iter().map(Into::into).collect();
        self
    }

    /// Dimensions of a feature file.
    #[must_use]
    pub fn with_rank(mut self, rank: usize) -> Self {
        self.rank = Some(rank);
        self
    }

    /// No NaN or infinity in a feature file.
    #[must_use]
    pub fn with_finite(mut self, finite: bool) -> Self {
        self.finite = finite;
        self
    }

    /// Share of a folder's files checked.
    #[must_use]
    pub fn with_sample(mut self, share: f64) -> Self {
        self.sample = Some(share);
        self
    }

    /// Fewest frames per video.
    #[must_use]
    pub fn with_min_frames(mut self, frames: u64) -> Self {
        self.min_frames = Some(frames);
        self
    }

    /// The keys set that the kind does not use, for the load-time error.
    fn foreign_keys(&self) -> Vec<&'static str> {
        let mut set = Vec::new();
        let table = [
            ("required_columns", !self.required_columns.is_empty()),
            ("not_null", !self.not_null.is_empty()),
            ("unique", !self.unique.is_empty()),
            ("allowed", !self.allowed.is_empty()),
            ("paths_exist", self.paths_exist.is_some()),
            ("max_rows", self.max_rows.is_some()),
            ("allow_empty", self.allow_empty),
        ];
        let features = [
            ("dtypes", !self.dtypes.is_empty()),
            ("rank", self.rank.is_some()),
            ("finite", self.finite),
        ];
        let videos = [
            ("codecs", !self.codecs.is_empty()),
            ("min_duration", self.min_duration.is_some()),
            ("min_frames", self.min_frames.is_some()),
            ("decode", self.decode),
        ];
        let (a, b, c): (&[_], &[_], &[_]) = match self.kind {
            DataKind::Table => (&features, &videos, &[("sample", self.sample.is_some())]),
            DataKind::Features => (&table, &videos, &[]),
            DataKind::Videos => (&table, &features, &[("min_rows", self.min_rows.is_some())]),
        };
        for (key, present) in a.iter().chain(b).chain(c) {
            if *present {
                set.push(*key);
            }
        }
        set
    }

    fn problems(&self, at: &str) -> Vec<GuardrailError> {
        let mut out = Vec::new();
        if self.path.as_os_str().is_empty() {
            out.push(GuardrailError::config(
                format!("{at}.path"),
                "a path is required",
            ));
        }
        for key in self.foreign_keys() {
            out.push(GuardrailError::config(
                format!("{at}.{key}"),
                format!(
                    "not a key of a {} (kind = \"{}\")",
                    self.kind.as_str(),
                    self.kind.as_str()
                ),
            ));
        }
        if let Some(s) = self.sample
            && !(s > 0.0 && s <= 1.0)
        {
            out.push(GuardrailError::config(
                format!("{at}.sample"),
                format!("must be a share in (0, 1], got {s}"),
            ));
        }
        if let (Some(lo), Some(hi)) = (self.min_rows, self.max_rows)
            && lo > hi
        {
            out.push(GuardrailError::config(
                format!("{at}.min_rows"),
                format!("{lo} is more than max_rows {hi}"),
            ));
        }
        for (column, allowed) in &self.allowed {
            if let AllowedSpec::Range { min, max } = allowed {
                let bad = |v: &Option<f64>| v.is_some_and(|v| !v.is_finite());
                if bad(min) || bad(max) || (min.is_none() && max.is_none()) {
                    out.push(GuardrailError::config(
                        format!("{at}.allowed.{column}"),
                        "a range needs a finite min, max or both",
                    ));
                }
            }
        }
        out
    }

    /// The columns a figure of this output may name.
    pub(crate) fn is_table(&self) -> bool {
        self.kind == DataKind::Table
    }

    /// The table check this spec describes, for files under `root`.
    pub fn table_check(&self, table_dir: &Path) -> TableCheck {
        let mut check = TableCheck::new()
            .with_required_columns(self.required_columns.iter().cloned())
            .with_not_null(self.not_null.iter().cloned())
            .with_unique(self.unique.iter().cloned())
            .with_allow_empty(self.allow_empty)
            .with_root(table_dir);
        // An output is checked at its temporary path, whose name has no extension to go by.
        if let Some(format) = crate::integrity::Format::from_extension(&self.path) {
            check = check.with_format_hint(format);
        }
        if let Some(n) = self.min_rows {
            check = check.with_min_rows(n);
        }
        if let Some(n) = self.max_rows {
            check = check.with_max_rows(n);
        }
        if let Some(c) = &self.paths_exist {
            check = check.with_paths_exist(c.clone());
        }
        for (column, allowed) in &self.allowed {
            let allowed = match allowed {
                AllowedSpec::OneOf(values) => AllowedValues::one_of(values.iter().cloned()),
                AllowedSpec::Range { min, max } => AllowedValues::Range {
                    min: *min,
                    max: *max,
                },
            };
            check = check.with_allowed(column.clone(), allowed);
        }
        check
    }

    /// The feature check this spec describes.
    pub fn feature_check(&self) -> FeatureCheck {
        let mut check = FeatureCheck::new().with_finite(self.finite);
        if !self.dtypes.is_empty() {
            check = check.with_dtypes(self.dtypes.iter().cloned());
        }
        if let Some(r) = self.rank {
            check = check.with_rank(r);
        }
        if let Some(n) = self.min_rows {
            check = check.with_min_rows(n);
        }
        check
    }

    /// The video check this spec describes.
    pub fn video_check(&self) -> VideoCheck {
        let mut check = VideoCheck::new().with_decode(self.decode);
        if !self.codecs.is_empty() {
            check = check.with_codecs(self.codecs.iter().cloned());
        }
        if let Some(d) = self.min_duration {
            check = check.with_min_duration(d);
        }
        if let Some(n) = self.min_frames {
            check = check.with_min_frames(n);
        }
        check
    }
}

/// Whether a failed gate stops the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum GateLevel {
    /// A failure stops the stage before its outputs are committed, and blocks the stages
    /// downstream of it.
    #[default]
    Mandatory,
    /// A failure is recorded and warned about; the outputs are committed.
    Advisory,
}

/// A threshold on one figure of a stage (`[stages.NAME.gates.GATE]`).
///
/// Figures, by name (`X` is an input or output of the stage, `COL` a column of a table):
///
/// | figure | what |
/// |---|---|
/// | `X.rows` | rows of a table, or the sum of a feature folder's rows |
/// | `X.files` | files checked in a folder (1 for a file) |
/// | `X.bytes` | bytes on disk |
/// | `X.null_fraction.COL` | share of `COL`'s values that are null |
/// | `X.duplicate_fraction.COL` | share of `COL`'s non-null values seen before in the table |
/// | `X.min.COL`, `X.max.COL` | smallest and largest number in `COL` |
/// | `items`, `skipped`, `skipped_fraction` | items the body handled, skipped into quarantine, and their share |
/// | `metrics.NAME` | a figure the body recorded with [`StageContext::record`](super::StageContext::record) |
///
/// With `relative_to`, the gate judges `figure / relative_to` (a ratio, e.g. output rows
/// over input rows). A figure computed over 0 items (the null fraction of an empty table,
/// the skipped share of a stage that handled nothing) fails the gate rather than passing it.
///
/// Two gates link one table to other data of the stage (an input is another stage's
/// output, so these are the cross-stage gates); `figure` is then `X.COL`, and the gate
/// judges how many rows break the link (at most 0 unless `min`/`max` say otherwise; with
/// `relative_to = "X.rows"` the share):
///
/// | keys | counts |
/// |---|---|
/// | `ids_within = "Y.COL2"` | values of `X.COL` not found in table `Y`'s `COL2` |
/// | `files_in = "Y"`, `file = "{stem}.npy"` | rows of `X` with no file `Y/<file>`, where `{value}` is `COL`'s text, `{name}` its last path component and `{stem}` that without its extension (default `{value}`) |
///
/// ```
/// use guardrails::pipeline::GateSpec;
///
/// // Every scaled id is a metadata id; every metadata row has its feature file.
/// let known = GateSpec::new("scaled.id").ids_within("metadata.id");
/// let files = GateSpec::new("metadata.clip").files_in("features", "{name}.npy");
/// assert_eq!(known.max, None); // at most 0 unknown ids, by default
/// assert_eq!(files.file.as_deref(), Some("{name}.npy"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
#[non_exhaustive]
pub struct GateSpec {
    /// The figure judged.
    pub figure: String,
    /// Smallest passing value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest passing value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Judge `figure / relative_to` instead of `figure`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relative_to: Option<String>,
    /// Mandatory (default) or advisory.
    pub level: GateLevel,
    /// A link gate: the values of `figure` (`X.COL`) must be among those of this column
    /// (`Y.COL2`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ids_within: Option<String>,
    /// A link gate: each row of `figure`'s table (`X.COL`) must have a file in this folder
    /// (an input or output of the stage), named by [`file`](Self::file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_in: Option<String>,
    /// The file name template of [`files_in`](Self::files_in): `{value}`, `{name}`,
    /// `{stem}` (default `{value}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

impl GateSpec {
    /// A mandatory gate on `figure` with no bound yet.
    pub fn new(figure: impl Into<String>) -> Self {
        Self {
            figure: figure.into(),
            ..Self::default()
        }
    }

    /// Smallest passing value.
    #[must_use]
    pub fn with_min(mut self, min: f64) -> Self {
        self.min = Some(min);
        self
    }

    /// Largest passing value.
    #[must_use]
    pub fn with_max(mut self, max: f64) -> Self {
        self.max = Some(max);
        self
    }

    /// Judges the ratio of the figure to `other`.
    #[must_use]
    pub fn relative_to(mut self, other: impl Into<String>) -> Self {
        self.relative_to = Some(other.into());
        self
    }

    /// Advisory: recorded and warned, never blocking.
    #[must_use]
    pub fn advisory(mut self) -> Self {
        self.level = GateLevel::Advisory;
        self
    }

    /// A link gate: the values of `figure` (`X.COL`) must be among those of `column`
    /// (`Y.COL2`), e.g. the ids of this stage's output among the ids of its input.
    #[must_use]
    pub fn ids_within(mut self, column: impl Into<String>) -> Self {
        self.ids_within = Some(column.into());
        self
    }

    /// A link gate: each row of `figure`'s table (`X.COL`) must have a file in the folder
    /// `data`, named by `file` (`{value}`, `{name}`, `{stem}` of the row's `COL`).
    #[must_use]
    pub fn files_in(mut self, data: impl Into<String>, file: impl Into<String>) -> Self {
        self.files_in = Some(data.into());
        self.file = Some(file.into());
        self
    }

    /// Whether this is a link gate (`ids_within` or `files_in`).
    pub(crate) fn is_link(&self) -> bool {
        self.ids_within.is_some() || self.files_in.is_some()
    }
}

/// What to do with a per-item error of class [`Validation`](crate::ErrorClass::Validation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OnValidation {
    /// The stage fails on the first bad item.
    #[default]
    Fail,
    /// The item is recorded in the quarantine report and the stage goes on.
    Skip,
}

/// What a stage needs from the machine (`[stages.NAME.resources]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
#[non_exhaustive]
pub struct StageResources {
    /// Paths whose filesystems are checked against `[resources]` (relative to the root).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub check_paths: Vec<PathBuf>,
    /// Bytes the stage's outputs will take: the outputs' filesystem must have this much free
    /// beyond `[resources] min_free_disk_bytes` (old and new outputs coexist until commit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_output_bytes: Option<u64>,
    /// This stage's own limit, in place of `[resources]`'s (the training stage may take the
    /// GPU's memory that the others must leave free).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory_bytes: Option<u64>,
    /// This stage's own limit, in place of `[resources]`'s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_disk_bytes: Option<u64>,
    /// This stage's own limit, in place of `[resources]`'s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_cpu_percent: Option<f64>,
    /// This stage's own limit, in place of `[resources]`'s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_open_files: Option<u64>,
    /// This stage's own limit, in place of `[resources]`'s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_free_disk_bytes: Option<u64>,
    /// This stage's own limit, in place of `[resources]`'s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_gpu_memory_bytes: Option<u64>,
}

impl StageResources {
    /// The limits this stage is judged against: `base` (`[resources]`) with this stage's
    /// own limits in place.
    ///
    /// ```
    /// use guardrails::pipeline::StageResources;
    /// use guardrails::resource::ResourceLimits;
    ///
    /// let mut train = StageResources::default();
    /// train.max_gpu_memory_bytes = Some(70 << 30);
    /// let base = ResourceLimits::new().with_max_gpu_memory_bytes(8 << 30);
    /// assert_eq!(train.limits(&base).max_gpu_memory_bytes, 70 << 30);
    /// assert_eq!(train.limits(&base).max_memory_bytes, base.max_memory_bytes);
    /// ```
    pub fn limits(&self, base: &ResourceLimits) -> ResourceLimits {
        let mut l = base.clone();
        l.max_memory_bytes = self.max_memory_bytes.unwrap_or(l.max_memory_bytes);
        l.max_disk_bytes = self.max_disk_bytes.unwrap_or(l.max_disk_bytes);
        l.max_cpu_percent = self.max_cpu_percent.unwrap_or(l.max_cpu_percent);
        l.max_open_files = self.max_open_files.unwrap_or(l.max_open_files);
        l.min_free_disk_bytes = self.min_free_disk_bytes.unwrap_or(l.min_free_disk_bytes);
        l.max_gpu_memory_bytes = self.max_gpu_memory_bytes.unwrap_or(l.max_gpu_memory_bytes);
        l
    }
}

/// One stage (`[stages.NAME]`): dependencies, inputs, outputs, needs, gates and how its
/// body is guarded.
///
/// | key | default | meaning |
/// |---|---|---|
/// | `depends_on` | `[]` | stages that must be committed (and still valid) first |
/// | `inputs.X`, `outputs.X` | | a [`DataSpec`] each; at least one output |
/// | `resources` | | [`StageResources`]: check paths, expected output size, and the stage's own limits in place of `[resources]` |
/// | `gates.G` | | a [`GateSpec`] each |
/// | `timeout` | none | the body's deadline, e.g. `"10m"` |
/// | `retry` | `false` | retry the body on retryable errors under `[retry]` |
/// | `breaker` | none | a breaker name from `[breakers]` around the body |
/// | `fallback` | none | a fallback body registered under this name, run on a recoverable error |
/// | `on_validation` | `"fail"` | `"skip"`: per-item validation errors go to quarantine |
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
#[non_exhaustive]
pub struct StageSpec {
    /// Upstream stages.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// What the stage reads.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, DataSpec>,
    /// What the stage writes.
    pub outputs: BTreeMap<String, DataSpec>,
    /// What it needs from the machine.
    pub resources: StageResources,
    /// Thresholds on its figures.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub gates: BTreeMap<String, GateSpec>,
    /// The body's deadline.
    #[serde(
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub timeout: Option<Duration>,
    /// Retry the body on retryable errors.
    #[serde(skip_serializing_if = "is_false")]
    pub retry: bool,
    /// A breaker around the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<String>,
    /// A fallback body's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Per-item validation errors: fail or skip.
    pub on_validation: OnValidation,
}

impl StageSpec {
    /// A stage with nothing declared yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// An upstream stage.
    #[must_use]
    pub fn depends_on(mut self, stage: impl Into<String>) -> Self {
        self.depends_on.push(stage.into());
        self
    }

    /// A declared input.
    #[must_use]
    pub fn with_input(mut self, name: impl Into<String>, spec: DataSpec) -> Self {
        self.inputs.insert(name.into(), spec);
        self
    }

    /// A declared output.
    #[must_use]
    pub fn with_output(mut self, name: impl Into<String>, spec: DataSpec) -> Self {
        self.outputs.insert(name.into(), spec);
        self
    }

    /// A gate.
    #[must_use]
    pub fn with_gate(mut self, name: impl Into<String>, gate: GateSpec) -> Self {
        self.gates.insert(name.into(), gate);
        self
    }

    /// The body's deadline.
    #[must_use]
    pub fn with_timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Retries the body on retryable errors under the pipeline's retry config.
    #[must_use]
    pub fn with_retry(mut self, on: bool) -> Self {
        self.retry = on;
        self
    }

    /// A breaker around the body.
    #[must_use]
    pub fn with_breaker(mut self, name: impl Into<String>) -> Self {
        self.breaker = Some(name.into());
        self
    }

    /// A fallback body, by the name it is registered under.
    #[must_use]
    pub fn with_fallback(mut self, name: impl Into<String>) -> Self {
        self.fallback = Some(name.into());
        self
    }

    /// What per-item validation errors do.
    #[must_use]
    pub fn with_on_validation(mut self, on: OnValidation) -> Self {
        self.on_validation = on;
        self
    }

    /// Paths whose filesystems preflight checks.
    #[must_use]
    pub fn with_check_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.resources.check_paths.push(path.into());
        self
    }

    /// Bytes the outputs will take.
    #[must_use]
    pub fn with_expected_output_bytes(mut self, bytes: u64) -> Self {
        self.resources.expected_output_bytes = Some(bytes);
        self
    }

    /// The stage's own problems (not those that need the other stages).
    fn problems(&self, at: &str) -> Vec<GuardrailError> {
        let mut out = Vec::new();
        if self.outputs.is_empty() {
            out.push(GuardrailError::config(
                format!("{at}.outputs"),
                "a stage declares at least one output (what it commits)",
            ));
        }
        for (name, spec) in &self.inputs {
            out.extend(spec.problems(&format!("{at}.inputs.{name}")));
            if self.outputs.contains_key(name) {
                out.push(GuardrailError::config(
                    format!("{at}.outputs.{name}"),
                    "an input has this name too; figures name inputs and outputs alike",
                ));
            }
        }
        for (name, spec) in &self.outputs {
            out.extend(spec.problems(&format!("{at}.outputs.{name}")));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            out.push(GuardrailError::config(
                format!("{at}.timeout"),
                "must be more than 0",
            ));
        }
        for (name, gate) in &self.gates {
            let at = format!("{at}.gates.{name}");
            if gate.file.is_some() && gate.files_in.is_none() {
                out.push(GuardrailError::config(
                    format!("{at}.file"),
                    "file names the files of files_in, which is not set",
                ));
            }
            if gate.is_link() {
                out.extend(self.link_problems(&at, gate));
            } else if gate.min.is_none() && gate.max.is_none() {
                out.push(GuardrailError::config(
                    format!("{at}.min"),
                    "a gate needs min, max or both",
                ));
            }
            for (key, v) in [("min", gate.min), ("max", gate.max)] {
                if v.is_some_and(|v| !v.is_finite()) {
                    out.push(GuardrailError::config(
                        format!("{at}.{key}"),
                        "must be a finite number",
                    ));
                }
            }
            if gate.is_link() {
                // `figure` names a column there, checked by link_problems.
            } else if let Err(reason) = self.figure_known(&gate.figure) {
                out.push(GuardrailError::config(format!("{at}.figure"), reason));
            }
            if let Some(other) = &gate.relative_to
                && let Err(reason) = self.figure_known(other)
            {
                out.push(GuardrailError::config(format!("{at}.relative_to"), reason));
            }
        }
        out
    }

    /// The problems of a link gate: `figure` and `ids_within` name a table column of this
    /// stage, `files_in` a folder of it, and only one link per gate.
    fn link_problems(&self, at: &str, gate: &GateSpec) -> Vec<GuardrailError> {
        let mut out = Vec::new();
        let column = |key: &str, reference: &str| -> Option<GuardrailError> {
            let problem = match reference.split_once('.') {
                Some((data, col)) if !col.is_empty() => match self.data(data) {
                    Some(spec) if spec.is_table() => return None,
                    Some(_) => format!("{reference}: {data} is not a table"),
                    None => format!("{reference}: {data} is not an input or output of this stage"),
                },
                _ => format!("{reference}: a link names a table column as X.COL"),
            };
            Some(GuardrailError::config(format!("{at}.{key}"), problem))
        };
        out.extend(column("figure", &gate.figure));
        if gate.ids_within.is_some() && gate.files_in.is_some() {
            out.push(GuardrailError::config(
                format!("{at}.files_in"),
                "a gate is one link: ids_within or files_in, not both",
            ));
        }
        if let Some(within) = &gate.ids_within {
            out.extend(column("ids_within", within));
        }
        if let Some(folder) = &gate.files_in {
            match self.data(folder) {
                Some(spec) if !spec.is_table() => {}
                Some(_) => out.push(GuardrailError::config(
                    format!("{at}.files_in"),
                    format!("{folder} is a table, not a folder of files"),
                )),
                None => out.push(GuardrailError::config(
                    format!("{at}.files_in"),
                    format!("{folder} is not an input or output of this stage"),
                )),
            }
        }
        out
    }

    /// The input or output called `name`.
    pub(crate) fn data(&self, name: &str) -> Option<&DataSpec> {
        self.inputs.get(name).or_else(|| self.outputs.get(name))
    }

    /// Whether some check of this stage produces `figure`; `Err` says why not.
    fn figure_known(&self, figure: &str) -> std::result::Result<(), String> {
        let parts: Vec<&str> = figure.splitn(3, '.').collect();
        match parts.as_slice() {
            ["items" | "skipped" | "skipped_fraction"] => Ok(()),
            ["metrics", name] | ["metrics", name, ..] if !name.is_empty() => Ok(()),
            [data, measure, rest @ ..] => {
                let Some(spec) = self.inputs.get(*data).or_else(|| self.outputs.get(*data)) else {
                    return Err(format!(
                        "figure {figure}: {data} is not an input or output of this stage"
                    ));
                };
                match (*measure, rest) {
                    ("rows" | "files" | "bytes", []) => {
                        if *measure == "rows" && spec.kind == DataKind::Videos {
                            Err(format!("figure {figure}: a video folder has no rows"))
                        } else {
                            Ok(())
                        }
                    }
                    ("null_fraction" | "duplicate_fraction" | "min" | "max", [column])
                        if !column.is_empty() =>
                    {
                        if spec.is_table() {
                            Ok(())
                        } else {
                            Err(format!("figure {figure}: {data} is not a table"))
                        }
                    }
                    _ => Err(format!(
                        "figure {figure}: no check produces it (known: X.rows, X.files, X.bytes, X.null_fraction.COL, X.duplicate_fraction.COL, X.min.COL, X.max.COL, items, skipped, skipped_fraction, metrics.NAME)"
                    )),
                }
            }
            _ => Err(format!(
                "figure {figure}: no check produces it (known: X.rows, X.files, X.bytes, X.null_fraction.COL, X.duplicate_fraction.COL, X.min.COL, X.max.COL, items, skipped, skipped_fraction, metrics.NAME)"
            )),
        }
    }
}

/// Every problem of a set of stages: each stage's own, unknown dependencies and cycles,
/// with the dotted key of each.
pub(crate) fn plan_problems(stages: &BTreeMap<String, StageSpec>) -> Vec<GuardrailError> {
    let mut out = Vec::new();
    for (name, spec) in stages {
        let at = format!("stages.{name}");
        if name.is_empty() || name.contains(['.', '/', '\\']) {
            out.push(GuardrailError::config(
                &at,
                "a stage name has no dots or slashes",
            ));
        }
        out.extend(spec.problems(&at));
        for dep in &spec.depends_on {
            if !stages.contains_key(dep) {
                out.push(GuardrailError::config(
                    format!("{at}.depends_on"),
                    format!("unknown stage {dep}"),
                ));
            } else if dep == name {
                out.push(GuardrailError::config(
                    format!("{at}.depends_on"),
                    "a stage cannot depend on itself",
                ));
            }
        }
    }
    if let Err(cycle) = dependency_order(stages) {
        out.push(GuardrailError::config(
            format!("stages.{}.depends_on", cycle[0]),
            format!("dependency cycle: {}", cycle.join(" -> ")),
        ));
    }
    out
}

/// The stages in dependency order (upstream first, ties by name), or a cycle.
pub(crate) fn dependency_order(
    stages: &BTreeMap<String, StageSpec>,
) -> std::result::Result<Vec<String>, Vec<String>> {
    // Kahn's algorithm over the known dependencies; unknown ones are reported elsewhere.
    let mut indegree: BTreeMap<&str, usize> = stages.keys().map(|k| (k.as_str(), 0)).collect();
    for (name, spec) in stages {
        let known = spec
            .depends_on
            .iter()
            .filter(|d| stages.contains_key(*d) && *d != name)
            .collect::<BTreeSet<_>>()
            .len();
        indegree.insert(name, known);
    }
    let mut ready: BTreeSet<&str> = indegree
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(k, _)| *k)
        .collect();
    let mut order = Vec::with_capacity(stages.len());
    while let Some(next) = ready.pop_first() {
        order.push(next.to_string());
        for (name, spec) in stages {
            if spec.depends_on.iter().any(|d| d == next)
                && let Some(d) = indegree.get_mut(name.as_str())
            {
                *d = d.saturating_sub(1);
                if *d == 0 {
                    ready.insert(name);
                }
            }
        }
    }
    if order.len() == stages.len() {
        return Ok(order);
    }
    // Walk from a stage left over along its unfinished dependencies until one repeats.
    let left: BTreeSet<&str> = indegree
        .iter()
        .filter(|(k, _)| !order.iter().any(|o| o == *k))
        .map(|(k, _)| *k)
        .collect();
    let mut path: Vec<String> = Vec::new();
    let mut at = left.first().copied().unwrap_or_default();
    loop {
        if let Some(pos) = path.iter().position(|p| p == at) {
            let mut cycle = path.split_off(pos);
            cycle.push(at.to_string());
            return Err(cycle);
        }
        path.push(at.to_string());
        let next = stages
            .get(at)
            .and_then(|s| s.depends_on.iter().find(|d| left.contains(d.as_str())));
        match next {
            Some(n) => at = n.as_str(),
            None => return Err(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_and_its_producer_merge_into_the_stricter_check_or_not_at_all() {
        let producer = DataSpec::table("t.parquet")
            .with_required_columns(["id", "clip"])
            .with_unique(["id"]);
        let mut input = DataSpec::table("t.parquet").with_required_columns(["id", "score"]);
        input.min_rows = Some(10);
        let mut strict = producer.clone();
        strict.min_rows = Some(100);
        strict.max_rows = Some(5_000);
        let merged = input.merged_with(&strict).unwrap();
        assert_eq!(merged.required_columns, ["id", "score", "clip"]);
        assert_eq!(merged.unique, ["id"]);
        assert_eq!((merged.min_rows, merged.max_rows), (Some(100), Some(5_000)));

        // Two different path columns, dtypes or kinds cannot be one check.
        let mut a = input.clone();
        a.paths_exist = Some("clip".into());
        let mut b = producer.clone();
        b.paths_exist = Some("video".into());
        assert!(a.merged_with(&b).is_none());
        let f32s = DataSpec::features("f").with_dtypes(["float32"]);
        assert!(
            f32s.merged_with(&DataSpec::features("f").with_dtypes(["float64"]))
                .is_none()
        );
        assert!(
            input
                .merged_with(&DataSpec::features("t.parquet"))
                .is_none()
        );
        // A sampled side and an every-file side: every file.
        let mut sampled = DataSpec::videos("v");
        sampled.sample = Some(0.1);
        assert_eq!(
            sampled.merged_with(&DataSpec::videos("v")).unwrap().sample,
            None
        );
    }
}
