//! Process setup: worker threads from the CPU quota, and a file-descriptor
//! limit high enough for a busy proxy.

/// Worker threads for the proxy: the CPU quota of this cgroup (rounded up),
/// capped by the CPUs present, at least 1.
pub fn default_cores() -> usize {
    let present = std::thread::available_parallelism().map_or(1, |n| n.get());
    let quota = std::fs::read_to_string("/sys/fs/cgroup/cpu.max")
        .ok()
        .and_then(|s| cpu_max_cores(&s));
    quota.map_or(present, |q| q.min(present)).max(1)
}

/// Parses cgroup v2's `cpu.max` ("QUOTA PERIOD" or "max PERIOD").
fn cpu_max_cores(cpu_max: &str) -> Option<usize> {
    let mut parts = cpu_max.split_whitespace();
    let quota: u64 = parts.next()?.parse().ok()?;
    let period: u64 = parts.next()?.parse().ok()?;
    if period == 0 {
        return None;
    }
    Some(quota.div_ceil(period) as usize)
}

/// Raises the soft open-files limit to the hard limit.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, soft, hard, "could not raise the open-files limit");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_rounds_quota_up() {
        assert_eq!(cpu_max_cores("max 100000\n"), None);
        assert_eq!(cpu_max_cores("150000 100000\n"), Some(2));
        assert_eq!(cpu_max_cores("50000 100000"), Some(1));
        assert_eq!(cpu_max_cores("400000 100000"), Some(4));
        assert_eq!(cpu_max_cores("garbage"), None);
    }

    #[test]
    fn default_is_at_least_one() {
        assert!(default_cores() >= 1);
    }
}
