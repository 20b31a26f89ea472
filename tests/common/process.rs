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
