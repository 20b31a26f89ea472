//! Durable stage outputs: writes that leave either the old file or the new one, never a
//! half-written one.
//!
//! A pipeline killed half-way (OOM, preemption, `kill -9`, a full disk) must not leave a
//! partial Parquet file that the next stage reads as truth. [`atomic_write`] and
//! [`atomic_write_bytes`] write a file, and [`atomic_write_dir`] a directory, next to the
//! target under a temporary name, make the data durable (`fsync`), and only then put it in
//! place with one `rename` (and `fsync` the directory, so the rename itself survives a
//! power cut). Until that rename, readers see the old output; after it, the new one.
//!
//! | what happens | what is left |
//! |---|---|
//! | the writer returns an error or panics | the old file, no temporary file |
//! | the process is killed (`SIGKILL`) or the machine stops before the rename | the old file, and a temporary file named `.<name>.<random>.guardrails-tmp` that [`is_temp_name`] recognises |
//! | killed after the rename | the new file |
//! | the disk fills (`ENOSPC`, `EDQUOT`, `EFBIG`) | the old file; the error is [`ErrorClass::Recoverable`](crate::ErrorClass::Recoverable) and names the path |
//!
//! ```
//! use guardrails::durable::{atomic_write, atomic_write_bytes};
//! use std::io::Write;
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("labels.csv");
//! atomic_write_bytes(&path, b"id,label\n")?;
//! atomic_write(&path, |w| {
//!     w.write_all(b"id,label\n1,cat\n")?;
//!     Ok(())
//! })?;
//! assert_eq!(std::fs::read(&path)?, b"id,label\n1,cat\n");
//! // A writer that fails leaves the file as it was.
//! let failed = atomic_write(&path, |w| -> guardrails::Result<()> {
//!     w.write_all(b"half")?;
//!     Err(guardrails::GuardrailError::external("the model crashed"))
//! });
//! assert!(failed.is_err());
//! assert_eq!(std::fs::read(&path)?, b"id,label\n1,cat\n");
//! # Ok::<(), guardrails::GuardrailError>(())
//! ```

mod atomic;
mod consistency;
mod digest;
mod registry;
mod stage;

pub use atomic::{TEMP_SUFFIX, atomic_write, atomic_write_bytes, atomic_write_dir, is_temp_name};
pub use consistency::{
    Inconsistency, RepairReport, ResumeOptions, ResumePlan, ResumeState, StageResume, VerifyReport,
};
pub use registry::{
    ArtifactKind, ArtifactRecord, AttemptStatus, Checkpoint, DEFAULT_REGISTRY, RegistryOptions,
    RunId, RunInfo, RunRegistry, RunStatus, SCHEMA_VERSION, StageAttempt,
};
pub use stage::{AtomicStage, Recovered, StageCommit};
