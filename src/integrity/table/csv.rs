//! CSV tables in two passes: a structural pass with the `csv` crate (header, ragged rows,
//! invalid UTF-8, a BOM, quotes left open), then, if the structure holds, a typed pass
//! through arrow-csv (types inferred from every row) that feeds the value checks.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::Schema;

use super::parquet::BATCH_ROWS;
use super::{TableScan, TableSource, check_rows, check_schema};
use crate::error::{GuardrailError, Result};
use crate::integrity::{Report, catch_panic};

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Text that could be a CSV: no NUL byte, UTF-8 (a character cut at the end of the sample
/// is fine), and a delimiter in the first line.
pub(crate) fn looks_like_csv(head: &[u8]) -> bool {
    // Only the header line must be text: bad bytes further down are for the CSV check to
    // report, not a reason to call the file something else.
    let head = head.strip_prefix(BOM).unwrap_or(head);
    let first_line = head.split(|&b| b == b'\n').next().unwrap_or(head);
    looks_like_text(head)
        && first_line
            .iter()
            .any(|b| matches!(b, b',' | b'\t' | b';' | b'|'))
}

/// Whether the file starts as text: no NUL byte and a UTF-8 first line, as a one-column CSV
/// does (it has no delimiter for [`looks_like_csv`] to see).
pub(crate) fn looks_like_text(head: &[u8]) -> bool {
    if head.is_empty() || head.contains(&0) {
        return false;
    }
    let head = head.strip_prefix(BOM).unwrap_or(head);
    let first_line = head.split(|&b| b == b'\n').next().unwrap_or(head);
    match std::str::from_utf8(first_line) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

/// Counts quote characters and remembers the last byte as the csv reader pulls bytes.
struct Counting<R> {
    inner: R,
    quotes: u64,
    last: Option<u8>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let got = &buf[..n];
        self.quotes += got.iter().filter(|&&b| b == b'"').count() as u64;
        if let Some(&b) = got.last() {
            self.last = Some(b);
        }
        Ok(n)
    }
}

struct Structure {
    rows: u64,
    ragged: u64,
    ragged_examples: Vec<String>,
    bad_utf8: u64,
    utf8_examples: Vec<String>,
}

pub(super) fn check(
    src: &TableSource<'_>,
    report: &mut Report,
) -> Result<Option<Vec<RecordBatch>>> {
    let path = src.path;
    let io = |e| GuardrailError::io(path, e);
    let mut file = File::open(path).map_err(io)?;
    let mut first = [0u8; 3];
    let n = crate::integrity::read_up_to(&mut file, &mut first).map_err(io)?;
    let bom = &first[..n] == BOM;
    if bom {
        report.warning(
            "bom",
            "the file starts with a UTF-8 byte order mark (skipped)",
        );
    }
    if first[..n].starts_with(b"\xFF\xFE") || first[..n].starts_with(b"\xFE\xFF") {
        report.error(
            "encoding",
            "the file is UTF-16 (byte order mark FF FE or FE FF)",
            Some("UTF-8".into()),
            Some("UTF-16".into()),
        );
        return Ok(None);
    }
    let start = if bom { 3 } else { 0 };
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let delimiter = delimiter_for(path);
    report.info("delimiter", (delimiter as char).to_string());

    let mut counting = Counting {
        inner: BufReader::with_capacity(1 << 16, file),
        quotes: 0,
        last: None,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .from_reader(&mut counting);
    let mut record = csv::ByteRecord::new();
    let header = match reader.read_byte_record(&mut record) {
        Ok(true) => record.clone(),
        Ok(false) => {
            report.error(
                "header",
                "the file is empty",
                Some("a header line".into()),
                Some("nothing".into()),
            );
            return Ok(None);
        }
        Err(e) => return Err(GuardrailError::io(path, std::io::Error::other(e))),
    };
    let header_ok = check_header(&header, report);
    let width = header.len();
    let max = src.check.max_examples;
    let mut st = Structure {
        rows: 0,
        ragged: 0,
        ragged_examples: Vec::new(),
        bad_utf8: 0,
        utf8_examples: Vec::new(),
    };
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(GuardrailError::io(path, std::io::Error::other(e))),
        }
        st.rows += 1;
        let line = record.position().map_or(0, csv::Position::line);
        if record.len() != width {
            st.ragged += 1;
            if st.ragged_examples.len() < max {
                st.ragged_examples
                    .push(format!("line {line}: {} fields", record.len()));
            }
        }
        if let Some(field) = record.iter().position(|f| std::str::from_utf8(f).is_err()) {
            st.bad_utf8 += 1;
            if st.utf8_examples.len() < max {
                st.utf8_examples
                    .push(format!("line {line}, field {}", field + 1));
            }
        }
    }
    drop(reader);
    let structure_ok = report_structure(&st, width, &counting, src.check.csv_final_newline, report);
    if !(header_ok && structure_ok) {
        // Values cannot be typed reliably; still judge what the header and count tell.
        let names: Vec<arrow_schema::Field> = header
            .iter()
            .map(|h| {
                arrow_schema::Field::new(
                    String::from_utf8_lossy(h),
                    arrow_schema::DataType::Utf8,
                    true,
                )
            })
            .collect();
        check_schema(&Schema::new(names), src.check, report);
        check_rows(st.rows, src.check, report);
        report.warning(
            "values",
            "value checks were skipped: the file's structure is broken",
        );
        return Ok(None);
    }
    typed_pass(src, start, delimiter, report)
}

fn delimiter_for(path: &std::path::Path) -> u8 {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("tsv") || e.eq_ignore_ascii_case("tab") => b'\t',
        _ => b',',
    }
}

fn check_header(header: &csv::ByteRecord, report: &mut Report) -> bool {
    let mut ok = true;
    let mut seen = HashSet::new();
    for (i, name) in header.iter().enumerate() {
        let Ok(name) = std::str::from_utf8(name) else {
            report.error(
                "header",
                format!("column {} has a name that is not UTF-8", i + 1),
                Some("UTF-8 column names".into()),
                Some(String::from_utf8_lossy(name).into_owned()),
            );
            ok = false;
            continue;
        };
        if name.trim().is_empty() {
            report.error(
                "header",
                format!("column {} has an empty name", i + 1),
                Some("a name for every column".into()),
                Some("an empty name".into()),
            );
            ok = false;
        } else if !seen.insert(name.to_string()) {
            report.error(
                "header",
                format!("column name {name} appears twice"),
                Some("unique column names".into()),
                Some(format!("{name} twice")),
            );
            ok = false;
        }
    }
    ok
}

fn report_structure<R>(
    st: &Structure,
    width: usize,
    counting: &Counting<R>,
    require_final_newline: bool,
    report: &mut Report,
) -> bool {
    let mut ok = true;
    if st.ragged > 0 {
        report.error(
            "ragged_rows",
            format!(
                "{} row(s) do not have {width} fields: {}",
                st.ragged,
                st.ragged_examples.join("; ")
            ),
            Some(format!("{width} fields per row")),
            Some(format!("{} ragged rows", st.ragged)),
        );
        ok = false;
    }
    if st.bad_utf8 > 0 {
        report.error(
            "utf8",
            format!(
                "{} row(s) hold invalid UTF-8: {}",
                st.bad_utf8,
                st.utf8_examples.join("; ")
            ),
            Some("UTF-8 text".into()),
            Some(format!("{} rows with invalid bytes", st.bad_utf8)),
        );
        ok = false;
    }
    // Balanced RFC 4180 quoting uses quotes in pairs (`""` inside a field, one pair around
    // it); an odd count means a quoted field runs to the end of the file.
    if counting.quotes % 2 == 1 {
        report.error(
            "quotes",
            "a quoted field is never closed: it runs to the end of the file (cut short?)",
            Some("balanced quotes".into()),
            Some(format!("{} quote characters", counting.quotes)),
        );
        ok = false;
    }
    if !matches!(counting.last, Some(b'\n') | None) {
        let message = "the last line has no line terminator: the file may have been cut short";
        if require_final_newline {
            report.error(
                "line_end",
                message,
                Some("a line terminator at the end".into()),
                Some("a cut line".into()),
            );
            ok = false;
        } else {
            report.warning("line_end", message);
        }
    }
    ok
}

fn typed_pass(
    src: &TableSource<'_>,
    start: u64,
    delimiter: u8,
    report: &mut Report,
) -> Result<Option<Vec<RecordBatch>>> {
    let path = src.path;
    let open = || -> Result<BufReader<File>> {
        let mut f = File::open(path).map_err(|e| GuardrailError::io(path, e))?;
        f.seek(SeekFrom::Start(start))
            .map_err(|e| GuardrailError::io(path, e))?;
        Ok(BufReader::with_capacity(1 << 16, f))
    };
    let format = arrow_csv::reader::Format::default()
        .with_header(true)
        .with_delimiter(delimiter);
    let schema = match catch_panic(|| {
        format
            .infer_schema(open()?, None)
            .map_err(|e| GuardrailError::io(path, std::io::Error::other(e)))
    }) {
        Ok(Ok((schema, _))) => Arc::new(schema),
        Ok(Err(e)) => return Err(e),
        Err(panic) => {
            report.error("types", panic, None, None);
            return Ok(None);
        }
    };
    check_schema(&schema, src.check, report);
    let mut scan = TableScan::new(path, src.check, src.keep_batches);
    let file = open()?;
    let failure = scan.drain(|| {
        arrow_csv::ReaderBuilder::new(schema.clone())
            .with_format(format)
            .with_batch_size(BATCH_ROWS)
            .build(file)
            .map_err(|e| e.to_string())
    });
    if let Some(message) = failure {
        report.error(
            "values",
            format!(
                "typing the values failed after {} rows: {message}",
                scan.rows()
            ),
            Some("values that match their column's type".into()),
            Some(message),
        );
    }
    check_rows(scan.rows(), src.check, report);
    Ok(scan.finish(&schema, report))
}
