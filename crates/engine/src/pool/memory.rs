//! A worker's memory, as the memory cap reads it (how it is read depends on the platform path:
//! see [`crate::platform::worker_memory`]).

use nix::unistd::Pid;

use super::CallLimits;
use crate::platform::worker_memory;
use crate::shm::{StatusPage, STATUS_PEAK_RSS};

/// Whether a worker is past its memory cap now (checked after each of its jobs too, for jobs
/// shorter than the supervisor's tick).
pub(super) fn over_memory_cap(pid: Pid, status: &StatusPage, limits: &CallLimits) -> bool {
    limits.max_rss.is_some_and(|cap| {
        worker_memory(pid, status.load(STATUS_PEAK_RSS)).is_some_and(|rss| rss > cap)
    })
}
