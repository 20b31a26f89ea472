//! NPY files (versions 1–3): the header is parsed with bounds, object dtypes are refused,
//! the length must be exactly header + product(shape) × itemsize (checked arithmetic, so a
//! lying header can neither overflow nor make anything allocate), and float data is scanned
//! for non-finite values in fixed-size chunks.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde_json::json;

use super::features::check_expectations;
use super::{FeatureCheck, Report, read_up_to};
use crate::error::{GuardrailError, Result};

/// Largest header accepted: numpy writes a few hundred bytes; anything near this is hostile.
const MAX_HEADER: u32 = 1 << 20;
/// Bytes read per step of the finite scan.
const CHUNK: usize = 1 << 20;

/// A parsed `descr`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dtype {
    little_endian: bool,
    kind: char,
    itemsize: u64,
    name: String,
}

fn parse_descr(descr: &str) -> std::result::Result<Dtype, String> {
    let mut chars = descr.chars().peekable();
    let order = match chars.peek() {
        Some(&c @ ('<' | '>' | '|' | '=')) => {
            chars.next();
            c
        }
        _ => '=',
    };
    let kind = chars.next().ok_or("empty descr")?;
    let rest: String = chars.collect();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = if digits.is_empty() {
        match kind {
            'O' | '?' => 0,
            _ => return Err(format!("descr {descr:?} has no item size")),
        }
    } else {
        digits
            .parse()
            .map_err(|_| format!("descr {descr:?} has a bad item size"))?
    };
    let little_endian = match order {
        '<' => true,
        '>' => false,
        _ => cfg!(target_endian = "little"),
    };
    let (name, itemsize) = match kind {
        'f' => (format!("float{}", n * 8), n),
        'i' => (format!("int{}", n * 8), n),
        'u' => (format!("uint{}", n * 8), n),
        'c' => (format!("complex{}", n * 8), n),
        'b' | '?' => ("bool".to_string(), n.max(1)),
        'S' | 'a' => (format!("bytes{n}"), n),
        'U' => (
            format!("str{n}"),
            n.checked_mul(4).ok_or("item size overflows")?,
        ),
        'V' => (format!("void{n}"), n),
        'M' => ("datetime64".to_string(), n),
        'm' => ("timedelta64".to_string(), n),
        'O' => ("object".to_string(), 8),
        other => return Err(format!("unknown dtype kind {other:?} in {descr:?}")),
    };
    Ok(Dtype {
        little_endian,
        kind,
        itemsize,
        name,
    })
}

/// The value text after `'key':` in the header dict.
fn field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    Some(rest.trim_start().strip_prefix(':')?.trim_start())
}

fn parse_header(header: &str) -> std::result::Result<(String, bool, Vec<u64>), String> {
    let descr_text = field(header, "descr").ok_or("no 'descr' in the header")?;
    let descr = match descr_text.chars().next() {
        Some(q @ ('\'' | '"')) => {
            let body = &descr_text[1..];
            let end = body.find(q).ok_or("unterminated 'descr'")?;
            body[..end].to_string()
        }
        Some('[') => return Err("structured dtype (a list of fields): not a feature array".into()),
        _ => return Err("'descr' is not a string".into()),
    };
    let fortran = field(header, "fortran_order").ok_or("no 'fortran_order' in the header")?;
    let fortran = if fortran.starts_with("True") {
        true
    } else if fortran.starts_with("False") {
        false
    } else {
        return Err("'fortran_order' is neither True nor False".into());
    };
    let shape_text = field(header, "shape").ok_or("no 'shape' in the header")?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split_once(')'))
        .map(|(inside, _)| inside)
        .ok_or("'shape' is not a tuple")?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<u64>()
                .map_err(|_| format!("shape entry {s:?} is not a size"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok((descr, fortran, shape))
}

pub(super) fn check(
    path: &Path,
    len: u64,
    check: &FeatureCheck,
    report: &mut Report,
) -> Result<()> {
    let io = |e| GuardrailError::io(path, e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut pre = [0u8; 12];
    let got = read_up_to(&mut file, &mut pre).map_err(io)?;
    if got < 10 {
        report.error(
            "header",
            "the file ends inside the NPY preamble",
            Some("at least 10 bytes".into()),
            Some(format!("{got} bytes")),
        );
        return Ok(());
    }
    let major = pre[6];
    let (header_len, preamble) = match major {
        1 => (u32::from(u16::from_le_bytes([pre[8], pre[9]])), 10u64),
        2 | 3 if got >= 12 => (
            u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]),
            12u64,
        ),
        2 | 3 => {
            report.error(
                "header",
                "the file ends inside the NPY preamble",
                Some("12 bytes".into()),
                Some(format!("{got} bytes")),
            );
            return Ok(());
        }
        v => {
            report.error(
                "version",
                "unknown NPY version",
                Some("1, 2 or 3".into()),
                Some(v.to_string()),
            );
            return Ok(());
        }
    };
    report.info("npy_version", format!("{major}.{}", pre[7]));
    if header_len > MAX_HEADER {
        report.error(
            "header",
            "the header length is implausible",
            Some(format!("at most {MAX_HEADER} bytes")),
            Some(format!("{header_len} bytes")),
        );
        return Ok(());
    }
    let data_start = preamble + u64::from(header_len);
    if data_start > len {
        report.error(
            "header",
            "the file ends inside the header (truncated)",
            Some(format!("at least {data_start} bytes")),
            Some(format!("{len} bytes")),
        );
        return Ok(());
    }
    file.seek(SeekFrom::Start(preamble)).map_err(io)?;
    let mut raw = vec![0u8; header_len as usize];
    file.read_exact(&mut raw).map_err(io)?;
    // v3 headers are UTF-8, v1/v2 latin-1; the fields read here are ASCII either way.
    let header = String::from_utf8_lossy(&raw);
    let (descr, fortran, shape) = match parse_header(&header) {
        Ok(h) => h,
        Err(why) => {
            report.error(
                "header",
                why,
                Some("a NumPy header dict".into()),
                Some(header.trim().chars().take(200).collect()),
            );
            return Ok(());
        }
    };
    let dtype = match parse_descr(&descr) {
        Ok(d) => d,
        Err(why) => {
            report.error("dtype", why, None, Some(descr));
            return Ok(());
        }
    };
    report.info("dtype", dtype.name.clone());
    report.info("descr", descr.clone());
    report.info(
        "byte_order",
        if dtype.little_endian { "little" } else { "big" },
    );
    report.info("fortran_order", fortran);
    report.info("shape", json!(shape));
    if let Some(rows) = shape.first() {
        report.info("rows", *rows);
    }
    if dtype.kind == 'O' {
        report.error(
            "dtype",
            "object arrays are stored with pickle, which can run code; refused",
            Some("a numeric or fixed-size dtype".into()),
            Some("object".into()),
        );
        return Ok(());
    }
    if !dtype.little_endian && dtype.itemsize > 1 {
        report.warning(
            "byte_order",
            "big-endian data: most loaders convert it on every read",
        );
    }
    if fortran {
        if check.allow_fortran_order {
            report.warning("fortran_order", "column-major (Fortran order) array");
        } else {
            report.error(
                "fortran_order",
                "column-major array refused",
                Some("C order".into()),
                Some("Fortran order".into()),
            );
        }
    }

    // Length: exact, with checked arithmetic on sizes from the header.
    let elements = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
    let data_bytes = elements.and_then(|e| e.checked_mul(dtype.itemsize));
    let expected_len = data_bytes.and_then(|d| d.checked_add(data_start));
    match expected_len {
        None => {
            report.error(
                "shape",
                "the header's shape overflows 64 bits: it lies",
                None,
                Some(format!("{shape:?}")),
            );
            return Ok(());
        }
        Some(expected) if expected != len => {
            let what = if len < expected {
                "the file is truncated"
            } else {
                "the file is longer than its header says"
            };
            report.error(
                "file_length",
                what,
                Some(format!("{expected} bytes")),
                Some(format!("{len} bytes")),
            );
        }
        Some(_) => {}
    }
    if let Some(e) = elements {
        report.info("elements", e);
    }

    check_expectations(check, std::slice::from_ref(&dtype.name), &shape, report);

    // Finite scan over what is really there (a truncated file is scanned as far as it goes).
    if check.finite && matches!(dtype.kind, 'f' | 'c') {
        let lane = match (dtype.kind, dtype.itemsize) {
            ('f', s) => s,
            ('c', s) => s / 2,
            _ => 0,
        };
        if !matches!(lane, 2 | 4 | 8) {
            report.warning("finite", format!("no finite scan for {}", dtype.name));
            return Ok(());
        }
        file.seek(SeekFrom::Start(data_start)).map_err(io)?;
        let limit = data_bytes.unwrap_or(0);
        let (bad, first) =
            scan_non_finite(&mut file, limit, lane as usize, dtype.little_endian).map_err(io)?;
        report.info("non_finite", bad);
        if bad > 0 {
            report.error(
                "finite",
                format!(
                    "{bad} NaN or infinite value(s), the first at flat index {}",
                    first.unwrap_or(0)
                ),
                Some("only finite values".into()),
                Some(format!("{bad} non-finite")),
            );
        }
    }
    Ok(())
}

/// Counts non-finite lanes (NaN, ±inf) in up to `limit` bytes: a lane is non-finite when
/// its exponent bits are all ones. Returns the count and the first index.
fn scan_non_finite(
    file: &mut impl Read,
    limit: u64,
    lane: usize,
    little_endian: bool,
) -> std::io::Result<(u64, Option<u64>)> {
    let mut buf = vec![0u8; CHUNK];
    let mut bad = 0u64;
    let mut first = None;
    let mut seen = 0u64;
    let mut carry = 0usize;
    let mut left = limit;
    loop {
        let want = (CHUNK - carry).min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            break;
        }
        let n = read_up_to(file, &mut buf[carry..carry + want])?;
        if n == 0 {
            break;
        }
        left -= n as u64;
        let filled = carry + n;
        let whole = filled - filled % lane;
        let count = count_non_finite(&buf[..whole], lane, little_endian);
        if count > 0 && first.is_none() {
            first = buf[..whole]
                .chunks_exact(lane)
                .position(|l| !lane_finite(l, little_endian))
                .map(|p| seen + p as u64);
        }
        bad += count;
        seen += (whole / lane) as u64;
        carry = filled - whole;
        buf.copy_within(whole..filled, 0);
    }
    Ok((bad, first))
}

fn lane_finite(l: &[u8], little_endian: bool) -> bool {
    match l.len() {
        2 => {
            let b = [l[0], l[1]];
            let v = if little_endian {
                u16::from_le_bytes(b)
            } else {
                u16::from_be_bytes(b)
            };
            v & 0x7C00 != 0x7C00
        }
        4 => {
            let b = [l[0], l[1], l[2], l[3]];
            let v = if little_endian {
                u32::from_le_bytes(b)
            } else {
                u32::from_be_bytes(b)
            };
            v & 0x7F80_0000 != 0x7F80_0000
        }
        _ => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&l[..8]);
            let v = if little_endian {
                u64::from_le_bytes(b)
            } else {
                u64::from_be_bytes(b)
            };
            v & 0x7FF0_0000_0000_0000 != 0x7FF0_0000_0000_0000
        }
    }
}

/// Branch-free counting, so the compiler vectorizes the hot loop.
fn count_non_finite(bytes: &[u8], lane: usize, little_endian: bool) -> u64 {
    match (lane, little_endian) {
        (4, true) => bytes
            .chunks_exact(4)
            .map(|c| {
                u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7F80_0000 == 0x7F80_0000)
            })
            .sum(),
        (8, true) => bytes
            .chunks_exact(8)
            .map(|c| {
                let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                u64::from(v & 0x7FF0_0000_0000_0000 == 0x7FF0_0000_0000_0000)
            })
            .sum(),
        _ => bytes
            .chunks_exact(lane)
            .map(|c| u64::from(!lane_finite(c, little_endian)))
            .sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descr_and_header_forms() {
        assert_eq!(parse_descr("<f4").unwrap().name, "float32");
        assert!(!parse_descr(">f8").unwrap().little_endian);
        assert_eq!(parse_descr("|b1").unwrap().name, "bool");
        assert_eq!(parse_descr("<U10").unwrap().itemsize, 40);
        assert_eq!(parse_descr("|O").unwrap().name, "object");
        assert!(parse_descr("<U99999999999999999999").is_err());
        assert!(parse_descr("").is_err());
        let (d, f, s) =
            parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }").unwrap();
        assert_eq!((d.as_str(), f, s), ("<f4", false, vec![3, 4]));
        assert_eq!(
            parse_header("{'descr': '<i8', 'fortran_order': True, 'shape': (), }")
                .unwrap()
                .2,
            Vec::<u64>::new()
        );
        assert_eq!(
            parse_header("{'descr': '<i8', 'fortran_order': False, 'shape': (7,), }")
                .unwrap()
                .2,
            vec![7]
        );
        assert!(
            parse_header("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }")
                .is_err()
        );
        assert!(parse_header("{'descr': '<f4', 'shape': (1,), }").is_err());
        assert!(
            parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }").is_err()
        );
        assert!(parse_header("garbage").is_err());
    }

    #[test]
    fn lanes_of_every_width() {
        assert!(lane_finite(&1.5f32.to_le_bytes(), true));
        assert!(!lane_finite(&f32::NAN.to_le_bytes(), true));
        assert!(!lane_finite(&f64::INFINITY.to_be_bytes(), false));
        assert!(!lane_finite(&0x7C00u16.to_le_bytes(), true)); // f16 inf
        assert!(lane_finite(&0x3C00u16.to_le_bytes(), true)); // f16 1.0
        let data: Vec<u8> = [1.0f32, f32::NAN, 2.0, f32::NEG_INFINITY]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        assert_eq!(count_non_finite(&data, 4, true), 2);
    }
}
