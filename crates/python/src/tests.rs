//! The bindings' own tests, in an embedded interpreter: conversions and error mapping.

use std::sync::Arc;

use ferrojob_engine::codec::CodecError;
use ferrojob_engine::shm::{Access, Mapping, SharedBuffer};
use ferrojob_engine::store::StoreError;
use pyo3::exceptions::{
    PyFileNotFoundError, PyMemoryError, PyOSError, PyPermissionError, PyValueError,
};
use pyo3::prelude::*;

use crate::buffers::{access_from_mode, Backing, Buffer, HeapBytes};
use crate::errors::EngineError;

fn with_python<T>(body: impl FnOnce(Python<'_>) -> T) -> T {
    Python::initialize();
    Python::attach(body)
}

fn segment(bytes: &[u8]) -> Arc<Mapping> {
    let mut file = ferrojob_engine::shm::SharedFile::create(c"test").unwrap();
    file.write_at(0, bytes).unwrap();
    Arc::new(Mapping::map_segment(file.duplicate_fd().unwrap(), Access::ReadOnly).unwrap())
}

#[test]
fn mmap_modes_convert_and_unknown_ones_are_refused() {
    with_python(|py| {
        assert_eq!(access_from_mode("r").unwrap(), Access::ReadOnly);
        assert_eq!(access_from_mode("w+").unwrap(), Access::ReadWrite);
        assert_eq!(access_from_mode("c").unwrap(), Access::CopyOnWrite);
        let error = access_from_mode("rw").unwrap_err();
        assert!(error.is_instance_of::<PyValueError>(py)); // ferrojob's InvalidParameterError
    });
}

#[test]
fn buffers_exist_only_inside_their_memory() {
    with_python(|py| {
        let mapping = segment(b"0123456789");
        assert!(Buffer::new(Backing::Mapped(Arc::clone(&mapping)), 4, 6).is_some());
        assert!(Buffer::new(Backing::Mapped(Arc::clone(&mapping)), 4, 7).is_none());
        assert!(Buffer::new(Backing::Mapped(Arc::clone(&mapping)), u64::MAX, 2).is_none());
        let heap = HeapBytes::new(ferrojob_engine::shm::anonymous(16).unwrap());
        assert!(Buffer::new(Backing::Heap(Arc::new(heap)), 0, 17).is_none());
        // A received buffer becomes a read-only Python buffer over the same bytes.
        let shared = SharedBuffer::new(mapping, 2, 3).unwrap();
        let buffer = Py::new(py, Buffer::from_shared(shared).unwrap()).unwrap();
        let bytes: Vec<u8> = py
            .import("builtins")
            .unwrap()
            .getattr("bytes")
            .unwrap()
            .call1((buffer.bind(py),))
            .unwrap()
            .extract()
            .unwrap();
        assert_eq!(bytes, b"234");
        assert!(buffer
            .bind(py)
            .getattr("readonly")
            .unwrap()
            .extract::<bool>()
            .unwrap());
    });
}

#[test]
fn engine_errors_become_the_exceptions_a_user_catches() {
    with_python(|py| {
        let store = |errno| {
            PyErr::from(EngineError::Store(StoreError {
                path: "/cache/f".into(),
                source: std::io::Error::from_raw_os_error(errno),
            }))
        };
        let denied = store(libc::EACCES);
        assert!(denied.is_instance_of::<PyPermissionError>(py));
        let filename: String = denied
            .value(py)
            .getattr("filename")
            .unwrap()
            .extract()
            .unwrap();
        assert_eq!(filename, "/cache/f");
        assert!(store(libc::ENOENT).is_instance_of::<PyFileNotFoundError>(py));
        let memory = PyErr::from(EngineError::OutOfMemory {
            what: "a section".into(),
        });
        assert!(memory.is_instance_of::<PyMemoryError>(py));
        let arena = PyErr::from(EngineError::Arena(std::io::Error::from_raw_os_error(
            libc::ENOSPC,
        )));
        assert!(arena.is_instance_of::<PyOSError>(py));
        // Without `import ferrojob`, its classes fall back to their builtin base.
        let damaged = PyErr::from(EngineError::Codec(CodecError::DamagedHeader {
            path: "x.fj".into(),
            reason: "checksum mismatch".into(),
        }));
        assert!(damaged.is_instance_of::<PyValueError>(py));
        assert!(damaged.to_string().contains("x.fj"));
    });
}

#[test]
fn timeouts_from_python_become_limits() {
    with_python(|py| {
        use crate::durations::limit;
        assert_eq!(limit(Some(f64::INFINITY), "timeout").unwrap(), None);
        let nan = limit(Some(f64::NAN), "timeout").unwrap_err();
        assert!(nan.is_instance_of::<PyValueError>(py));
        assert!(nan.to_string().contains("timeout=NaN"));
    });
}

#[test]
fn run_items_stops_at_the_first_exception_and_resumes_after_it() {
    use pyo3::types::{PyDict, PyList};

    with_python(|py| {
        let globals = PyDict::new(py);
        py.run(
            c"def f(x):\n    if x == 2:\n        raise ValueError(x)\n    return x * 10\n",
            Some(&globals),
            None,
        )
        .unwrap();
        let function = globals.get_item("f").unwrap().unwrap();
        let items = PyList::new(py, [0, 1, 2, 3]).unwrap();
        let results = PyList::empty(py);
        let (index, error) = crate::worker::run_items(py, &function, &items, false, 0, &results, 0)
            .unwrap()
            .expect("item 2 raises");
        assert_eq!(index, 2);
        assert!(error.is_instance_of::<PyValueError>());
        // The traceback of the raising frame travels with the exception.
        assert!(!error.getattr("__traceback__").unwrap().is_none());
        assert!(
            crate::worker::run_items(py, &function, &items, false, 3, &results, 3)
                .unwrap()
                .is_none()
        );
        assert_eq!(results.extract::<Vec<i64>>().unwrap(), vec![0, 10, 30]);
        // With `star`, each item is a tuple of arguments; anything else is refused.
        let pairs = py.eval(c"[(1, 2), (3, 4)]", None, None).unwrap();
        let pairs = pairs.cast::<PyList>().unwrap();
        let add = py.eval(c"lambda a, b: a + b", None, None).unwrap();
        let sums = PyList::empty(py);
        assert!(crate::worker::run_items(py, &add, pairs, true, 0, &sums, 0)
            .unwrap()
            .is_none());
        assert_eq!(sums.extract::<Vec<i64>>().unwrap(), vec![3, 7]);
        let error = crate::worker::run_items(py, &add, &items, true, 0, &sums, 0).unwrap_err();
        assert!(error.is_instance_of::<pyo3::exceptions::PyTypeError>(py));
    });
}
