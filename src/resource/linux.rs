//! Direct readers of /proc, cgroup files, statvfs and getrlimit. Each parser is a pure
//! function over the file's text, so every form (cgroup v1 and v2, "max", the v1 sentinel,
//! missing fields) is tested on fixtures; a missing or odd file gives `None`, never a panic.

use std::path::Path;

/// cgroup v1 reports "no limit" as a huge page-aligned number (0x7FFFFFFFFFFFF000 on 4 KiB
/// pages); anything from here up means unlimited.
const V1_UNLIMITED: u64 = 0x7FFF_FFFF_FFFF_F000;

/// `/proc/meminfo` figures, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct MemInfo {
    pub total: u64,
    pub available: u64,
}

pub(crate) fn parse_meminfo(text: &str) -> Option<MemInfo> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        kb.checked_mul(1024)
    };
    let total = field("MemTotal:")?;
    // Kernels before 3.14 lack MemAvailable; free + buffers + cached is the old estimate.
    let available = field("MemAvailable:").or_else(|| {
        Some(field("MemFree:")? + field("Buffers:").unwrap_or(0) + field("Cached:").unwrap_or(0))
    })?;
    Some(MemInfo { total, available })
}

/// Resident set size from `/proc/self/statm` (second field, pages).
pub(crate) fn parse_statm_rss(text: &str, page_size: u64) -> Option<u64> {
    text.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()?
        .checked_mul(page_size)
}

/// utime + stime (clock ticks) from `/proc/self/stat`. The command name may hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub(crate) fn parse_stat_cpu_ticks(text: &str) -> Option<u64> {
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // After ")": state is field 3; utime is 14 and stime 15, i.e. the 12th and 13th here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// (busy, total) jiffies from the aggregate `cpu` line of `/proc/stat`.
pub(crate) fn parse_proc_stat_cpu(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest is already in user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// The limits a cgroup imposes on this process.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct CgroupLimits {
    /// cgroup version, 1 or 2.
    pub version: u8,
    /// Memory limit in bytes; `None` when unlimited.
    pub memory_limit: Option<u64>,
    /// Memory charged to the cgroup, bytes.
    pub memory_usage: Option<u64>,
    /// CPU quota in cores (quota / period); `None` when unlimited.
    pub cpu_quota: Option<f64>,
}

/// Which cgroup this process is in, from `/proc/self/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CgroupPaths {
    V2(String),
    V1 {
        memory: Option<String>,
        cpu: Option<String>,
    },
}

pub(crate) fn parse_proc_self_cgroup(text: &str) -> Option<CgroupPaths> {
    let mut memory = None;
    let mut cpu = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            return Some(CgroupPaths::V2(path.to_string()));
        }
        for c in controllers.split(',') {
            match c {
                "memory" => memory = Some(path.to_string()),
                "cpu" => cpu = Some(path.to_string()),
                _ => {}
            }
        }
    }
    (memory.is_some() || cpu.is_some()).then_some(CgroupPaths::V1 { memory, cpu })
}

/// A v2 `memory.max` or v1 `memory.limit_in_bytes`: `None` for "max" or the v1 sentinel.
pub(crate) fn parse_memory_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    let v: u64 = t.parse().ok()?;
    (v < V1_UNLIMITED).then_some(v)
}

/// A v2 `cpu.max` ("max 100000" or "50000 100000") as cores.
pub(crate) fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut parts = text.split_whitespace();
    let quota = parts.next()?;
    let period: f64 = parts.next().unwrap_or("100000").parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    (quota > 0.0).then(|| quota / period)
}

/// v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us` as cores; -1 means unlimited.
pub(crate) fn parse_cfs_quota(quota: &str, period: &str) -> Option<f64> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: i64 = period.trim().parse().ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Reads the cgroup files under `root` (normally `/sys/fs/cgroup`). Inside a container the
/// path from `/proc/self/cgroup` may not exist in the container's view; then the root's own
/// files are the container's.
pub(crate) fn read_cgroup(root: &Path, self_cgroup: &str) -> Option<CgroupLimits> {
    let dir_for = |base: &Path, rel: &str| {
        let candidate = base.join(rel.trim_start_matches('/'));
        if candidate.is_dir() {
            candidate
        } else {
            base.to_path_buf()
        }
    };
    match parse_proc_self_cgroup(self_cgroup)? {
        CgroupPaths::V2(rel) => {
            let dir = dir_for(root, &rel);
            let max = read(&dir.join("memory.max"));
            let current = read(&dir.join("memory.current"));
            let cpu = read(&dir.join("cpu.max"));
            if max.is_none() && current.is_none() && cpu.is_none() {
                return None;
            }
            Some(CgroupLimits {
                version: 2,
                memory_limit: max.as_deref().and_then(parse_memory_limit),
                memory_usage: current.and_then(|t| t.trim().parse().ok()),
                cpu_quota: cpu.as_deref().and_then(parse_cpu_max),
            })
        }
        CgroupPaths::V1 { memory, cpu } => {
            let mem_dir = memory.map(|rel| dir_for(&root.join("memory"), &rel));
            let cpu_dir = cpu.map(|rel| dir_for(&root.join("cpu"), &rel));
            let limit = mem_dir
                .as_ref()
                .and_then(|d| read(&d.join("memory.limit_in_bytes")));
            let usage = mem_dir
                .as_ref()
                .and_then(|d| read(&d.join("memory.usage_in_bytes")));
            let quota = cpu_dir.as_ref().and_then(|d| {
                parse_cfs_quota(
                    &read(&d.join("cpu.cfs_quota_us"))?,
                    &read(&d.join("cpu.cfs_period_us"))?,
                )
            });
            Some(CgroupLimits {
                version: 1,
                memory_limit: limit.as_deref().and_then(parse_memory_limit),
                memory_usage: usage.and_then(|t| t.trim().parse().ok()),
                cpu_quota: quota,
            })
        }
    }
}

/// Open file descriptors of this process: the entries of `/proc/self/fd`, less the one the
/// listing itself opens.
pub(crate) fn count_open_fds() -> Option<u64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(n.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_with_and_without_memavailable() {
        let modern = "MemTotal:       16305800 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n";
        assert_eq!(
            parse_meminfo(modern),
            Some(MemInfo {
                total: 16305800 * 1024,
                available: 8000000 * 1024
            })
        );
        let old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 10 kB\nCached: 20 kB\n";
        assert_eq!(parse_meminfo(old).map(|m| m.available), Some(130 * 1024));
        assert_eq!(parse_meminfo(""), None);
        assert_eq!(parse_meminfo("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn statm_and_stat_parsers() {
        assert_eq!(
            parse_statm_rss("1000 250 30 1 0 200 0\n", 4096),
            Some(250 * 4096)
        );
        assert_eq!(parse_statm_rss("1000", 4096), None);
        let stat = "1234 (my (odd) prog) S 1 1234 1234 0 -1 4194560 100 0 0 0 37 5 0 0 20 0 4 0 100 1000 200";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(42));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        let proc_stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_proc_stat_cpu(proc_stat), Some((150, 1000)));
    }

    #[test]
    fn cgroup_files_of_every_form() {
        assert_eq!(
            parse_proc_self_cgroup("0::/user.slice/app.scope\n"),
            Some(CgroupPaths::V2("/user.slice/app.scope".into()))
        );
        let v1 = "12:cpu,cpuacct:/docker/abc\n11:memory:/docker/abc\n1:name=systemd:/docker/abc\n";
        assert_eq!(
            parse_proc_self_cgroup(v1),
            Some(CgroupPaths::V1 {
                memory: Some("/docker/abc".into()),
                cpu: Some("/docker/abc".into())
            })
        );
        assert_eq!(parse_proc_self_cgroup(""), None);
        assert_eq!(parse_memory_limit("max\n"), None);
        assert_eq!(
            parse_memory_limit("9223372036854771712\n"),
            None,
            "v1 sentinel"
        );
        assert_eq!(parse_memory_limit("536870912\n"), Some(536870912));
        assert_eq!(parse_memory_limit("nonsense"), None);
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(0.5));
        assert_eq!(parse_cpu_max("200000 100000"), Some(2.0));
        assert_eq!(parse_cfs_quota("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs_quota("150000", "100000"), Some(1.5));
    }

    #[test]
    fn cgroup_trees_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // v2: the path from /proc/self/cgroup is not visible (a container's view): the root's
        // files are read.
        std::fs::write(root.join("memory.max"), "1073741824\n").unwrap();
        std::fs::write(root.join("memory.current"), "52428800\n").unwrap();
        std::fs::write(root.join("cpu.max"), "max 100000\n").unwrap();
        let v2 = read_cgroup(root, "0::/kubepods/pod1/ctr\n").unwrap();
        assert_eq!(
            v2,
            CgroupLimits {
                version: 2,
                memory_limit: Some(1 << 30),
                memory_usage: Some(50 << 20),
                cpu_quota: None
            }
        );

        let v1root = tempfile::tempdir().unwrap();
        let mem = v1root.path().join("memory/docker/abc");
        let cpu = v1root.path().join("cpu/docker/abc");
        std::fs::create_dir_all(&mem).unwrap();
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::write(mem.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        std::fs::write(mem.join("memory.usage_in_bytes"), "1000\n").unwrap();
        std::fs::write(cpu.join("cpu.cfs_quota_us"), "200000\n").unwrap();
        std::fs::write(cpu.join("cpu.cfs_period_us"), "100000\n").unwrap();
        let v1 = read_cgroup(
            v1root.path(),
            "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n",
        )
        .unwrap();
        assert_eq!(
            v1,
            CgroupLimits {
                version: 1,
                memory_limit: None,
                memory_usage: Some(1000),
                cpu_quota: Some(2.0)
            }
        );

        // No controller files at all: no cgroup figures, not an error.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(read_cgroup(empty.path(), "0::/\n"), None);
    }
}

/// Filesystem types whose `statvfs` can block indefinitely when the server is gone.
const NETWORK_FS: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ceph",
    "glusterfs",
    "9p",
    "lustre",
    "afs",
    "gpfs",
    "beegfs",
    "ncpfs",
    "davfs",
];

/// Whether `path` lies on a network filesystem (or a FUSE one, which can hang the same way),
/// from the text of `/proc/self/mountinfo`: the mount point that is the longest prefix of
/// the path decides. Unknown means yes: the careful path costs only time.
pub(crate) fn is_network_mount(mountinfo: &str, path: &Path) -> bool {
    let mut best: Option<(usize, &str)> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split_whitespace().nth(4) else {
            continue;
        };
        let Some(fs_type) = right.split_whitespace().next() else {
            continue;
        };
        // Octal escapes (\040 for a space) are rare in mount points; such mounts simply
        // fail to match and fall to a shorter prefix.
        if path.starts_with(mount_point) && best.is_none_or(|(len, _)| mount_point.len() > len) {
            best = Some((mount_point.len(), fs_type));
        }
    }
    match best {
        Some((_, fs)) => fs.starts_with("fuse") || NETWORK_FS.contains(&fs),
        None => true,
    }
}

/// Open handles on the files a snapshot reads, re-read from offset 0 each time (procfs and
/// cgroupfs regenerate their text on every read), which saves an open and a close per file
/// per snapshot. Cgroup limits are re-read every [`LIMITS_TTL`](ProcFiles::LIMITS_TTL).
#[derive(Debug)]
pub(crate) struct ProcFiles {
    statm: Option<std::fs::File>,
    stat: Option<std::fs::File>,
    system_stat: Option<std::fs::File>,
    meminfo: Option<std::fs::File>,
    cgroup_usage: Option<std::fs::File>,
    cgroup: Option<(std::time::Instant, Option<CgroupLimits>)>,
}

impl ProcFiles {
    const LIMITS_TTL: std::time::Duration = std::time::Duration::from_secs(10);

    pub(crate) fn open() -> Self {
        let open = |p: &str| std::fs::File::open(p).ok();
        Self {
            statm: open("/proc/self/statm"),
            stat: open("/proc/self/stat"),
            system_stat: open("/proc/stat"),
            meminfo: open("/proc/meminfo"),
            cgroup_usage: None,
            cgroup: None,
        }
    }

    fn text(&self, which: fn(&Self) -> &Option<std::fs::File>) -> Option<String> {
        use std::os::unix::fs::FileExt;
        let file = which(self).as_ref()?;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        // Bounded: no file read here is anywhere near 1 MiB.
        while buf.len() < (1 << 20) {
            let n = file.read_at(&mut chunk, buf.len() as u64).ok()?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(buf).ok()
    }

    pub(crate) fn statm(&self) -> Option<String> {
        self.text(|s| &s.statm)
    }

    pub(crate) fn stat(&self) -> Option<String> {
        self.text(|s| &s.stat)
    }

    pub(crate) fn system_stat(&self) -> Option<String> {
        self.text(|s| &s.system_stat)
    }

    pub(crate) fn meminfo(&self) -> Option<String> {
        self.text(|s| &s.meminfo)
    }

    /// The cgroup's limits (cached) with its current memory usage (read now).
    pub(crate) fn cgroup(&mut self) -> Option<CgroupLimits> {
        let fresh = self
            .cgroup
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < Self::LIMITS_TTL);
        if !fresh {
            let limits = std::fs::read_to_string("/proc/self/cgroup")
                .ok()
                .and_then(|t| read_cgroup(Path::new("/sys/fs/cgroup"), &t));
            self.cgroup_usage = usage_file(Path::new("/sys/fs/cgroup"));
            self.cgroup = Some((std::time::Instant::now(), limits));
        }
        let mut limits = self.cgroup.as_ref()?.1?;
        if let Some(text) = self.text(|s| &s.cgroup_usage) {
            limits.memory_usage = text.trim().parse().ok();
        }
        Some(limits)
    }
}

/// The open file that holds the cgroup's current memory usage.
fn usage_file(root: &Path) -> Option<std::fs::File> {
    let self_cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let (base, rel, name) = match parse_proc_self_cgroup(&self_cgroup)? {
        CgroupPaths::V2(rel) => (root.to_path_buf(), rel, "memory.current"),
        CgroupPaths::V1 { memory, .. } => (root.join("memory"), memory?, "memory.usage_in_bytes"),
    };
    let candidate = base.join(rel.trim_start_matches('/')).join(name);
    std::fs::File::open(&candidate)
        .or_else(|_| std::fs::File::open(base.join(name)))
        .ok()
}

#[cfg(test)]
mod mount_tests {
    use super::*;

    #[test]
    fn network_mounts_are_found_by_longest_prefix() {
        let mountinfo = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /data rw,relatime shared:2 - nfs4 server:/export rw
41 40 8:2 / /data/local rw,relatime shared:3 - xfs /dev/sdb1 rw
42 22 0:40 / /mnt/remote rw - fuse.sshfs host: rw
";
        assert!(!is_network_mount(mountinfo, Path::new("/home/user")));
        assert!(is_network_mount(
            mountinfo,
            Path::new("/data/shared/x.parquet")
        ));
        assert!(!is_network_mount(mountinfo, Path::new("/data/local/y")));
        assert!(is_network_mount(mountinfo, Path::new("/mnt/remote")));
        assert!(
            is_network_mount("", Path::new("/anything")),
            "unknown counts as network"
        );
    }
}
