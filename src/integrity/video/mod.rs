//! Videos at container level: MP4/MOV (with fragmented MP4), Matroska/WebM and AVI. The
//! checks catch what a cut or damaged copy leaves behind — sizes that run past the end of
//! the file, a missing or broken index, samples outside the file, Matroska CRC-32
//! mismatches — without decoding a frame, so they cost a few reads per file. An optional
//! deep check decodes every frame through `ffmpeg`, bounded by a timeout.

mod avi;
mod mkv;
mod mp4;

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use super::{Format, Report, read_up_to};
use crate::error::{GuardrailError, Result};
use crate::process::ProcessLimits;

/// What a video must satisfy.
///
/// ```
/// use std::time::Duration;
/// use guardrails::integrity::VideoCheck;
///
/// let check = VideoCheck::new()
///     .with_codecs(["h264", "hevc"])
///     .with_min_duration(Duration::from_secs(1))
///     .with_decode(true); // also decode every frame with ffmpeg, if installed
/// assert!(check.decode);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct VideoCheck {
    /// Accepted video codecs (`"h264"`, `"hevc"`, `"mpeg4"`, `"vp9"`, `"av1"`, `"mjpeg"`…);
    /// empty accepts any.
    pub codecs: Vec<String>,
    /// Shortest accepted duration.
    pub min_duration: Option<Duration>,
    /// Fewest accepted video frames.
    pub min_frames: Option<u64>,
    /// Verify Matroska CRC-32 elements where the muxer wrote them (default on). This reads
    /// every checksummed element whole, clusters included.
    pub checksums: bool,
    /// Decode every frame through `ffmpeg` (default off). Without ffmpeg on `PATH` the
    /// report says so in a warning.
    pub decode: bool,
    /// The longest the decode may take (default 120 s); past it ffmpeg is killed and the
    /// check fails.
    pub decode_timeout: Duration,
    /// The ffmpeg program to run (default `"ffmpeg"`, found on `PATH`).
    pub ffmpeg: std::path::PathBuf,
}

impl Default for VideoCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl VideoCheck {
    /// Container checks only, checksums verified, no decode.
    pub fn new() -> Self {
        Self {
            codecs: Vec::new(),
            min_duration: None,
            min_frames: None,
            checksums: true,
            decode: false,
            decode_timeout: Duration::from_secs(120),
            ffmpeg: std::path::PathBuf::from("ffmpeg"),
        }
    }

    /// Accepts only these video codecs.
    #[must_use]
    pub fn with_codecs<I, S>(mut self, codecs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.codecs = codecs.into_iter().map(Into::into).collect();
        self
    }

    /// Requires at least this duration.
    #[must_use]
    pub fn with_min_duration(mut self, d: Duration) -> Self {
        self.min_duration = Some(d);
        self
    }

    /// Requires at least this many video frames.
    #[must_use]
    pub fn with_min_frames(mut self, n: u64) -> Self {
        self.min_frames = Some(n);
        self
    }

    /// Turns Matroska CRC-32 verification on or off.
    #[must_use]
    pub fn with_checksums(mut self, on: bool) -> Self {
        self.checksums = on;
        self
    }

    /// Turns the ffmpeg decode on or off.
    #[must_use]
    pub fn with_decode(mut self, on: bool) -> Self {
        self.decode = on;
        self
    }

    /// Bounds the ffmpeg decode.
    #[must_use]
    pub fn with_decode_timeout(mut self, t: Duration) -> Self {
        self.decode_timeout = t;
        self
    }

    /// Runs this ffmpeg for the decode instead of the one on `PATH`.
    #[must_use]
    pub fn with_ffmpeg(mut self, program: impl Into<std::path::PathBuf>) -> Self {
        self.ffmpeg = program.into();
        self
    }
}

/// One track as the container describes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Track {
    pub kind: &'static str,
    pub codec: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frames: Option<u64>,
}

/// Random access to the file being checked, with every read bounded by its length.
pub(crate) struct Source {
    file: File,
    pub len: u64,
}

/// The largest structure read whole into memory (an index, a header, a cluster); a bigger
/// one is a finding, not an allocation.
pub(crate) const MAX_READ: u64 = 256 << 20;

impl Source {
    /// Reads `n` bytes at `offset`, fewer if the file ends first.
    pub(super) fn read_at(&mut self, offset: u64, n: u64) -> std::io::Result<Vec<u8>> {
        let n = n.min(self.len.saturating_sub(offset)).min(MAX_READ);
        let mut buf = vec![0u8; usize::try_from(n).unwrap_or(0)];
        self.file.seek(SeekFrom::Start(offset))?;
        let got = read_up_to(&mut self.file, &mut buf)?;
        buf.truncate(got);
        Ok(buf)
    }
}

/// Checks one video file; called by [`DataIntegrityChecker::validate_video_file`](super::DataIntegrityChecker::validate_video_file).
pub(crate) fn check(
    path: &Path,
    file: File,
    len: u64,
    check: &VideoCheck,
    report: &mut Report,
) -> Result<()> {
    let mut src = Source { file, len };
    let io = |e| GuardrailError::io(path, e);
    let tracks = match report.format {
        Format::Mp4 => mp4::check(&mut src, report).map_err(io)?,
        Format::Matroska => mkv::check(&mut src, check.checksums, report).map_err(io)?,
        Format::Avi => avi::check(&mut src, report).map_err(io)?,
        other => {
            report.error(
                "format",
                "not a video container this checker reads",
                Some("mp4, mov, mkv, webm or avi".into()),
                Some(format!("{other:?}").to_lowercase()),
            );
            return Ok(());
        }
    };
    summarise(&tracks, check, report);
    if check.decode {
        decode(path, check, report);
    }
    Ok(())
}

/// Puts the tracks and the main video track's facts in the report and applies the
/// caller's expectations.
fn summarise(tracks: &[Track], check: &VideoCheck, report: &mut Report) {
    report.info(
        "tracks",
        serde_json::to_value(tracks).unwrap_or(serde_json::Value::Null),
    );
    let Some(video) = tracks.iter().find(|t| t.kind == "video") else {
        if report.ok {
            report.error(
                "tracks",
                "no video track",
                Some("a video track".into()),
                Some(format!("{} other track(s)", tracks.len())),
            );
        }
        return;
    };
    report.info("codec", video.codec.clone());
    if let (Some(w), Some(h)) = (video.width, video.height) {
        report.info("width", w);
        report.info("height", h);
    }
    let duration = tracks
        .iter()
        .filter_map(|t| t.duration_s)
        .fold(None, |acc: Option<f64>, d| {
            Some(acc.map_or(d, |a| a.max(d)))
        });
    if let Some(d) = duration {
        report.info("duration_s", d);
    }
    if let Some(f) = video.frames {
        report.info("frame_count", f);
    }
    if !check.codecs.is_empty() && !check.codecs.contains(&video.codec) {
        report.error(
            "codec",
            format!("video codec {}", video.codec),
            Some(check.codecs.join(" or ")),
            Some(video.codec.clone()),
        );
    }
    if let Some(min) = check.min_duration {
        let found = duration.unwrap_or(0.0);
        if found < min.as_secs_f64() {
            report.error(
                "min_duration",
                format!("the video lasts {found:.3} s"),
                Some(format!(">= {:.3} s", min.as_secs_f64())),
                Some(format!("{found:.3} s")),
            );
        }
    }
    if let Some(min) = check.min_frames {
        let found = video.frames.unwrap_or(0);
        if found < min {
            report.error(
                "min_frames",
                format!("{found} video frames"),
                Some(format!(">= {min}")),
                Some(found.to_string()),
            );
        }
    }
}

/// Decodes every frame with ffmpeg (`-v error`, output discarded). At the deadline ffmpeg is
/// killed with everything it started ([`crate::process::run`]); its error lines are kept up
/// to 64 KiB.
fn decode(path: &Path, check: &VideoCheck, report: &mut Report) {
    const MAX_ERROR_TEXT: usize = 64 * 1024;
    let timeout = check.decode_timeout;
    let mut command = Command::new(&check.ffmpeg);
    command
        .args(["-nostdin", "-hide_banner", "-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"]);
    let limits = ProcessLimits::new(timeout).with_max_output(MAX_ERROR_TEXT);
    let output = match crate::process::run(&mut command, &limits) {
        Ok(output) => output,
        Err(GuardrailError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            report.info("decoded", false);
            report.warning(
                "decode",
                format!(
                    "{} is not installed (not on PATH): the deep decode check did not run",
                    check.ffmpeg.display()
                ),
            );
            return;
        }
        Err(GuardrailError::Timeout { .. }) => {
            report.info("decoded", true);
            report.error(
                "decode",
                format!("ffmpeg did not finish within {} s", timeout.as_secs_f64()),
                Some(format!("a decode within {} s", timeout.as_secs_f64())),
                Some("timed out".into()),
            );
            return;
        }
        Err(e) => {
            report.error("decode", format!("ffmpeg could not run: {e}"), None, None);
            return;
        }
    };
    report.info("decoded", true);
    let errors = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() || !errors.trim().is_empty() {
        let first: Vec<&str> = errors.lines().take(3).collect();
        let more = if output.stderr_truncated { "+" } else { "" };
        report.error(
            "decode",
            format!("ffmpeg reported decode errors: {}", first.join(" | ")),
            Some("a clean decode".into()),
            Some(format!("{}{more} error line(s)", errors.lines().count())),
        );
    }
}

/// The codec name users know (ffmpeg's) for a container's codec tag.
pub(crate) fn codec_name(tag: &str) -> String {
    let t = tag.trim_end_matches('\0').trim();
    let name = match t.to_ascii_lowercase().as_str() {
        "avc1" | "avc3" | "h264" | "x264" | "v_mpeg4/iso/avc" => "h264",
        "hvc1" | "hev1" | "hevc" | "h265" | "v_mpegh/iso/hevc" => "hevc",
        "mp4v" | "fmp4" | "xvid" | "divx" | "dx50" | "v_mpeg4/iso/asp" | "v_mpeg4/iso/sp" => {
            "mpeg4"
        }
        "vp09" | "v_vp9" => "vp9",
        "vp08" | "v_vp8" => "vp8",
        "av01" | "v_av1" => "av1",
        "jpeg" | "mjpa" | "mjpb" | "mjpg" | "v_mjpeg" => "mjpeg",
        "mp4a" | "a_aac" => "aac",
        "opus" | "a_opus" => "opus",
        "a_vorbis" => "vorbis",
        "" => "unknown",
        other => return other.to_string(),
    };
    name.to_string()
}

/// Reports a structure that runs past the end of the file (or its parent).
pub(crate) fn truncated(report: &mut Report, what: &str, offset: u64, size: u64, available: u64) {
    report.error(
        "truncated",
        format!(
            "{what} at byte {offset} claims {size} bytes but only {available} remain: the file is cut short or damaged"
        ),
        Some(format!("{size} bytes")),
        Some(format!("{available} bytes")),
    );
}
