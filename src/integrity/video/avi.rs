//! AVI (RIFF). The RIFF chunks are walked from the file with seeks (OpenDML `AVIX`
//! extensions included); the header list gives the streams, codecs, frame counts and
//! sizes; the `idx1` index (or an OpenDML `indx`) must be there, and every entry it
//! holds must point inside the `movi` list.

use super::{MAX_READ, Source, Track, codec_name, truncated};
use crate::integrity::Report;

fn le32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn fourcc(b: &[u8], at: usize) -> String {
    b.get(at..at + 4)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .unwrap_or_default()
}

/// Chunks inside an in-memory list: (id, data).
fn chunks(data: &[u8]) -> Vec<([u8; 4], &[u8])> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 8 <= data.len() {
        let id = [data[at], data[at + 1], data[at + 2], data[at + 3]];
        let Some(size) = le32(data, at + 4).and_then(|s| usize::try_from(s).ok()) else {
            break;
        };
        let Some(body) = (at + 8).checked_add(size).and_then(|e| data.get(at + 8..e)) else {
            break;
        };
        out.push((id, body));
        at += 8 + size + (size & 1);
    }
    out
}

#[derive(Default)]
struct Movi {
    /// Offset of the `movi` list type, which idx1 offsets are usually relative to.
    list_type_at: u64,
    end: u64,
}

pub(super) fn check(src: &mut Source, report: &mut Report) -> std::io::Result<Vec<Track>> {
    report.info("container", "avi");
    let mut tracks = Vec::new();
    let mut movi: Option<Movi> = None;
    let mut idx1: Option<(u64, u64)> = None;
    let mut has_indx = false;
    let mut total_frames = None;
    let mut riff_at = 0u64;
    let mut riffs = 0;
    // RIFF 'AVI ' then, for files past 1 GiB, RIFF 'AVIX' extensions.
    while riff_at + 12 <= src.len {
        let head = src.read_at(riff_at, 12)?;
        if &head[..4] != b"RIFF" || !matches!(&head[8..12], b"AVI " | b"AVIX") {
            if riffs == 0 {
                report.error(
                    "header",
                    "no RIFF AVI header",
                    Some("RIFF AVI".into()),
                    None,
                );
            } else {
                report.warning(
                    "trailing_data",
                    format!(
                        "{} bytes after the last RIFF chunk",
                        src.len.saturating_sub(riff_at)
                    ),
                );
            }
            break;
        }
        riffs += 1;
        let size = u64::from(le32(&head, 4).unwrap_or(0));
        let end = riff_at + 8 + size;
        if end > src.len {
            truncated(
                report,
                "RIFF",
                riff_at,
                size,
                src.len.saturating_sub(riff_at + 8),
            );
        }
        let end = end.min(src.len);
        let mut at = riff_at + 12;
        while at < end {
            let h = src.read_at(at, 12)?;
            if h.len() < 8 {
                truncated(report, "a chunk header", at, 8, h.len() as u64);
                break;
            }
            let id = [h[0], h[1], h[2], h[3]];
            let size = u64::from(le32(&h, 4).unwrap_or(0));
            let chunk_end = at + 8 + size;
            let name = String::from_utf8_lossy(&id).into_owned();
            if chunk_end > end {
                let what = if &id == b"LIST" {
                    format!("LIST {}", fourcc(&h, 8))
                } else {
                    format!("chunk {name}")
                };
                truncated(report, &what, at, size, end.saturating_sub(at + 8));
            }
            match (&id, h.get(8..12)) {
                (b"LIST", Some(b"hdrl")) if riffs == 1 => {
                    let data = src.read_at(at + 12, size.saturating_sub(4).min(MAX_READ))?;
                    has_indx |= read_hdrl(&data, &mut tracks, &mut total_frames);
                }
                (b"LIST", Some(b"movi")) if riffs == 1 => {
                    movi = Some(Movi {
                        list_type_at: at + 8,
                        end: chunk_end.min(end),
                    });
                }
                (b"idx1", _) => idx1 = Some((at + 8, size.min(end.saturating_sub(at + 8)))),
                _ => {}
            }
            at = chunk_end + (size & 1);
        }
        riff_at = riff_at + 8 + size + (size & 1);
    }
    if riffs == 0 {
        return Ok(Vec::new());
    }
    report.info("riff_chunks", riffs);
    let Some(movi) = movi else {
        report.error(
            "movi",
            "no movi list: the file holds no media data",
            Some("a movi list".into()),
            None,
        );
        return Ok(tracks);
    };
    match idx1 {
        Some((at, size)) => check_index(src, at, size, &movi, &mut tracks, report)?,
        None if has_indx => report.info("index", "opendml"),
        None => report.error(
            "index",
            "no idx1 index (and no OpenDML indx): players must rebuild it, and a cut file looks like this",
            Some("an idx1 chunk".into()),
            Some("none".into()),
        ),
    }
    if let Some(t) = tracks.iter_mut().find(|t| t.kind == "video")
        && t.frames.is_none()
    {
        t.frames = total_frames;
    }
    Ok(tracks)
}

/// Streams from the header list; returns whether an OpenDML super index is present.
fn read_hdrl(data: &[u8], tracks: &mut Vec<Track>, total_frames: &mut Option<u64>) -> bool {
    let mut has_indx = false;
    let mut frame_us = 0u32;
    for (id, body) in chunks(data) {
        match &id {
            b"avih" => {
                frame_us = le32(body, 0).unwrap_or(0);
                *total_frames = le32(body, 16).map(u64::from);
            }
            b"LIST" if body.get(..4) == Some(b"strl") => {
                let mut t = Track {
                    kind: "other",
                    ..Track::default()
                };
                for (sid, s) in chunks(&body[4..]) {
                    match &sid {
                        b"strh" => {
                            t.kind = match s.get(..4) {
                                Some(b"vids") => "video",
                                Some(b"auds") => "audio",
                                _ => "other",
                            };
                            t.codec = codec_name(&fourcc(s, 4));
                            let scale = le32(s, 20).unwrap_or(0);
                            let rate = le32(s, 24).unwrap_or(0);
                            let length = le32(s, 32).unwrap_or(0);
                            if scale > 0 && rate > 0 {
                                t.duration_s =
                                    Some(f64::from(length) * f64::from(scale) / f64::from(rate));
                            }
                        }
                        b"strf" if t.kind == "video" => {
                            t.width = le32(s, 4).map(|w| (w as i32).unsigned_abs());
                            t.height = le32(s, 8).map(|h| (h as i32).unsigned_abs());
                            let compression = fourcc(s, 16);
                            if !compression.trim_matches('\0').is_empty() {
                                t.codec = codec_name(&compression);
                            }
                        }
                        b"strf" if t.kind == "audio" => {
                            t.codec = match s.get(..2) {
                                Some([0x01, 0x00]) => "pcm".into(),
                                Some([0x55, 0x00]) => "mp3".into(),
                                Some([0xFF, 0x00]) => "aac".into(),
                                _ => t.codec.clone(),
                            };
                        }
                        b"indx" => has_indx = true,
                        _ => {}
                    }
                }
                tracks.push(t);
            }
            _ => {}
        }
    }
    if tracks.iter().all(|t| t.duration_s.is_none())
        && let (Some(frames), true) = (*total_frames, frame_us > 0)
        && let Some(v) = tracks.iter_mut().find(|t| t.kind == "video")
    {
        v.duration_s = Some(frames as f64 * f64::from(frame_us) / 1e6);
    }
    has_indx
}

/// Every idx1 entry (16 bytes: id, flags, offset, size) must point inside `movi`.
fn check_index(
    src: &mut Source,
    at: u64,
    size: u64,
    movi: &Movi,
    tracks: &mut [Track],
    report: &mut Report,
) -> std::io::Result<()> {
    let index = src.read_at(at, size)?;
    let entries: Vec<&[u8]> = index.chunks_exact(16).collect();
    report.info("index_entries", entries.len());
    // Offsets are relative to the `movi` list type, or (some muxers) absolute.
    let absolute = entries
        .first()
        .and_then(|e| le32(e, 8))
        .is_some_and(|o| u64::from(o) >= movi.list_type_at);
    let base = if absolute { 0 } else { movi.list_type_at };
    let mut per_stream = vec![0u64; tracks.len()];
    let mut outside = 0u64;
    let mut first_bad = None;
    for (n, e) in entries.iter().enumerate() {
        let offset = base + u64::from(le32(e, 8).unwrap_or(0));
        let len = u64::from(le32(e, 12).unwrap_or(0));
        if offset.saturating_add(8).saturating_add(len) > movi.end {
            outside += 1;
            first_bad.get_or_insert((n, offset, len));
        }
        // Chunk ids are two stream digits then a type: `00dc`, `01wb`.
        let stream = std::str::from_utf8(&e[..2])
            .ok()
            .and_then(|d| d.parse::<usize>().ok());
        if let Some(s) = stream
            && let Some(count) = per_stream.get_mut(s)
            && &e[2..4] != b"ix"
        {
            *count += 1;
        }
    }
    for (t, count) in tracks.iter_mut().zip(per_stream) {
        if t.kind == "video" {
            t.frames = Some(count);
        }
    }
    if let Some((n, offset, len)) = first_bad {
        report.error(
            "index",
            format!(
                "{outside} idx1 entries point outside the movi list, the first is entry {n}: {len} bytes at byte {offset}, movi ends at {}",
                movi.end
            ),
            Some("every entry inside movi".into()),
            Some(format!("{outside} outside")),
        );
    }
    Ok(())
}
