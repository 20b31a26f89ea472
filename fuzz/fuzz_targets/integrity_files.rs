//! Any bytes as a table, a feature file or a video: a report or an I/O error, never a
//! panic, a hang or a huge allocation. The first byte picks the checker; the rest is the
//! file, written to a temporary path because the checkers read files.
//!
//! Third-party parsers (arrow, parquet, mp4parse) can panic on hostile bytes; the checkers
//! catch those panics and report them as findings. libFuzzer's panic hook would abort on
//! them anyway, so the target swaps in a silent hook: a panic that the checkers catch is
//! fine, one that escapes them still unwinds into libfuzzer-sys and counts as a crash.
#![no_main]

use guardrails::integrity::{DataIntegrityChecker, FeatureCheck, TableCheck, VideoCheck};
use libfuzzer_sys::fuzz_target;

static QUIET: std::sync::Once = std::sync::Once::new();

fuzz_target!(|data: &[u8]| {
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let path = std::env::temp_dir().join(format!("guardrails-fuzz-{}.bin", std::process::id()));
    if std::fs::write(&path, body).is_err() {
        return;
    }
    let checker = DataIntegrityChecker::new();
    let _ = match which % 3 {
        0 => checker.validate_metadata_file(&path, &TableCheck::new().with_not_null(["id"])),
        1 => checker.validate_feature_file(&path, &FeatureCheck::new()),
        _ => checker.validate_video_file(&path, &VideoCheck::new()),
    };
});
