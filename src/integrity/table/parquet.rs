//! Parquet tables through arrow-rs: the footer first (schema, row groups, statistics), then
//! a streaming scan of every page in bounded memory. With the `crc` feature of `parquet`
//! on (this crate turns it on), the page reader verifies each page's CRC-32 where the
//! writer stored one.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, Float64Type};
use arrow_array::{Array, ArrayRef, ArrowPrimitiveType, PrimitiveArray, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::file::metadata::{FileMetaData, ParquetMetaData};

use super::{TableScan, TableSource, check_rows, check_schema};
use crate::error::{GuardrailError, Result};
use crate::integrity::features::check_expectations;
use crate::integrity::{FeatureCheck, Report, catch_read};

/// Rows per decoded batch: large enough to amortise per-batch work, small enough that a
/// wide table stays within a few tens of MiB.
pub(crate) const BATCH_ROWS: usize = 8192;

/// What one decoded Parquet batch may hold, by the footer's uncompressed sizes. Rows
/// alone do not bound memory: 8 192 rows of megabyte strings are gigabytes, and past
/// 2 GiB a string column's 32-bit offsets overflow.
const BATCH_BYTES: u64 = 32 << 20;

/// Rows per batch such that the widest row group's rows, at their average uncompressed
/// size, fill at most [`BATCH_BYTES`]; between 1 and [`BATCH_ROWS`].
fn batch_rows(metadata: &ParquetMetaData) -> usize {
    let widest = metadata
        .row_groups()
        .iter()
        .filter_map(|rg| {
            let rows = u64::try_from(rg.num_rows()).ok().filter(|&r| r > 0)?;
            // The footer's total_byte_size may be missing (0) or low; the column chunks'
            // uncompressed sizes are summed as well and the larger taken.
            let chunks: u64 = rg
                .columns()
                .iter()
                .map(|c| u64::try_from(c.uncompressed_size()).unwrap_or(0))
                .fold(0, u64::saturating_add);
            let bytes = chunks.max(u64::try_from(rg.total_byte_size()).unwrap_or(0));
            Some(bytes.div_ceil(rows))
        })
        .max()
        .unwrap_or(0);
    if widest == 0 {
        return BATCH_ROWS;
    }
    usize::try_from(BATCH_BYTES / widest)
        .unwrap_or(BATCH_ROWS)
        .clamp(1, BATCH_ROWS)
}

pub(super) fn check(
    src: &TableSource<'_>,
    report: &mut Report,
) -> Result<Option<Vec<RecordBatch>>> {
    let path = src.path;
    let Some(builder) = open(path, report)? else {
        return Ok(None);
    };
    let metadata = builder.metadata().clone();
    let schema = builder.schema().clone();
    let footer_rows = footer_info(&metadata, report);
    let batch_rows = batch_rows(&metadata);
    report.info("batch_rows", batch_rows);
    check_schema(&schema, src.check, report);

    let mut scan = TableScan::new(path, src.check, src.keep_batches);
    // Quick mode: footer statistics answer null counts; columns without them are scanned.
    let quick = src.check.quick && !src.keep_batches;
    if quick {
        let not_null: Vec<String> = scan.columns_needing_null_scan().cloned().collect();
        let mut missing_stats = Vec::new();
        for column in not_null {
            if schema.field_with_name(&column).is_err() {
                continue;
            }
            match nulls_from_statistics(&metadata, &column) {
                Some(n) => scan.nulls_from_statistics(&column, n),
                None => missing_stats.push(column),
            }
        }
        if !missing_stats.is_empty() {
            report.warning(
                "statistics",
                format!(
                    "no null-count statistics for {}; those columns were scanned",
                    missing_stats.join(", ")
                ),
            );
        }
    }
    let projection: Option<BTreeSet<String>> = if quick {
        src.check.value_columns().map(|mut cols| {
            cols.extend(scan.columns_needing_null_scan().cloned());
            cols
        })
    } else {
        None
    };
    let roots: Option<Vec<usize>> = projection.as_ref().map(|cols| {
        schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| cols.contains(f.name()))
            .map(|(i, _)| i)
            .collect()
    });
    // A column whose one row decodes past the memory limit (parquet-testing's
    // large_string_map holds 1 GiB strings) is not decoded: arrow-rs materialises each
    // value and the page holding it whole. Its page headers are walked instead, and a
    // check that needs its values says it could not be verified.
    let heavy = if src.keep_batches {
        Vec::new()
    } else {
        too_wide_to_decode(&metadata, decode_limit(src.check.memory_limit))
    };
    let roots = if heavy.is_empty() {
        roots
    } else {
        let needed = src.check.value_columns();
        let limit = decode_limit(src.check.memory_limit);
        set_aside(report, path, &metadata, &schema, &heavy, limit, |name| {
            needed.as_ref().is_none_or(|c| c.contains(name))
                || scan.columns_needing_null_scan().any(|c| c == name)
        });
        let all = roots.unwrap_or_else(|| (0..schema.fields().len()).collect());
        Some(
            all.into_iter()
                .filter(|r| !heavy.iter().any(|(h, _)| h == r))
                .collect(),
        )
    };
    let scan_pages = roots.as_ref().is_none_or(|r| !r.is_empty());
    report.info("pages_scanned", scan_pages);
    if scan_pages {
        let mask = match &roots {
            Some(r) => ProjectionMask::roots(builder.parquet_schema(), r.iter().copied()),
            None => ProjectionMask::all(),
        };
        let failure = scan.drain(|| {
            builder
                .with_batch_size(batch_rows)
                .with_projection(mask)
                .build()
                .map_err(|e| e.to_string())
        });
        match failure {
            Some(message) => pages_failed(report, path, &metadata, scan.rows(), message),
            None => pages_match_footer(report, scan.rows(), footer_rows),
        }
    }
    check_rows(footer_rows, src.check, report);
    Ok(scan.finish(&schema, report))
}

/// The most one row of a column may decode to: the memory limit, but never below one
/// batch's worth ([`BATCH_BYTES`]), so that a limit set low to make `unique` spill does
/// not stop ordinary rows from being read.
fn decode_limit(memory_limit: usize) -> usize {
    memory_limit.max(usize::try_from(BATCH_BYTES).unwrap_or(usize::MAX))
}

/// Top-level columns whose largest row (a row group's uncompressed bytes of the column
/// over its rows) exceeds `limit`, with that size.
fn too_wide_to_decode(metadata: &ParquetMetaData, limit: usize) -> Vec<(usize, u64)> {
    let descr = metadata.file_metadata().schema_descr();
    let limit = u64::try_from(limit).unwrap_or(u64::MAX);
    let mut widest: Vec<u64> = vec![0; descr.root_schema().get_fields().len()];
    for rg in metadata.row_groups() {
        let Some(rows) = u64::try_from(rg.num_rows()).ok().filter(|&r| r > 0) else {
            continue;
        };
        let mut per_root = vec![0u64; widest.len()];
        for (leaf, chunk) in rg.columns().iter().enumerate() {
            let root = descr.get_column_root_idx(leaf);
            if let Some(slot) = per_root.get_mut(root) {
                *slot = slot.saturating_add(u64::try_from(chunk.uncompressed_size()).unwrap_or(0));
            }
        }
        for (w, bytes) in widest.iter_mut().zip(per_root) {
            *w = (*w).max(bytes / rows);
        }
    }
    widest
        .into_iter()
        .enumerate()
        .filter(|&(_, per_row)| per_row > limit)
        .collect()
}

/// Reports each column of `heavy` (too wide to decode within `limit`): unsupported when a
/// check needs its values (`needed`), else a warning; then walks their page headers so
/// their structure is still checked.
fn set_aside(
    report: &mut Report,
    path: &Path,
    metadata: &ParquetMetaData,
    schema: &arrow_schema::Schema,
    heavy: &[(usize, u64)],
    limit: usize,
    needed: impl Fn(&str) -> bool,
) {
    for &(root, per_row) in heavy {
        let name = schema.field(root).name();
        let why = format!(
            "a row of column {name} decodes to about {} MiB, more than the {} MiB memory limit",
            per_row >> 20,
            limit >> 20
        );
        if needed(name) {
            report.unsupported(
                "memory",
                "values larger than the memory limit",
                format!("{why}: its values were not read, so the checks on them were not made (raise the limit to read it)"),
            );
        } else {
            report.warning(
                "decode",
                format!("{why}: its page headers and sizes were checked, its values not decoded"),
            );
        }
    }
    if let Err(message) = walk_pages(path, metadata, heavy) {
        pages_failed(report, path, metadata, 0, message);
    }
}

/// The rows the pages held must be the rows the footer's row groups hold.
fn pages_match_footer(report: &mut Report, pages: u64, footer: u64) {
    if pages != footer {
        report.error(
            "row_count",
            format!("the pages hold {pages} rows, the footer says {footer}"),
            Some(format!("{footer} rows")),
            Some(format!("{pages} rows")),
        );
    }
}

/// Walks the page headers of `roots`' column chunks without reading the pages: each
/// header must parse, each page must fit in its chunk, and the data pages must hold the
/// values the footer counts.
fn walk_pages(
    path: &Path,
    metadata: &ParquetMetaData,
    roots: &[(usize, u64)],
) -> std::result::Result<(), String> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = File::open(path).map_err(|e| e.to_string())?;
    let reader = catch_read(|| SerializedFileReader::new(file))?;
    let descr = metadata.file_metadata().schema_descr();
    for (g, rg) in metadata.row_groups().iter().enumerate() {
        let group = catch_read(|| reader.get_row_group(g))?;
        for (leaf, chunk) in rg.columns().iter().enumerate() {
            if !roots
                .iter()
                .any(|&(r, _)| r == descr.get_column_root_idx(leaf))
            {
                continue;
            }
            let mut pages = catch_read(|| group.get_column_page_reader(leaf))?;
            let mut values: u64 = 0;
            catch_read(|| -> parquet::errors::Result<()> {
                while let Some(page) = pages.peek_next_page()? {
                    if !page.is_dict {
                        let n = page.num_levels.or(page.num_rows).unwrap_or(0);
                        values = values.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
                    }
                    pages.skip_next_page()?;
                }
                Ok(())
            })?;
            let expected = u64::try_from(chunk.num_values()).unwrap_or(0);
            if values != expected {
                return Err(format!(
                    "column {} in row group {g}: the pages hold {values} values, the footer says {expected}",
                    chunk.column_path()
                ));
            }
        }
    }
    Ok(())
}

/// Opens a Parquet file up to its footer: the tail is checked before arrow-rs reads
/// anything, and an unreadable footer is a finding (`None`).
fn open(path: &Path, report: &mut Report) -> Result<Option<ParquetRecordBatchReaderBuilder<File>>> {
    let io = |e| GuardrailError::io(path, e);
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if !footer_is_whole(&mut file, len, report).map_err(io)? {
        return Ok(None);
    }
    let again = file.try_clone().map_err(io)?;
    match catch_read(|| ParquetRecordBatchReaderBuilder::try_new(file)) {
        Ok(b) => Ok(Some(with_row_groups_total(b, again, report))),
        Err(e) => {
            report.error(
                "footer",
                format!("the footer cannot be read: {e}"),
                Some("valid parquet metadata".into()),
                Some(e),
            );
            Ok(None)
        }
    }
}

/// Readers decode the row groups, whatever the file-level row total says; some writers
/// left that total at 0 (parquet-testing's repeated_no_annotation.parquet), and arrow-rs
/// caps its batch size at that total, so it would read no row at all. The total is set to
/// the row groups' sum before reading, and the pages are then counted against it, so a
/// short column still fails.
fn with_row_groups_total(
    builder: ParquetRecordBatchReaderBuilder<File>,
    file: File,
    report: &mut Report,
) -> ParquetRecordBatchReaderBuilder<File> {
    let metadata = builder.metadata();
    let meta = metadata.file_metadata();
    let groups: i64 = metadata
        .row_groups()
        .iter()
        .map(|rg| rg.num_rows())
        .fold(0, i64::saturating_add);
    if groups == meta.num_rows() {
        return builder;
    }
    report.warning(
        "row_count",
        format!(
            "the row groups hold {groups} rows but the footer's total says {}; the row groups are what readers read",
            meta.num_rows()
        ),
    );
    let fixed = FileMetaData::new(
        meta.version(),
        groups,
        meta.created_by().map(str::to_owned),
        meta.key_value_metadata().cloned(),
        meta.schema_descr_ptr(),
        meta.column_orders().cloned(),
    );
    let metadata = ParquetMetaData::new(fixed, metadata.row_groups().to_vec());
    match ArrowReaderMetadata::try_new(Arc::new(metadata), ArrowReaderOptions::new()) {
        Ok(m) => ParquetRecordBatchReaderBuilder::new_with_metadata(file, m),
        // The schema was converted once already; should it fail now, the original stands.
        Err(_) => builder,
    }
}

/// A page that would not decode (a CRC mismatch has a check of its own).
fn pages_failed(
    report: &mut Report,
    path: &Path,
    metadata: &ParquetMetaData,
    rows: u64,
    message: String,
) {
    if legacy_v2_pages(path, metadata) {
        report.unsupported(
            "pages",
            "DataPageV2 from parquet-cpp 1.x",
            format!(
                "the pages did not decode ({message}); the file was written by parquet-cpp 1.x (pyarrow before 3.0) with DataPageV2 pages, which that writer compressed while marking them uncompressed (ARROW-10353), a layout arrow-rs does not read, so it was not verified"
            ),
        );
        return;
    }
    let check = if message.contains("CRC") {
        "page_checksum"
    } else {
        "pages"
    };
    report.error(
        check,
        format!("reading pages failed after {rows} rows: {message}"),
        Some("every page readable".into()),
        Some(message),
    );
}

/// Whether the writer was parquet-cpp 1.x (pyarrow before 3.0, which names itself
/// "parquet-cpp version 1.…"; later ones say "parquet-cpp-arrow") and a compressed column
/// starts with a DataPageV2 page marked uncompressed: that writer compressed such pages
/// anyway. Called only after the pages failed; reads one page per column chunk.
fn legacy_v2_pages(path: &Path, metadata: &ParquetMetaData) -> bool {
    use parquet::column::page::Page;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let old_cpp = metadata
        .file_metadata()
        .created_by()
        .is_some_and(|by| by.starts_with("parquet-cpp version 1."));
    if !old_cpp {
        return false;
    }
    let Ok(file) = File::open(path) else {
        return false;
    };
    let found = catch_read(|| -> parquet::errors::Result<bool> {
        let reader = SerializedFileReader::new(file)?;
        for (g, rg) in metadata.row_groups().iter().enumerate() {
            let group = reader.get_row_group(g)?;
            for (leaf, chunk) in rg.columns().iter().enumerate() {
                if chunk.compression() == parquet::basic::Compression::UNCOMPRESSED {
                    continue;
                }
                let mut pages = group.get_column_page_reader(leaf)?;
                while let Some(page) = pages.get_next_page()? {
                    match page {
                        Page::DictionaryPage { .. } => continue,
                        Page::DataPageV2 { is_compressed, .. } if !is_compressed => {
                            return Ok(true);
                        }
                        _ => break,
                    }
                }
            }
        }
        Ok(false)
    });
    found.unwrap_or(false)
}

/// The last 8 bytes must be the footer length and `PAR1`, and the footer must fit.
fn footer_is_whole(file: &mut File, len: u64, report: &mut Report) -> std::io::Result<bool> {
    if len < 12 {
        report.error(
            "footer",
            format!("{len} bytes is too short for a parquet file"),
            Some("at least 12 bytes".into()),
            Some(format!("{len} bytes")),
        );
        return Ok(false);
    }
    let mut tail = [0u8; 8];
    file.seek(SeekFrom::Start(len - 8))?;
    file.read_exact(&mut tail)?;
    file.seek(SeekFrom::Start(0))?;
    if &tail[4..] == b"PARE" {
        report.unsupported(
            "encryption",
            "parquet modular encryption (encrypted footer)",
            "the footer is encrypted (PARE): this checker reads no encrypted Parquet, so the file was not verified",
        );
        return Ok(false);
    }
    if &tail[4..] != b"PAR1" {
        report.error(
            "footer",
            "no PAR1 magic at the end: the file is cut short or was never finished",
            Some("PAR1".into()),
            Some(String::from_utf8_lossy(&tail[4..]).into_owned()),
        );
        return Ok(false);
    }
    let footer = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if footer + 12 > len {
        report.error(
            "footer",
            format!("the footer claims {footer} bytes in a {len}-byte file"),
            Some(format!("at most {} bytes", len - 12)),
            Some(format!("{footer} bytes")),
        );
        return Ok(false);
    }
    Ok(true)
}

/// Puts what the footer says into the report; returns the rows its row groups hold.
fn footer_info(metadata: &ParquetMetaData, report: &mut Report) -> u64 {
    let file_meta = metadata.file_metadata();
    report.info("row_groups", metadata.num_row_groups());
    if let Some(by) = file_meta.created_by() {
        report.info("created_by", by);
    }
    let mut codecs = BTreeSet::new();
    let mut with_stats = 0usize;
    let mut chunks = 0usize;
    let mut group_rows: u64 = 0;
    for rg in metadata.row_groups() {
        group_rows = group_rows.saturating_add(u64::try_from(rg.num_rows()).unwrap_or(0));
        for c in rg.columns() {
            chunks += 1;
            // Debug gives `ZSTD(ZstdLevel(1))`; the level is the writer's business.
            let codec = format!("{:?}", c.compression()).to_lowercase();
            codecs.insert(codec.split('(').next().unwrap_or_default().to_string());
            if c.statistics().is_some() {
                with_stats += 1;
            }
        }
    }
    report.info("codecs", codecs.into_iter().collect::<Vec<_>>());
    report.info("statistics", with_stats == chunks && chunks > 0);
    // `open` set the total to the row groups' sum (with a warning) where they differed;
    // the row groups are what is read either way.
    group_rows
}

/// The null count of a top-level primitive column from every row group's statistics, or
/// `None` when any row group lacks it (or the column is nested).
fn nulls_from_statistics(metadata: &ParquetMetaData, column: &str) -> Option<u64> {
    let mut total = 0u64;
    for rg in metadata.row_groups() {
        let chunk = rg
            .columns()
            .iter()
            .find(|c| c.column_path().parts() == [column])?;
        total = total.checked_add(chunk.statistics()?.null_count_opt()?)?;
    }
    Some(total)
}

/// Parquet feature tables: numeric columns and (fixed-size) lists of numbers, scanned for
/// NaN, infinities and nulls. The shape is `[rows, values per row]` when every feature
/// column has a fixed width, else `[rows]`.
pub(crate) fn check_features(path: &Path, check: &FeatureCheck, report: &mut Report) -> Result<()> {
    let Some(builder) = open(path, report)? else {
        return Ok(());
    };
    let metadata = builder.metadata().clone();
    let rows = footer_info(&metadata, report);
    let schema = builder.schema().clone();
    let mut dtypes = BTreeSet::new();
    let mut width = Some(0u64);
    let mut roots = Vec::new();
    let mut ignored = Vec::new();
    for (i, field) in schema.fields().iter().enumerate() {
        match feature_column(field.data_type()) {
            Some((dtype, w)) => {
                dtypes.insert(dtype);
                width = width.zip(w).map(|(a, b)| a + b);
                roots.push(i);
            }
            None => ignored.push(field.name().clone()),
        }
    }
    if !ignored.is_empty() {
        report.info("ignored_columns", ignored);
    }
    if roots.is_empty() {
        report.error(
            "columns",
            "no numeric or list-of-number column to read as features",
            Some("numeric or fixed-size-list columns".into()),
            Some("none".into()),
        );
        return Ok(());
    }
    let dtypes: Vec<String> = dtypes.into_iter().collect();
    let shape: Vec<u64> = match width {
        Some(w) => vec![rows, w],
        None => vec![rows],
    };
    report.info("dtype", dtypes.join(","));
    report.info("shape", serde_json::json!(shape));
    report.info("rows", rows);
    check_expectations(check, &dtypes, &shape, report);
    // Every column's pages are decoded, whether or not values are judged and whether or
    // not the column is a feature: a file whose pages do not decode (a bad checksum, a
    // broken dictionary) is damaged, finite or not. A column too wide to decode in
    // bounded memory has its page headers walked instead.
    let features: BTreeSet<&str> = roots
        .iter()
        .map(|&i| schema.field(i).name().as_str())
        .collect();
    let limit = crate::integrity::DEFAULT_MEMORY_LIMIT;
    let heavy = too_wide_to_decode(&metadata, limit);
    if !heavy.is_empty() {
        set_aside(report, path, &metadata, &schema, &heavy, limit, |name| {
            check.finite && features.contains(name)
        });
    }
    let decoded = (0..schema.fields().len()).filter(|r| !heavy.iter().any(|(h, _)| h == r));
    let mask = ProjectionMask::roots(builder.parquet_schema(), decoded);
    let batch_rows = batch_rows(builder.metadata());
    let mut counts = FiniteCounts::default();
    let failure = catch_read(|| -> std::result::Result<(), String> {
        let reader = builder
            .with_batch_size(batch_rows)
            .with_projection(mask)
            .build()
            .map_err(|e| e.to_string())?;
        for batch in reader {
            let batch = batch.map_err(|e| e.to_string())?;
            if check.finite {
                let batch_schema = batch.schema();
                for (c, column) in batch.columns().iter().enumerate() {
                    let name = batch_schema.field(c).name();
                    if features.contains(name.as_str()) {
                        counts.add(column, counts.rows, name);
                    }
                }
            }
            counts.rows += batch.num_rows() as u64;
        }
        Ok(())
    })
    .err();
    match failure {
        Some(message) => pages_failed(report, path, &metadata, counts.rows, message),
        None => pages_match_footer(report, counts.rows, rows),
    }
    if !check.finite {
        return Ok(());
    }
    report.info("non_finite", counts.non_finite);
    if counts.non_finite > 0 {
        report.error(
            "finite",
            format!(
                "{} NaN or infinite value(s), the first in {}",
                counts.non_finite,
                counts.first_bad.as_deref().unwrap_or("?")
            ),
            Some("only finite values".into()),
            Some(format!("{} non-finite", counts.non_finite)),
        );
    }
    if counts.nulls > 0 {
        report.error(
            "nulls",
            format!(
                "{} null feature value(s), the first in {}",
                counts.nulls,
                counts.first_null.as_deref().unwrap_or("?")
            ),
            Some("no nulls".into()),
            Some(format!("{} nulls", counts.nulls)),
        );
    }
    Ok(())
}

/// The numpy dtype name of a feature column and its width (values per row; `None` for
/// variable-length lists); `None` for a column that is not a feature.
fn feature_column(t: &DataType) -> Option<(String, Option<u64>)> {
    match t {
        DataType::FixedSizeList(f, n) => {
            let (d, w) = feature_column(f.data_type())?;
            Some((d, w.map(|w| w * u64::try_from(*n).unwrap_or(0))))
        }
        DataType::List(f) | DataType::LargeList(f) => {
            feature_column(f.data_type()).map(|(d, _)| (d, None))
        }
        DataType::Float16 => Some(("float16".into(), Some(1))),
        DataType::Float32 => Some(("float32".into(), Some(1))),
        DataType::Float64 => Some(("float64".into(), Some(1))),
        DataType::Boolean => Some(("bool".into(), Some(1))),
        t if t.is_integer() => Some((t.to_string().to_lowercase(), Some(1))),
        _ => None,
    }
}

#[derive(Default)]
struct FiniteCounts {
    rows: u64,
    non_finite: u64,
    nulls: u64,
    first_bad: Option<String>,
    first_null: Option<String>,
}

impl FiniteCounts {
    fn add(&mut self, array: &ArrayRef, offset: u64, column: &str) {
        // A list's values are scanned flat; positions are reported per row of the table.
        let (values, per_row): (ArrayRef, Option<usize>) = match array.data_type() {
            DataType::FixedSizeList(_, n) => {
                let list = array.as_fixed_size_list();
                self.count_nulls(array, offset, column);
                let start = list.offset() * usize::try_from(*n).unwrap_or(0);
                let values = list
                    .values()
                    .slice(start, list.len() * usize::try_from(*n).unwrap_or(0));
                (values, usize::try_from(*n).ok())
            }
            DataType::List(_) => {
                self.count_nulls(array, offset, column);
                (array.as_list::<i32>().values().clone(), None)
            }
            DataType::LargeList(_) => {
                self.count_nulls(array, offset, column);
                (array.as_list::<i64>().values().clone(), None)
            }
            _ => (array.clone(), Some(1)),
        };
        self.count_nulls(&values, offset, column);
        let bad = match values.data_type() {
            DataType::Float16 => {
                first_non_finite(values.as_primitive::<Float16Type>(), |v| v.is_finite())
            }
            DataType::Float32 => {
                first_non_finite(values.as_primitive::<Float32Type>(), |v| v.is_finite())
            }
            DataType::Float64 => {
                first_non_finite(values.as_primitive::<Float64Type>(), |v| v.is_finite())
            }
            _ => (0, None),
        };
        if bad.0 > 0 {
            self.non_finite += bad.0;
            if self.first_bad.is_none() {
                self.first_bad = bad.1.map(|i| match per_row {
                    Some(w) if w > 0 => format!("column {column}, row {}", offset + (i / w) as u64),
                    _ => format!("column {column}, value {i} of the batch at row {offset}"),
                });
            }
        }
    }

    fn count_nulls(&mut self, array: &ArrayRef, offset: u64, column: &str) {
        let n = array.null_count() as u64;
        if n > 0 {
            self.nulls += n;
            if self.first_null.is_none() {
                let at = (0..array.len()).find(|&i| array.is_null(i)).unwrap_or(0);
                self.first_null = Some(format!("column {column}, near row {}", offset + at as u64));
            }
        }
    }
}

/// Counts non-finite non-null values; returns the count and the first index.
fn first_non_finite<T: ArrowPrimitiveType>(
    array: &PrimitiveArray<T>,
    finite: impl Fn(T::Native) -> bool,
) -> (u64, Option<usize>) {
    let values = array.values();
    let count = match array.nulls() {
        // No nulls: a tight loop over the buffer that the compiler vectorises.
        None => values.iter().filter(|v| !finite(**v)).count(),
        Some(n) => values
            .iter()
            .zip(n.iter())
            .filter(|(v, valid)| *valid && !finite(**v))
            .count(),
    } as u64;
    if count == 0 {
        return (0, None);
    }
    let first = (0..array.len()).find(|&i| array.is_valid(i) && !finite(values[i]));
    (count, first)
}
