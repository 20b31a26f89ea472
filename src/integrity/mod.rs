//! `DataIntegrityChecker`: catches damaged data files before a pipeline spends hours on
//! them, with a report that names the file, the check, what was expected and what was found.
//!
//! This first part checks feature files in NPY format (versions 1–3); metadata tables
//! (Parquet, Arrow IPC, CSV) and videos come next. Every check of a file runs to the end
//! and reports every finding, not only the first.
//!
//! ```no_run
//! use guardrails::integrity::{DataIntegrityChecker, FeatureCheck};
//!
//! let checker = DataIntegrityChecker::new();
//! let check = FeatureCheck::new().with_dtypes(["float32"]).with_rank(2).with_min_rows(1000);
//! let report = checker.validate_feature_file("embeddings.npy", &check)?;
//! println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
//! report.into_result()?; // the first error as GuardrailError::DataIntegrity
//! # Ok::<(), guardrails::GuardrailError>(())
//! ```

mod npy;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::error::{GuardrailError, Result};

pub use npy::FeatureCheck;

/// A file format, as its first bytes tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Format {
    /// NumPy `.npy`.
    Npy,
    /// Apache Parquet.
    Parquet,
    /// Arrow IPC file (Feather v2).
    ArrowIpc,
    /// ZIP (also `.npz`).
    Zip,
    /// MP4 / MOV (ISO base media).
    Mp4,
    /// Matroska / WebM (EBML).
    Matroska,
    /// AVI (RIFF).
    Avi,
    /// None of the above.
    Unknown,
}

impl Format {
    /// Detects the format from the first bytes of a file.
    pub fn detect(head: &[u8]) -> Self {
        if head.starts_with(b"\x93NUMPY") {
            Self::Npy
        } else if head.starts_with(b"PAR1") {
            Self::Parquet
        } else if head.starts_with(b"ARROW1") {
            Self::ArrowIpc
        } else if head.starts_with(b"PK\x03\x04") {
            Self::Zip
        } else if head
            .get(4..8)
            .is_some_and(|b| matches!(b, b"ftyp" | b"moov" | b"mdat" | b"free" | b"wide"))
        {
            Self::Mp4
        } else if head.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
            Self::Matroska
        } else if head.starts_with(b"RIFF") && head.get(8..12) == Some(b"AVI ") {
            Self::Avi
        } else {
            Self::Unknown
        }
    }

    /// The format the file name's extension suggests.
    pub fn from_extension(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "npy" => Self::Npy,
            "parquet" | "pq" => Self::Parquet,
            "arrow" | "feather" | "ipc" => Self::ArrowIpc,
            "npz" | "zip" => Self::Zip,
            "mp4" | "mov" | "m4v" => Self::Mp4,
            "mkv" | "webm" => Self::Matroska,
            "avi" => Self::Avi,
            _ => return None,
        })
    }
}

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingSeverity {
    /// Worth knowing; the file passes.
    Warning,
    /// The file fails.
    Error,
}

/// One thing a check found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// The check, e.g. `"file_length"`.
    pub check: String,
    /// Whether it fails the file.
    pub severity: FindingSeverity,
    /// For people.
    pub message: String,
    /// What the check expected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// What it found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<String>,
}

/// Everything learned about one file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The file.
    pub path: PathBuf,
    /// Its format, by magic bytes.
    pub format: Format,
    /// What it was checked as: `"feature"`, `"table"`, `"video"`.
    pub kind: &'static str,
    /// No error finding.
    pub ok: bool,
    /// Every finding, in the order found.
    pub findings: Vec<Finding>,
    /// What the file holds: shape, dtype, rows, codec…
    pub info: BTreeMap<String, Value>,
}

impl Report {
    fn new(path: &Path, format: Format, kind: &'static str) -> Self {
        Self {
            path: path.to_path_buf(),
            format,
            kind,
            ok: true,
            findings: Vec::new(),
            info: BTreeMap::new(),
        }
    }

    pub(crate) fn error(
        &mut self,
        check: &str,
        message: impl Into<String>,
        expected: Option<String>,
        found: Option<String>,
    ) {
        self.ok = false;
        let message = message.into();
        tracing::error!(path = %self.path.display(), check, %message, "data integrity check failed");
        self.findings.push(Finding {
            check: check.to_string(),
            severity: FindingSeverity::Error,
            message,
            expected,
            found,
        });
    }

    pub(crate) fn warning(&mut self, check: &str, message: impl Into<String>) {
        let message = message.into();
        tracing::warn!(path = %self.path.display(), check, %message, "data integrity warning");
        self.findings.push(Finding {
            check: check.to_string(),
            severity: FindingSeverity::Warning,
            message,
            expected: None,
            found: None,
        });
    }

    pub(crate) fn info(&mut self, key: &str, value: impl Into<Value>) {
        self.info.insert(key.to_string(), value.into());
    }

    /// The report if it passed, else its first error as
    /// [`GuardrailError::DataIntegrity`].
    pub fn into_result(self) -> Result<Self> {
        match self
            .findings
            .iter()
            .find(|f| f.severity == FindingSeverity::Error)
        {
            None => Ok(self),
            Some(f) => Err(GuardrailError::DataIntegrity {
                path: self.path.clone(),
                check: f.check.clone(),
                expected: f.expected.clone().unwrap_or_else(|| "a valid file".into()),
                found: f.found.clone().unwrap_or_else(|| f.message.clone()),
            }),
        }
    }
}

/// Checks data files; see the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct DataIntegrityChecker {
    _private: (),
}

impl DataIntegrityChecker {
    /// A checker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks a feature file (NPY). A file that cannot be opened is an error; everything
    /// wrong inside it is a finding in the report.
    pub fn validate_feature_file(
        &self,
        path: impl AsRef<Path>,
        check: &FeatureCheck,
    ) -> Result<Report> {
        let path = path.as_ref();
        let mut file = std::fs::File::open(path).map_err(|e| GuardrailError::io(path, e))?;
        let len = file
            .metadata()
            .map_err(|e| GuardrailError::io(path, e))?
            .len();
        let mut head = [0u8; 16];
        let n = read_up_to(&mut file, &mut head).map_err(|e| GuardrailError::io(path, e))?;
        let format = Format::detect(&head[..n]);
        let mut report = Report::new(path, format, "feature");
        report.info("file_bytes", len);
        if let Some(by_name) = Format::from_extension(path)
            && by_name != format
        {
            report.warning(
                "format",
                format!("the extension says {by_name:?} but the content is {format:?}"),
            );
        }
        match format {
            Format::Npy => npy::check(path, len, check, &mut report)?,
            other => report.error(
                "format",
                "not a feature file format this checker reads",
                Some("npy".into()),
                Some(format!("{other:?}").to_lowercase()),
            ),
        }
        Ok(report)
    }
}

/// Reads until `buf` is full or the file ends; returns how much was read.
pub(crate) fn read_up_to(file: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
