//! `DataIntegrityChecker`: catches damaged data files before a pipeline spends hours on
//! them, with a report that names the file, the check, what was expected and what was found.
//!
//! It reads metadata tables (Parquet, Arrow IPC file and stream, CSV) against a
//! [`TableCheck`], feature files (NPY versions 1–3, Parquet) against a [`FeatureCheck`],
//! videos (MP4/MOV, Matroska/WebM, AVI) against a [`VideoCheck`], and checks
//! that the files a table names exist and that its ids appear in another table
//! ([`ConsistencyCheck`]). Every check of a file runs to the end and reports every
//! finding, not only the first. The format comes from the file's first bytes; an
//! extension that says otherwise is a warning.
//!
//! ```no_run
//! use guardrails::integrity::{DataIntegrityChecker, FeatureCheck, TableCheck};
//!
//! let checker = DataIntegrityChecker::new();
//! let check = FeatureCheck::new().with_dtypes(["float32"]).with_rank(2).with_min_rows(1000);
//! let report = checker.validate_feature_file("embeddings.npy", &check)?;
//! println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
//! report.into_result()?; // the first error as GuardrailError::DataIntegrity
//!
//! let table = TableCheck::new()
//!     .with_required_columns(["id", "path"])
//!     .with_not_null(["id", "path"])
//!     .with_unique(["id"])
//!     .with_paths_exist("path");
//! let (report, batches) = checker.load_metadata_file("metadata.parquet", &table)?;
//! report.into_result()?;
//! let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
//! # let _ = rows;
//! # Ok::<(), guardrails::GuardrailError>(())
//! ```

mod consistency;
mod features;
mod npy;
mod refs;
mod spill;
mod table;
mod video;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use serde::Serialize;
use serde_json::Value;

use crate::error::{GuardrailError, Result};

pub use consistency::ConsistencyCheck;
pub(crate) use consistency::text_column;
pub use features::FeatureCheck;
pub use table::{AllowedValues, BatchCheckFn, DEFAULT_MEMORY_LIMIT, TableCheck};
pub use video::VideoCheck;

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
    /// Arrow IPC stream.
    ArrowStream,
    /// Comma- or tab-separated text (found by sniffing, since CSV has no magic bytes).
    Csv,
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
        } else if head.starts_with(b"PAR1") || head.starts_with(b"PARE") {
            Self::Parquet
        } else if head.starts_with(b"ARROW1") {
            Self::ArrowIpc
        } else if head.starts_with(&[0xFF, 0xFF, 0xFF, 0xFF]) || table::is_legacy_stream(head) {
            Self::ArrowStream
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
        } else if table::looks_like_csv(head) {
            Self::Csv
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
            "arrows" => Self::ArrowStream,
            "csv" | "tsv" => Self::Csv,
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
    /// The file uses a feature this checker cannot read (encryption, a byte order, a
    /// codec), so it could not be verified. Not a sign of damage, but the file is not
    /// vouched for either: the report is not `ok`.
    Unsupported,
    /// The file is damaged or breaks a requirement: it fails.
    Error,
}

/// The outcome of one file's check, for scripts that must tell damage from "cannot tell".
///
/// Verdicts order by severity, so the worst of several reports is their `max`.
///
/// ```
/// use guardrails::integrity::{DataIntegrityChecker, TableCheck, Verdict};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("ids.csv");
/// std::fs::write(&path, "id,name\n1,a\n2,b\n")?;
/// let report = DataIntegrityChecker::new().validate_metadata_file(&path, &TableCheck::new())?;
/// assert_eq!(report.verdict, Verdict::Pass);
/// assert!(Verdict::Pass < Verdict::Unsupported && Verdict::Unsupported < Verdict::Failed);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every check ran and passed.
    Pass,
    /// Nothing wrong was found, but part of the file uses a feature this checker cannot
    /// read (see the `unsupported` findings), so it was not verified.
    Unsupported,
    /// At least one error finding: the file is damaged or breaks a requirement.
    Failed,
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
    /// Verified and no error finding (the verdict is [`Verdict::Pass`]).
    pub ok: bool,
    /// Pass, unsupported (could not be verified) or failed.
    pub verdict: Verdict,
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
            verdict: Verdict::Pass,
            findings: Vec::new(),
            info: BTreeMap::new(),
        }
    }

    /// A failing report for a file that could not be read at all (missing, no permission),
    /// so that a list of reports still holds one per file.
    pub fn unreadable(path: &Path, kind: &'static str, err: &GuardrailError) -> Self {
        let mut report = Self::new(path, Format::Unknown, kind);
        report.error(
            "open",
            err.report().to_string(),
            Some("a readable file".into()),
            Some(err.to_string()),
        );
        report
    }

    pub(crate) fn error(
        &mut self,
        check: &str,
        message: impl Into<String>,
        expected: Option<String>,
        found: Option<String>,
    ) {
        self.ok = false;
        self.verdict = Verdict::Failed;
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

    /// Records that the file uses `feature`, which this checker cannot read. The file is
    /// not called damaged; it is not vouched for either.
    pub(crate) fn unsupported(&mut self, check: &str, feature: &str, message: impl Into<String>) {
        self.ok = false;
        if self.verdict == Verdict::Pass {
            self.verdict = Verdict::Unsupported;
        }
        let message = message.into();
        tracing::warn!(path = %self.path.display(), check, feature, %message, "data integrity check cannot verify this file");
        self.findings.push(Finding {
            check: check.to_string(),
            severity: FindingSeverity::Unsupported,
            message,
            expected: Some("a feature this checker reads".into()),
            found: Some(feature.to_string()),
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

    /// The report if it passed, else its first error (or, when nothing is damaged, its
    /// first unsupported feature) as [`GuardrailError::DataIntegrity`]: a file that could
    /// not be verified is not let through as if it had been.
    pub fn into_result(self) -> Result<Self> {
        let first = |severity| self.findings.iter().find(|f| f.severity == severity);
        match first(FindingSeverity::Error).or_else(|| first(FindingSeverity::Unsupported)) {
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
        let (_, len, mut report) = open_report(path, "feature")?;
        match report.format {
            Format::Npy => npy::check(path, len, check, &mut report)?,
            Format::Parquet => table::check_parquet_features(path, check, &mut report)?,
            other => report.error(
                "format",
                "not a feature file format this checker reads",
                Some("npy or parquet".into()),
                Some(format!("{other:?}").to_lowercase()),
            ),
        }
        Ok(report)
    }
}

impl DataIntegrityChecker {
    /// Checks a video container (MP4/MOV, Matroska/WebM, AVI) for truncation and damage,
    /// and optionally decodes it with ffmpeg. A file that cannot be opened is an error;
    /// everything wrong inside it is a finding in the report.
    pub fn validate_video_file(
        &self,
        path: impl AsRef<Path>,
        check: &VideoCheck,
    ) -> Result<Report> {
        let path = path.as_ref();
        let (file, len, mut report) = open_report(path, "video")?;
        video::check(path, file, len, check, &mut report)?;
        Ok(report)
    }

    /// Checks a metadata table (Parquet, Arrow IPC file or stream, CSV). A file that cannot
    /// be opened is an error; everything wrong inside it is a finding in the report.
    pub fn validate_metadata_file(
        &self,
        path: impl AsRef<Path>,
        check: &TableCheck,
    ) -> Result<Report> {
        self.table(path.as_ref(), check, false)
            .map(|(report, _)| report)
    }

    /// Like [`validate_metadata_file`](Self::validate_metadata_file), and hands back the
    /// record batches it read, so the caller does not read the file twice. The whole table
    /// is then held in memory (quick mode is off for this call). The batches are empty when
    /// the file could not be read.
    pub fn load_metadata_file(
        &self,
        path: impl AsRef<Path>,
        check: &TableCheck,
    ) -> Result<(Report, Vec<RecordBatch>)> {
        self.table(path.as_ref(), check, true)
            .map(|(report, batches)| (report, batches.unwrap_or_default()))
    }

    fn table(
        &self,
        path: &Path,
        check: &TableCheck,
        keep: bool,
    ) -> Result<(Report, Option<Vec<RecordBatch>>)> {
        // The readers open the file again with what each needs (buffered, seekable).
        let (mut file, _, mut report) = open_report(path, "table")?;
        if report.format == Format::Unknown
            && check.format_hint.or_else(|| Format::from_extension(path)) == Some(Format::Csv)
        {
            use std::io::Seek;
            let mut head = [0u8; 4096];
            let n = file
                .rewind()
                .and_then(|()| read_up_to(&mut file, &mut head))
                .map_err(|e| GuardrailError::io(path, e))?;
            if table::looks_like_text(&head[..n]) {
                report.format = Format::Csv;
                report.findings.retain(|f| f.check != "format");
            }
        }
        let batches = table::check_table(path, report.format, check, keep, &mut report)?;
        Ok((report, batches))
    }
}

/// Opens a file, detects its format from the first 4 KiB and starts its report.
fn open_report(path: &Path, kind: &'static str) -> Result<(std::fs::File, u64, Report)> {
    let mut file = std::fs::File::open(path).map_err(|e| GuardrailError::io(path, e))?;
    let len = file
        .metadata()
        .map_err(|e| GuardrailError::io(path, e))?
        .len();
    let mut head = [0u8; 4096];
    let n = read_up_to(&mut file, &mut head).map_err(|e| GuardrailError::io(path, e))?;
    let format = Format::detect(&head[..n]);
    let mut report = Report::new(path, format, kind);
    report.info("file_bytes", len);
    if let Some(by_name) = Format::from_extension(path)
        && by_name != format
    {
        report.warning(
            "format",
            format!("the extension says {by_name:?} but the content is {format:?}"),
        );
    }
    Ok((file, len, report))
}

thread_local! {
    /// How many [`catch_panic`] calls this thread is inside: a panic there becomes a
    /// finding and must not also print.
    static CATCHING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Wraps the panic hook in place at the first [`catch_panic`] once: the wrapper is silent
/// for a panic inside a `catch_panic` on its own thread and hands every other panic to the
/// hook it found (the user's or the default), so the user's hook sees their panics as
/// before. A hook the user sets later replaces the wrapper; caught panics then reach it.
fn quiet_caught_panics() {
    static WRAPPED: std::sync::Once = std::sync::Once::new();
    WRAPPED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CATCHING.try_with(std::cell::Cell::get).unwrap_or(0) == 0 {
                previous(info);
            }
        }));
    });
}

/// Runs a third-party parser so that a panic on hostile bytes becomes a finding, not a
/// crash of the caller's pipeline; the panic is not printed (the finding says it).
pub(crate) fn catch_panic<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    quiet_caught_panics();
    // Restores the count however `f` ends.
    struct Inside;
    impl Drop for Inside {
        fn drop(&mut self) {
            let _ = CATCHING.try_with(|c| c.set(c.get().saturating_sub(1)));
        }
    }
    let _ = CATCHING.try_with(|c| c.set(c.get().saturating_add(1)));
    let inside = Inside;
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    drop(inside);
    caught.map_err(|payload| {
        format!(
            "the reader panicked: {}",
            crate::error::panic_message(payload.as_ref())
        )
    })
}

/// [`catch_panic`] around a fallible read: a read error or a panic both come back as text
/// for a finding.
pub(crate) fn catch_read<T, E: std::fmt::Display>(
    f: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, String> {
    catch_panic(f).and_then(|r| r.map_err(|e| e.to_string()))
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
