//! Atomic file and directory writes: temporary name in the target's directory, `fsync`,
//! `rename`, `fsync` of the directory.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{GuardrailError, Result, ResultExt};

/// The suffix of every temporary file or directory the atomic writers create (after
/// `.<target name>.<random>`), so that a consistency check can tell a crashed writer's
/// leftovers from the user's files.
pub const TEMP_SUFFIX: &str = ".guardrails-tmp";

/// The buffer between the caller's writes and the temporary file.
pub(super) const BUFFER: usize = 64 << 10;

/// How many symbolic links are followed to find the file a path names (Linux's own limit).
const MAX_LINKS: usize = 40;

/// Whether `name` is one the atomic writers give their temporary files and directories.
///
/// ```
/// use guardrails::durable::is_temp_name;
/// assert!(is_temp_name(".data.parquet.Xa3f9Q.guardrails-tmp".as_ref()));
/// assert!(!is_temp_name("data.parquet".as_ref()));
/// ```
pub fn is_temp_name(name: &OsStr) -> bool {
    name.to_str().is_some_and(|n| {
        n.starts_with('.') && n.ends_with(TEMP_SUFFIX) && n.len() > TEMP_SUFFIX.len() + 1
    })
}

/// Writes the file at `path` atomically: `write` fills a temporary file in the same
/// directory, which is then flushed, `fsync`ed and renamed over `path`, and the directory
/// is `fsync`ed. Readers see the old file until the rename and the whole new one after it.
///
/// If `write` returns an error or panics, or any step fails, the temporary file is removed
/// and the old file is left as it was. An existing file keeps its permissions; a new one
/// gets the permissions `File::create` would give it. A `path` that is a symbolic link is
/// followed: the file it points to is replaced and the link stays.
///
/// Errors are [`GuardrailError::Io`] naming `path` (or the file the failing step was on),
/// classified by the OS error: a full disk or quota (`ENOSPC`, `EDQUOT`, `EFBIG`) is
/// [`Recoverable`](crate::ErrorClass::Recoverable), a read-only or missing directory is
/// [`Fatal`](crate::ErrorClass::Fatal). An I/O error of `write`'s own that names no file is
/// given `path`.
///
/// ```
/// use guardrails::durable::atomic_write;
/// use std::io::Write;
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("report.json");
/// let bytes = atomic_write(&path, |w| {
///     serde_json::to_writer(&mut *w, &serde_json::json!({"rows": 3}))
///         .map_err(guardrails::GuardrailError::external)?;
///     Ok(w.get_ref().metadata()?.len())
/// })?;
/// assert_eq!(std::fs::read_to_string(&path)?, r#"{"rows":3}"#);
/// # let _ = bytes;
/// # Ok::<(), guardrails::GuardrailError>(())
/// ```
pub fn atomic_write<T>(
    path: impl AsRef<Path>,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<T>,
) -> Result<T> {
    let target = resolve_links(path.as_ref());
    let (dir, _) = split(&target)?;
    let temp = temp_file_next_to(&target)?;
    // The temporary path removes the file when dropped — on an error, a panic in `write`
    // or any failed step below — until `persist` hands it over.
    let (file, temp_path) = temp.into_parts();
    let mut writer = BufWriter::with_capacity(BUFFER, file);
    let value = write(&mut writer).path(&target)?;
    let file = writer
        .into_inner()
        .map_err(|e| GuardrailError::io(&target, e.into_error()))
        .operation("flush an atomic write")?;
    file.sync_all()
        .path(&target)
        .operation("fsync an atomic write")?;
    drop(file);
    commit(temp_path, &target)?;
    sync_dir(dir)?;
    tracing::debug!(path = %target.display(), "atomic write committed");
    Ok(value)
}

/// Writes `bytes` to `path` atomically; see [`atomic_write`].
///
/// ```
/// use guardrails::durable::atomic_write_bytes;
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("state.bin");
/// atomic_write_bytes(&path, &[1, 2, 3])?;
/// assert_eq!(std::fs::read(&path)?, [1, 2, 3]);
/// # Ok::<(), guardrails::GuardrailError>(())
/// ```
pub fn atomic_write_bytes(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    atomic_write(path, |w| {
        // Large buffers go straight to the file rather than through the buffer.
        w.write_all(bytes)?;
        Ok(())
    })
}

/// Writes the directory at `path` atomically: `build` fills a temporary directory next to
/// it (a folder of NPY shards, a partitioned dataset), every file and directory in it is
/// `fsync`ed, and it then takes the place of `path` in one step — on Linux with glibc an
/// atomic exchange (`renameat2(RENAME_EXCHANGE)`), after which the old directory is
/// removed; where that call is missing the old directory is first moved aside under a
/// temporary name, so a crash between the two renames leaves no directory at `path` and
/// both versions under temporary names. If `build` fails or panics, the temporary directory
/// is removed and `path` is untouched.
///
/// ```
/// use guardrails::durable::atomic_write_dir;
///
/// let root = tempfile::tempdir()?;
/// let shards = root.path().join("shards");
/// for version in [1, 2] {
///     atomic_write_dir(&shards, |dir| {
///         for i in 0..3 {
///             std::fs::write(dir.join(format!("part-{i}.bin")), [version])?;
///         }
///         Ok(())
///     })?;
/// }
/// assert_eq!(std::fs::read(shards.join("part-2.bin"))?, [2]);
/// # Ok::<(), guardrails::GuardrailError>(())
/// ```
pub fn atomic_write_dir<T>(
    path: impl AsRef<Path>,
    build: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    let target = resolve_links(path.as_ref());
    let (dir, _) = split(&target)?;
    let temp = temp_dir_next_to(&target)?;
    let value = build(temp.path()).path(&target)?;
    sync_tree(temp.path())?;
    let exists = fs::symlink_metadata(&target).is_ok();
    if exists {
        replace_dir(temp.path(), &target)?;
        sync_dir(dir)?;
        // The old directory now sits at the temporary path; it is no longer visible, so
        // failing to remove it costs space, not correctness (a consistency check finds it).
        let old = temp.path().to_path_buf();
        if let Err(e) = temp.close() {
            tracing::warn!(path = %old.display(), error = %e, "could not remove the replaced directory of an atomic write");
        }
    } else {
        let built = temp.keep();
        if let Err(e) = fs::rename(&built, &target) {
            let _ = fs::remove_dir_all(&built);
            return Err(GuardrailError::io(&target, e))
                .operation("rename an atomic write into place");
        }
        sync_dir(dir)?;
    }
    tracing::debug!(path = %target.display(), "atomic directory write committed");
    Ok(value)
}

/// Renames the finished temporary file over `target`; on failure the temporary file is
/// removed and `target` is as it was.
fn commit(temp: tempfile::TempPath, target: &Path) -> Result<()> {
    temp.persist(target)
        .map_err(|e| GuardrailError::io(target, e.error))
        .operation("rename an atomic write into place")
}

/// Puts the directory at `from` in place of the existing `to`, in one step.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(super) fn replace_dir(from: &Path, to: &Path) -> Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_EXCHANGE)
        .map_err(|errno| GuardrailError::io(to, io::Error::from(errno)))
        .operation("exchange an atomic directory write with the old directory")
}

/// Puts the directory at `from` in place of the existing `to`: the old one is moved aside
/// (to `from`'s name with a marker, a temporary name) first, as no single call exchanges
/// two directories here.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(super) fn replace_dir(from: &Path, to: &Path) -> Result<()> {
    let aside = from.with_file_name(format!(
        "{}.old{TEMP_SUFFIX}",
        from.file_name().and_then(OsStr::to_str).unwrap_or(".old")
    ));
    fs::rename(to, &aside)
        .path(to)
        .operation("move the old directory of an atomic write aside")?;
    if let Err(e) = fs::rename(from, to) {
        // Put the old one back: the write failed, the old output stays.
        let _ = fs::rename(&aside, to);
        return Err(GuardrailError::io(to, e)).operation("rename an atomic write into place");
    }
    fs::rename(&aside, from)
        .path(from)
        .operation("move the old directory of an atomic write to its removal")
}

/// A new temporary file in `target`'s directory, named for it, with the permissions the
/// target would get; removed when dropped unless kept or persisted.
pub(super) fn temp_file_next_to(target: &Path) -> Result<tempfile::NamedTempFile> {
    let (dir, name) = split(target)?;
    tempfile::Builder::new()
        .prefix(&temp_prefix(name))
        .suffix(TEMP_SUFFIX)
        .permissions(new_file_permissions(target))
        .tempfile_in(dir)
        .path(target)
        .operation("create the temporary file of an atomic write")
}

/// A new temporary directory in `target`'s directory, named for it.
pub(super) fn temp_dir_next_to(target: &Path) -> Result<tempfile::TempDir> {
    let (dir, name) = split(target)?;
    tempfile::Builder::new()
        .prefix(&temp_prefix(name))
        .suffix(TEMP_SUFFIX)
        .permissions(default_permissions(0o777))
        .tempdir_in(dir)
        .path(target)
        .operation("create the temporary directory of an atomic write")
}

/// `.<name>.`: with tempfile's random part and [`TEMP_SUFFIX`] after it, the name of a
/// temporary file or directory for the target `name`.
fn temp_prefix(name: &OsStr) -> std::ffi::OsString {
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    prefix
}

/// The file a path names, its symbolic links followed (a dangling or looping link is
/// replaced itself).
pub(super) fn resolve_links(path: &Path) -> PathBuf {
    let mut current = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match fs::read_link(&current) {
            Ok(next) => {
                current = match current.parent() {
                    Some(parent) if next.is_relative() => parent.join(next),
                    _ => next,
                };
            }
            Err(_) => return current,
        }
    }
    path.to_path_buf()
}

/// The directory a target is written in and its file name.
pub(super) fn split(target: &Path) -> Result<(&Path, &OsStr)> {
    let name = target.file_name().ok_or_else(|| {
        GuardrailError::io(
            target,
            io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
        )
    })?;
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

/// The permissions the new file gets: the old file's, else what `File::create` gives (the
/// umask applies to the mode asked for).
fn new_file_permissions(target: &Path) -> fs::Permissions {
    match fs::metadata(target) {
        Ok(meta) => meta.permissions(),
        Err(_) => default_permissions(0o666),
    }
}

/// The permissions asked for when creating with `mode` (the umask then applies, as it
/// does for `File::create` and `fs::create_dir`).
#[cfg(unix)]
fn default_permissions(mode: u32) -> fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    fs::Permissions::from_mode(mode)
}

/// `fsync` of a directory, so that a rename in it survives a power cut.
pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .path(dir)
            .operation("fsync the directory of an atomic write")
    }
    // Other systems cannot open a directory as a file; their rename is what it is.
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// `fsync` of every file and directory under `root` (children before their directory),
/// without following symbolic links.
pub(super) fn sync_tree(root: &Path) -> Result<()> {
    // An explicit stack: a deep tree cannot overflow the call stack.
    let mut pending = vec![(root.to_path_buf(), false)];
    while let Some((path, children_done)) = pending.pop() {
        let meta = fs::symlink_metadata(&path).path(&path)?;
        if meta.is_dir() && !children_done {
            pending.push((path.clone(), true));
            for entry in fs::read_dir(&path).path(&path)? {
                let entry = entry.path(&path)?;
                pending.push((entry.path(), false));
            }
        } else if meta.is_dir() {
            sync_dir(&path)?;
        } else if meta.is_file() {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .path(&path)
                .operation("fsync a file of an atomic directory write")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorClass;
    use std::os::unix::fs::MetadataExt;

    /// The one case the same-directory temporary file cannot rule out, a target on another
    /// filesystem than its temporary (a file bind-mounted in place), fails as a classified
    /// error naming the target, with the old file intact and the temporary removed.
    #[test]
    fn a_rename_across_filesystems_is_refused_cleanly() {
        let shm = Path::new("/dev/shm");
        let dir = tempfile::tempdir().unwrap();
        let other_fs = shm
            .metadata()
            .is_ok_and(|m| m.dev() != dir.path().metadata().unwrap().dev());
        assert!(
            other_fs,
            "/dev/shm must be a filesystem of its own for this test"
        );
        let target = dir.path().join("out.bin");
        fs::write(&target, b"old").unwrap();
        let temp = tempfile::Builder::new()
            .suffix(TEMP_SUFFIX)
            .tempfile_in(shm)
            .unwrap()
            .into_temp_path();
        let temp_at = temp.to_path_buf();
        let err = commit(temp, &target).unwrap_err();
        assert_eq!(err.class(), ErrorClass::Fatal);
        assert!(err.to_string().contains("out.bin"), "{err}");
        assert!(
            err.report()
                .to_string()
                .to_lowercase()
                .contains("cross-device"),
            "{}",
            err.report()
        );
        assert_eq!(fs::read(&target).unwrap(), b"old");
        assert!(!temp_at.exists());
    }
}
