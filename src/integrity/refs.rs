//! File references: do the paths a table names exist? Checked with a bounded pool of
//! threads, because a `stat` on network storage waits on the network, not the CPU.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The answer for one column of paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PathsOutcome {
    pub checked: u64,
    pub missing: u64,
    /// The first missing paths in table order, at most `max_examples`.
    pub first_missing: Vec<String>,
}

/// Threads for `stat`: enough to overlap network round trips, few enough not to flood a
/// local disk's queue.
const STAT_THREADS: usize = 16;
/// Paths each thread takes at a time; keeps the shared counter off the hot path.
const CHUNK: usize = 256;

pub(crate) fn resolve(root: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    }
}

/// Checks that every path exists (a broken symlink counts as missing).
pub(crate) fn check_paths_exist(
    root: &Path,
    paths: &[String],
    max_examples: usize,
) -> PathsOutcome {
    let threads = STAT_THREADS.min(paths.len().div_ceil(CHUNK)).max(1);
    let next = AtomicUsize::new(0);
    let missing_count = AtomicU64::new(0);
    // Missing indices, sorted at the end so the examples follow table order.
    let missing_at: Mutex<Vec<usize>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut local = Vec::new();
                loop {
                    let start = next.fetch_add(CHUNK, Ordering::Relaxed);
                    if start >= paths.len() {
                        break;
                    }
                    let end = (start + CHUNK).min(paths.len());
                    for (i, p) in paths[start..end].iter().enumerate() {
                        if std::fs::metadata(resolve(root, p)).is_err() {
                            local.push(start + i);
                        }
                    }
                }
                missing_count.fetch_add(local.len() as u64, Ordering::Relaxed);
                if let Ok(mut all) = missing_at.lock() {
                    all.extend(local);
                }
            });
        }
    });
    let mut at = missing_at.into_inner().unwrap_or_else(|e| e.into_inner());
    at.sort_unstable();
    PathsOutcome {
        checked: paths.len() as u64,
        missing: missing_count.into_inner(),
        first_missing: at
            .into_iter()
            .take(max_examples)
            .map(|i| paths[i].clone())
            .collect(),
    }
}
