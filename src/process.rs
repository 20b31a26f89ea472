//! Child processes with a deadline that bounds everything: the wait, the pipe reads and what
//! is kept of the output.
//!
//! This is the one way the crate runs an outside program (the timeout guard's
//! [`run_command_with_timeout`](crate::resilience::run_command_with_timeout), the video
//! check's `ffmpeg` decode).
//!
//! - The child leads a new process group (Unix), so whatever it forks can be signalled with
//!   it.
//! - At the deadline the whole group gets `SIGTERM`, then `SIGKILL` after the grace (at once
//!   with a zero grace), and the call returns [`GuardrailError::Timeout`].
//! - When the child exits before the deadline, the rest of its process group is killed
//!   (`SIGKILL`) and the call returns what the child wrote. A background job the child left
//!   (`sh -c 'sleep 30 & echo hi'`) therefore neither outlives the call nor holds its pipes
//!   open: the call returns as soon as the shell exits, with `"hi"`.
//! - Output is read on two threads into buffers of at most
//!   [`max_output`](ProcessLimits::with_max_output) bytes each (default 4 MiB); the rest is
//!   read and dropped, so a chatty child never blocks on a full pipe, and the cut is said in
//!   [`CommandOutput::stdout_truncated`] / [`stderr_truncated`](CommandOutput::stderr_truncated).
//! - A process that escaped the group (`setsid`) and still holds a pipe cannot delay the
//!   call past its deadline: the output read so far is returned.
//!
//! ```
//! # #[cfg(unix)] {
//! use guardrails::process::{ProcessLimits, run};
//! use std::process::Command;
//! use std::time::Duration;
//!
//! let limits = ProcessLimits::new(Duration::from_secs(10)).with_max_output(4);
//! let out = run(Command::new("echo").arg("hello"), &limits)?;
//! assert!(out.status.success());
//! assert_eq!(out.stdout, b"hell");
//! assert!(out.stdout_truncated);
//! # }
//! # Ok::<(), guardrails::GuardrailError>(())
//! ```

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{GuardrailError, Result};

/// Default cap on each of stdout and stderr kept in memory.
pub const DEFAULT_MAX_OUTPUT: usize = 4 * 1024 * 1024;

/// How long a child may run and how much of its output is kept.
///
/// | setting | default |
/// |---|---|
/// | `timeout` | (required) |
/// | `grace` | zero: `SIGKILL` at the deadline |
/// | `max_output` | 4 MiB per stream |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessLimits {
    /// The deadline, from the spawn.
    pub timeout: Duration,
    /// Time between `SIGTERM` and `SIGKILL` at the deadline.
    pub grace: Duration,
    /// Bytes kept of each of stdout and stderr.
    pub max_output: usize,
}

impl ProcessLimits {
    /// A deadline of `timeout`, no grace, 4 MiB per stream.
    pub const fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            grace: Duration::ZERO,
            max_output: DEFAULT_MAX_OUTPUT,
        }
    }

    /// Sets the time between `SIGTERM` and `SIGKILL`.
    #[must_use]
    pub const fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Sets the bytes kept of each stream.
    #[must_use]
    pub const fn with_max_output(mut self, bytes: usize) -> Self {
        self.max_output = bytes;
        self
    }
}

/// What a child process left behind: its exit status and what it wrote, up to the limits.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CommandOutput {
    /// How it exited.
    pub status: ExitStatus,
    /// Its standard output, at most `max_output` bytes.
    pub stdout: Vec<u8>,
    /// Its standard error, at most `max_output` bytes.
    pub stderr: Vec<u8>,
    /// Whether stdout held more than was kept (or was still open at the deadline).
    pub stdout_truncated: bool,
    /// Whether stderr held more than was kept (or was still open at the deadline).
    pub stderr_truncated: bool,
    /// How long it ran.
    pub elapsed: Duration,
}

/// Runs `command` under `limits`, capturing stdout and stderr; stdin is closed. See the
/// [module docs](self). A non-zero exit is not an error here: the status is in the output for
/// the caller to judge. A program that cannot start is [`GuardrailError::Io`] naming it.
pub fn run(command: &mut Command, limits: &ProcessLimits) -> Result<CommandOutput> {
    let program = command.get_program().to_string_lossy().into_owned();
    isolate_process_group(command);
    let start = Instant::now();
    let deadline = start.checked_add(limits.timeout);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| GuardrailError::io(&program, e))?;
    let stdout = Capture::start(child.stdout.take(), limits.max_output);
    let stderr = Capture::start(child.stderr.take(), limits.max_output);

    let status = match wait_until(&mut child, deadline)? {
        Some(status) => status,
        None => {
            kill_group(&mut child, limits.grace)?;
            // Reap the leader so no zombie is left; the group is gone.
            let _ = child.wait();
            return Err(GuardrailError::timeout(
                &format!("command {program}"),
                start.elapsed(),
                limits.timeout,
            ));
        }
    };
    // What the leader left running in its group dies with it: it would otherwise hold the
    // pipes open and outlive the call.
    kill_rest_of_group(&child);
    let (stdout, stdout_truncated) = stdout.finish(deadline);
    let (stderr, stderr_truncated) = stderr.finish(deadline);
    Ok(CommandOutput {
        status,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        elapsed: start.elapsed(),
    })
}

/// One pipe read to its end on a thread of its own, keeping at most `cap` bytes.
struct Capture {
    state: Arc<(Mutex<CaptureState>, Condvar)>,
}

#[derive(Default)]
struct CaptureState {
    kept: Vec<u8>,
    dropped: bool,
    done: bool,
}

impl Capture {
    fn start<R: Read + Send + 'static>(pipe: Option<R>, cap: usize) -> Self {
        let state = Arc::new((Mutex::new(CaptureState::default()), Condvar::new()));
        let Some(mut pipe) = pipe else {
            state.0.lock().unwrap_or_else(PoisonError::into_inner).done = true;
            return Self { state };
        };
        let shared = Arc::clone(&state);
        let spawned = std::thread::Builder::new()
            .name("guardrails-pipe".into())
            .spawn(move || {
                let mut buf = [0u8; 8192];
                loop {
                    let n = match pipe.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    };
                    let mut s = shared.0.lock().unwrap_or_else(PoisonError::into_inner);
                    let room = cap.saturating_sub(s.kept.len());
                    let take = n.min(room);
                    s.kept.extend_from_slice(&buf[..take]);
                    s.dropped |= take < n;
                }
                shared.0.lock().unwrap_or_else(PoisonError::into_inner).done = true;
                shared.1.notify_all();
            });
        if spawned.is_err() {
            // Nothing reads the pipe: the child may block on it until the deadline kills it.
            let mut s = state.0.lock().unwrap_or_else(PoisonError::into_inner);
            s.done = true;
            s.dropped = true;
        }
        Self { state }
    }

    /// Waits for the end of the pipe until `deadline` and takes what was kept; a pipe still
    /// open then counts as truncated.
    fn finish(self, deadline: Option<Instant>) -> (Vec<u8>, bool) {
        let (lock, cvar) = &*self.state;
        let mut s = lock.lock().unwrap_or_else(PoisonError::into_inner);
        while !s.done {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                break;
            }
            s = cvar
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let truncated = s.dropped || !s.done;
        (std::mem::take(&mut s.kept), truncated)
    }
}

/// Polls the child until it exits or the deadline passes. The poll interval grows from 1 ms
/// to 50 ms, so short commands return promptly and long ones cost little.
fn wait_until(child: &mut Child, deadline: Option<Instant>) -> Result<Option<ExitStatus>> {
    let mut interval = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait().map_err(GuardrailError::from)? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        let left = match deadline {
            Some(d) if now >= d => return Ok(None),
            Some(d) => d - now,
            None => interval,
        };
        std::thread::sleep(interval.min(left));
        interval = (interval * 2).min(Duration::from_millis(50));
    }
}

#[cfg(unix)]
fn isolate_process_group(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    command.process_group(0);
}

#[cfg(not(unix))]
fn isolate_process_group(_command: &mut Command) {}

#[cfg(unix)]
fn group_of(child: &Child) -> Result<nix::unistd::Pid> {
    let pid = i32::try_from(child.id()).map_err(|_| {
        GuardrailError::from(std::io::Error::other(format!(
            "child pid {} does not fit a pid_t",
            child.id()
        )))
    })?;
    Ok(nix::unistd::Pid::from_raw(pid))
}

#[cfg(unix)]
fn kill_rest_of_group(child: &Child) {
    // Linux does not hand out a pid that is still a live group's id, so while anything is
    // left in the group this signals exactly it; an empty group answers ESRCH.
    if let Ok(group) = group_of(child) {
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(not(unix))]
fn kill_rest_of_group(_child: &Child) {}

#[cfg(unix)]
fn kill_group(child: &mut Child, grace: Duration) -> Result<()> {
    use nix::sys::signal::{Signal, killpg};

    let group = group_of(child)?;
    if !grace.is_zero() {
        let _ = killpg(group, Signal::SIGTERM);
        let _ = wait_until(child, Instant::now().checked_add(grace))?;
    }
    // Sent even if the leader already exited: its children may still be in the group. ESRCH
    // means the group is empty, which is the goal.
    match killpg(group, Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(GuardrailError::Io {
            path: None,
            source: std::io::Error::from(e),
        }),
    }
}

#[cfg(not(unix))]
fn kill_group(child: &mut Child, _grace: Duration) -> Result<()> {
    child.kill().map_err(GuardrailError::from)
}
