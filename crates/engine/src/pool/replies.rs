//! A worker's reader thread: it relays the worker's replies, hands the worker its next job at
//! once, decides after each job whether the worker is spent (its task count or memory cap), and
//! reports the worker's end (a lost job, with its exit, peak memory and stderr tail).

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::memory::over_memory_cap;
use super::{
    send_releases, Completion, KillReason, Leaving, Loss, LossCause, Outcome, Releaser, Shared,
    WorkerEventKind,
};
use crate::output::StderrTail;
use crate::protocol::{Connection, Kind, ProtocolError};
use crate::shm::{SharedBuffer, STATUS_JOB, STATUS_TASKS_STARTED};

/// How long a lost worker's report waits for the rest of its stderr.
const TAIL_PATIENCE: Duration = Duration::from_millis(500);

/// A worker's reader thread: relay replies, keep the worker fed, and report its death.
pub(super) fn read_replies(
    shared: &Arc<Shared>,
    id: u64,
    conn: &Connection,
    pid: Pid,
    tail: Option<&StderrTail>,
) {
    let violation = loop {
        match conn.recv() {
            Ok(Some(frame)) if matches!(frame.kind, Kind::Done | Kind::Failed) => {
                if let Err(reason) = on_reply(shared, id, frame) {
                    break Some(reason);
                }
            }
            Ok(Some(frame)) => {
                break Some(format!(
                    "it sent a {:?} frame, which only the parent sends",
                    frame.kind
                ))
            }
            // The end of the socket, in or between frames: the worker exited or was killed.
            Ok(None) | Err(ProtocolError::Truncated | ProtocolError::Io(_)) => break None,
            Err(error) => break Some(error.to_string()),
        }
    };
    if violation.is_some() {
        // A worker that speaks out of turn cannot be trusted with more work.
        let _ = kill(pid, Signal::SIGKILL);
    }
    conn.shutdown();
    let (exit, peak_rss) = reap(pid);
    let lost_a_job = shared
        .state()
        .workers
        .get(&id)
        .is_some_and(|worker| worker.running.is_some());
    // The report wants the worker's last words: wait (briefly, unlocked) for its stderr to end.
    let stderr_tail = match tail {
        Some(tail) if lost_a_job => tail.snapshot(TAIL_PATIENCE),
        _ => Vec::new(),
    };
    let mut state = shared.state();
    if let Some(worker) = state.workers.remove(&id) {
        if let Some(running) = worker.running {
            // A worker asked for its stack (SIGUSR1) that died of it had no handler: a timeout.
            let asked_for_stack = running.stack_requested.map(|(_, limit)| limit);
            let cause = match (violation, worker.leaving, asked_for_stack) {
                (_, Some(Leaving::Killed(KillReason::TimedOut(limit))), _)
                | (_, _, Some(limit)) => LossCause::TimedOut(limit),
                (_, Some(Leaving::Killed(KillReason::Cancelled)), None) => LossCause::Cancelled,
                (Some(reason), _, None) => LossCause::Protocol(reason),
                (None, Some(Leaving::Retired) | None, None) => exit,
            };
            state
                .log
                .record(pid.as_raw(), WorkerEventKind::Lost(cause.clone()));
            let tasks_started = if worker.status.load(STATUS_JOB) == running.job {
                worker.status.load(STATUS_TASKS_STARTED)
            } else {
                0
            };
            shared.deliver(Completion {
                job: running.job,
                pid: pid.as_raw(),
                elapsed: Duration::ZERO,
                outcome: Outcome::Lost(Loss {
                    pid: pid.as_raw(),
                    cause,
                    tasks_started,
                    jobs_done: worker.jobs_done,
                    peak_rss,
                    stderr_tail,
                }),
            });
        } else {
            state.log.record(pid.as_raw(), WorkerEventKind::Exited);
        }
    }
    drop(state);
    shared.changed.notify_all();
}

/// Record a reply, give the worker its next job, and deliver the completion. A reply that makes
/// no sense (for another job than the one the worker runs, or while it runs none; a damaged
/// envelope or segments that cannot be mapped) is an error: the worker's job stays recorded as
/// running, so its loss is reported when the worker goes.
fn on_reply(shared: &Arc<Shared>, id: u64, frame: crate::protocol::Frame) -> Result<(), String> {
    let mut state = shared.state();
    state.last_activity = Instant::now();
    let Some(worker) = state.workers.get_mut(&id) else {
        return Err("it is no longer part of the pool".into());
    };
    let (conn, worker_pid, status) = (
        Arc::clone(&worker.conn),
        worker.pid,
        Arc::clone(&worker.status),
    );
    let pid = worker_pid.as_raw();
    match &worker.running {
        Some(running) if running.job == frame.id => {}
        Some(running) => {
            return Err(format!(
                "it replied for job {} while running job {}",
                frame.id, running.job
            ))
        }
        None => return Err(format!("it replied for job {} while idle", frame.id)),
    }
    if killed_for_its_job(worker) {
        return Ok(());
    }
    let limits = state.limits;
    drop(state);
    let (released, outcome) = match frame.kind {
        Kind::Done => {
            let releaser = Releaser {
                shared: Arc::downgrade(shared),
            };
            let (released, body_start, buffers) =
                open_reply(&frame.payload, frame.fds, pid, &releaser)
                    .map_err(|error| format!("its reply is damaged: {error}"))?;
            let outcome = Outcome::Done {
                payload: frame.payload,
                body_start,
                buffers,
            };
            (released, outcome)
        }
        _ => (
            Vec::new(),
            Outcome::Failed {
                payload: frame.payload,
            },
        ),
    };
    // Past its memory cap? (Read from /proc outside the pool's lock.)
    let over_memory = over_memory_cap(worker_pid, &status, &limits);
    let mut state = shared.state();
    let Some(worker) = state.workers.get_mut(&id) else {
        return Err("it is no longer part of the pool".into());
    };
    if killed_for_its_job(worker) {
        return Ok(()); // decided while the reply was decoded: the outcome is dropped here
    }
    let finished = worker.running.take();
    worker.jobs_done += 1;
    worker.tasks_done += finished.as_ref().map_or(0, |running| running.n_tasks);
    let spent = over_memory
        || worker.over_cap
        || limits.max_tasks.is_some_and(|max| worker.tasks_done >= max);
    let recycled = (spent && worker.is_live()).then(|| {
        // Replaced before its next task: a fresh worker takes the queue from here.
        worker.retire();
        if over_memory || worker.over_cap {
            WorkerEventKind::RecycledMemoryCap
        } else {
            WorkerEventKind::RecycledTaskBudget
        }
    });
    let live = worker.is_live();
    if let Some(kind) = recycled {
        state.log.record(pid, kind);
    }
    let mut next = if live { state.queue.pop_front() } else { None };
    let dispatch = match next.as_mut() {
        Some(job) => state.hand_out(id, job),
        None => None,
    };
    let releases = match &dispatch {
        Some(_) => Vec::new(), // sent with the next job
        None => state
            .workers
            .get_mut(&id)
            .map(|worker| std::mem::take(&mut worker.pending_release))
            .unwrap_or_default(),
    };
    if dispatch.is_some() {
        shared.job_started(&state);
    }
    drop(state);
    // The job's argument chunks: those the worker no longer maps, then the job's holds.
    if let Some(holds) = finished.and_then(|running| running.holds) {
        holds.unmapped(&released);
    }
    match (dispatch, next) {
        (Some(dispatch), Some(job)) => dispatch.send(&job),
        _ => send_releases(&conn, &releases),
    }
    if spent {
        shared.want_replacement();
    }
    shared.deliver(Completion {
        job: frame.id,
        pid,
        elapsed: Duration::from_nanos(frame.aux),
        outcome,
    });
    Ok(())
}

/// Whether the pool has decided to stop the job the worker runs (cancelled, timed out) — under the
/// lock, once: a reply that races the decision is dropped, and the job ends as that loss when the
/// worker is reaped (`read_replies`). So `cancel_job` answering "running" always means the job was
/// stopped, never that it also delivered its result.
fn killed_for_its_job(worker: &super::Worker) -> bool {
    matches!(worker.leaving, Some(Leaving::Killed(_)))
}

/// Decode a reply's envelope and map its result buffers: the tokens of argument chunks the
/// worker released, where the body starts, and the buffers (each result segment's release is
/// sent back to worker `pid` when nothing here maps it any more).
fn open_reply(
    payload: &[u8],
    fds: Vec<OwnedFd>,
    pid: i32,
    releaser: &Releaser,
) -> Result<(Vec<u64>, usize, Vec<SharedBuffer>), crate::envelope::EnvelopeError> {
    let envelope = crate::envelope::decode(payload)?;
    let body_start = payload.len() - envelope.body.len();
    let buffers = crate::envelope::map_buffers(&envelope, fds, |token| {
        let releaser = releaser.clone();
        Box::new(move || releaser.release(pid, &[token]))
    })?;
    Ok((envelope.released, body_start, buffers))
}

/// Wait for a child that closed its socket: how it ended and its peak resident memory (bytes).
/// A child that lingers is killed after a grace period.
fn reap(pid: Pid) -> (LossCause, Option<u64>) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut pause = Duration::from_micros(200);
    loop {
        let blocking = Instant::now() >= deadline;
        if blocking {
            let _ = kill(pid, Signal::SIGKILL);
        }
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero rusage is a valid value of this plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let flags = if blocking { 0 } else { libc::WNOHANG };
        // SAFETY: wait4 writes only into the two locals passed by pointer, which outlive the call.
        let reaped = unsafe { libc::wait4(pid.as_raw(), &mut status, flags, &mut usage) };
        let peak_rss = crate::platform::max_rss_bytes(usage.ru_maxrss);
        match reaped {
            0 => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            n if n == pid.as_raw() => {
                if libc::WIFEXITED(status) {
                    return (LossCause::Exited(libc::WEXITSTATUS(status)), peak_rss);
                }
                if libc::WIFSIGNALED(status) {
                    return (LossCause::Signaled(libc::WTERMSIG(status)), peak_rss);
                }
            }
            _ if Errno::last() == Errno::EINTR => {}
            _ => return (LossCause::Vanished, None),
        }
    }
}
