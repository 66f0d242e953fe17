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
///
/// This runs once per task in the parent, so it touches each call as little as it can: items
/// are borrowed (no reference counting, a function call each under the stable ABI), and the
/// kwargs column is only built once a group meets its first non-empty kwargs.
#[pyfunction]
pub fn call_columns<'py>(calls: &Bound<'py, PyList>) -> PyResult<Bound<'py, PyList>> {
    let py = calls.py();
    let groups = PyList::empty(py);
    let mut group: Option<Group<'py>> = None;
    for index in 0..calls.len() {
        let call = calls.get_item(index)?;
        let call = call.cast::<PyTuple>()?;
        let function = call.get_borrowed_item(0)?;
        if !group.as_ref().is_some_and(|g| g.function.is(function)) {
            if let Some(done) = group.take() {
                groups.append(done.into_tuple()?)?;
            }
            group = Some(Group::new(function.to_owned(), index));
        }
        let current = group.as_mut().expect("a group was just started");
        current.push(calls, call, index)?;
    }
    if let Some(done) = group {
        groups.append(done.into_tuple()?)?;
    }
    Ok(groups)
}

/// One run of consecutive calls of `function`, as [`call_columns`] builds it.
struct Group<'py> {
    function: Bound<'py, PyAny>,
    args: Bound<'py, PyList>,
    /// The index of the group's first call in the list of calls.
    start: usize,
    kwargs: Option<Bound<'py, PyList>>,
}

impl<'py> Group<'py> {
    fn new(function: Bound<'py, PyAny>, start: usize) -> Self {
        let py = function.py();
        Self {
            function,
            args: PyList::empty(py),
            start,
            kwargs: None,
        }
    }

    /// Add `call`, which is `calls[index]`.
    fn push(
        &mut self,
        calls: &Bound<'py, PyList>,
        call: &Bound<'py, PyTuple>,
        index: usize,
    ) -> PyResult<()> {
        self.args.append(call.get_borrowed_item(1)?)?;
        let call_kwargs = call.get_borrowed_item(2)?;
        match &self.kwargs {
            Some(column) => column.append(call_kwargs)?,
            None if call_kwargs.cast::<PyDict>()?.is_empty() => {}
            None => {
                // The first call with keywords: from now on the column holds every call's.
                let column = PyList::empty(self.function.py());
                for earlier in self.start..index {
                    let earlier = calls.get_item(earlier)?;
                    column.append(earlier.cast::<PyTuple>()?.get_borrowed_item(2)?)?;
                }
                column.append(call_kwargs)?;
                self.kwargs = Some(column);
            }
        }
        Ok(())
    }

    fn into_tuple(self) -> PyResult<Bound<'py, PyTuple>> {
        let py = self.function.py();
        let kwargs = match self.kwargs {
            Some(column) => column.into_any(),
            None => py.None().into_bound(py),
        };
        PyTuple::new(py, [self.function, self.args.into_any(), kwargs])
    }
}
