//! A reader panic that the checker catches becomes a finding and prints nothing; the
//! user's own panic hook still sees the user's panics. One test in its own process,
//! since the panic hook is global.
#![cfg(feature = "data")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use guardrails::integrity::{DataIntegrityChecker, TableCheck, Verdict};

#[test]
fn a_caught_reader_panic_is_silent_and_the_users_hook_stays() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    std::panic::set_hook(Box::new(move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
    }));
    // arrow-ipc panics on this fuzzed stream (tests/fixtures/table/make_tables.py).
    let path = common::fixture("table", "fuzz_ipc_panic.arrows");
    for _ in 0..3 {
        let r = DataIntegrityChecker::new()
            .validate_metadata_file(&path, &TableCheck::new())
            .unwrap();
        assert_eq!(r.verdict, Verdict::Failed);
        assert!(
            r.findings.iter().any(|f| f.message.contains("panicked")),
            "{:#?}",
            r.findings
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "a caught panic reached the hook"
    );
    // A panic of the user's own, outside any check, still reaches their hook.
    let outside = std::thread::spawn(|| panic!("the user's own panic")).join();
    assert!(outside.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
