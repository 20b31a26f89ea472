//! Videos written by ffmpeg (tests/fixtures/video/make_videos.sh): H.264, H.265, MPEG-4,
//! VP9 and MJPEG in MP4 (fast-start, moov at the end, fragmented), MOV, MKV, WebM and AVI.
//! Every damaged file fails with the right check, and every prefix of a good file fails
//! (or, for fragmented MP4 cut between fragments, reports fewer frames) without panicking.
#![cfg(feature = "data")]

mod common;

use std::path::PathBuf;

use common::failed_checks;
use std::time::Duration;

use guardrails::integrity::{DataIntegrityChecker, Format, Report, VideoCheck};

fn fixture(name: &str) -> PathBuf {
    common::fixture("video", name)
}

fn run(path: impl Into<PathBuf>, check: &VideoCheck) -> Report {
    DataIntegrityChecker::new()
        .validate_video_file(path.into(), check)
        .unwrap()
}

fn check(name: &str) -> Report {
    run(fixture(name), &VideoCheck::new())
}

const GOOD: &[(&str, &str, &str)] = &[
    ("h264.mp4", "mp4", "h264"),
    ("h264_faststart.mp4", "mp4", "h264"),
    ("h264_fragmented.mp4", "mp4", "h264"),
    ("h264_aac.mp4", "mp4", "h264"),
    ("hevc.mp4", "mp4", "hevc"),
    ("mpeg4.mp4", "mp4", "mpeg4"),
    ("h264.mov", "mov", "h264"),
    ("mjpeg.mov", "mov", "mjpeg"),
    ("vp9.webm", "webm", "vp9"),
    ("h264.mkv", "matroska", "h264"),
    ("mpeg4.avi", "avi", "mpeg4"),
    ("mjpeg.avi", "avi", "mjpeg"),
];

#[test]
fn good_videos_pass_with_their_facts() {
    for &(name, container, codec) in GOOD {
        let r = check(name);
        assert!(r.ok, "{name}: {:#?}", r.findings);
        assert_eq!(r.kind, "video");
        assert_eq!(r.info["container"], container, "{name}");
        assert_eq!(r.info["codec"], codec, "{name}");
        assert_eq!(r.info["width"], 64, "{name}");
        assert_eq!(r.info["height"], 48, "{name}");
        assert_eq!(r.info["frame_count"], 12, "{name}");
        let d = r.info["duration_s"].as_f64().unwrap();
        assert!((d - 1.0).abs() < 0.05, "{name}: {d}");
    }
    let r = check("h264_aac.mp4");
    let kinds: Vec<&str> = r.info["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["video", "audio"]);
    assert_eq!(r.info["tracks"][1]["codec"], "aac");
    assert_eq!(check("h264_faststart.mp4").info["fast_start"], true);
    assert_eq!(check("h264.mp4").info["fast_start"], false);
    assert_eq!(check("h264_fragmented.mp4").info["fragments"], 3);
    // ffmpeg writes CRC-32 elements in Matroska (5 here); its WebM muxer does not.
    assert_eq!(check("h264.mkv").info["crc32_verified"], 5);
    assert_eq!(check("vp9.webm").info["crc32_verified"], 0);
}

#[test]
fn formats_come_from_the_bytes() {
    assert_eq!(check("h264.mov").format, Format::Mp4);
    assert_eq!(check("vp9.webm").format, Format::Matroska);
    assert_eq!(check("mpeg4.avi").format, Format::Avi);
    let r = check("text.mp4");
    assert_eq!(r.format, Format::Unknown);
    assert_eq!(failed_checks(&r), ["format"]);
}

#[test]
fn damaged_videos_fail_with_the_right_check() {
    let cases: &[(&str, &[&str])] = &[
        ("cut_half.mp4", &["truncated", "index"]),
        ("cut_end.mp4", &["truncated", "truncated"]),
        ("bad_offset.mp4", &["truncated"]),
        ("cut_fragmented.mp4", &["truncated", "truncated"]),
        ("crc_flipped.mkv", &["crc32"]),
        ("cut.mkv", &["truncated", "truncated", "index"]),
        ("cut.webm", &["truncated", "truncated", "index"]),
        ("cut.avi", &["truncated", "truncated", "movi"]),
        ("no_index.avi", &["index"]),
    ];
    for (name, want) in cases {
        let r = check(name);
        assert!(!r.ok, "{name}");
        assert_eq!(failed_checks(&r), *want, "{name}: {:#?}", r.findings);
        let err = r.into_result().unwrap_err();
        assert!(err.to_string().contains(name), "{err}");
    }
    let r = check("cut_end.mp4");
    assert!(
        r.findings[1]
            .message
            .contains("7 sample(s) lie past the end"),
        "{}",
        r.findings[1].message
    );
    let r = check("crc_flipped.mkv");
    assert!(r.findings[0].message.contains("Cluster at byte 573"));
    // Checksums off: the flipped byte goes unnoticed at container level.
    assert!(
        run(
            fixture("crc_flipped.mkv"),
            &VideoCheck::new().with_checksums(false)
        )
        .ok
    );
}

#[test]
fn expectations_are_checked() {
    let r = run(
        fixture("hevc.mp4"),
        &VideoCheck::new()
            .with_codecs(["h264"])
            .with_min_duration(Duration::from_secs(2))
            .with_min_frames(13),
    );
    assert_eq!(failed_checks(&r), ["codec", "min_duration", "min_frames"]);
    assert_eq!(r.findings[0].found.as_deref(), Some("hevc"));
}

#[test]
fn decode_runs_ffmpeg_or_says_it_is_missing() {
    let check = VideoCheck::new().with_decode(true);
    let r = run(fixture("h264.mp4"), &check);
    let have_ffmpeg = std::process::Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok();
    if have_ffmpeg {
        assert!(r.ok, "{:#?}", r.findings);
        assert_eq!(r.info["decoded"], true);
        let r = run(
            fixture("crc_flipped.mkv"),
            &VideoCheck::new().with_decode(true).with_checksums(false),
        );
        // The flipped byte is inside H.264 data: ffmpeg may or may not notice, but the
        // decode ran and the report says so.
        assert_eq!(r.info["decoded"], true);
    } else {
        assert!(r.ok);
        assert_eq!(r.info["decoded"], false);
        assert!(
            r.findings
                .iter()
                .any(|f| f.check == "decode" && f.message.contains("not installed"))
        );
    }
}

/// An ffmpeg that forks (as a wrapper script would) and hangs is killed whole at the decode
/// deadline: the finding says it timed out and the forked child does not survive.
#[cfg(target_os = "linux")]
#[test]
fn a_forking_ffmpeg_is_killed_whole_at_the_decode_deadline() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let stand_in = dir.path().join("ffmpeg");
    std::fs::write(
        &stand_in,
        format!(
            "#!/bin/sh\nsleep 300 &\necho $! > {p}.tmp; mv {p}.tmp {p}\nwait\n",
            p = pid_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();
    let check = VideoCheck::new()
        .with_decode(true)
        .with_ffmpeg(&stand_in)
        .with_decode_timeout(Duration::from_secs(2));
    let r = run(fixture("h264.mp4"), &check);
    assert_eq!(failed_checks(&r), ["decode"]);
    assert!(
        r.findings
            .iter()
            .any(|f| f.message.contains("did not finish"))
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("the stand-in wrote its child's pid")
        .trim()
        .parse()
        .unwrap();
    assert!(
        common::process::wait_dead(pid),
        "ffmpeg's child {pid} survived"
    );
}

#[test]
fn an_ffmpeg_that_is_not_there_is_a_warning_naming_it() {
    let check = VideoCheck::new()
        .with_decode(true)
        .with_ffmpeg("/no/such/ffmpeg");
    let r = run(fixture("h264.mp4"), &check);
    assert!(r.ok, "{:#?}", r.findings);
    assert_eq!(r.info["decoded"], false);
    assert!(
        r.findings
            .iter()
            .any(|f| f.message.contains("/no/such/ffmpeg"))
    );
}

/// Every prefix must fail, or (fragmented MP4 cut between fragments, which players accept)
/// pass with a warning that its fragment index is missing; a cut that loses frames fails
/// `min_frames`.
#[test]
fn every_prefix_of_a_good_video_fails() {
    let dir = tempfile::tempdir().unwrap();
    let check = VideoCheck::new().with_min_frames(12);
    for &(name, _, _) in GOOD {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let target = dir.path().join(name);
        let step = (bytes.len() / 1200).max(1);
        for len in (0..bytes.len()).step_by(step) {
            std::fs::write(&target, &bytes[..len]).unwrap();
            let r = run(&target, &check);
            // A fragmented file cut between fragments is still playable; the report
            // then warns that the fragment index (mfra) is missing.
            let flagged = r.findings.iter().any(|f| f.check == "index");
            assert!(
                !r.ok || (name.contains("fragmented") && flagged),
                "{name} cut at {len} of {} passed: {:#?}",
                bytes.len(),
                r.info
            );
        }
    }
}

#[test]
fn random_bytes_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(11);
    for i in 0..300 {
        let len = rng.usize(0..4096);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        let magic: &[u8] = match i % 4 {
            0 => b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2",
            1 => &[0x1A, 0x45, 0xDF, 0xA3, 0x84, 0x42, 0x82, 0x81, 0x77],
            2 => b"RIFF\xff\xff\0\0AVI LIST",
            _ => b"",
        };
        bytes.splice(0..0, magic.iter().copied());
        let target = dir.path().join(format!("r{i}.bin"));
        std::fs::write(&target, &bytes).unwrap();
        let r = run(&target, &VideoCheck::new());
        assert!(!r.ok, "random file {i} passed: {:#?}", r.info);
    }
}

/// Found by the `integrity_files` fuzz target: an AVI chunk header whose size field made a
/// subtraction underflow. It must give a failing report.
#[test]
fn a_fuzzed_avi_fails_cleanly() {
    let r = check("fuzz_avi_overflow.avi");
    assert!(!r.ok, "{:#?}", r.findings);
}

/// Found by fuzzing: a track run declaring four billion samples that all take the
/// defaults. It is summed, not looped over, and the file fails.
#[test]
fn a_huge_sample_count_is_not_walked_one_by_one() {
    let r = check("fuzz_mp4_huge_run.mp4");
    assert!(!r.ok);
    // The same with a sample table: constant sample size, four billion samples in stts and
    // per chunk in stsc. The chunk is judged as a whole.
    let mut bytes = std::fs::read(fixture("h264_faststart.mp4")).unwrap();
    let find = |b: &[u8], tag: &[u8]| b.windows(4).position(|w| w == tag).unwrap();
    let stsz = find(&bytes, b"stsz");
    bytes[stsz + 8..stsz + 12].copy_from_slice(&100u32.to_be_bytes()); // sample_size
    let stts = find(&bytes, b"stts");
    bytes[stts + 12..stts + 16].copy_from_slice(&u32::MAX.to_be_bytes()); // first count
    let stsc = find(&bytes, b"stsc");
    bytes[stsc + 16..stsc + 20].copy_from_slice(&u32::MAX.to_be_bytes()); // per chunk
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("huge_table.mp4");
    std::fs::write(&target, &bytes).unwrap();
    let r = run(&target, &VideoCheck::new());
    assert!(!r.ok, "{:#?}", r.findings);
    assert!(
        r.findings.iter().any(|f| f.check == "truncated"),
        "{:#?}",
        r.findings
    );
}
