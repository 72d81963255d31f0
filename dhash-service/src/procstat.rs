//! Process and disk figures from /proc and statvfs (Linux).

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// Kernel clock ticks per second as exported to user space (`USER_HZ`); 100
/// on every Linux architecture we run on.
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system) this process used so far.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

fn kb_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(':')?;
        rest.split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
            .map(|kb| kb * 1024)
    })
}

/// Resident set size in bytes.
pub fn rss_bytes() -> Option<u64> {
    kb_field(&std::fs::read_to_string("/proc/self/status").ok()?, "VmRSS")
}

/// Total physical memory in bytes.
pub fn mem_total_bytes() -> Option<u64> {
    kb_field(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemTotal")
}

/// The memory the process may use: the cgroup (v2 `memory.max`, v1
/// `memory.limit_in_bytes`) limit when one is set below physical memory,
/// else physical memory. `memory_percent` is RSS over this.
pub fn mem_limit_bytes() -> Option<u64> {
    let total = mem_total_bytes()?;
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .filter_map(|t| t.trim().parse::<u64>().ok())
    .find(|&limit| limit > 0 && limit < total);
    Some(cgroup.unwrap_or(total))
}

/// Bytes of all regular files under `dir` (symlinks are not followed).
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}

/// Percentage of the file system holding `path` that is used (as `df` shows it).
pub fn disk_percent(path: &Path) -> Option<f64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let total = st.blocks() as f64;
    let free = st.blocks_free() as f64;
    let avail = st.blocks_available() as f64;
    let used = total - free;
    let denom = used + avail;
    if denom <= 0.0 {
        return None;
    }
    Some(round2(used / denom * 100.0))
}

pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// CPU percentage between successive readings (100 = one core busy). The
/// first reading covers the time since the service started; later ones the
/// time since the previous reading, at least one second apart (a faster
/// reader gets the previous figure again).
pub struct CpuMeter {
    state: Mutex<CpuState>,
}

struct CpuState {
    at: Instant,
    cpu: f64,
    last: Option<f64>,
}

impl CpuMeter {
    pub fn new() -> Self {
        CpuMeter {
            state: Mutex::new(CpuState {
                at: Instant::now(),
                cpu: cpu_seconds().unwrap_or(0.0),
                last: None,
            }),
        }
    }

    pub fn percent(&self) -> Option<f64> {
        let now_cpu = cpu_seconds()?;
        let mut st = self.state.lock().ok()?;
        let wall = st.at.elapsed().as_secs_f64();
        let pct = |wall: f64, cpu: f64| round2(((now_cpu - cpu) / wall * 100.0).max(0.0));
        if wall >= 1.0 {
            let p = pct(wall, st.cpu);
            *st = CpuState {
                at: Instant::now(),
                cpu: now_cpu,
                last: Some(p),
            };
            return Some(p);
        }
        match st.last {
            Some(p) => Some(p),
            None if wall > 0.0 => Some(pct(wall, st.cpu)),
            None => Some(0.0),
        }
    }
}

impl Default for CpuMeter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_figures() {
        assert!(cpu_seconds().is_some());
        assert!(rss_bytes().unwrap() > 0);
        assert!(mem_total_bytes().unwrap() > rss_bytes().unwrap());
        assert!(mem_limit_bytes().unwrap() <= mem_total_bytes().unwrap());
        let p = disk_percent(Path::new("/")).unwrap();
        assert!((0.0..=100.0).contains(&p));
    }

    #[test]
    fn dir_bytes_sums_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), [0u8; 100]).unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/b"), [0u8; 23]).unwrap();
        assert_eq!(dir_bytes(d.path()), 123);
    }
}
