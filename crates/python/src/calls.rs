//! Delayed calls: `delayed(f)(*args, **kwargs)` makes the triple `(f, args, kwargs)`, and the
//! parent reads, checks and groups those triples. This is the per-task work of the calling
//! process, so it lives here rather than in Python (see DESIGN.md, "Where the time goes").

use pyo3::exceptions::PyTypeError;

use crate::hooks;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyIterator, PyList, PyTuple};

/// `delayed(f)`: calling it with arguments returns the call triple `(f, args, kwargs)`.
#[pyclass(module = "ferrojob._core", name = "DelayedFunction", frozen)]
pub struct DelayedFunction {
    #[pyo3(get)]
    function: Py<PyAny>,
}

#[pymethods]
impl DelayedFunction {
    #[pyo3(signature = (*args, **kwargs))]
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        args: Bound<'py, PyTuple>,
        kwargs: Option<Bound<'py, PyDict>>,
    ) -> Bound<'py, PyTuple> {
        let kwargs = kwargs.unwrap_or_else(|| PyDict::new(py));
        PyTuple::new(
            py,
            [
                self.function.bind(py).clone(),
                args.into_any(),
                kwargs.into_any(),
            ],
        )
        .expect("a 3-tuple of objects")
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let name = hooks::function_name(self.function.bind(py))?;
        Ok(format!("delayed({name})"))
    }

    /// The wrapped function's name, as joblib's `delayed` kept it.
    #[getter]
    fn __name__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let function = self.function.bind(py);
        match function.getattr("__name__") {
            Ok(name) => Ok(name),
            Err(_) => Ok(function.get_type().name()?.into_any()),
        }
    }
}

/// Capture a function so that `delayed(f)(*args, **kwargs)` describes a call to run later.
///
/// The call is the tuple `(f, args, kwargs)`, as in joblib; `Parallel` runs an iterable of them.
///
/// Example:
///
///     >>> from ferrojob import delayed
///     >>> delayed(pow)(2, 3)
///     (<built-in function pow>, (2, 3), {})
#[pyfunction]
pub fn delayed(function: Bound<'_, PyAny>) -> PyResult<Py<DelayedFunction>> {
    let py = function.py();
    if let Ok(already) = function.cast::<DelayedFunction>() {
        return Ok(already.clone().unbind());
    }
    if !function.is_callable() {
        return Err(hooks::not_callable(&function));
    }
    Py::new(
        py,
        DelayedFunction {
            function: function.unbind(),
        },
    )
}

/// Whether `item` is a call triple as `delayed` makes them: `(callable, tuple, dict)`.
fn is_call(item: &Bound<'_, PyAny>) -> bool {
    let Ok(triple) = item.cast_exact::<PyTuple>() else {
        return false;
    };
    triple.len() == 3
        && triple
            .get_borrowed_item(1)
            .is_ok_and(|a| a.is_exact_instance_of::<PyTuple>())
        && triple
            .get_borrowed_item(2)
            .is_ok_and(|k| k.is_exact_instance_of::<PyDict>())
        && triple.get_borrowed_item(0).is_ok_and(|f| f.is_callable())
}

/// Move up to `wanted` items from `iterator` to `out`, stopping at the first item that is not a
/// call triple. Returns `(items moved, the rejected item or None, whether the iterator ended)`.
#[pyfunction]
pub fn read_calls<'py>(
    iterator: &Bound<'py, PyAny>,
    wanted: usize,
    out: &Bound<'py, PyList>,
) -> PyResult<(usize, Option<Bound<'py, PyAny>>, bool)> {
    let mut iterator = iterator
        .cast::<PyIterator>()
        .map_err(|_| PyTypeError::new_err("read_calls expects an iterator"))?
        .clone();
    let mut moved = 0;
    while moved < wanted {
        let Some(item) = iterator.next().transpose()? else {
            return Ok((moved, None, true));
        };
        if !is_call(&item) {
            return Ok((moved, Some(item), false));
        }
        out.append(item)?;
        moved += 1;
    }
    Ok((moved, None, false))
}

/// Group consecutive calls of the same function: `[(f, [args, ...], [kwargs, ...] or None)]`.
/// The function is then pickled once per group, and the kwargs column is None when every call
/// of the group has no keyword arguments.
#[pyfunction]
pub fn call_columns<'py>(calls: &Bound<'py, PyList>) -> PyResult<Bound<'py, PyList>> {
    let py = calls.py();
    let groups = PyList::empty(py);
    let mut current: Option<Bound<'py, PyAny>> = None;
    let mut args = PyList::empty(py);
    let mut kwargs = PyList::empty(py);
    let mut any_kwargs = false;
    let flush = |function: Bound<'py, PyAny>,
                 args: &Bound<'py, PyList>,
                 kwargs: &Bound<'py, PyList>,
                 any_kwargs: bool|
     -> PyResult<()> {
        let kwargs = if any_kwargs {
            kwargs.clone().into_any()
        } else {
            py.None().into_bound(py)
        };
        groups.append(PyTuple::new(
            py,
            [function, args.clone().into_any(), kwargs],
        )?)
    };
    for call in calls.iter() {
        let call = call.cast_into::<PyTuple>()?;
        let function = call.get_item(0)?;
        if !current.as_ref().is_some_and(|f| f.is(&function)) {
            if let Some(previous) = current.take() {
                flush(previous, &args, &kwargs, any_kwargs)?;
            }
            current = Some(function);
            args = PyList::empty(py);
            kwargs = PyList::empty(py);
            any_kwargs = false;
        }
        args.append(call.get_item(1)?)?;
        let call_kwargs = call.get_item(2)?.cast_into::<PyDict>()?;
        any_kwargs |= !call_kwargs.is_empty();
        kwargs.append(call_kwargs)?;
    }
    if let Some(previous) = current {
        flush(previous, &args, &kwargs, any_kwargs)?;
    }
    Ok(groups)
}
