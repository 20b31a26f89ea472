//! Whether a process is still running, for the tests that kill process groups.
#![allow(dead_code)] // each test crate uses its own subset

use std::time::{Duration, Instant};

/// Whether `pid` runs; a zombie has exited, so only a running or sleeping process counts.
pub(crate) fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

/// Waits up to 5 s for `pid` to be gone. Reaping by init is asynchronous; this polls
/// rather than sleeping blindly.
pub(crate) fn wait_dead(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Re-runs this test binary as a child that runs only the `#[ignore]`d helper test `name`,
/// the way the fault tests start processes they can kill or confine.
pub(crate) fn rerun_ignored(name: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(rerun_args(name));
    cmd
}

/// The harness arguments that select only the `#[ignore]`d helper `name`.
pub(crate) fn rerun_args(name: &str) -> [&str; 5] {
    [
        "--ignored",
        "--exact",
        name,
        "--nocapture",
        "--test-threads=1",
    ]
}

/// Reads a child's stdout until it says `CHILD ready` (the harness may print `test … ... `
/// before it on the same line).
pub(crate) fn wait_ready(proc: &mut std::process::Child) {
    use std::io::BufRead;
    let Some(stdout) = proc.stdout.take() else {
        return;
    };
    let mut lines = std::io::BufReader::new(stdout).lines();
    while let Some(Ok(line)) = lines.next() {
        if line.ends_with("CHILD ready") {
            return;
        }
    }
}
