//! File references: do the paths a table names exist? Paths arrive one record batch at a
//! time and are checked as they come, so memory stays bounded however long the table is.
//!
//! A folder named by few paths gets one `stat` per path; once a folder has been named by
//! [`LIST_FOLDER_AT`] distinct names it is listed once (one `getdents` returns hundreds of
//! names for the cost of a few `stat`s) and later names are answered from the listing.
//! A listing keeps a 64-bit hash per name, not the name: a million names cost 16 MB, and a
//! missing name passes only if its hash equals an existing name's in the same folder
//! (about one chance in 10^14 for a folder of 100 000 files). Symlinks in a listing are
//! always `stat`ed, since they may dangle. Work for one batch runs on a bounded pool of
//! threads, because a `stat` on network storage waits on the network, not the CPU.

use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use hashbrown::{DefaultHashBuilder, HashMap, HashSet};

/// The answer for one column of paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PathsOutcome {
    /// Rows checked (null paths are not counted).
    pub checked: u64,
    /// Rows whose path is missing.
    pub missing: u64,
    /// The first missing paths in table order, each once, at most `max_examples`.
    pub first_missing: Vec<String>,
}

/// Threads for one batch's `stat`s and listings (measured: past 4 threads a local check
/// of a million paths gets slower, not faster; network storage gains up to this many).
const THREADS: usize = 8;
/// Distinct names in one folder after which the folder is listed instead.
pub(crate) const LIST_FOLDER_AT: usize = 32;
/// Fewer jobs than this run on the calling thread: spawning costs more than it saves.
const PARALLEL_AT: usize = 64;

pub(crate) fn resolve(root: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    }
}

/// Folder and name of a path as written in the table.
fn split(p: &str) -> (&str, &str) {
    match p.as_bytes().iter().rposition(|&b| b == b'/') {
        Some(0) => ("/", &p[1..]),
        Some(i) => (&p[..i], &p[i + 1..]),
        None => ("", p),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Plain,
    Link,
}

enum Folder {
    /// Distinct names `stat`ed so far (remembered so repeats are not counted twice).
    Probing(HashSet<u64>),
    /// From one listing: sorted name hashes (a sorted vector is half the size of a hash
    /// map, and a folder's lookups are few enough that a binary search costs nothing).
    Listed(Listing),
    /// Listing failed (no permission to read it, say): `stat` every name.
    Unlistable,
}

#[derive(Clone, Copy)]
enum Job<'a> {
    /// A path as the table writes it.
    Stat(&'a str),
    /// A folder as the table writes it.
    List(&'a str),
}

enum Answer {
    Exists(bool),
    Listing(Option<Listing>),
}

/// The name hashes of a folder's entries: plain entries and symlinks apart.
struct Listing {
    plain: Vec<u64>,
    links: Vec<u64>,
}

impl Listing {
    fn get(&self, hash: &u64) -> Option<Entry> {
        if self.plain.binary_search(hash).is_ok() {
            Some(Entry::Plain)
        } else if self.links.binary_search(hash).is_ok() {
            Some(Entry::Link)
        } else {
            None
        }
    }
}

/// Checks one column of paths, batch by batch.
pub(crate) struct PathChecker {
    root: PathBuf,
    hasher: DefaultHashBuilder,
    folders: HashMap<String, Folder>,
    outcome: PathsOutcome,
    shown: HashSet<String>,
    max_examples: usize,
}

impl PathChecker {
    pub(crate) fn new(root: &Path, max_examples: usize) -> Self {
        Self {
            root: root.to_path_buf(),
            hasher: DefaultHashBuilder::default(),
            folders: HashMap::new(),
            outcome: PathsOutcome::default(),
            shown: HashSet::new(),
            max_examples,
        }
    }

    /// Checks the (non-null) paths of one batch.
    pub(crate) fn add<'a>(&mut self, paths: impl IntoIterator<Item = &'a str>) {
        let paths: Vec<&str> = paths.into_iter().collect();
        self.outcome.checked += paths.len() as u64;
        // What the listings answer now; the rest grouped by folder.
        let mut answered: Vec<Option<bool>> = vec![None; paths.len()];
        let mut wanted: HashMap<&str, Vec<(&str, &str)>> = HashMap::new();
        for (i, &p) in paths.iter().enumerate() {
            let (folder, name) = split(p);
            if let Some(Folder::Listed(names)) = self.folders.get(folder)
                && plain(name)
            {
                match names.get(&self.hasher.hash_one(name.as_bytes())) {
                    Some(Entry::Plain) => {
                        answered[i] = Some(true);
                        continue;
                    }
                    None => {
                        answered[i] = Some(false);
                        continue;
                    }
                    Some(Entry::Link) => {}
                }
            }
            wanted.entry(folder).or_default().push((name, p));
        }
        // Crowded folders are listed, the rest `stat`ed, on the pool.
        let mut jobs = Vec::new();
        for (folder, items) in &mut wanted {
            items.sort_unstable();
            items.dedup_by(|a, b| a.0 == b.0);
            let seen = match self.folders.get(*folder) {
                None => Some(0),
                Some(Folder::Probing(seen)) => Some(seen.len()),
                Some(_) => None,
            };
            if seen.is_some_and(|s| s + items.len() >= LIST_FOLDER_AT) {
                jobs.push(Job::List(folder));
            } else {
                jobs.extend(items.iter().map(|&(_, p)| Job::Stat(p)));
            }
        }
        let answers = run_jobs(&self.root, &jobs, &self.hasher);
        let mut stated: HashMap<&str, bool> = HashMap::new();
        for (job, answer) in jobs.iter().zip(answers) {
            match (*job, answer) {
                (Job::List(folder), Answer::Listing(Some(names))) => {
                    self.folders
                        .insert(folder.to_string(), Folder::Listed(names));
                }
                (Job::List(folder), _) => {
                    self.folders.insert(folder.to_string(), Folder::Unlistable);
                }
                (Job::Stat(p), answer) => {
                    stated.insert(p, matches!(answer, Answer::Exists(true)));
                    let (folder, name) = split(p);
                    let hash = self.hasher.hash_one(name.as_bytes());
                    let state = self
                        .folders
                        .entry_ref(folder)
                        .or_insert_with(|| Folder::Probing(HashSet::new()));
                    if let Folder::Probing(seen) = state {
                        seen.insert(hash);
                    }
                }
            }
        }
        for (i, &p) in paths.iter().enumerate() {
            let exists = match (answered[i], stated.get(p)) {
                (Some(e), _) | (None, Some(&e)) => e,
                (None, None) => self.exists_after_listing(p),
            };
            if !exists {
                self.outcome.missing += 1;
                if self.outcome.first_missing.len() < self.max_examples
                    && self.shown.insert(p.to_string())
                {
                    self.outcome.first_missing.push(p.to_string());
                }
            }
        }
    }

    /// A path whose folder was listed during this batch (or could not be).
    fn exists_after_listing(&self, p: &str) -> bool {
        let (folder, name) = split(p);
        if let Some(Folder::Listed(names)) = self.folders.get(folder)
            && plain(name)
        {
            match names.get(&self.hasher.hash_one(name.as_bytes())) {
                Some(Entry::Plain) => return true,
                None => return false,
                Some(Entry::Link) => {}
            }
        }
        std::fs::metadata(resolve(&self.root, p)).is_ok()
    }

    pub(crate) fn finish(self) -> PathsOutcome {
        self.outcome
    }
}

fn plain(name: &str) -> bool {
    !matches!(name, "" | "." | "..")
}

fn run_jobs(root: &Path, jobs: &[Job<'_>], hasher: &DefaultHashBuilder) -> Vec<Answer> {
    let run = |job: &Job<'_>| match *job {
        Job::Stat(p) => Answer::Exists(std::fs::metadata(resolve(root, p)).is_ok()),
        Job::List(folder) => Answer::Listing(list_folder(
            &resolve(root, if folder.is_empty() { "." } else { folder }),
            hasher,
        )),
    };
    if jobs.len() < PARALLEL_AT {
        return jobs.iter().map(run).collect();
    }
    let next = AtomicUsize::new(0);
    let mut parts: Vec<Vec<(usize, Answer)>> = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS.min(jobs.len()))
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = jobs.get(i) else { break };
                        done.push((i, run(job)));
                    }
                    done
                })
            })
            .collect();
        parts = handles.into_iter().filter_map(|h| h.join().ok()).collect();
    });
    let mut answers: Vec<Option<Answer>> = (0..jobs.len()).map(|_| None).collect();
    for (i, a) in parts.into_iter().flatten() {
        answers[i] = Some(a);
    }
    // A job whose thread died is answered again here rather than guessed.
    answers
        .into_iter()
        .zip(jobs)
        .map(|(a, job)| a.unwrap_or_else(|| run(job)))
        .collect()
}

/// The name hashes of every entry of a folder, or `None` if it cannot be listed.
fn list_folder(folder: &Path, hasher: &DefaultHashBuilder) -> Option<Listing> {
    let mut listing = Listing {
        plain: Vec::new(),
        links: Vec::new(),
    };
    for entry in std::fs::read_dir(folder).ok()? {
        let entry = entry.ok()?;
        let hash = hasher.hash_one(entry.file_name().as_encoded_bytes());
        match entry.file_type() {
            Ok(t) if !t.is_symlink() => listing.plain.push(hash),
            _ => listing.links.push(hash),
        }
    }
    listing.plain.sort_unstable();
    listing.links.sort_unstable();
    listing.plain.shrink_to_fit();
    Some(listing)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Listings, single `stat`s and both across batches agree with `stat` on every kind of
    /// entry.
    #[test]
    fn listing_and_stat_agree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("many/sub")).unwrap();
        std::fs::create_dir_all(root.join("few")).unwrap();
        for i in 0..100 {
            std::fs::write(root.join(format!("many/f{i}")), b"").unwrap();
        }
        std::fs::write(root.join("few/a"), b"").unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(root.join("many/f1"), root.join("many/good_link")).unwrap();
            std::os::unix::fs::symlink(root.join("nowhere"), root.join("many/dangling")).unwrap();
        }
        let mut owned: Vec<String> = (0..20).map(|i| format!("many/f{i}")).collect();
        owned.extend(["many/missing1", "few/a", "few/b"].map(String::from));
        let first_batch = owned.len();
        owned.extend((20..100).map(|i| format!("many/f{i}")));
        owned.extend(
            [
                "many/missing2",
                "many/sub",
                "many/sub/../f3",
                "many/.",
                "top_missing",
                "many/f5",
                "many/missing1",
            ]
            .map(String::from),
        );
        if cfg!(unix) {
            owned.extend(["many/good_link".to_string(), "many/dangling".to_string()]);
        }
        owned.push(root.join("many/f7").display().to_string());
        let paths: Vec<&str> = owned.iter().map(String::as_str).collect();
        for split_at in [first_batch, paths.len()] {
            let mut checker = PathChecker::new(root, 10);
            checker.add(paths[..split_at].iter().copied());
            checker.add(paths[split_at..].iter().copied());
            let out = checker.finish();
            let mut want = vec!["many/missing1", "few/b", "many/missing2", "top_missing"];
            if cfg!(unix) {
                want.push("many/dangling");
            }
            assert_eq!(out.first_missing, want, "split at {split_at}");
            assert_eq!(
                out.missing,
                want.len() as u64 + 1,
                "missing1 is named twice"
            );
            assert_eq!(out.checked, paths.len() as u64);
            assert!(matches!(checker_folder_state(root, &paths), Some(true)));
        }
        for p in &paths {
            let exists = std::fs::metadata(resolve(root, p)).is_ok();
            let want_missing = p.contains("missing") || *p == "few/b" || *p == "many/dangling";
            assert_eq!(exists, !want_missing, "{p}");
        }
    }

    /// Whether `many` ended up listed (it is named by more than LIST_FOLDER_AT names).
    fn checker_folder_state(root: &Path, paths: &[&str]) -> Option<bool> {
        let mut checker = PathChecker::new(root, 10);
        checker.add(paths.iter().copied());
        checker
            .folders
            .get("many")
            .map(|f| matches!(f, Folder::Listed(_)))
    }

    /// Enough distinct folders to run the jobs on the pool.
    #[test]
    fn many_folders_run_on_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut owned = Vec::new();
        for d in 0..100 {
            std::fs::create_dir_all(root.join(format!("d{d}"))).unwrap();
            std::fs::write(root.join(format!("d{d}/x")), b"").unwrap();
            owned.push(format!("d{d}/x"));
            owned.push(format!("d{d}/y"));
        }
        let paths: Vec<&str> = owned.iter().map(String::as_str).collect();
        let mut checker = PathChecker::new(root, 3);
        checker.add(paths.iter().copied());
        let out = checker.finish();
        assert_eq!(out.missing, 100);
        assert_eq!(out.first_missing, ["d0/y", "d1/y", "d2/y"]);
    }
}
