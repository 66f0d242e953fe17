//! `ProcessPool`: the engine's worker pool, driven from Python.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use ferrojob_engine::pool::{Job, LossCause, Outcome, Pool, WorkerSpec};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::EngineError;

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
/// "signaled" (the worker died; `code` is the exit code or signal number), "timeout", "cancelled"
/// or "vanished". `tasks_started` counts the job's tasks the worker had begun when it was lost.
#[pyclass(module = "ferrojob._core", frozen, get_all)]
pub struct Completion {
    job: u64,
    kind: &'static str,
    payload: Option<Py<PyBytes>>,
    elapsed: f64,
    pid: i32,
    code: Option<i32>,
    tasks_started: u64,
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
        let idle_timeout = idle_timeout.map(Duration::from_secs_f64);
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
    fn submit(&self, py: Python<'_>, job: u64, payload: &[u8]) -> PyResult<()> {
        let job = Job {
            id: job,
            payload: payload.to_vec(),
            fds: Vec::new(),
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
        let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
        let task_timeout = task_timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
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
                return Ok(Some(to_python(py, completion)));
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
    fn shutdown(&self, py: Python<'_>, grace: f64) {
        py.detach(|| self.pool.shutdown(Duration::from_secs_f64(grace.max(0.0))))
    }
}

fn to_python(py: Python<'_>, completion: ferrojob_engine::pool::Completion) -> Completion {
    let bytes = |payload: &[u8]| Some(PyBytes::new(py, payload).unbind());
    let (kind, payload, code, tasks_started) = match completion.outcome {
        Outcome::Done { payload, .. } => ("done", bytes(&payload), None, 0),
        Outcome::Failed { payload } => ("failed", bytes(&payload), None, 0),
        Outcome::Lost(loss) => {
            let (kind, code) = match loss.cause {
                LossCause::Exited(code) => ("exited", Some(code)),
                LossCause::Signaled(signal) => ("signaled", Some(signal)),
                LossCause::TimedOut(_) => ("timeout", None),
                LossCause::Cancelled => ("cancelled", None),
                LossCause::Vanished => ("vanished", None),
            };
            (kind, None, code, loss.tasks_started)
        }
    };
    Completion {
        job: completion.job,
        kind,
        payload,
        elapsed: completion.elapsed.as_secs_f64(),
        pid: completion.pid,
        code,
        tasks_started,
    }
}
