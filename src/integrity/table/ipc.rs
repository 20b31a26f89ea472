//! Arrow IPC tables: the file format (Feather v2, footer with the batch index) and the
//! stream format, with lz4 or zstd buffers. arrow-ipc validates every batch's buffers
//! against its schema as it reads them.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};

use arrow_array::RecordBatch;
use arrow_ipc::reader::{FileReader, StreamReader};
use arrow_schema::{ArrowError, SchemaRef};

use super::{TableScan, TableSource, check_rows, check_schema};
use crate::error::{GuardrailError, Result};
use crate::integrity::{Report, catch_read};

pub(super) fn check_file(
    src: &TableSource<'_>,
    report: &mut Report,
) -> Result<Option<Vec<RecordBatch>>> {
    let path = src.path;
    let file = File::open(path).map_err(|e| GuardrailError::io(path, e))?;
    let reader = match catch_read(|| FileReader::try_new_buffered(file, None)) {
        Ok(r) => r,
        Err(e) => {
            report.error(
                "footer",
                format!("the IPC file footer cannot be read: {e}"),
                Some("ARROW1 magic at both ends and a valid footer".into()),
                Some(e),
            );
            return Ok(None);
        }
    };
    report.info("batches", reader.num_batches());
    let schema = reader.schema();
    scan(src, report, schema, reader)
}

pub(super) fn check_stream(
    src: &TableSource<'_>,
    report: &mut Report,
) -> Result<Option<Vec<RecordBatch>>> {
    let path = src.path;
    let mut file = File::open(path).map_err(|e| GuardrailError::io(path, e))?;
    let complete = ends_with_eos(&mut file).map_err(|e| GuardrailError::io(path, e))?;
    let reader = match catch_read(|| StreamReader::try_new(BufReader::new(file), None)) {
        Ok(r) => r,
        Err(e) => {
            report.error(
                "schema",
                format!("the stream does not start with a schema: {e}"),
                Some("a schema message".into()),
                Some(e),
            );
            return Ok(None);
        }
    };
    if !complete {
        report.error(
            "end_of_stream",
            "no end-of-stream marker: the stream was cut or its writer never closed it",
            Some("0xFFFFFFFF 0x00000000 at the end".into()),
            Some("other bytes".into()),
        );
    }
    let schema = reader.schema();
    scan(src, report, schema, reader)
}

fn scan(
    src: &TableSource<'_>,
    report: &mut Report,
    schema: SchemaRef,
    reader: impl Iterator<Item = std::result::Result<RecordBatch, ArrowError>>,
) -> Result<Option<Vec<RecordBatch>>> {
    check_schema(&schema, src.check, report);
    let mut scan = TableScan::new(src.path, src.check, src.keep_batches);
    let failure = scan.drain(|| Ok(reader));
    if let Some(message) = failure {
        report.error(
            "batches",
            format!(
                "reading record batches failed after {} rows: {message}",
                scan.rows()
            ),
            Some("every batch readable".into()),
            Some(message),
        );
    }
    check_rows(scan.rows(), src.check, report);
    Ok(scan.finish(&schema, report))
}

/// A closed stream ends with the continuation marker and a zero length. The pre-0.15 form
/// (a zero length alone) is not accepted: body padding is zeros too, so a stream cut at a
/// message boundary would pass for closed.
fn ends_with_eos(file: &mut File) -> std::io::Result<bool> {
    let len = file.metadata()?.len();
    if len < 8 {
        return Ok(false);
    }
    let mut tail = [0u8; 8];
    file.seek(SeekFrom::Start(len - 8))?;
    file.read_exact(&mut tail)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(tail == [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0])
}
