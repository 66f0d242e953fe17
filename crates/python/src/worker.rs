//! The worker process's main loop: the engine serves the socket, Python runs the tasks.

use std::os::raw::c_char;
use std::sync::OnceLock;

use ferrojob_engine::shm::{SharedBuffer, StatusPage, STATUS_STOP, STATUS_TASKS_STARTED};
use ferrojob_engine::worker::{Endpoint, Request, Responder};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::buffers::{bytes_of, contiguous};
use crate::errors::EngineError;

/// CPython's `PyBUF_WRITE` flag (object.h), not exported by pyo3's ffi module.
const PYBUF_WRITE: std::os::raw::c_int = 0x200;

/// Serve the parent until it says shutdown or goes away.
///
/// `on_init(payload, status)` runs once with the parent's set-up payload and a writable
/// memoryview of the status words (word `STATUS_TASKS_STARTED` counts started tasks);
/// `on_call(payload)` runs with the settings of each call, before its first job here;
/// `on_task(payload, buffers)` runs each job (`buffers`: its out-of-band buffers, mapped) and
/// returns `(ok, reply_bytes, result_buffers, busy_seconds)`; the result buffers travel in
/// shared memory, and `busy_seconds` (the time its tasks took) is the job's reported time.
///
/// Must only be called in a process started by a `ProcessPool`, once.
#[pyfunction]
pub fn serve_worker(
    py: Python<'_>,
    on_init: Py<PyAny>,
    on_call: Py<PyAny>,
    on_task: Py<PyAny>,
) -> PyResult<()> {
    // SAFETY: `ferrojob._worker` calls this once, in a process the pool started with fds 3 and 4.
    let endpoint = unsafe { Endpoint::inherit() }.map_err(|source| EngineError::Io {
        context: "adopting the worker's descriptors 3 and 4".into(),
        source,
    })?;
    // The endpoint (and its status mapping) lives until the process exits, so the memoryview
    // handed to Python can never dangle.
    let endpoint: &'static mut Endpoint = Box::leak(Box::new(endpoint));
    let words = endpoint.status_mut().words_ptr();
    let status_view = status_memoryview(py, words)?;
    let endpoint: &'static Endpoint = endpoint;
    let _ = STATUS.set(endpoint.status());
    let mut status_view = Some(status_view.unbind());

    let served = py.detach(|| {
        endpoint.serve(|request, _status| {
            Python::attach(|py| match request {
                Request::Init(payload) => {
                    // The parent sends Init once; a second one has no status view to give.
                    if let Some(view) = status_view.take() {
                        if let Err(err) = on_init.call1(py, (PyBytes::new(py, payload), view)) {
                            err.print(py);
                        }
                    }
                }
                Request::Call(payload) => {
                    // A job that follows without its call's settings fails on its own.
                    if let Err(err) = on_call.call1(py, (PyBytes::new(py, payload),)) {
                        err.print(py);
                    }
                }
                Request::Task {
                    body,
                    buffers,
                    reply,
                    ..
                } => {
                    if let Err(err) = run_task(py, &on_task, body, buffers, reply) {
                        // The task runner catches task errors itself; reaching here means the
                        // reply could not be sent or its buffers read (a bug, or no memory):
                        // the loop reports the job failed.
                        err.print(py);
                    }
                }
            })
        })
    });
    served.map_err(|e| EngineError::from(e).into())
}

/// Run one job with `on_task(body, buffers)`, which returns
/// `(ok, reply_bytes, result_buffers, busy_seconds)`, and send its answer.
fn run_task(
    py: Python<'_>,
    on_task: &Py<PyAny>,
    body: &[u8],
    buffers: Vec<SharedBuffer>,
    reply: Responder<'_>,
) -> PyResult<()> {
    let buffers = crate::buffers::to_python(py, buffers)?;
    let answer = on_task.call1(py, (PyBytes::new(py, body), buffers))?;
    let (ok, body, out, busy): (bool, Vec<u8>, Vec<Bound<'_, PyAny>>, f64) = answer.extract(py)?;
    // What the tasks took (the handler measured it); a nonsense value falls back to the clock.
    let reply = match std::time::Duration::try_from_secs_f64(busy) {
        Ok(busy) => reply.busy_for(busy),
        Err(_) => reply,
    };
    if !ok {
        return py
            .detach(|| reply.failed(&body))
            .map_err(|e| EngineError::from(e).into());
    }
    let held = out.iter().map(contiguous).collect::<PyResult<Vec<_>>>()?;
    // SAFETY: `held` keeps every buffer exported until the reply is sent.
    let slices: Vec<&[u8]> = held.iter().map(|b| unsafe { bytes_of(b) }).collect();
    py.detach(|| reply.done(&body, &slices))
        .map_err(|e| EngineError::from(e).into())
}

/// This worker's status page, once `serve_worker` runs (never in the parent).
static STATUS: OnceLock<&'static StatusPage> = OnceLock::new();

/// Run a map chunk at C speed: append `function(item)` (or `function(*item)` when `star`) for
/// each of `items[start:]` to `results`, counting every task started in the status page (the
/// job's count goes on from `started`, the tasks of the job begun before these). Stops at the
/// first exception (any `BaseException`): `(its index in items, the exception)`; or before an
/// item once the parent set the stop word (the worker is over its memory cap): `(its index,
/// None)`; None when all ran.
#[pyfunction]
pub fn run_items<'py>(
    py: Python<'py>,
    function: &Bound<'py, PyAny>,
    items: &Bound<'py, PyList>,
    star: bool,
    start: usize,
    results: &Bound<'py, PyList>,
    started: u64,
) -> PyResult<Option<(usize, Bound<'py, PyAny>)>> {
    let status = STATUS.get();
    let mut count = started;
    for index in start..items.len() {
        if let Some(status) = status {
            if count > 0 && status.load(STATUS_STOP) != 0 {
                return Ok(Some((index, py.None().into_bound(py))));
            }
        }
        let item = items.get_item(index)?;
        count = count.saturating_add(1);
        if let Some(status) = status {
            status.store(STATUS_TASKS_STARTED, count);
        }
        let outcome = if star {
            let arguments = item.cast::<PyTuple>().map_err(|_| {
                PyTypeError::new_err("a map chunk's item is not a tuple of arguments")
            })?;
            function.call(arguments, None)
        } else {
            function.call1((item,))
        };
        match outcome {
            Ok(value) => results.append(value)?,
            Err(error) => {
                return Ok(Some((
                    index,
                    error.into_value(py).into_any().into_bound(py),
                )))
            }
        }
    }
    Ok(None)
}

fn status_memoryview(py: Python<'_>, words: *mut u64) -> PyResult<Bound<'_, PyAny>> {
    let len = StatusPage::n_words() * std::mem::size_of::<u64>();
    let ptr = words as *mut c_char;
    // SAFETY: `words` points to `len` bytes of a shared mapping that is never unmapped (the
    // endpoint is leaked); the view is writable by design, and both processes only make aligned
    // 8-byte stores/loads to it.
    let view = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            pyo3::ffi::PyMemoryView_FromMemory(ptr, len as isize, PYBUF_WRITE),
        )?
    };
    view.call_method1("cast", ("Q",))
}
