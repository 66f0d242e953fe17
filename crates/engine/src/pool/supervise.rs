//! The pool's supervisor thread: the one owner of "no task outlives its timeout", "no worker
//! outgrows its memory cap", "a spent worker is replaced" and "idle workers retire".
//!
//! It runs whether or not anyone waits for results: a caller that stops reading a generator, or
//! an Executor whose futures nobody looks at, still has its stuck tasks killed on time. The limits
//! are the current call's ([`CallLimits`], set once per call with [`super::Pool::set_limits`]).
//!
//! While a worker runs a job under a limit, the supervisor looks every [`TICK`]; otherwise it
//! sleeps until the idle timeout is due or the pool changes (a job handed out under a limit wakes
//! it: [`super::Shared::job_started`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::memory::over_memory_cap;
use super::{CallLimits, KillReason, Shared, State};
use crate::shm::{StatusPage, STATUS_JOB, STATUS_STOP, STATUS_TASKS_STARTED};

/// How often running jobs are looked at while a limit applies: a timeout fires at most this late
/// (plus [`STACK_GRACE`]), and a worker over its cap is told to stop within this.
pub(super) const TICK: Duration = Duration::from_millis(20);
/// How long a timed-out worker has to dump its Python stack (SIGUSR1, faulthandler) before it
/// is killed.
pub(super) const STACK_GRACE: Duration = Duration::from_millis(200);
/// A job none of whose tasks has started (a fresh worker importing the task's modules or running
/// its initializer, a job's arguments being unpickled) is not a stuck task, but it may not hang
/// for ever either: it is stopped as timed out after this long, or the task timeout if longer.
pub const STARTING_LIMIT: Duration = Duration::from_secs(30);
/// The longest sleep with nothing to watch: a fallback only (changes wake the supervisor).
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The supervisor's loop; returns when the pool closes.
pub(super) fn supervise(shared: &Arc<Shared>) {
    let mut state = shared.state();
    loop {
        if state.closed {
            return;
        }
        if state.replacements > 0 {
            let wanted = std::mem::take(&mut state.replacements);
            drop(state);
            for _ in 0..wanted {
                let _ = super::spawn::spawn_worker(shared);
            }
            state = shared.state();
            continue;
        }
        let now = Instant::now();
        let limits = state.limits;
        if let Some(limit) = limits.task_timeout {
            enforce_task_timeout(&mut state, limit, now);
        }
        if limits.max_rss.is_some() {
            // Reading every running worker's memory (/proc) happens outside the pool's lock.
            let running = running_workers(&state);
            drop(state);
            let over: Vec<u64> = running
                .into_iter()
                .filter(|(_, pid, status)| over_memory_cap(*pid, status, &limits))
                .map(|(id, _, _)| id)
                .collect();
            state = shared.state();
            for id in over {
                if let Some(worker) = state.workers.get_mut(&id) {
                    stop_after_this_task(worker);
                }
            }
        }
        retire_if_idle(&mut state, shared.idle_timeout, now);
        let watching = limits.watches_jobs() && state.workers.values().any(|w| w.running.is_some());
        let wait = if watching {
            TICK
        } else {
            idle_wait(&state, shared.idle_timeout)
        };
        if state.replacements > 0 {
            continue; // asked for while the lock was let go
        }
        state.supervisor_parked = !watching;
        state = shared
            .changed
            .wait_timeout(state, wait)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0;
        state.supervisor_parked = false;
    }
}

impl CallLimits {
    /// Whether a running job needs watching under these limits.
    pub(super) fn watches_jobs(&self) -> bool {
        self.task_timeout.is_some() || self.max_rss.is_some()
    }
}

/// Kill every worker whose current task has run longer than `limit`: first ask for its stack
/// (SIGUSR1: the worker's faulthandler writes it to stderr, kept in its tail), then SIGKILL
/// [`STACK_GRACE`] later, so a task deaf to signals is killed all the same. Its job completes as
/// `LossCause::TimedOut`.
fn enforce_task_timeout(state: &mut State, limit: Duration, now: Instant) {
    for worker in state.workers.values_mut().filter(|w| w.is_live()) {
        let Some(running) = worker.running.as_mut() else {
            continue;
        };
        if worker.status.load(STATUS_JOB) == running.job {
            let started = worker.status.load(STATUS_TASKS_STARTED);
            if started != running.tasks_seen {
                running.tasks_seen = started;
                running.task_since = now;
            }
        }
        // The clock starts with the task: before the first one, the job is still starting.
        let allowed = if running.tasks_seen == 0 {
            limit.max(STARTING_LIMIT)
        } else {
            limit
        };
        if now.duration_since(running.task_since) <= allowed {
            continue;
        }
        // The loss reports the limit enforced: the allowance for a job still starting.
        match running.stack_requested {
            None => {
                let _ = kill(worker.pid, Signal::SIGUSR1);
                running.stack_requested = Some((now, allowed));
            }
            Some((asked, enforced)) if now.duration_since(asked) >= STACK_GRACE => {
                worker.kill(KillReason::TimedOut(enforced));
            }
            Some(_) => {}
        }
    }
}

fn running_workers(state: &State) -> Vec<(u64, Pid, Arc<StatusPage>)> {
    state
        .workers
        .iter()
        .filter(|(_, w)| w.is_live() && w.running.is_some() && !w.over_cap)
        .map(|(&id, w)| (id, w.pid, Arc::clone(&w.status)))
        .collect()
}

/// A worker over its memory cap finishes the task it runs and stops its job there (the status
/// page's stop word; the parent runs the rest of the job elsewhere); it is then replaced.
pub(super) fn stop_after_this_task(worker: &mut super::Worker) {
    worker.over_cap = true;
    worker.status.store(STATUS_STOP, 1);
}

fn retire_if_idle(state: &mut State, idle_timeout: Option<Duration>, now: Instant) {
    let Some(idle_timeout) = idle_timeout else {
        return;
    };
    let all_idle = state.queue.is_empty() && state.workers.values().all(|w| w.running.is_none());
    if all_idle && now.duration_since(state.last_activity) >= idle_timeout {
        for worker in state.workers.values_mut().filter(|w| w.is_live()) {
            worker.retire();
            state
                .log
                .record(worker.pid.as_raw(), super::WorkerEventKind::RetiredIdle);
        }
    }
}

fn idle_wait(state: &State, idle_timeout: Option<Duration>) -> Duration {
    match idle_timeout {
        Some(idle_timeout) => idle_timeout
            .saturating_sub(state.last_activity.elapsed())
            .clamp(Duration::from_millis(100), IDLE_CHECK),
        None => IDLE_CHECK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_watch_jobs_only_when_one_is_set() {
        assert!(!CallLimits::default().watches_jobs());
        let max_tasks_only = CallLimits {
            max_tasks: Some(3),
            ..CallLimits::default()
        };
        assert!(!max_tasks_only.watches_jobs());
        let timeout = CallLimits {
            task_timeout: Some(Duration::from_secs(1)),
            ..CallLimits::default()
        };
        assert!(timeout.watches_jobs());
        let cap = CallLimits {
            max_rss: Some(1),
            ..CallLimits::default()
        };
        assert!(cap.watches_jobs());
    }
}
