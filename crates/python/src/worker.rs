//! The worker process's main loop: the engine serves the socket, Python runs the tasks.

use std::os::raw::c_char;

use std::os::fd::OwnedFd;

use ferrojob_engine::buffers as envelope;
use ferrojob_engine::shm::{Access, StatusPage};
use ferrojob_engine::worker::{Endpoint, Reply, Request};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::buffers::{map_buffers, pack_buffers, result_segments};
use crate::errors::EngineError;

/// CPython's `PyBUF_WRITE` flag (object.h), not exported by pyo3's ffi module.
const PYBUF_WRITE: std::os::raw::c_int = 0x200;

/// Serve the parent until it says shutdown or goes away.
///
/// `on_init(payload, status)` runs once with the parent's set-up payload and a writable
/// memoryview of the status words (word `STATUS_TASKS_STARTED` counts started tasks);
/// `on_task(payload, buffers)` runs each job (`buffers`: its out-of-band buffers, mapped) and
/// returns `(ok, reply_bytes, result_buffers)`; the result buffers travel in shared memory.
///
/// Must only be called in a process started by a `ProcessPool`, once.
#[pyfunction]
pub fn serve_worker(py: Python<'_>, on_init: Py<PyAny>, on_task: Py<PyAny>) -> PyResult<()> {
    // SAFETY: `ferrojob._worker` calls this once, in a process the pool started with fds 3 and 4.
    let endpoint = unsafe { Endpoint::inherit() }
        .map_err(|e| pyo3::exceptions::PyOSError::new_err(e.to_string()))?;
    // The endpoint (and its status mapping) lives until the process exits, so the memoryview
    // handed to Python can never dangle.
    let endpoint: &'static mut Endpoint = Box::leak(Box::new(endpoint));
    let words = endpoint.status_mut().words_ptr();
    let status_view = status_memoryview(py, words)?;
    let endpoint: &'static Endpoint = endpoint;
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
                    None
                }
                Request::Task { payload, fds, .. } => Some(run_task(py, &on_task, payload, fds)),
                Request::Release(tokens) => {
                    let mut segments = result_segments();
                    for token in tokens {
                        segments.release(token);
                    }
                    None
                }
            })
        })
    });
    served.map_err(|e| EngineError::from(e).into())
}

fn run_task(py: Python<'_>, on_task: &Py<PyAny>, payload: &[u8], fds: Vec<OwnedFd>) -> Reply {
    match try_run_task(py, on_task, payload, fds) {
        Ok(reply) => reply,
        Err(err) => {
            // The task runner catches task errors itself; reaching here means the frame or the
            // shared memory could not be handled (a bug, or the system is out of memory).
            err.print(py);
            Reply::Failed {
                payload: Vec::new(),
            }
        }
    }
}

fn try_run_task(
    py: Python<'_>,
    on_task: &Py<PyAny>,
    payload: &[u8],
    fds: Vec<OwnedFd>,
) -> PyResult<Reply> {
    let envelope = envelope::decode(payload)
        .map_err(|e| PyValueError::new_err(format!("a job from the parent is damaged: {e}")))?;
    // When nothing here uses an argument chunk any more, the parent may write it again: say so
    // in the reply (or a later one, if a task kept a reference).
    let buffers = map_buffers(py, &envelope, fds, |token| {
        Box::new(move || unmapped_chunks().push(token))
    })?;
    let answer = on_task.call1(py, (PyBytes::new(py, envelope.body), buffers))?;
    let (ok, body, out): (bool, Vec<u8>, Vec<Bound<'_, PyAny>>) = answer.extract(py)?;
    if !ok {
        return Ok(Reply::Failed { payload: body });
    }
    let (fds, tokens, refs) = if out.is_empty() {
        Default::default()
    } else {
        pack_buffers(py, &out)?
    };
    drop(out);
    drop(answer); // the results may be views of the arguments
    let released = std::mem::take(&mut *unmapped_chunks());
    Ok(Reply::Done {
        payload: envelope::encode(Access::CopyOnWrite, &refs, &tokens, &released, &body),
        fds,
    })
}

/// Tokens of argument chunks whose mappings were dropped since the last reply.
fn unmapped_chunks() -> std::sync::MutexGuard<'static, Vec<u64>> {
    static UNMAPPED: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());
    UNMAPPED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
