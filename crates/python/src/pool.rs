//! `ProcessPool`: the engine's worker pool, driven from Python.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use ferrojob_engine::buffers::{self as envelope, BufferRef};
use ferrojob_engine::pool::{Job, LossCause, Outcome, Pool, Releaser, WorkerSpec};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::buffers::{access_from_mode, map_buffers, Arena, Buffer};
use crate::durations;
use crate::errors::EngineError;

/// SCM_RIGHTS carries at most 253 descriptors in one message (SCM_MAX_FD).
const MAX_SEGMENTS_PER_JOB: usize = 253;

/// How often a blocked `wait` wakes to look for Ctrl-C and overdue tasks.
const POLL: Duration = Duration::from_millis(50);

/// Warm worker processes that run jobs (opaque payloads) and return their results.
#[pyclass(module = "ferrojob._core")]
pub struct ProcessPool {
    pool: Pool,
}

/// How one job ended.
///
/// `kind` is one of "done", "failed" (the job raised; `payload` describes it), "exited",
/// "signaled" (the worker died; `code` is the exit code or signal number), "timeout", "cancelled",
/// "vanished" or "protocol" (the worker broke the protocol and was killed; see `reason`). `tasks_started` counts the job's tasks the worker had begun when it was lost.
#[pyclass(module = "ferrojob._core", frozen, get_all)]
pub struct Completion {
    job: u64,
    kind: &'static str,
    payload: Option<Py<PyBytes>>,
    /// The out-of-band buffers of a "done" payload, mapped copy-on-write.
    buffers: Vec<Py<Buffer>>,
    /// Tokens of argument chunks the worker no longer maps (see `Arena.unmapped`).
    released: Vec<u64>,
    elapsed: f64,
    pid: i32,
    code: Option<i32>,
    tasks_started: u64,
    /// For "protocol": what the worker did wrong.
    reason: Option<String>,
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

    /// Queue a job; it starts as soon as a worker is free.
    ///
    /// `buffers`: the out-of-band buffers of `payload`, as `(chunk, offset, length)` places in
    /// `arena`; the worker maps them with `mmap_mode` ("r", "r+", "w+" or "c").
    #[pyo3(signature = (job, payload, buffers=Vec::new(), arena=None, mmap_mode="r"))]
    fn submit(
        &self,
        py: Python<'_>,
        job: u64,
        payload: &[u8],
        buffers: Vec<(usize, u64, u64)>,
        arena: Option<PyRef<'_, Arena>>,
        mmap_mode: &str,
    ) -> PyResult<()> {
        let access = access_from_mode(mmap_mode)?;
        let mut chunks: Vec<usize> = Vec::new();
        let mut refs = Vec::with_capacity(buffers.len());
        for (chunk, offset, len) in buffers {
            let segment = match chunks.iter().position(|&c| c == chunk) {
                Some(index) => index,
                None => {
                    chunks.push(chunk);
                    chunks.len() - 1
                }
            };
            refs.push(BufferRef {
                segment: segment as u32,
                offset,
                len,
            });
        }
        if chunks.len() > MAX_SEGMENTS_PER_JOB {
            return Err(PyValueError::new_err(format!(
                "a batch refers to {} shared-memory chunks, more than the {MAX_SEGMENTS_PER_JOB} \
                 one message can carry; use a smaller batch_size",
                chunks.len()
            )));
        }
        let segments = match (&arena, chunks.is_empty()) {
            (_, true) => Vec::new(),
            (Some(arena), false) => chunks
                .iter()
                .map(|&chunk| arena.duplicate_fd(chunk))
                .collect::<PyResult<Vec<_>>>()?,
            (None, false) => {
                return Err(PyValueError::new_err("buffers given without their arena"))
            }
        };
        let (fds, tokens): (Vec<_>, Vec<_>) = segments.into_iter().unzip();
        let job = Job {
            id: job,
            payload: envelope::encode(access, &refs, &tokens, &[], payload),
            fds,
        };
        py.detach(|| self.pool.submit(job))
            .map_err(EngineError::from)?;
        Ok(())
    }

    /// The next completion, or None after `timeout` seconds (None: wait as long as it takes).
    /// Tasks running longer than `task_timeout` seconds are killed and complete as "timeout".
    /// Ctrl-C kills every worker and raises KeyboardInterrupt.
    #[pyo3(signature = (timeout=None, task_timeout=None))]
    fn wait(
        &self,
        py: Python<'_>,
        timeout: Option<f64>,
        task_timeout: Option<f64>,
    ) -> PyResult<Option<Completion>> {
        let deadline = durations::deadline(durations::limit(timeout, "timeout")?);
        let task_timeout = durations::limit(task_timeout, "timeout")?;
        loop {
            let slice = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()).min(POLL),
                None => POLL,
            };
            let received = py.detach(|| {
                if let Some(limit) = task_timeout {
                    self.pool.enforce_task_timeout(limit);
                }
                self.pool.recv(slice)
            });
            if let Some(completion) = received {
                return to_python(py, completion, &self.pool.releaser()).map(Some);
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

    /// Drop queued jobs and kill the workers running one; returns the dropped jobs' ids.
    fn cancel(&self, py: Python<'_>) -> Vec<u64> {
        py.detach(|| self.pool.cancel())
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

fn to_python(
    py: Python<'_>,
    completion: ferrojob_engine::pool::Completion,
    releaser: &Releaser,
) -> PyResult<Completion> {
    let bytes = |payload: &[u8]| Some(PyBytes::new(py, payload).unbind());
    let mut buffers = Vec::new();
    let mut released = Vec::new();
    let mut reason = None;
    let pid = completion.pid;
    let (kind, payload, code, tasks_started) = match completion.outcome {
        Outcome::Done { payload, fds } => {
            let envelope = envelope::decode(&payload)
                .map_err(|e| PyValueError::new_err(format!("a worker's reply is damaged: {e}")))?;
            // When the parent stops mapping a result segment, its worker may write it again.
            buffers = map_buffers(py, &envelope, fds, |token| {
                let releaser = releaser.clone();
                Box::new(move || releaser.release(pid, &[token]))
            })?;
            released = envelope.released;
            ("done", bytes(envelope.body), None, 0)
        }
        Outcome::Failed { payload } => ("failed", bytes(&payload), None, 0),
        Outcome::Lost(loss) => {
            let (kind, code) = match loss.cause {
                LossCause::Exited(code) => ("exited", Some(code)),
                LossCause::Signaled(signal) => ("signaled", Some(signal)),
                LossCause::TimedOut(_) => ("timeout", None),
                LossCause::Cancelled => ("cancelled", None),
                LossCause::Vanished => ("vanished", None),
                LossCause::Protocol(ref why) => {
                    reason = Some(why.clone());
                    ("protocol", None)
                }
            };
            (kind, None, code, loss.tasks_started)
        }
    };
    Ok(Completion {
        job: completion.job,
        kind,
        payload,
        buffers,
        released,
        elapsed: completion.elapsed.as_secs_f64(),
        pid: completion.pid,
        code,
        tasks_started,
        reason,
    })
}
