//! Content checksums of artifacts: XXH3-128 over a file, or over a directory tree.
//!
//! XXH3 rather than BLAKE3: the checksum guards against torn and changed outputs, not
//! against an adversary, and XXH3 hashes at memory speed on one core (tens of GB/s against
//! BLAKE3's few GB/s single-threaded), so checking a 10 GB output costs the read, not the
//! hash. The crate already uses `twox-hash` for the table checks' value keys.

use std::fs::{self, File};
use std::io::Read;
use std::path::Path;

use twox_hash::XxHash3_128;

use super::atomic::BUFFER;
use crate::error::{Result, ResultExt};

/// Size in bytes and checksum (32 hex digits) of the file or directory tree at `path`.
///
/// A directory's checksum covers each entry's path relative to `path`, its kind and, for
/// files, its length and content, in name order; symbolic links count by their target text.
pub(crate) fn digest(path: &Path) -> Result<(u64, String)> {
    let meta = fs::symlink_metadata(path).path(path)?;
    let mut hasher = XxHash3_128::new();
    let mut buf = vec![0u8; BUFFER];
    let size = if meta.is_dir() {
        digest_tree(path, &mut hasher, &mut buf)?
    } else {
        hash_file(path, &mut hasher, &mut buf)?
    };
    Ok((size, format!("{:032x}", hasher.finish_128())))
}

fn hash_file(path: &Path, hasher: &mut XxHash3_128, buf: &mut [u8]) -> Result<u64> {
    let mut file = File::open(path).path(path)?;
    let mut size = 0u64;
    loop {
        let n = file.read(buf).path(path)?;
        if n == 0 {
            return Ok(size);
        }
        hasher.write(&buf[..n]);
        size += n as u64;
    }
}

fn digest_tree(root: &Path, hasher: &mut XxHash3_128, buf: &mut [u8]) -> Result<u64> {
    let mut total = 0u64;
    // An explicit stack of directories, each listed in name order, so the order (and the
    // checksum) does not depend on the filesystem's.
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .path(&dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .path(&dir)?;
        entries.sort();
        let mut subdirs = Vec::new();
        for entry in entries {
            let rel = entry.strip_prefix(root).unwrap_or(&entry);
            let rel = rel.as_os_str().as_encoded_bytes();
            hasher.write(&(rel.len() as u64).to_le_bytes());
            hasher.write(rel);
            let meta = fs::symlink_metadata(&entry).path(&entry)?;
            if meta.is_dir() {
                hasher.write(b"d");
                subdirs.push(entry);
            } else if meta.file_type().is_symlink() {
                hasher.write(b"l");
                let target = fs::read_link(&entry).path(&entry)?;
                hasher.write(target.as_os_str().as_encoded_bytes());
            } else {
                hasher.write(b"f");
                hasher.write(&meta.len().to_le_bytes());
                total += hash_file(&entry, hasher, buf)?;
            }
        }
        // Reversed, so the stack visits them in name order.
        pending.extend(subdirs.into_iter().rev());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_checksum_changes_with_names_and_content_but_not_with_creation_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        fs::write(a.path().join("x"), b"1").unwrap();
        fs::write(a.path().join("y"), b"22").unwrap();
        fs::write(b.path().join("y"), b"22").unwrap();
        fs::write(b.path().join("x"), b"1").unwrap();
        assert_eq!(digest(a.path()).unwrap(), digest(b.path()).unwrap());
        assert_eq!(digest(a.path()).unwrap().0, 3);
        fs::write(b.path().join("x"), b"2").unwrap();
        assert_ne!(digest(a.path()).unwrap(), digest(b.path()).unwrap());
        fs::rename(b.path().join("x"), b.path().join("z")).unwrap();
        fs::write(b.path().join("z"), b"1").unwrap();
        assert_ne!(digest(a.path()).unwrap(), digest(b.path()).unwrap());
    }
}
