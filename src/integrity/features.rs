//! What a feature file or table must be, whatever its format: the expectations of dtype,
//! rank, shape, rows and finiteness that the NPY reader and the Parquet feature scan both
//! judge against.

use super::Report;

/// What a feature file must be.
///
/// ```
/// use guardrails::integrity::FeatureCheck;
/// let check = FeatureCheck::new()
///     .with_dtypes(["float32", "float16"])
///     .with_shape([None, Some(768)]) // any number of rows of 768 values
///     .with_min_rows(1);
/// assert!(check.finite);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureCheck {
    /// Accepted dtypes by numpy name (`"float32"`, `"int64"`…); empty accepts any.
    pub dtypes: Vec<String>,
    /// Expected shape; `None` in a position accepts any size there.
    pub shape: Option<Vec<Option<u64>>>,
    /// Expected number of dimensions.
    pub rank: Option<usize>,
    /// Fewest rows (first dimension).
    pub min_rows: Option<u64>,
    /// Scan float and complex data for NaN and infinities (default on).
    pub finite: bool,
    /// Accept column-major (Fortran order) arrays (default on; reported either way).
    pub allow_fortran_order: bool,
}

impl FeatureCheck {
    /// Any dtype and shape, finite values required, Fortran order allowed.
    pub fn new() -> Self {
        Self {
            dtypes: Vec::new(),
            shape: None,
            rank: None,
            min_rows: None,
            finite: true,
            allow_fortran_order: true,
        }
    }

    /// Accepts only these dtypes.
    #[must_use]
    pub fn with_dtypes<I, S>(mut self, dtypes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.dtypes = dtypes.into_iter().map(Into::into).collect();
        self
    }

    /// Requires this shape (`None` = any size in that position).
    pub fn with_shape<I: IntoIterator<Item = Option<u64>>>(mut self, shape: I) -> Self {
        self.shape = Some(shape.into_iter().collect());
        self
    }

    /// Requires this many dimensions.
    #[must_use]
    pub fn with_rank(mut self, rank: usize) -> Self {
        self.rank = Some(rank);
        self
    }

    /// Requires at least this many rows.
    #[must_use]
    pub fn with_min_rows(mut self, rows: u64) -> Self {
        self.min_rows = Some(rows);
        self
    }

    /// Turns the finite scan on or off.
    #[must_use]
    pub fn with_finite(mut self, finite: bool) -> Self {
        self.finite = finite;
        self
    }

    /// Accepts or refuses Fortran-order arrays.
    #[must_use]
    pub fn with_fortran_order(mut self, allow: bool) -> Self {
        self.allow_fortran_order = allow;
        self
    }
}

impl Default for FeatureCheck {
    fn default() -> Self {
        Self::new()
    }
}

/// The caller's expectations of dtype, rank, shape and rows, for any feature format.
pub(crate) fn check_expectations(
    check: &FeatureCheck,
    dtypes: &[String],
    shape: &[u64],
    report: &mut Report,
) {
    let unexpected: Vec<&str> = dtypes
        .iter()
        .filter(|d| !check.dtypes.is_empty() && !check.dtypes.contains(d))
        .map(String::as_str)
        .collect();
    if !unexpected.is_empty() {
        report.error(
            "dtype",
            "unexpected dtype",
            Some(check.dtypes.join(" or ")),
            Some(unexpected.join(", ")),
        );
    }
    if let Some(rank) = check.rank
        && rank != shape.len()
    {
        report.error(
            "rank",
            "unexpected number of dimensions",
            Some(rank.to_string()),
            Some(shape.len().to_string()),
        );
    }
    if let Some(want) = &check.shape {
        let fits = want.len() == shape.len()
            && want
                .iter()
                .zip(shape)
                .all(|(w, s)| w.is_none_or(|w| w == *s));
        if !fits {
            let show: Vec<String> = want
                .iter()
                .map(|d| d.map_or("*".into(), |d| d.to_string()))
                .collect();
            report.error(
                "shape",
                "unexpected shape",
                Some(format!("({})", show.join(", "))),
                Some(format!("{shape:?}")),
            );
        }
    }
    if let Some(min) = check.min_rows {
        let rows = shape.first().copied().unwrap_or(1);
        if rows < min {
            report.error(
                "min_rows",
                "too few rows",
                Some(format!(">= {min}")),
                Some(rows.to_string()),
            );
        }
    }
}
