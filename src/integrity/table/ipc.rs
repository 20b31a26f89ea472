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
use crate::integrity::{Report, catch_panic, catch_read};

pub(super) fn check_file(
    src: &TableSource<'_>,
    report: &mut Report,
) -> Result<Option<Vec<RecordBatch>>> {
    let path = src.path;
    let mut file = File::open(path).map_err(|e| GuardrailError::io(path, e))?;
    if !sizes_are_sane(&mut file, None, report).map_err(|e| GuardrailError::io(path, e))? {
        return Ok(None);
    }
    let reader = match catch_read(|| FileReader::try_new_buffered(file, None)) {
        Ok(r) => r,
        // arrow-ipc reads only the host's byte order; it says so when the footer's schema
        // names the other one.
        Err(e) if e.contains("endianness") => {
            big_endian(report);
            return Ok(None);
        }
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
    // The stream reader does not look at the schema's byte order and would read a
    // big-endian stream's values (and offsets) as garbage: refuse it before reading.
    if schema_is_big_endian(&mut file).map_err(|e| GuardrailError::io(path, e))? {
        big_endian(report);
        return Ok(None);
    }
    if !sizes_are_sane(&mut file, Some(0), report).map_err(|e| GuardrailError::io(path, e))? {
        return Ok(None);
    }
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

fn big_endian(report: &mut Report) {
    report.unsupported(
        "endianness",
        "big-endian Arrow IPC",
        "the schema says big-endian: arrow-ipc reads only the host's (little-endian) byte order, so the file was not verified",
    );
}

/// Whether the stream's first message is a schema that declares big-endian data.
fn schema_is_big_endian(file: &mut File) -> std::io::Result<bool> {
    let len = file.metadata()?.len();
    let meta = read_metadata(file, len, 0, None)?;
    file.seek(SeekFrom::Start(0))?;
    let Some((_, meta)) = meta else {
        return Ok(false);
    };
    let Ok(Ok(message)) = catch_panic(|| arrow_ipc::root_as_message(&meta)) else {
        return Ok(false);
    };
    Ok(message
        .header_as_schema()
        .is_some_and(|schema| schema.endianness() == arrow_ipc::Endianness::Big))
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

/// The largest uncompressed size a compressed buffer may declare. arrow-ipc allocates the
/// declared size before decompressing; a hostile size past what the allocator can give
/// aborts the process, which no `catch_unwind` can stop. Arrow arrays use 32-bit offsets
/// for most types, so a legitimate buffer past 2 GiB is rare; such a file is refused.
const MAX_DECLARED: i64 = 1 << 31;
/// Message metadata (a flatbuffer) is small; more than this is not a real message.
const MAX_METADATA: i64 = 16 << 20;

/// What one message's check found.
enum Step {
    /// The message is fine; the next one starts here.
    Next(u64),
    /// Not a message this walk can follow (arrow-ipc will say what is wrong).
    Stop,
    /// A buffer at this offset declares this many bytes.
    Bad(u64, i64),
    /// The metadata at this offset does not verify as a flatbuffer message.
    Unverifiable(u64),
}

/// Reads exactly `buf.len()` bytes at `at`, or says there are not that many.
fn read_at(file: &mut File, len: u64, at: u64, buf: &mut [u8]) -> std::io::Result<bool> {
    // Offsets come from the file: past its end (or past what seek takes) is no data.
    if at.saturating_add(buf.len() as u64) > len {
        return Ok(false);
    }
    file.seek(SeekFrom::Start(at))?;
    Ok(crate::integrity::read_up_to(file, buf)? == buf.len())
}

/// Reads the metadata (flatbuffer) of the message at `at`, after its length prefix (with
/// or without the 0xFFFFFFFF continuation that pre-1.0 writers left out). In a file the
/// footer's `body` offset ends it; in a stream, the prefix does. None when the bytes are
/// not there or the length is not one a real message has.
fn read_metadata(
    file: &mut File,
    len: u64,
    at: u64,
    body: Option<u64>,
) -> std::io::Result<Option<(u64, Vec<u8>)>> {
    let mut head = [0u8; 8];
    if !read_at(file, len, at, &mut head)? {
        return Ok(None);
    }
    let first = i32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let header = if first == -1 { 8 } else { 4 };
    let meta_start = at + header;
    let meta_len = match body {
        // The file reader parses from after the prefix to where the footer block says the
        // body starts, whatever length the prefix gives.
        Some(b) => i64::try_from(b.saturating_sub(meta_start)).unwrap_or(i64::MAX),
        None if first == -1 => i64::from(i32::from_le_bytes([head[4], head[5], head[6], head[7]])),
        None => i64::from(first),
    };
    if meta_len <= 0 || meta_len > MAX_METADATA {
        return Ok(None);
    }
    let mut meta = vec![0u8; usize::try_from(meta_len).unwrap_or(0)];
    if !read_at(file, len, meta_start, &mut meta)? {
        return Ok(None);
    }
    Ok(Some((meta_start, meta)))
}

/// Checks the message at `at`: its compressed buffers' declared sizes. A file's footer
/// says where the body starts (`body`); in a stream it follows the metadata.
fn check_message(file: &mut File, len: u64, at: u64, body: Option<u64>) -> std::io::Result<Step> {
    // In a file, arrow-ipc reads whatever the footer points at, so anything this walk
    // cannot follow there is refused; in a stream, arrow-ipc stops where this walk does.
    let stop = if body.is_some() {
        Step::Unverifiable(at)
    } else {
        Step::Stop
    };
    let Some((meta_start, meta)) = read_metadata(file, len, at, body)? else {
        return Ok(stop);
    };
    let Ok(Ok(message)) = catch_panic(|| arrow_ipc::root_as_message(&meta)) else {
        return Ok(stop);
    };
    let body_start = body.unwrap_or(meta_start + meta.len() as u64);
    // A file's body length comes from its footer (checked by the caller); a stream's
    // from the message.
    let body_len = match (body, u64::try_from(message.bodyLength())) {
        (Some(_), _) => 0,
        (None, Ok(n)) => n,
        (None, Err(_)) => return Ok(stop),
    };
    let batch = message
        .header_as_record_batch()
        .or_else(|| message.header_as_dictionary_batch().and_then(|d| d.data()));
    if let Some(batch) = batch
        && let Some(compression) = batch.compression()
        && let Some(buffers) = batch.buffers()
    {
        // The most a compressed byte can expand to: an LZ4 sequence of 255-byte length
        // extensions gives about 255 bytes per byte; a zstd RLE block gives 128 KiB from
        // 4 bytes. A declared size past that is not what the bytes hold.
        let ratio: i64 = if compression.codec() == arrow_ipc::CompressionType::LZ4_FRAME {
            256
        } else {
            32 << 10
        };
        for b in buffers.iter() {
            let Ok(offset) = u64::try_from(b.offset()) else {
                continue;
            };
            let mut prefix = [0u8; 8];
            let at = body_start.saturating_add(offset);
            if b.length() < 8 || !read_at(file, len, at, &mut prefix)? {
                continue;
            }
            let declared = i64::from_le_bytes(prefix);
            let limit = b
                .length()
                .saturating_sub(8)
                .saturating_mul(ratio)
                .saturating_add(64 << 10)
                .min(MAX_DECLARED);
            if !(-1..=limit).contains(&declared) {
                return Ok(Step::Bad(at, declared));
            }
        }
    }
    Ok(Step::Next(body_start.saturating_add(body_len)))
}

/// Checks every message arrow-ipc will decode, before it does: in a stream, one after
/// another from `start`; in a file (`start` = None), the blocks its footer lists, since
/// that is what the file reader follows. Returns false (with a finding) only for a size
/// that must not reach the allocator; anything else odd is left for arrow-ipc to report.
fn sizes_are_sane(
    file: &mut File,
    start: Option<u64>,
    report: &mut Report,
) -> std::io::Result<bool> {
    let len = file.metadata()?.len();
    let mut bad = None;
    match start {
        Some(mut at) => loop {
            match check_message(file, len, at, None)? {
                Step::Next(next) if next > at => at = next,
                Step::Bad(offset, declared) => {
                    bad = Some((offset, declared));
                    break;
                }
                _ => break,
            }
        },
        None => {
            let mut tail = [0u8; 10];
            if len >= 10 && read_at(file, len, len - 10, &mut tail)? {
                let footer_len =
                    u64::try_from(i32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]))
                        .unwrap_or(0);
                let mut footer =
                    vec![0u8; usize::try_from(footer_len.min(MAX_METADATA as u64)).unwrap_or(0)];
                if footer_len <= MAX_METADATA as u64
                    && read_at(
                        file,
                        len,
                        (len - 10).saturating_sub(footer_len),
                        &mut footer,
                    )?
                    && let Ok(Ok(f)) = catch_panic(|| arrow_ipc::root_as_footer(&footer))
                {
                    let blocks = f
                        .dictionaries()
                        .into_iter()
                        .flatten()
                        .chain(f.recordBatches().into_iter().flatten());
                    for block in blocks {
                        // arrow-ipc allocates metadata + body zeroed before reading them.
                        let at = u64::try_from(block.offset()).ok();
                        let meta = u64::try_from(block.metaDataLength()).ok();
                        let body = u64::try_from(block.bodyLength()).ok();
                        let (Some(at), Some(meta), Some(body)) = (at, meta, body) else {
                            bad = Some((len - 10, -1));
                            break;
                        };
                        if at.saturating_add(meta).saturating_add(body) > len {
                            report.error(
                                "footer",
                                format!("a footer block ({meta} + {body} bytes at byte {at}) runs past the end of the {len}-byte file"),
                                Some("blocks inside the file".into()),
                                Some(format!("{} bytes", at.saturating_add(meta).saturating_add(body))),
                            );
                            file.seek(SeekFrom::Start(0))?;
                            return Ok(false);
                        }
                        match check_message(file, len, at, Some(at + meta))? {
                            Step::Bad(offset, declared) => {
                                bad = Some((offset, declared));
                                break;
                            }
                            Step::Unverifiable(offset) => {
                                report.error(
                                    "footer",
                                    format!("the message at byte {offset} that the footer lists is not valid metadata"),
                                    Some("a valid IPC message".into()),
                                    Some("unverifiable bytes".into()),
                                );
                                file.seek(SeekFrom::Start(0))?;
                                return Ok(false);
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    file.seek(SeekFrom::Start(0))?;
    if let Some((offset, declared)) = bad {
        report.error(
            "buffers",
            format!(
                "a compressed buffer at byte {offset} declares {declared} bytes uncompressed: damaged or hostile"
            ),
            Some(format!("at most {MAX_DECLARED} bytes, and what its compressed bytes can hold")),
            Some(format!("{declared} bytes")),
        );
        return Ok(false);
    }
    Ok(true)
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
    if tail == [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0] {
        file.seek(SeekFrom::Start(0))?;
        return Ok(true);
    }
    let mut first = [0u8; 4];
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(&mut first)?;
    // A pre-1.0 stream ends with a zero length alone. Four zero bytes at the end may also
    // be the padding of a body that was cut, so the messages are followed to where that
    // marker has to be.
    let legacy = first != [0xFF; 4] && tail[4..] == [0, 0, 0, 0];
    let mut at = 0;
    if legacy {
        loop {
            match check_message(file, len, at, None)? {
                Step::Next(next) if next > at => at = next,
                _ => break,
            }
        }
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(legacy && at.checked_add(4) == Some(len))
}

/// Whether `head` starts like a stream written before Arrow 1.0: a message length with no
/// 0xFFFFFFFF continuation before it, then a schema message. Only a head that holds the
/// whole schema message is recognised, since the flatbuffer must verify.
pub(crate) fn is_legacy_stream(head: &[u8]) -> bool {
    let Some(prefix) = head.first_chunk::<4>() else {
        return false;
    };
    let Some(meta) = usize::try_from(i32::from_le_bytes(*prefix))
        .ok()
        .filter(|&n| n >= 8)
        .and_then(|n| head.get(4..4 + n))
    else {
        return false;
    };
    matches!(
        catch_panic(|| arrow_ipc::root_as_message(meta).map(|m| m.header_type())),
        Ok(Ok(arrow_ipc::MessageHeader::Schema))
    )
}
