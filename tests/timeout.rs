//! Deadlines, blocking closures and the process-group kill.

use std::time::{Duration, Instant};

#[cfg(target_os = "linux")]
#[path = "common/process.rs"]
mod process_util;
#[cfg(target_os = "linux")]
use process_util::wait_dead;

use guardrails::prelude::*;
use guardrails::resilience::{
    TimeoutHandler, run_command_with_grace, run_command_with_timeout, run_with_timeout,
};

#[test]
fn handler_reports_elapsed_and_remaining_on_a_manual_clock() {
    let clock = ManualClock::new();
    let h = TimeoutHandler::new("train", Duration::from_secs(30)).with_clock(clock.clone());
    assert_eq!(h.elapsed(), Duration::ZERO);
    assert_eq!(h.remaining(), Duration::from_secs(30));
    assert!(h.check().is_ok());
    clock.advance(Duration::from_secs(29));
    assert_eq!(h.remaining(), Duration::from_secs(1));
    assert!(!h.is_expired());
    clock.advance(Duration::from_secs(2));
    assert!(h.is_expired());
    let err = h.check().unwrap_err();
    match err {
        GuardrailError::Timeout {
            operation,
            elapsed,
            limit,
        } => {
            assert_eq!(operation, "train");
            assert_eq!(elapsed, Duration::from_secs(31));
            assert_eq!(limit, Duration::from_secs(30));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn blocking_closure_within_limit_returns_its_result() {
    let v = run_with_timeout("quick", Duration::from_secs(10), || Ok(7)).unwrap();
    assert_eq!(v, 7);
    let err = run_with_timeout(
        "fails",
        Duration::from_secs(10),
        || -> guardrails::Result<()> { Err(GuardrailError::config("x", "y")) },
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

#[test]
fn blocking_closure_past_limit_returns_timeout_at_once() {
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let start = Instant::now();
    // The closure blocks until released, so the timeout cannot be a race with real work.
    let err = run_with_timeout("stuck", Duration::from_millis(50), move || {
        let _ = release_rx.recv();
        Ok(())
    })
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(start.elapsed() < Duration::from_secs(5));
    drop(release_tx); // lets the abandoned thread finish
}

#[test]
#[should_panic(expected = "boom inside")]
fn panics_in_the_closure_reach_the_caller() {
    let _ = run_with_timeout(
        "panics",
        Duration::from_secs(10),
        || -> guardrails::Result<()> { panic!("boom inside") },
    );
}

#[cfg(unix)]
#[test]
fn command_output_and_status_are_captured() {
    let out = run_command_with_timeout(
        std::process::Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
}

#[cfg(unix)]
#[test]
fn missing_program_is_an_io_error_naming_it() {
    let err = run_command_with_timeout(
        &mut std::process::Command::new("/no/such/program"),
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.to_string().contains("/no/such/program"), "{err}");
}

#[cfg(target_os = "linux")]
#[test]
fn timeout_kills_the_child_and_its_grandchildren() {
    for grace in [Duration::ZERO, Duration::from_millis(100)] {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        // The shell starts a grandchild, records both pids, then waits forever.
        let script = format!(
            "sleep 300 & echo $! > {p}.tmp; echo $$ >> {p}.tmp; mv {p}.tmp {p}; wait",
            p = pids.display()
        );
        let start = Instant::now();
        let err = run_command_with_grace(
            std::process::Command::new("sh").args(["-c", &script]),
            // Long enough for the shell to write its pids on a loaded machine.
            Duration::from_secs(2),
            grace,
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
        assert!(start.elapsed() < Duration::from_secs(10));
        let text = std::fs::read_to_string(&pids).expect("the script wrote its pids");
        let pids: Vec<i32> = text.lines().map(|l| l.trim().parse().unwrap()).collect();
        assert_eq!(pids.len(), 2);
        for pid in pids {
            assert!(
                wait_dead(pid),
                "pid {pid} survived the timeout (grace {grace:?})"
            );
        }
    }
}

/// The shell exits at once and leaves a background job holding its pipes: the call returns
/// what the shell wrote as soon as it exits, and the job is killed with its group.
#[cfg(target_os = "linux")]
#[test]
fn a_background_job_left_by_the_child_neither_blocks_the_call_nor_survives_it() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let script = format!(
        "sleep 30 & echo $! > {p}.tmp; mv {p}.tmp {p}; echo hi",
        p = pid_file.display()
    );
    let out = run_command_with_timeout(
        std::process::Command::new("sh").args(["-c", &script]),
        Duration::from_secs(20),
    )
    .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"hi\n");
    assert!(!out.stdout_truncated);
    // Before the fix the pipe read waited for the 30 s sleep; the bound is far above any
    // scheduling delay and far below the sleep.
    assert!(out.elapsed < Duration::from_secs(15), "{:?}", out.elapsed);
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_dead(pid),
        "the background sleep {pid} outlived the call"
    );
}

/// The deadline bounds the pipe reads too: a process that left the group (setsid) and keeps
/// stdout open does not hold the call past its deadline.
#[cfg(target_os = "linux")]
#[test]
fn a_pipe_held_by_an_escaped_process_is_cut_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let script = format!(
        "setsid sh -c 'echo $$ > {p}.tmp; mv {p}.tmp {p}; exec sleep 30' & \
         while [ ! -e {p} ]; do sleep 0.01; done; echo started",
        p = pid_file.display()
    );
    let limits = guardrails::process::ProcessLimits::new(Duration::from_secs(3));
    let out = guardrails::process::run(
        std::process::Command::new("sh").args(["-c", &script]),
        &limits,
    )
    .unwrap();
    assert_eq!(out.stdout, b"started\n");
    assert!(
        out.stdout_truncated,
        "the escaped sleep still held the pipe"
    );
    assert!(out.elapsed < Duration::from_secs(15), "{:?}", out.elapsed);
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // It escaped the group, so it is the test's to clean up.
    let _ = std::process::Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status();
}

#[test]
fn output_beyond_the_cap_is_read_and_dropped_and_the_cut_is_said() {
    let limits =
        guardrails::process::ProcessLimits::new(Duration::from_secs(60)).with_max_output(1 << 20);
    // 8 MiB to stdout: more than a pipe holds, so the child would block if nobody read it.
    let out = guardrails::process::run(
        std::process::Command::new("sh").args(["-c", "head -c 8388608 /dev/zero; echo done >&2"]),
        &limits,
    )
    .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 1 << 20);
    assert!(out.stdout_truncated);
    assert_eq!(out.stderr, b"done\n");
    assert!(!out.stderr_truncated);
}
