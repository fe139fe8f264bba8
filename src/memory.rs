//! How much memory this process may still use: the container's cgroup limit less its usage
//! (cgroup v2, else v1), or the kernel's `MemAvailable` when that is smaller or there is no
//! limit. A multi-model endpoint sizes its model budget from it at start-up. (Three small files
//! read; a system-information crate would bring far more than that.)

use std::path::Path;

/// Bytes still available to this container now, if the system says.
pub fn available_bytes() -> Option<u64> {
    let host = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_available(&text));
    let cgroup = cgroup_free(Path::new("/sys/fs/cgroup"));
    match (host, cgroup) {
        (Some(h), Some(c)) => Some(h.min(c)),
        (h, c) => h.or(c),
    }
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The cgroup's limit less its usage: `memory.max` / `memory.current` (v2) or
/// `memory/memory.limit_in_bytes` / `memory/memory.usage_in_bytes` (v1). None without a limit.
fn cgroup_free(root: &Path) -> Option<u64> {
    let read = |name: &str| std::fs::read_to_string(root.join(name)).ok();
    let (limit, usage) = match (read("memory.max"), read("memory.current")) {
        (Some(limit), Some(usage)) => (limit, usage),
        _ => (
            read("memory/memory.limit_in_bytes")?,
            read("memory/memory.usage_in_bytes")?,
        ),
    };
    free_under_limit(&limit, &usage)
}

/// `limit - usage` from the files' text; None for no limit (`max`, or v1's huge page-rounded
/// maximum).
fn free_under_limit(limit: &str, usage: &str) -> Option<u64> {
    const NO_LIMIT_ABOVE: u64 = 1 << 60;
    let limit: u64 = limit.trim().parse().ok()?;
    let usage: u64 = usage.trim().parse().ok()?;
    (limit < NO_LIMIT_ABOVE).then(|| limit.saturating_sub(usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_cgroup_values() {
        let meminfo = "MemTotal:       16318480 kB\nMemFree:         1204000 kB\nMemAvailable:    8000000 kB\n";
        assert_eq!(mem_available(meminfo), Some(8_000_000 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(
            free_under_limit("1073741824\n", "73741824\n"),
            Some(1_000_000_000)
        );
        assert_eq!(free_under_limit("max\n", "73741824\n"), None);
        assert_eq!(free_under_limit("9223372036854771712\n", "1\n"), None);
        assert_eq!(free_under_limit("100\n", "200\n"), Some(0));
    }

    #[test]
    fn reads_a_v2_then_a_v1_cgroup() {
        let dir = std::env::temp_dir().join(format!("memory-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("memory")).unwrap();
        std::fs::write(dir.join("memory/memory.limit_in_bytes"), "3000\n").unwrap();
        std::fs::write(dir.join("memory/memory.usage_in_bytes"), "1000\n").unwrap();
        assert_eq!(cgroup_free(&dir), Some(2000));
        std::fs::write(dir.join("memory.max"), "5000\n").unwrap();
        std::fs::write(dir.join("memory.current"), "1000\n").unwrap();
        assert_eq!(cgroup_free(&dir), Some(4000));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
