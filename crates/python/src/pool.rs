//! `ProcessPool`: the engine's worker pool, driven from Python.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use ferrojob_engine::arena::{Arguments, Identity};
use ferrojob_engine::pool::{CallLimits, Event, JobState, LossCause, Outcome, Pool, WorkerSpec};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::buffers::{self, access_from_mode, Arena, Buffer};
use crate::durations;
use crate::errors::EngineError;

/// How often a blocked `wait` wakes to look for Ctrl-C and overdue tasks.
const POLL: Duration = Duration::from_millis(50);
/// Jobs of at least this many bytes (payload and buffers) are made and sent without the GIL.
const DETACH_ABOVE: usize = 1 << 20;

/// Warm worker processes that run jobs (opaque payloads) and return their results.
#[pyclass(module = "ferrojob._core")]
pub struct ProcessPool {
    pool: Pool,
}

/// How a job ended.
#[pyclass(module = "ferrojob._core", frozen, eq, eq_int)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletionKind {
    /// The worker answered with results.
    Done,
    /// The job raised; `payload` is the worker's report.
    Failed,
    /// The worker exited (`code`: its exit code).
    Exited,
    /// The worker was killed by a signal (`code`: its number).
    Signaled,
    /// The job's current task ran past its time limit; the worker was killed.
    Timeout,
    /// The caller cancelled the job; the worker was killed.
    Cancelled,
    /// The worker could not be reaped.
    Vanished,
    /// The worker broke the protocol and was killed (`reason` says how).
    Protocol,
}

/// How one job ended. `tasks_started` counts the job's tasks the worker had begun when it was
/// lost.
#[pyclass(module = "ferrojob._core", frozen, get_all)]
pub struct Completion {
    job: u64,
    kind: CompletionKind,
    /// The pickle body of a "done" reply, or the report of a "failed" one.
    payload: Option<Py<PyBytes>>,
    /// The out-of-band buffers of a "done" reply, mapped copy-on-write.
    buffers: Vec<Py<Buffer>>,
    elapsed: f64,
    pid: i32,
    code: Option<i32>,
    tasks_started: u64,
    /// For "protocol": what the worker did wrong.
    reason: Option<String>,
    /// For a lost job: jobs the worker had completed before (0: it never finished one).
    jobs_done: u64,
    /// For a lost job: the worker's peak resident memory in bytes.
    peak_rss: Option<u64>,
    /// For a lost job: the last bytes the worker wrote to stderr.
    stderr_tail: Option<Py<PyBytes>>,
    /// For a "timeout": the limit the pool enforced, in seconds (the task timeout, or the
    /// start-up allowance for a job none of whose tasks had started).
    time_limit: Option<f64>,
}

#[pymethods]
impl Completion {
    fn __repr__(&self) -> String {
        format!(
            "Completion(job={}, kind={:?}, pid={}, code={:?})",
            self.job, self.kind, self.pid, self.code
        )
    }
}

#[pymethods]
impl ProcessPool {
    #[new]
    #[pyo3(signature = (program, args, env, init, n_workers, idle_timeout=None))]
    fn new(
        py: Python<'_>,
        program: OsString,
        args: Vec<OsString>,
        env: Vec<(OsString, OsString)>,
        init: Vec<u8>,
        n_workers: usize,
        idle_timeout: Option<f64>,
    ) -> PyResult<Self> {
        let spec = WorkerSpec {
            program: program.into(),
            args,
            env,
            init,
        };
        let idle_timeout = durations::limit(idle_timeout, "idle_timeout")?;
        let pool = py
            .detach(|| Pool::new(spec, n_workers, idle_timeout))
            .map_err(EngineError::from)?;
        Ok(Self { pool })
    }

    /// The settings of the calls from now on: each worker receives them (its `on_call`) once,
    /// before its first job after this.
    fn set_call(&self, payload: Vec<u8>) {
        self.pool.set_call(payload);
    }

    /// The limits of the calls from now on, enforced by the pool's supervisor whether or not
    /// anyone waits: a task running longer than `timeout` seconds is killed (it completes as
    /// "timeout"); a worker is replaced after `max_tasks` tasks, or once its resident memory
    /// exceeds `max_rss` bytes (it stops its job after the task it runs). None: no limit.
    #[pyo3(signature = (timeout=None, max_tasks=None, max_rss=None))]
    fn set_limits(
        &self,
        timeout: Option<f64>,
        max_tasks: Option<u64>,
        max_rss: Option<u64>,
    ) -> PyResult<()> {
        self.pool.set_limits(CallLimits {
            task_timeout: durations::limit(timeout, "timeout")?,
            max_tasks,
            max_rss,
        });
        Ok(())
    }

    /// A new arena for a session on this pool: its shared memory serves this pool's workers
    /// only (its jobs are refused by any other pool).
    #[pyo3(signature = (chunk_size=ferrojob_engine::arena::DEFAULT_CHUNK_SIZE))]
    fn new_arena(&self, chunk_size: usize) -> Arena {
        Arena {
            inner: Arguments::for_pool(&self.pool, chunk_size),
        }
    }

    /// Whether this process started the pool (False in a forked child: it needs its own).
    #[getter]
    fn owned_here(&self) -> bool {
        self.pool.is_owned_here()
    }

    /// Start or retire workers so that exactly `n` are live.
    fn ensure_workers(&self, py: Python<'_>, n: usize) -> PyResult<()> {
        py.detach(|| self.pool.ensure_workers(n))
            .map_err(EngineError::from)?;
        Ok(())
    }

    #[getter]
    fn n_workers(&self) -> usize {
        self.pool.n_workers()
    }

    fn pids(&self) -> Vec<i32> {
        self.pool.pids()
    }

    /// The worker events since the last call: `(time.monotonic() seconds, pid, what, detail)`,
    /// oldest first; what is "started", "recycled", "retired", "crashed", "timeout", "killed"
    /// or "exited".
    fn take_worker_events(&self) -> Vec<(f64, i32, &'static str, String)> {
        self.pool
            .take_worker_events()
            .into_iter()
            .map(|event| (event.at, event.pid, event.kind.name(), event.kind.detail()))
            .collect()
    }

    /// Queue a job; it starts as soon as a worker is free.
    ///
    /// `buffers`: the out-of-band buffers of `payload`, placed in `arena` (each once per
    /// identity: its owner's `id()`, address and length, or None) together with the job, which
    /// holds their chunks until it completes, is cancelled or its worker dies; the worker maps
    /// them with `mmap_mode` ("r", "r+", "w+" or "c").
    #[pyo3(signature = (job, payload, arena, buffers=Vec::new(), identities=Vec::new(), mmap_mode="r", n_tasks=1))]
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        py: Python<'_>,
        job: u64,
        payload: &[u8],
        arena: PyRef<'_, Arena>,
        buffers: Vec<Bound<'_, PyAny>>,
        identities: Vec<Option<Identity>>,
        mmap_mode: &str,
        n_tasks: u64,
    ) -> PyResult<()> {
        let access = access_from_mode(mmap_mode)?;
        let held = buffers
            .iter()
            .map(buffers::contiguous)
            .collect::<PyResult<Vec<_>>>()?;
        // SAFETY: `held` keeps every buffer exported until the job is made (copied).
        let slices: Vec<&[u8]> = held
            .iter()
            .map(|b| unsafe { buffers::bytes_of(b) })
            .collect();
        let placed: Vec<(Option<Identity>, &[u8])> = slices
            .iter()
            .enumerate()
            .map(|(index, bytes)| (identities.get(index).copied().flatten(), *bytes))
            .collect();
        let arguments = &arena.inner;
        let size = slices.iter().fold(payload.len(), |total, bytes| {
            total.saturating_add(bytes.len())
        });
        let make_and_submit = || {
            let mut job = arguments
                .job_with_buffers(job, payload, &placed, access)
                .map_err(EngineError::Arena)?;
            job.n_tasks = n_tasks.max(1);
            self.pool.submit(job).map_err(EngineError::from)
        };
        // Copying a small job takes microseconds: releasing the GIL for it would hand the GIL
        // to a waiting thread (the executor's collector) and cost a whole switch to get it back.
        if size < DETACH_ABOVE {
            make_and_submit()?;
        } else {
            py.detach(make_and_submit)?;
        }
        Ok(())
    }

    /// The next completion, or None after `timeout` seconds (None: wait as long as it takes) or
    /// once `wake` is called.
    /// Ctrl-C kills every worker and raises KeyboardInterrupt.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Completion>> {
        let received =
            self.wait_in_slices(py, timeout, |slice| match self.pool.next_event(slice) {
                Event::Completion(completion) => Slice::Got(completion),
                Event::Woken => Slice::Stop,
                Event::Nothing => Slice::Nothing,
            })?;
        received
            .map(|completion| to_python(py, completion))
            .transpose()
    }

    /// Job `job`'s completion, waited for in this thread: it does not go to `wait`. None at
    /// once if the job is neither queued nor running (its completion went to `wait`) or another
    /// thread waits for it; None after `timeout` seconds (its completion then goes to `wait`).
    /// Ctrl-C kills every worker and raises KeyboardInterrupt.
    #[pyo3(signature = (job, timeout=None))]
    fn wait_for_job(
        &self,
        py: Python<'_>,
        job: u64,
        timeout: Option<f64>,
    ) -> PyResult<Option<Completion>> {
        let Some(claim) = self.pool.claim(job) else {
            return Ok(None);
        };
        let received = self.wait_in_slices(py, timeout, |slice| match claim.wait(slice) {
            Some(completion) => Slice::Got(completion),
            None => Slice::Nothing,
        })?;
        drop(claim);
        received
            .map(|completion| to_python(py, completion))
            .transpose()
    }

    /// Drop queued jobs and kill the workers running one; returns the dropped jobs' ids.
    fn cancel(&self, py: Python<'_>) -> Vec<u64> {
        py.detach(|| self.pool.cancel())
    }

    /// Withdraw one job: "queued" (dropped), "running" (its worker killed if `kill_running`) or
    /// "unknown" (done, or never submitted). A withdrawn job completes as "cancelled".
    #[pyo3(signature = (job, kill_running=true))]
    fn cancel_job(&self, job: u64, kill_running: bool) -> &'static str {
        match self.pool.cancel_job(job, kill_running) {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Unknown => "unknown",
        }
    }

    /// Make a thread blocked in `wait` (now or next) return None at once.
    fn wake(&self) {
        self.pool.wake()
    }

    /// Kill every worker now, and reap them.
    fn terminate(&self, py: Python<'_>) {
        py.detach(|| self.pool.terminate())
    }

    /// Ask workers to exit, kill those still there after `grace` seconds, reap them all.
    #[pyo3(signature = (grace=1.0))]
    fn shutdown(&self, py: Python<'_>, grace: f64) -> PyResult<()> {
        let grace = durations::limit(Some(grace), "grace")?.unwrap_or(Duration::MAX);
        py.detach(|| self.pool.shutdown(grace));
        Ok(())
    }
}

/// What one slice of a wait saw (see [`ProcessPool::wait_in_slices`]).
enum Slice<T> {
    Got(T),
    /// Stop waiting, with nothing.
    Stop,
    Nothing,
}

impl ProcessPool {
    /// Wait with `next` (the GIL released) in slices of at most [`POLL`], until it gets something
    /// or stops, or `timeout` seconds pass (None: as long as it takes). Between slices, Ctrl-C
    /// kills every worker and raises KeyboardInterrupt.
    fn wait_in_slices<T: Send>(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        next: impl Fn(Duration) -> Slice<T> + Sync,
    ) -> PyResult<Option<T>> {
        let deadline = durations::deadline(durations::limit(timeout, "timeout")?);
        loop {
            let slice = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()).min(POLL),
                None => POLL,
            };
            match py.detach(|| next(slice)) {
                Slice::Got(value) => return Ok(Some(value)),
                Slice::Stop => return Ok(None),
                Slice::Nothing => {}
            }
            if let Err(interrupt) = py.check_signals() {
                py.detach(|| self.pool.terminate());
                return Err(interrupt);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
        }
    }
}

fn to_python(
    py: Python<'_>,
    completion: ferrojob_engine::pool::Completion,
) -> PyResult<Completion> {
    let mut buffers = Vec::new();
    let mut reason = None;
    let (mut jobs_done, mut peak_rss, mut stderr_tail) = (0, None, None);
    let mut time_limit = None;
    let (kind, payload, code, tasks_started) = match completion.outcome {
        Outcome::Done {
            payload,
            body_start,
            buffers: shared,
        } => {
            buffers = buffers::to_python(py, shared)?;
            let body = payload.get(body_start..).unwrap_or_default();
            (
                CompletionKind::Done,
                Some(PyBytes::new(py, body).unbind()),
                None,
                0,
            )
        }
        Outcome::Failed { payload } => (
            CompletionKind::Failed,
            Some(PyBytes::new(py, &payload).unbind()),
            None,
            0,
        ),
        Outcome::Lost(loss) => {
            let (kind, code) = match loss.cause {
                LossCause::Exited(code) => (CompletionKind::Exited, Some(code)),
                LossCause::Signaled(signal) => (CompletionKind::Signaled, Some(signal)),
                LossCause::TimedOut(limit) => {
                    time_limit = Some(limit.as_secs_f64());
                    (CompletionKind::Timeout, None)
                }
                LossCause::Cancelled => (CompletionKind::Cancelled, None),
                LossCause::Vanished => (CompletionKind::Vanished, None),
                LossCause::Protocol(why) => {
                    reason = Some(why);
                    (CompletionKind::Protocol, None)
                }
            };
            jobs_done = loss.jobs_done;
            peak_rss = loss.peak_rss;
            stderr_tail = Some(PyBytes::new(py, &loss.stderr_tail).unbind());
            (kind, None, code, loss.tasks_started)
        }
    };
    Ok(Completion {
        job: completion.job,
        kind,
        payload,
        buffers,
        elapsed: completion.elapsed.as_secs_f64(),
        pid: completion.pid,
        code,
        tasks_started,
        reason,
        jobs_done,
        peak_rss,
        stderr_tail,
        time_limit,
    })
}
