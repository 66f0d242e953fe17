//! A worker's resident memory, as the memory cap reads it.

use nix::unistd::Pid;

use super::CallLimits;

/// Whether a worker is past its memory cap now (checked after each of its jobs too, for jobs
/// shorter than the supervisor's tick).
pub(super) fn over_memory_cap(pid: Pid, limits: &CallLimits) -> bool {
    limits
        .max_rss
        .is_some_and(|cap| resident_bytes(pid).is_some_and(|rss| rss > cap))
}

/// A process's resident memory in bytes (`/proc/<pid>/statm`), or None if it cannot be read.
pub(super) fn resident_bytes(pid: Pid) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{}/statm", pid.as_raw())).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    pages.checked_mul(page_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_resident_size() {
        let rss = resident_bytes(Pid::this()).expect("own statm");
        assert!(rss > 0);
        assert!(resident_bytes(Pid::from_raw(i32::MAX)).is_none());
    }
}
