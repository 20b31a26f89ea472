//! Figures a stage's checks and body produce, and the gates judged on them.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use parking_lot::Mutex;
use serde::Serialize;

use crate::integrity::{
    ConsistencyCheck, DataIntegrityChecker, FindingSeverity, Format, TableCheck, text_column,
};

use super::spec::{GateLevel, GateSpec};

/// The figures of one stage: what its checks measured and its body recorded.
///
/// A figure computed over nothing (the null share of an empty table) is kept as *empty*
/// rather than as a number, so a gate on it fails instead of passing on 0 / 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Figures {
    /// Figure name → value.
    pub values: BTreeMap<String, f64>,
    /// Figures computed over 0 items.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub empty: BTreeSet<String>,
}

impl Figures {
    /// The value of `figure`, if one was produced.
    pub fn get(&self, figure: &str) -> Option<f64> {
        self.values.get(figure).copied()
    }

    pub(crate) fn set(&mut self, figure: impl Into<String>, value: f64) {
        self.values.insert(figure.into(), value);
    }

    /// A share of `total`; empty when `total` is 0.
    pub(crate) fn set_share(&mut self, figure: impl Into<String>, part: u64, total: u64) {
        let figure = figure.into();
        if total == 0 {
            self.empty.insert(figure);
        } else {
            self.values.insert(figure, part as f64 / total as f64);
        }
    }

    pub(crate) fn extend(&mut self, other: Figures) {
        self.values.extend(other.values);
        self.empty.extend(other.empty);
    }
}

/// How one gate came out.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct GateResult {
    /// The stage.
    pub stage: String,
    /// The gate's name.
    pub gate: String,
    /// The figure judged (`a / b` for a ratio).
    pub figure: String,
    /// Its value; `None` when it was not produced or was computed over 0 items.
    pub value: Option<f64>,
    /// The bounds.
    pub min: Option<f64>,
    /// The bounds.
    pub max: Option<f64>,
    /// Mandatory or advisory.
    pub mandatory: bool,
    /// Whether it passed.
    pub passed: bool,
    /// Why, in words, with the figures.
    pub message: String,
}

/// A gate written in code: judges the stage's figures, `Err` says why it failed.
pub type GateFn = Box<dyn Fn(&Figures) -> std::result::Result<(), String> + Send + Sync>;

pub(crate) fn judge(stage: &str, name: &str, gate: &GateSpec, figures: &Figures) -> GateResult {
    let label = match &gate.relative_to {
        Some(other) => format!("{} / {other}", gate.figure),
        None => gate.figure.clone(),
    };
    let value = |figure: &str| -> std::result::Result<f64, String> {
        if figures.empty.contains(figure) {
            return Err(format!("{figure} was computed over 0 items"));
        }
        figures
            .get(figure)
            .ok_or_else(|| format!("{figure} was not produced by any check or by the stage body"))
    };
    let measured = value(&gate.figure).and_then(|v| match &gate.relative_to {
        None => Ok(v),
        Some(other) => {
            let d = value(other)?;
            if d == 0.0 {
                Err(format!("{other} is 0, so the ratio {label} is undefined"))
            } else {
                Ok(v / d)
            }
        }
    });
    let bounds = match (gate.min, gate.max) {
        (Some(lo), Some(hi)) => format!("between {lo} and {hi}"),
        (Some(lo), None) => format!("at least {lo}"),
        (None, Some(hi)) => format!("at most {hi}"),
        (None, None) => "any value".to_string(),
    };
    let (value, passed, message) = match measured {
        Err(why) => (None, false, format!("{label} must be {bounds}, but {why}")),
        Ok(v) => {
            let ok = gate.min.is_none_or(|lo| v >= lo) && gate.max.is_none_or(|hi| v <= hi);
            let message = if ok {
                format!("{label} = {v}, {bounds}")
            } else {
                format!("{label} = {v}, expected {bounds}")
            };
            (Some(v), ok, message)
        }
    };
    GateResult {
        stage: stage.to_string(),
        gate: name.to_string(),
        figure: label,
        value,
        min: gate.min,
        max: gate.max,
        mandatory: gate.level == GateLevel::Mandatory,
        passed,
        message,
    }
}

/// The column figures of a table that gates ask for: null and duplicate shares, min, max.
pub(crate) fn table_column_figures(
    data: &str,
    batches: &[RecordBatch],
    wanted: &BTreeSet<(String, String)>,
) -> Figures {
    let mut figures = Figures::default();
    let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    for (measure, column) in wanted {
        let key = format!("{data}.{measure}.{column}");
        let arrays: Vec<&dyn Array> = batches
            .iter()
            .filter_map(|b| b.column_by_name(column).map(|a| a.as_ref()))
            .collect();
        if rows == 0 {
            figures.empty.insert(key);
            continue;
        }
        if arrays.len() != batches.len() {
            // The column is missing; the table check reports that, the gate fails on it.
            continue;
        }
        match measure.as_str() {
            "null_fraction" => {
                let nulls: u64 = arrays.iter().map(|a| a.null_count() as u64).sum();
                figures.set_share(key, nulls, rows);
            }
            "duplicate_fraction" => {
                let (dups, non_null) = duplicates(&arrays);
                figures.set_share(key, dups, non_null);
            }
            "min" | "max" => match numeric_range(&arrays) {
                Some((lo, hi)) => figures.set(key, if measure == "min" { lo } else { hi }),
                None => {
                    figures.empty.insert(key);
                }
            },
            _ => {}
        }
    }
    figures
}

/// How many non-null values repeat an earlier one, and how many non-null values there are.
fn duplicates(arrays: &[&dyn Array]) -> (u64, u64) {
    let Some(first) = arrays.first() else {
        return (0, 0);
    };
    let fields = vec![arrow_row::SortField::new(first.data_type().clone())];
    let Ok(converter) = arrow_row::RowConverter::new(fields) else {
        return (0, 0);
    };
    let mut seen: HashSet<Box<[u8]>> = HashSet::new();
    let (mut dups, mut non_null) = (0u64, 0u64);
    for array in arrays {
        let Ok(rows) = converter.convert_columns(&[arrow_array::make_array(array.to_data())])
        else {
            continue;
        };
        for i in 0..array.len() {
            if array.is_null(i) {
                continue;
            }
            non_null += 1;
            if !seen.insert(rows.row(i).as_ref().into()) {
                dups += 1;
            }
        }
    }
    (dups, non_null)
}

/// The smallest and largest finite number in the arrays, cast to f64; `None` when there
/// is none (all null, not numeric).
fn numeric_range(arrays: &[&dyn Array]) -> Option<(f64, f64)> {
    let mut range: Option<(f64, f64)> = None;
    for array in arrays {
        let Ok(cast) = arrow_cast::cast(
            &arrow_array::make_array(array.to_data()),
            &arrow_schema::DataType::Float64,
        ) else {
            return None;
        };
        let values = cast.as_any().downcast_ref::<arrow_array::Float64Array>()?;
        for v in values.iter().flatten().filter(|v| v.is_finite()) {
            range = Some(match range {
                None => (v, v),
                Some((lo, hi)) => (lo.min(v), hi.max(v)),
            });
        }
    }
    range
}

/// Where the stage's data named `X` is read now (an output at its temporary path), with
/// the format its declared name says.
pub(crate) type Locate<'a> = dyn Fn(&str) -> Option<(PathBuf, Option<Format>)> + 'a;

/// How many rows break a link gate, and a few of them; `Err` when it cannot be judged.
struct Broken {
    count: u64,
    checked: u64,
    detail: String,
}

/// Judges a link gate (`ids_within`, `files_in`): the count of rows breaking the link
/// becomes the figure its bounds (at most 0 by default) judge. `locate` gives where the
/// stage's data named `X` is read now (an output at its temporary path).
pub(crate) fn judge_link(
    checker: &DataIntegrityChecker,
    stage: &str,
    name: &str,
    gate: &GateSpec,
    figures: &Figures,
    locate: &Locate<'_>,
) -> GateResult {
    let label = match (&gate.ids_within, &gate.files_in) {
        (Some(within), _) => format!("{} not in {within}", gate.figure),
        (None, Some(folder)) => format!("{} without a file in {folder}", gate.figure),
        (None, None) => gate.figure.clone(),
    };
    let broken = match (&gate.ids_within, &gate.files_in) {
        (Some(within), _) => ids_outside(checker, &gate.figure, within, locate),
        (None, Some(folder)) => rows_without_file(
            checker,
            &gate.figure,
            folder,
            gate.file.as_deref().unwrap_or("{value}"),
            locate,
        ),
        (None, None) => Err("not a link gate".to_string()),
    };
    let mut spec = gate.clone();
    spec.figure = label.clone();
    if spec.min.is_none() && spec.max.is_none() {
        spec.max = Some(0.0);
    }
    let mut own = Figures::default();
    if let Some(other) = &gate.relative_to {
        match figures.get(other) {
            Some(v) => own.set(other.clone(), v),
            None if figures.empty.contains(other) => {
                own.empty.insert(other.clone());
            }
            None => {}
        }
    }
    let detail = match &broken {
        Ok(b) if b.checked == 0 => {
            own.empty.insert(label.clone());
            String::new()
        }
        Ok(b) => {
            own.set(label.clone(), b.count as f64);
            b.detail.clone()
        }
        Err(why) => why.clone(),
    };
    let mut result = judge(stage, name, &spec, &own);
    if broken.is_err() {
        result.message = format!("{label} cannot be judged: {detail}");
    } else if !result.passed && !detail.is_empty() {
        result.message = format!("{}; {detail}", result.message);
    }
    result
}

/// `X.COL` as (the data's path and format, the column).
fn column_ref<'a>(
    reference: &'a str,
    locate: &Locate<'_>,
) -> std::result::Result<(PathBuf, Option<Format>, &'a str), String> {
    let (data, column) = reference
        .split_once('.')
        .ok_or_else(|| format!("{reference} is not X.COL"))?;
    let (path, format) =
        locate(data).ok_or_else(|| format!("{data} has not been written by the stage"))?;
    Ok((path, format, column))
}

fn ids_outside(
    checker: &DataIntegrityChecker,
    figure: &str,
    within: &str,
    locate: &Locate<'_>,
) -> std::result::Result<Broken, String> {
    let (path, format, column) = column_ref(figure, locate)?;
    let (reference, ref_format, ref_column) = column_ref(within, locate)?;
    let mut check = ConsistencyCheck::new()
        .with_ids_subset_of(column, &reference, ref_column)
        .with_max_examples(5);
    // One hint serves both tables only when they agree; otherwise each goes by its bytes.
    if let Some(f) = format.filter(|f| ref_format.is_none_or(|r| r == *f)) {
        check = check.with_format_hint(f);
    }
    let report = checker
        .validate_data_consistency(&path, &check)
        .map_err(|e| e.to_string())?;
    let number = |key: &str| report.info.get(key).and_then(serde_json::Value::as_u64);
    let (Some(checked), Some(count)) = (
        number(&format!("ids_checked.{column}")),
        number(&format!("ids_unknown.{column}")),
    ) else {
        return Err(report
            .findings
            .iter()
            .find(|f| f.severity == FindingSeverity::Error)
            .map_or_else(|| "the ids could not be read".into(), |f| f.message.clone()));
    };
    let detail = report
        .findings
        .iter()
        .find(|f| f.check == "id_subset")
        .map(|f| f.message.clone())
        .unwrap_or_default();
    Ok(Broken {
        count,
        checked,
        detail,
    })
}

/// The file a row's value names under a `files_in` template.
fn file_for(template: &str, value: &str) -> String {
    let name = value.rsplit(['/', '\\']).next().unwrap_or(value);
    let stem = match name.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => name,
    };
    template
        .replace("{value}", value)
        .replace("{name}", name)
        .replace("{stem}", stem)
}

fn rows_without_file(
    checker: &DataIntegrityChecker,
    figure: &str,
    folder: &str,
    template: &str,
    locate: &Locate<'_>,
) -> std::result::Result<Broken, String> {
    const EXAMPLES: usize = 5;
    let (path, format, column) = column_ref(figure, locate)?;
    let (dir, _) = locate(folder).ok_or_else(|| format!("{folder} has not been written"))?;
    // Streamed: one stat per row as each batch is read, a few examples kept.
    let state = Arc::new(Mutex::new((0u64, 0u64, Vec::<String>::new())));
    let (seen, col, tpl) = (Arc::clone(&state), column.to_string(), template.to_string());
    let mut check = TableCheck::new()
        .with_allow_empty(true)
        .with_required_columns([column.to_string()])
        .with_batch_check(format!("files in {folder}"), move |batch| {
            let Some(values) = text_column(batch, &col) else {
                return Ok(());
            };
            let mut s = seen.lock();
            for v in values.as_string::<i32>().iter().flatten() {
                s.0 += 1;
                let file = file_for(&tpl, v);
                if !dir.join(&file).is_file() {
                    s.1 += 1;
                    if s.2.len() < EXAMPLES {
                        s.2.push(file);
                    }
                }
            }
            Ok(())
        });
    if let Some(f) = format {
        check = check.with_format_hint(f);
    }
    let report = checker
        .validate_metadata_file(&path, &check)
        .map_err(|e| e.to_string())?;
    if let Some(f) = report
        .findings
        .iter()
        .find(|f| f.severity == FindingSeverity::Error)
    {
        return Err(f.message.clone());
    }
    let (checked, count, first) = std::mem::take(&mut *state.lock());
    Ok(Broken {
        count,
        checked,
        detail: if first.is_empty() {
            String::new()
        } else {
            format!("first missing: {}", first.join(", "))
        },
    })
}
