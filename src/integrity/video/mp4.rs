//! MP4 and MOV (ISO base media). Top-level boxes are walked from the file with seeks (a
//! header read per box, the media data never read); `moov` is read whole and handed to
//! mp4parse (Firefox's parser, fuzzed) for the tracks and sample tables; then every
//! sample's offset and size are checked against the file and its `mdat` boxes. Fragmented
//! MP4 (`moof` + `mdat` pairs) has its track runs checked the same way.

use std::io::Cursor;

use super::{MAX_READ, Source, Track, codec_name, truncated};
use crate::integrity::{Report, catch_read};

/// One box header.
#[derive(Debug, Clone, Copy)]
struct BoxHead {
    kind: [u8; 4],
    offset: u64,
    size: u64,
    header: u64,
}

impl BoxHead {
    fn end(&self) -> u64 {
        self.offset.saturating_add(self.size)
    }

    fn name(&self) -> String {
        String::from_utf8_lossy(&self.kind).into_owned()
    }
}

/// Parses a box header from `bytes` at `at`, for a parent that ends at `end` (offsets
/// relative to `bytes`). `None` if the header does not fit.
fn parse_head(bytes: &[u8], at: usize, base: u64, end: u64) -> Option<BoxHead> {
    let h = bytes.get(at..at + 8)?;
    let size32 = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let kind = [h[4], h[5], h[6], h[7]];
    let offset = base + at as u64;
    let (size, header) = match size32 {
        0 => (end.saturating_sub(offset), 8),
        1 => {
            let l = bytes.get(at + 8..at + 16)?;
            let mut b = [0u8; 8];
            b.copy_from_slice(l);
            (u64::from_be_bytes(b), 16)
        }
        n => (u64::from(n), 8),
    };
    Some(BoxHead {
        kind,
        offset,
        size,
        header,
    })
}

fn printable(kind: &[u8; 4]) -> bool {
    kind.iter().all(|&b| (0x20..0x7F).contains(&b) || b == 0xA9)
}

/// The top-level boxes, or the point where the walk had to stop.
fn walk_top(src: &mut Source, report: &mut Report) -> std::io::Result<Vec<BoxHead>> {
    let mut boxes = Vec::new();
    let mut offset = 0u64;
    while offset < src.len {
        let head = src.read_at(offset, 16)?;
        if head.len() < 8 {
            truncated(report, "a box header", offset, 8, head.len() as u64);
            break;
        }
        let Some(b) = parse_head(&head, 0, offset, src.len) else {
            truncated(report, "a 64-bit box header", offset, 16, head.len() as u64);
            break;
        };
        if !printable(&b.kind) {
            report.error(
                "box_type",
                format!("no valid box at byte {offset}: the data there is damaged"),
                Some("a box type of four printable characters".into()),
                Some(format!("{:02x?}", b.kind)),
            );
            break;
        }
        if b.size < b.header {
            report.error(
                "box_size",
                format!(
                    "box {} at byte {offset} has an impossible size {}",
                    b.name(),
                    b.size
                ),
                Some(format!("at least {} bytes", b.header)),
                Some(format!("{} bytes", b.size)),
            );
            break;
        }
        boxes.push(b);
        if b.end() > src.len {
            truncated(
                report,
                &format!("box {}", b.name()),
                offset,
                b.size,
                src.len - offset,
            );
            break;
        }
        offset = b.end();
    }
    Ok(boxes)
}

/// Children of a box held in memory (`bytes` is the whole box).
fn children(bytes: &[u8], skip: usize) -> Vec<(BoxHead, &[u8])> {
    let mut out = Vec::new();
    let mut at = skip;
    let end = bytes.len() as u64;
    while let Some(b) = parse_head(bytes, at, 0, end) {
        if b.size < b.header || b.end() > end {
            break;
        }
        let start = usize::try_from(b.offset).unwrap_or(usize::MAX);
        let stop = usize::try_from(b.end()).unwrap_or(usize::MAX);
        let Some(body) = bytes.get(start..stop) else {
            break;
        };
        out.push((b, body));
        at = stop;
    }
    out
}

/// The first child box of this type, header included.
fn child<'a>(bytes: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    children(bytes, 8)
        .into_iter()
        .find(|(b, _)| &b.kind == kind)
        .map(|(_, body)| body)
}

/// The sample entries mp4parse parses; its own list (boxes.rs), which an entry outside it
/// is skipped by, or refused when it holds a codec box from this list.
const KNOWN_ENTRIES: [&str; 16] = [
    "avc1", "avc3", "s263", "mp4a", "mp4v", "samr", "sawb", "vp08", "vp09", "av01", "fLaC", "Opus",
    "encv", "enca", ".mp3", "lpcm",
];

/// The first sample entries of the tracks that mp4parse does not know, quoted.
fn unknown_entries(moov: &[u8]) -> Vec<String> {
    trak_codecs(moov)
        .into_iter()
        .map(|(_, entry)| entry)
        .filter(|e| !e.is_empty() && !KNOWN_ENTRIES.contains(&e.as_str()))
        .map(|e| format!("'{}'", e.escape_debug()))
        .collect()
}

/// The ftyp major brand when it names a HEIF still image (or the file has a `meta` box
/// and a HEIF compatible brand); None for anything else.
fn still_image_brand(src: &mut Source, boxes: &[BoxHead]) -> std::io::Result<Option<String>> {
    const STILL: [&[u8; 4]; 6] = [b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1"];
    let Some(ftyp) = boxes.iter().find(|b| &b.kind == b"ftyp") else {
        return Ok(None);
    };
    let body = src.read_at(
        ftyp.offset + ftyp.header,
        ftyp.size.saturating_sub(ftyp.header).min(256),
    )?;
    let major = body.get(..4);
    // After the major brand (4) and minor version (4), compatible brands, 4 bytes each.
    let compatible = body.get(8..).unwrap_or_default().chunks_exact(4);
    let has_meta = boxes.iter().any(|b| &b.kind == b"meta");
    let still = major.is_some_and(|m| STILL.iter().any(|s| s[..] == *m))
        || (has_meta
            && compatible
                .into_iter()
                .any(|c| STILL.iter().any(|s| s[..] == *c)));
    Ok(still.then(|| String::from_utf8_lossy(major.unwrap_or_default()).into_owned()))
}

/// Per `trak`, in order: handler type and the first sample entry's four-character code.
fn trak_codecs(moov: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (b, trak) in children(moov, 8) {
        if &b.kind != b"trak" {
            continue;
        }
        let mdia = child(trak, b"mdia");
        let handler = mdia
            .and_then(|m| child(m, b"hdlr"))
            .and_then(|h| h.get(16..20))
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .unwrap_or_default();
        let entry = mdia
            .and_then(|m| child(m, b"minf"))
            .and_then(|m| child(m, b"stbl"))
            .and_then(|s| child(s, b"stsd"))
            .and_then(|s| s.get(20..24))
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .unwrap_or_default();
        out.push((handler, entry));
    }
    out
}

pub(super) fn check(src: &mut Source, report: &mut Report) -> std::io::Result<Vec<Track>> {
    let boxes = walk_top(src, report)?;
    if let Some(ftyp) = boxes.iter().find(|b| &b.kind == b"ftyp") {
        let brand = src.read_at(ftyp.offset + ftyp.header, 4)?;
        let brand = String::from_utf8_lossy(&brand).trim().to_string();
        report.info("container", if brand == "qt" { "mov" } else { "mp4" });
        report.info("brand", brand);
    } else {
        report.info("container", "mov");
    }
    let mdats: Vec<(u64, u64)> = boxes
        .iter()
        .filter(|b| &b.kind == b"mdat")
        .map(|b| (b.offset + b.header, b.end().min(src.len)))
        .collect();
    let Some(moov) = boxes.iter().find(|b| &b.kind == b"moov").copied() else {
        // HEIF (AVIF, HEIC) still images are ISO files with a `meta` box and no tracks.
        if let Some(brand) = still_image_brand(src, &boxes)? {
            report.unsupported(
                "container",
                "HEIF still image",
                format!("an image file (brand {brand}) with no video tracks: this checker verifies video, not still images"),
            );
            return Ok(Vec::new());
        }
        let why = if mdats.is_empty() {
            "no moov box (the index of every track)"
        } else {
            "no moov box after the media data: the file was cut before its index was written"
        };
        report.error("index", why, Some("a moov box".into()), Some("none".into()));
        return Ok(Vec::new());
    };
    if moov.end() > src.len {
        return Ok(Vec::new()); // already reported as truncated
    }
    if moov.size > MAX_READ {
        report.error(
            "index",
            format!(
                "moov is {} bytes, more than this checker reads whole",
                moov.size
            ),
            Some(format!("at most {MAX_READ} bytes")),
            Some(format!("{} bytes", moov.size)),
        );
        return Ok(Vec::new());
    }
    let first_mdat = boxes.iter().position(|b| &b.kind == b"mdat");
    let moov_at = boxes.iter().position(|b| &b.kind == b"moov");
    report.info("fast_start", moov_at < first_mdat || first_mdat.is_none());
    let moov_bytes = src.read_at(moov.offset, moov.size)?;
    let context = match catch_read(|| mp4parse::read_mp4(&mut Cursor::new(&moov_bytes))) {
        Ok(c) => c,
        // mp4parse refuses a codec box it knows inside a sample entry it does not (Dolby
        // Vision's `dav1` holds an `av1C`): that is a codec this checker cannot read, not
        // damage. Inside an entry it knows, the same refusal is damage.
        Err(e) => {
            let unknown = if e.contains("SampleEntry") {
                unknown_entries(&moov_bytes)
            } else {
                Vec::new()
            };
            if !unknown.is_empty() {
                let entries = unknown.join(", ");
                report.unsupported(
                    "codec",
                    &format!("sample entry {entries}"),
                    format!("a track's sample entry ({entries}) is one this checker's MP4 reader does not know, so its samples were not verified"),
                );
                return Ok(Vec::new());
            }
            report.error(
                "index",
                format!("the moov box cannot be parsed: {e}"),
                Some("a valid moov box".into()),
                Some(e),
            );
            return Ok(Vec::new());
        }
    };
    let codecs = trak_codecs(&moov_bytes);
    let fragmented = context.mvex.is_some() || boxes.iter().any(|b| &b.kind == b"moof");
    report.info("fragmented", fragmented);
    let mut tracks = Vec::new();
    let mut ids = Vec::new();
    for (i, t) in context.tracks.iter().enumerate() {
        let (handler, fourcc) = codecs.get(i).cloned().unwrap_or_default();
        let kind = match t.track_type {
            mp4parse::TrackType::Video | mp4parse::TrackType::Picture => "video",
            mp4parse::TrackType::Audio => "audio",
            _ if handler == "vide" => "video",
            _ if handler == "soun" => "audio",
            _ => "other",
        };
        let timescale = t.timescale.map(|s| s.0).filter(|&s| s > 0);
        let duration_s = t
            .duration
            .zip(timescale)
            .map(|(d, s)| d.0 as f64 / s as f64)
            .filter(|&d| d > 0.0);
        let (width, height) = t
            .tkhd
            .as_ref()
            .map(|h| (Some(h.width >> 16), Some(h.height >> 16)))
            .unwrap_or((None, None));
        let frames = if fragmented {
            None
        } else {
            Some(check_samples(t, i, src.len, &mdats, report))
        };
        ids.push((t.track_id.unwrap_or(0), timescale));
        tracks.push(Track {
            kind,
            codec: codec_name(&fourcc),
            width: width.filter(|_| kind == "video"),
            height: height.filter(|_| kind == "video"),
            duration_s,
            frames,
        });
    }
    if fragmented {
        check_fragments(src, &boxes, &ids, &mut tracks, report)?;
        if !boxes.iter().any(|b| &b.kind == b"mfra") {
            // Live writers never add one, so its absence alone does not fail the file; but
            // a file cut between two fragments looks exactly like this.
            report.warning(
                "index",
                "no mfra box (fragment random-access index): written live, or cut between fragments",
            );
        }
    }
    Ok(tracks)
}

/// Walks one track's sample table (stsc × stco × stsz) and checks that every sample lies
/// inside the file and inside an `mdat`. Returns the sample count.
fn check_samples(
    t: &mp4parse::Track,
    index: usize,
    len: u64,
    mdats: &[(u64, u64)],
    report: &mut Report,
) -> u64 {
    let (Some(stsz), Some(stco), Some(stsc)) = (&t.stsz, &t.stco, &t.stsc) else {
        report.error(
            "index",
            format!(
                "track {} has no complete sample table (stsz, stco, stsc)",
                index + 1
            ),
            Some("a sample table".into()),
            Some("parts missing".into()),
        );
        return 0;
    };
    let count = if stsz.sample_size == 0 {
        stsz.sample_sizes.len() as u64
    } else {
        t.stts.as_ref().map_or(0, |s| {
            s.samples.iter().map(|e| u64::from(e.sample_count)).sum()
        })
    };
    let size_of = |i: u64| -> u64 {
        if stsz.sample_size != 0 {
            u64::from(stsz.sample_size)
        } else {
            usize::try_from(i)
                .ok()
                .and_then(|i| stsz.sample_sizes.get(i))
                .map_or(0, |&s| u64::from(s))
        }
    };
    let runs = &stsc.samples;
    let mut run = 0usize;
    let mut sample = 0u64;
    let mut outside_file = 0u64;
    let mut outside_mdat = 0u64;
    let mut first_bad: Option<(u64, u64, u64)> = None;
    for (c, &chunk_offset) in stco.offsets.iter().enumerate() {
        if sample >= count {
            break;
        }
        let chunk_no = c as u64 + 1;
        // The run that covers this chunk: the last whose first_chunk <= chunk_no. Runs
        // are in chunk order, so one pointer moves forward (no rescan per chunk).
        while runs
            .get(run + 1)
            .is_some_and(|r| u64::from(r.first_chunk) <= chunk_no)
        {
            run += 1;
        }
        let per_chunk = runs
            .get(run)
            .filter(|r| u64::from(r.first_chunk) <= chunk_no)
            .map_or(0, |r| u64::from(r.samples_per_chunk));
        let n = per_chunk.min(count - sample);
        let mut offset = chunk_offset;
        if stsz.sample_size != 0 {
            // One size for every sample: the chunk is checked as a whole, so a hostile
            // sample count costs nothing per sample.
            let size = u64::from(stsz.sample_size);
            let in_file = if offset >= len {
                0
            } else {
                ((len - offset) / size).min(n)
            };
            let in_mdat = mdat_end(mdats, offset).map_or(0, |e| ((e - offset) / size).min(in_file));
            if in_mdat < in_file {
                outside_mdat += in_file - in_mdat;
                first_bad.get_or_insert((sample + in_mdat, offset + in_mdat * size, size));
            }
            if in_file < n {
                outside_file += n - in_file;
                first_bad.get_or_insert((
                    sample + in_file,
                    offset.saturating_add(in_file * size),
                    size,
                ));
            }
            sample += n;
            continue;
        }
        for _ in 0..n {
            let size = size_of(sample);
            let end = offset.saturating_add(size);
            if end > len {
                outside_file += 1;
                first_bad.get_or_insert((sample, offset, size));
            } else if mdat_end(mdats, offset).is_none_or(|e| end > e) {
                outside_mdat += 1;
                first_bad.get_or_insert((sample, offset, size));
            }
            offset = end;
            sample += 1;
        }
    }
    if sample < count {
        report.error(
            "sample_table",
            format!(
                "track {}: the chunk table places {sample} of {count} samples",
                index + 1
            ),
            Some(format!("{count} samples placed")),
            Some(format!("{sample} placed")),
        );
    }
    if let Some((s, off, size)) = first_bad {
        if outside_file > 0 {
            report.error(
                "truncated",
                format!(
                    "track {}: {outside_file} sample(s) lie past the end of the file, the first is sample {s} ({size} bytes at byte {off}) in a {len}-byte file",
                    index + 1
                ),
                Some("every sample inside the file".into()),
                Some(format!("{outside_file} outside")),
            );
        }
        if outside_mdat > 0 {
            report.error(
                "sample_offsets",
                format!(
                    "track {}: {outside_mdat} sample(s) lie outside every mdat box, the first is sample {s} at byte {off}",
                    index + 1
                ),
                Some("every sample inside an mdat box".into()),
                Some(format!("{outside_mdat} outside")),
            );
        }
    }
    count
}

/// The end of the mdat payload that holds `offset`. `mdats` are in file order and do not
/// overlap, so a binary search finds it (a hostile file may hold many thousands).
fn mdat_end(mdats: &[(u64, u64)], offset: u64) -> Option<u64> {
    let i = mdats.partition_point(|&(s, _)| s <= offset);
    let &(_, e) = mdats.get(i.checked_sub(1)?)?;
    (offset < e).then_some(e)
}

/// Fragmented MP4: each `moof`'s track runs must point inside the file; frames and
/// durations are summed per track.
fn check_fragments(
    src: &mut Source,
    boxes: &[BoxHead],
    ids: &[(u32, Option<u64>)],
    tracks: &mut [Track],
    report: &mut Report,
) -> std::io::Result<()> {
    let mut fragments = 0u64;
    let mut frames = vec![0u64; tracks.len()];
    let mut ticks = vec![0u64; tracks.len()];
    let mut bad = 0u64;
    let mut first_bad = None;
    for b in boxes.iter().filter(|b| &b.kind == b"moof") {
        if b.end() > src.len || b.size > MAX_READ {
            continue; // reported by the walk
        }
        fragments += 1;
        let moof = src.read_at(b.offset, b.size)?;
        for (t, traf) in children(&moof, 8) {
            if &t.kind != b"traf" {
                continue;
            }
            let run = parse_traf(traf, b.offset);
            let Some(track) = ids.iter().position(|&(id, _)| id == run.track_id) else {
                continue;
            };
            frames[track] += run.samples;
            ticks[track] = ticks[track].saturating_add(run.duration);
            if let Some((start, size)) = run.data
                && start.saturating_add(size) > src.len
            {
                bad += 1;
                first_bad.get_or_insert((b.offset, start, size));
            }
        }
    }
    report.info("fragments", fragments);
    for (i, t) in tracks.iter_mut().enumerate() {
        t.frames = Some(frames[i]);
        if let Some(scale) = ids[i].1
            && ticks[i] > 0
        {
            t.duration_s = Some(ticks[i] as f64 / scale as f64);
        }
    }
    if fragments == 0 {
        report.error(
            "index",
            "a fragmented file (mvex) with no moof fragment",
            Some("at least one moof".into()),
            Some("none".into()),
        );
    }
    if let Some((moof, start, size)) = first_bad {
        report.error(
            "truncated",
            format!(
                "{bad} track run(s) point past the end of the file, the first from the moof at byte {moof}: {size} bytes at byte {start}, file is {} bytes",
                src.len
            ),
            Some("every run inside the file".into()),
            Some(format!("{bad} outside")),
        );
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Run {
    track_id: u32,
    samples: u64,
    duration: u64,
    /// First byte and total size of the samples, when sizes are known.
    data: Option<(u64, u64)>,
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at + 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_be_bytes(a))
}

/// `tfhd` + `trun` of one track fragment (ISO 14496-12 § 8.8.7, 8.8.8).
fn parse_traf(traf: &[u8], moof_offset: u64) -> Run {
    let mut run = Run::default();
    let mut base = moof_offset;
    let mut default_size = None;
    let mut default_duration = 0u64;
    let mut data_start = None;
    let mut total_size = Some(0u64);
    for (b, body) in children(traf, 8) {
        let flags = be32(body, 8).unwrap_or(0) & 0x00FF_FFFF;
        match &b.kind {
            b"tfhd" => {
                run.track_id = be32(body, 12).unwrap_or(0);
                let mut at = 16;
                if flags & 0x01 != 0 {
                    base = be64(body, at).unwrap_or(base);
                    at += 8;
                }
                if flags & 0x02 != 0 {
                    at += 4;
                }
                if flags & 0x08 != 0 {
                    default_duration = u64::from(be32(body, at).unwrap_or(0));
                    at += 4;
                }
                if flags & 0x10 != 0 {
                    default_size = be32(body, at).map(u64::from);
                }
            }
            b"trun" => {
                let count = be32(body, 12).unwrap_or(0);
                let mut at = 16;
                if flags & 0x01 != 0 {
                    let off = be32(body, at).map_or(0, |o| i64::from(o as i32));
                    data_start = Some(base.saturating_add_signed(off));
                    at += 4;
                }
                if flags & 0x04 != 0 {
                    at += 4;
                }
                let per_sample = [0x100, 0x200, 0x400, 0x800]
                    .iter()
                    .filter(|&&f| flags & f != 0)
                    .count()
                    * 4;
                run.samples += u64::from(count);
                if per_sample == 0 {
                    // Every sample takes the defaults: no per-sample loop, so a hostile
                    // count of four billion costs nothing.
                    let n = u64::from(count);
                    run.duration = run
                        .duration
                        .saturating_add(n.saturating_mul(default_duration));
                    total_size = total_size
                        .zip(default_size)
                        .map(|(t, s)| t.saturating_add(n.saturating_mul(s)));
                    continue;
                }
                // Hostile counts stop at the end of the box, not at `count`.
                for i in 0..count as usize {
                    let entry = at + i * per_sample;
                    if entry + per_sample > body.len() {
                        total_size = None;
                        break;
                    }
                    let mut field = entry;
                    let duration = if flags & 0x100 != 0 {
                        let d = be32(body, field).map_or(0, u64::from);
                        field += 4;
                        d
                    } else {
                        default_duration
                    };
                    run.duration = run.duration.saturating_add(duration);
                    let size = if flags & 0x200 != 0 {
                        be32(body, field).map(u64::from)
                    } else {
                        default_size
                    };
                    total_size = total_size.zip(size).map(|(t, s)| t.saturating_add(s));
                }
            }
            _ => {}
        }
    }
    run.data = data_start.zip(total_size);
    run
}
