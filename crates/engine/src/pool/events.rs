//! The pool's worker log: when each worker started, was recycled, retired or lost, on the clock
//! Python's `time.monotonic()` reads, so that a run report can lay the events beside its
//! batches. Bounded: the oldest events make room for new ones when nobody reads them.

use std::collections::VecDeque;

use super::LossCause;
use crate::platform;

/// What happened to a worker.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerEventKind {
    /// Its process was started.
    Started,
    /// Replaced after a job: its task budget (`max_tasks`) was spent.
    RecycledTaskBudget,
    /// Replaced after a job: its resident memory passed the cap.
    RecycledMemoryCap,
    /// Retired after the pool's idle timeout.
    RetiredIdle,
    /// Its process ended while it ran a job: why.
    Lost(LossCause),
    /// Its process ended between jobs (retired, shut down, or on its own).
    Exited,
}

impl WorkerEventKind {
    /// A short stable name (the run report's): "started", "recycled", "retired", "crashed",
    /// "timeout", "killed", "exited".
    pub fn name(&self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::RecycledTaskBudget | Self::RecycledMemoryCap => "recycled",
            Self::RetiredIdle => "retired",
            Self::Lost(LossCause::TimedOut(_)) => "timeout",
            Self::Lost(LossCause::Cancelled) => "killed",
            Self::Lost(_) => "crashed",
            Self::Exited => "exited",
        }
    }

    /// A few words more: the reason for a recycle, the exit code or signal of a loss.
    pub fn detail(&self) -> String {
        match self {
            Self::RecycledTaskBudget => "max_tasks_per_worker reached".into(),
            Self::RecycledMemoryCap => "max_worker_memory exceeded".into(),
            Self::RetiredIdle => "idle timeout".into(),
            Self::Lost(LossCause::Exited(code)) => format!("exited with code {code}"),
            Self::Lost(LossCause::Signaled(signal)) => format!("killed by signal {signal}"),
            Self::Lost(LossCause::TimedOut(limit)) => {
                format!("a task ran past {:.3} s", limit.as_secs_f64())
            }
            Self::Lost(LossCause::Cancelled) => "its job was cancelled".into(),
            Self::Lost(LossCause::Vanished) => "it could not be reaped".into(),
            Self::Lost(LossCause::Protocol(reason)) => format!("protocol violation: {reason}"),
            Self::Started | Self::Exited => String::new(),
        }
    }
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerEvent {
    /// [`platform::monotonic_seconds`] when it was seen.
    pub at: f64,
    pub pid: i32,
    pub kind: WorkerEventKind,
}

/// The most events kept unread.
pub const MAX_UNREAD_EVENTS: usize = 4096;

/// The log itself (kept in the pool's state, under its lock).
#[derive(Default)]
pub(super) struct WorkerLog {
    events: VecDeque<WorkerEvent>,
}

impl WorkerLog {
    pub(super) fn record(&mut self, pid: i32, kind: WorkerEventKind) {
        if self.events.len() == MAX_UNREAD_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(WorkerEvent {
            at: platform::monotonic_seconds(),
            pid,
            kind,
        });
    }

    pub(super) fn take(&mut self) -> Vec<WorkerEvent> {
        self.events.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_newest_events_in_order_when_nobody_reads_it() {
        let mut log = WorkerLog::default();
        for pid in 0..(MAX_UNREAD_EVENTS as i32 + 10) {
            log.record(pid, WorkerEventKind::Started);
        }
        let events = log.take();
        assert_eq!(events.len(), MAX_UNREAD_EVENTS);
        assert_eq!(events[0].pid, 10);
        assert!(events.windows(2).all(|pair| pair[0].at <= pair[1].at));
        assert!(log.take().is_empty());
    }

    #[test]
    fn every_kind_has_a_name_and_losses_say_why() {
        let timeout = WorkerEventKind::Lost(LossCause::TimedOut(std::time::Duration::from_secs(2)));
        assert_eq!(timeout.name(), "timeout");
        assert_eq!(timeout.detail(), "a task ran past 2.000 s");
        assert_eq!(
            WorkerEventKind::Lost(LossCause::Signaled(9)).name(),
            "crashed"
        );
        assert_eq!(WorkerEventKind::RecycledMemoryCap.name(), "recycled");
    }
}
