//! What the bindings need from the Python side — ferrojob's exception classes and the misuse
//! helpers — handed over once by `import ferrojob` (`_core.install(...)`), so that Rust never
//! imports a Python module by name.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

struct Hooks {
    function_name: Py<PyAny>,
    not_callable: Py<PyAny>,
    damaged_file: Py<PyAny>,
    invalid_parameter: Py<PyAny>,
    not_a_dump_file: Py<PyAny>,
}

static HOOKS: PyOnceLock<Hooks> = PyOnceLock::new();

/// Hand the bindings ferrojob's Python pieces; called once, by `ferrojob/__init__.py`. Later
/// calls change nothing.
#[pyfunction]
#[pyo3(signature = (*, function_name, not_callable, damaged_file, invalid_parameter, not_a_dump_file))]
pub fn install(
    py: Python<'_>,
    function_name: Py<PyAny>,
    not_callable: Py<PyAny>,
    damaged_file: Py<PyAny>,
    invalid_parameter: Py<PyAny>,
    not_a_dump_file: Py<PyAny>,
) {
    let _ = HOOKS.set(
        py,
        Hooks {
            function_name,
            not_callable,
            damaged_file,
            invalid_parameter,
            not_a_dump_file,
        },
    );
}

/// The exception kinds the bindings raise that are ferrojob's own classes.
#[derive(Debug, Clone, Copy)]
pub enum ErrorClass {
    DamagedFile,
    InvalidParameter,
    NotADumpFile,
}

/// An instance of ferrojob's exception class `class` with `message`; a plain `ValueError`
/// (each class's builtin base) if `ferrojob` was not imported.
pub fn error(py: Python<'_>, class: ErrorClass, message: String) -> PyErr {
    let Some(hooks) = HOOKS.get(py) else {
        return PyValueError::new_err(message);
    };
    let class = match class {
        ErrorClass::DamagedFile => &hooks.damaged_file,
        ErrorClass::InvalidParameter => &hooks.invalid_parameter,
        ErrorClass::NotADumpFile => &hooks.not_a_dump_file,
    };
    match class.bind(py).call1((message,)) {
        Ok(instance) => PyErr::from_value(instance),
        Err(err) => err,
    }
}

/// `function_name(f)` of `ferrojob._tasks`: how messages name a function.
pub fn function_name<'py>(function: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = function.py();
    match HOOKS.get(py) {
        Some(hooks) => hooks.function_name.bind(py).call1((function,)),
        None => function.repr().map(Bound::into_any),
    }
}

/// The misuse error for `delayed(x)` of something not callable.
pub fn not_callable(function: &Bound<'_, PyAny>) -> PyErr {
    let py = function.py();
    let made = match HOOKS.get(py) {
        Some(hooks) => hooks.not_callable.bind(py).call1((function,)),
        None => return PyTypeError::new_err("delayed() expects a callable"),
    };
    match made {
        Ok(error) => PyErr::from_value(error),
        Err(err) => err,
    }
}
