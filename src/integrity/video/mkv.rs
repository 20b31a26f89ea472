//! Matroska and WebM. A small EBML reader walks the Segment's top-level elements from
//! the file, checks that each fits in the Segment and the file, verifies the CRC-32
//! element a muxer puts first in a master element (ffmpeg does by default), checks that
//! every SeekHead entry points at the element it names, and reads Info, Tracks and the
//! block headers of each Cluster for the report.
//!
//! Hand-written on purpose: the Rust EBML crates parse elements into values but do not
//! hand back the raw bytes a CRC-32 covers, and a structural check needs exactly those.

use super::{MAX_READ, Source, Track, codec_name, truncated};
use crate::integrity::Report;

const EBML: u32 = 0x1A45_DFA3;
const DOC_TYPE: u32 = 0x4282;
const SEGMENT: u32 = 0x1853_8067;
const SEEK_HEAD: u32 = 0x114D_9B74;
const SEEK: u32 = 0x4DBB;
const SEEK_ID: u32 = 0x53AB;
const SEEK_POSITION: u32 = 0x53AC;
const INFO: u32 = 0x1549_A966;
const TIMESTAMP_SCALE: u32 = 0x2A_D7B1;
const DURATION: u32 = 0x4489;
const TRACKS: u32 = 0x1654_AE6B;
const TRACK_ENTRY: u32 = 0xAE;
const TRACK_NUMBER: u32 = 0xD7;
const TRACK_TYPE: u32 = 0x83;
const CODEC_ID: u32 = 0x86;
const VIDEO: u32 = 0xE0;
const PIXEL_WIDTH: u32 = 0xB0;
const PIXEL_HEIGHT: u32 = 0xBA;
const CUES: u32 = 0x1C53_BB6B;
const CLUSTER: u32 = 0x1F43_B675;
const SIMPLE_BLOCK: u32 = 0xA3;
const BLOCK_GROUP: u32 = 0xA0;
const BLOCK: u32 = 0xA1;
const CRC32: u32 = 0xBF;
/// Children of a Cluster; anything else ends a Cluster of unknown size.
const CLUSTER_CHILDREN: [u32; 8] = [
    0xE7,
    0xA7,
    0xAB,
    SIMPLE_BLOCK,
    BLOCK_GROUP,
    0xAF,
    CRC32,
    0xEC,
];

/// An element header: ID (with its length marker, as the spec writes IDs), data position
/// and size (`None` = unknown, allowed for Segment and Cluster).
#[derive(Debug, Clone, Copy)]
struct Head {
    id: u32,
    offset: u64,
    data: u64,
    size: Option<u64>,
}

fn name(id: u32) -> &'static str {
    match id {
        SEGMENT => "Segment",
        SEEK_HEAD => "SeekHead",
        INFO => "Info",
        TRACKS => "Tracks",
        CUES => "Cues",
        CLUSTER => "Cluster",
        0x1254_C367 => "Tags",
        0x1043_A770 => "Chapters",
        0x1941_A469 => "Attachments",
        0xEC => "Void",
        _ => "element",
    }
}

/// A variable-length ID (1–4 bytes, marker kept).
fn read_id(b: &[u8]) -> Option<(u32, usize)> {
    let first = *b.first()?;
    let len = first.leading_zeros() as usize + 1;
    if len > 4 {
        return None;
    }
    let bytes = b.get(..len)?;
    Some((
        bytes.iter().fold(0u32, |a, &x| (a << 8) | u32::from(x)),
        len,
    ))
}

/// A variable-length size (1–8 bytes, marker removed); all ones means unknown.
fn read_size(b: &[u8]) -> Option<(Option<u64>, usize)> {
    let first = *b.first()?;
    let len = first.leading_zeros() as usize + 1;
    if len > 8 {
        return None;
    }
    let bytes = b.get(..len)?;
    let mut v = u64::from(first) & ((1u64 << (8 - len)) - 1);
    for &x in &bytes[1..] {
        v = (v << 8) | u64::from(x);
    }
    let unknown = v == (1u64 << (7 * len)) - 1;
    Some((if unknown { None } else { Some(v) }, len))
}

fn parse_head(b: &[u8], base: u64) -> Option<Head> {
    let (id, il) = read_id(b)?;
    let (size, sl) = read_size(b.get(il..)?)?;
    Some(Head {
        id,
        offset: base,
        data: base + (il + sl) as u64,
        size,
    })
}

/// Children of an element held in memory.
fn children(data: &[u8]) -> Vec<(u32, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let Some(h) = parse_head(&data[at..], at as u64) else {
            break;
        };
        let start = usize::try_from(h.data).unwrap_or(usize::MAX);
        let Some(size) = h.size.and_then(|s| usize::try_from(s).ok()) else {
            break;
        };
        let Some(body) = start.checked_add(size).and_then(|end| data.get(start..end)) else {
            break;
        };
        out.push((h.id, body));
        at = start + size;
    }
    out
}

fn uint(b: &[u8]) -> u64 {
    b.iter().take(8).fold(0u64, |a, &x| (a << 8) | u64::from(x))
}

fn float(b: &[u8]) -> Option<f64> {
    match b.len() {
        4 => Some(f64::from(f32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
        8 => {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Some(f64::from_be_bytes(a))
        }
        _ => None,
    }
}

/// The track number at the start of a (Simple)Block.
fn block_track(b: &[u8]) -> Option<u64> {
    read_size(b).and_then(|(n, _)| n)
}

#[derive(Default)]
struct State {
    timestamp_scale: u64,
    duration: Option<f64>,
    tracks: Vec<(u64, Track)>,
    frames: Vec<(u64, u64)>,
    seeks: Vec<(u32, u64)>,
    level1: Vec<(u32, u64)>,
    crc_checked: u64,
}

pub(super) fn check(
    src: &mut Source,
    checksums: bool,
    report: &mut Report,
) -> std::io::Result<Vec<Track>> {
    let head = src.read_at(0, 64)?;
    let Some(ebml) = parse_head(&head, 0).filter(|h| h.id == EBML) else {
        report.error(
            "header",
            "no EBML header",
            Some("an EBML header".into()),
            None,
        );
        return Ok(Vec::new());
    };
    let Some(ebml_size) = ebml.size.filter(|&s| s <= 4096) else {
        report.error("header", "the EBML header has no usable size", None, None);
        return Ok(Vec::new());
    };
    let header = src.read_at(ebml.data, ebml_size)?;
    let doc_type = children(&header)
        .into_iter()
        .find(|(id, _)| *id == DOC_TYPE)
        .map(|(_, v)| {
            String::from_utf8_lossy(v)
                .trim_end_matches('\0')
                .to_string()
        })
        .unwrap_or_else(|| "matroska".into());
    report.info(
        "container",
        if doc_type == "webm" {
            "webm"
        } else {
            "matroska"
        },
    );
    let seg_at = ebml.data + ebml_size;
    let seg_head = src.read_at(seg_at, 12)?;
    let Some(segment) = parse_head(&seg_head, seg_at).filter(|h| h.id == SEGMENT) else {
        report.error(
            "truncated",
            format!(
                "no Segment after the EBML header (file is {} bytes)",
                src.len
            ),
            Some("a Segment element".into()),
            Some("none".into()),
        );
        return Ok(Vec::new());
    };
    let seg_end = match segment.size {
        Some(size) if segment.data.saturating_add(size) > src.len => {
            truncated(
                report,
                "Segment",
                segment.offset,
                size,
                src.len - segment.data,
            );
            src.len
        }
        Some(size) => segment.data + size,
        None => src.len,
    };
    let mut st = State {
        timestamp_scale: 1_000_000,
        ..State::default()
    };
    let mut at = segment.data;
    while at < seg_end {
        let bytes = src.read_at(at, 12)?;
        let Some(h) = parse_head(&bytes, at) else {
            truncated(report, "an element header", at, 12, seg_end - at);
            break;
        };
        let end = match h.size {
            Some(size) => h.data.saturating_add(size),
            None if h.id == CLUSTER => cluster_end(src, h.data, seg_end)?,
            None => {
                report.error(
                    "element_size",
                    format!("{} at byte {at} has an unknown size", name(h.id)),
                    Some("a known size".into()),
                    None,
                );
                break;
            }
        };
        st.level1.push((h.id, at - segment.data));
        if end > seg_end {
            truncated(
                report,
                name(h.id),
                at,
                end - h.data,
                seg_end.saturating_sub(h.data),
            );
            break;
        }
        if matches!(h.id, SEEK_HEAD | INFO | TRACKS | CLUSTER | CUES) {
            read_element(src, h, end, checksums, &mut st, report)?;
        }
        at = end;
    }
    check_seeks(&st, seg_end - segment.data, report);
    if !st.level1.iter().any(|(id, _)| *id == CUES) && !st.seeks.iter().any(|(id, _)| *id == CUES) {
        report.warning(
            "index",
            "no Cues element: players must scan the file to seek",
        );
    }
    if checksums {
        report.info("crc32_verified", st.crc_checked);
    }
    let duration_s = st
        .duration
        .map(|d| d * st.timestamp_scale as f64 / 1e9)
        .filter(|d| d.is_finite() && *d > 0.0);
    Ok(st
        .tracks
        .into_iter()
        .map(|(number, mut t)| {
            t.duration_s = duration_s;
            t.frames = Some(
                st.frames
                    .iter()
                    .find(|(n, _)| *n == number)
                    .map_or(0, |(_, c)| *c),
            );
            t
        })
        .collect())
}

/// The end of a Cluster of unknown size: where its children stop.
fn cluster_end(src: &mut Source, mut at: u64, limit: u64) -> std::io::Result<u64> {
    while at < limit {
        let bytes = src.read_at(at, 12)?;
        match parse_head(&bytes, at) {
            Some(h) if CLUSTER_CHILDREN.contains(&h.id) => match h.size {
                Some(size) => at = h.data.saturating_add(size),
                None => return Ok(limit),
            },
            _ => return Ok(at),
        }
    }
    Ok(limit.min(at))
}

fn read_element(
    src: &mut Source,
    h: Head,
    end: u64,
    checksums: bool,
    st: &mut State,
    report: &mut Report,
) -> std::io::Result<()> {
    let size = end - h.data;
    if size > MAX_READ {
        report.warning(
            "element_size",
            format!(
                "{} at byte {} is {size} bytes; not read whole",
                name(h.id),
                h.offset
            ),
        );
        return Ok(());
    }
    let data = src.read_at(h.data, size)?;
    let kids = children(&data);
    if checksums
        && let Some((CRC32, crc)) = kids.first().copied()
        && crc.len() == 4
    {
        // The CRC covers the element's data after the CRC element (6 bytes: ID, size, value).
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let actual = crc32fast::hash(data.get(6..).unwrap_or_default());
        st.crc_checked += 1;
        if stored != actual {
            report.error(
                "crc32",
                format!(
                    "{} at byte {}: CRC-32 mismatch, its bytes are damaged",
                    name(h.id),
                    h.offset
                ),
                Some(format!("{stored:08x}")),
                Some(format!("{actual:08x}")),
            );
        }
    }
    match h.id {
        SEEK_HEAD => {
            for (id, seek) in kids {
                if id != SEEK {
                    continue;
                }
                let fields = children(seek);
                let target = fields
                    .iter()
                    .find(|(i, _)| *i == SEEK_ID)
                    .map(|(_, v)| uint(v) as u32);
                let pos = fields
                    .iter()
                    .find(|(i, _)| *i == SEEK_POSITION)
                    .map(|(_, v)| uint(v));
                if let (Some(target), Some(pos)) = (target, pos) {
                    st.seeks.push((target, pos));
                }
            }
        }
        INFO => {
            for (id, v) in kids {
                match id {
                    TIMESTAMP_SCALE if uint(v) > 0 => st.timestamp_scale = uint(v),
                    DURATION => st.duration = float(v),
                    _ => {}
                }
            }
        }
        TRACKS => {
            for (id, entry) in kids {
                if id != TRACK_ENTRY {
                    continue;
                }
                let mut number = 0;
                let mut t = Track {
                    kind: "other",
                    ..Track::default()
                };
                for (fid, v) in children(entry) {
                    match fid {
                        TRACK_NUMBER => number = uint(v),
                        TRACK_TYPE => {
                            t.kind = match uint(v) {
                                1 => "video",
                                2 => "audio",
                                _ => "other",
                            }
                        }
                        CODEC_ID => t.codec = codec_name(&String::from_utf8_lossy(v)),
                        VIDEO => {
                            for (vid, vv) in children(v) {
                                match vid {
                                    PIXEL_WIDTH => t.width = u32::try_from(uint(vv)).ok(),
                                    PIXEL_HEIGHT => t.height = u32::try_from(uint(vv)).ok(),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
                st.tracks.push((number, t));
            }
        }
        CLUSTER => {
            for (id, v) in kids {
                let track = match id {
                    SIMPLE_BLOCK => block_track(v),
                    BLOCK_GROUP => children(v)
                        .into_iter()
                        .find(|(i, _)| *i == BLOCK)
                        .and_then(|(_, b)| block_track(b)),
                    _ => None,
                };
                if let Some(n) = track {
                    match st.frames.iter_mut().find(|(t, _)| *t == n) {
                        Some(entry) => entry.1 += 1,
                        None => st.frames.push((n, 1)),
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Every SeekHead entry must point inside the Segment at an element with the ID it names.
fn check_seeks(st: &State, seg_size: u64, report: &mut Report) {
    for &(id, pos) in &st.seeks {
        let found = st.level1.iter().any(|&(i, p)| i == id && p == pos);
        if !found {
            let why = if pos >= seg_size {
                "past the end of the Segment (the file was cut before it)"
            } else {
                "at a position where no such element starts"
            };
            report.error(
                "index",
                format!(
                    "the SeekHead points to {} at Segment offset {pos}, {why}",
                    name(id)
                ),
                Some(format!("{} at {pos}", name(id))),
                Some("nothing there".into()),
            );
        }
    }
}
