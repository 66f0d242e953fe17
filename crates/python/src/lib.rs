//! `ferrojob._core`: thin bindings of the engine. Converts types and errors, releases the GIL
//! around engine work, and nothing else.

mod buffers;
mod calls;
mod durations;
mod errors;
mod hooks;
mod numpy_allocator;
mod persistence;
mod pool;
mod scheduler;
mod worker;

#[cfg(test)]
mod tests;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(hooks::install, m)?)?;
    m.add_class::<calls::DelayedFunction>()?;
    m.add_function(wrap_pyfunction!(calls::delayed, m)?)?;
    m.add_function(wrap_pyfunction!(calls::read_calls, m)?)?;
    m.add_function(wrap_pyfunction!(calls::call_columns, m)?)?;
    m.add_class::<buffers::Arena>()?;
    m.add_class::<buffers::Buffer>()?;
    m.add_function(wrap_pyfunction!(buffers::buffer_address, m)?)?;
    m.add_function(wrap_pyfunction!(buffers::watches_writes, m)?)?;
    m.add_function(wrap_pyfunction!(
        numpy_allocator::install_numpy_allocator,
        m
    )?)?;
    m.add_class::<persistence::Hasher>()?;
    m.add_class::<persistence::Store>()?;
    m.add_class::<persistence::EntryLock>()?;
    m.add_function(wrap_pyfunction!(persistence::write_dump, m)?)?;
    m.add_function(wrap_pyfunction!(persistence::read_dump, m)?)?;
    m.add_function(wrap_pyfunction!(persistence::looks_like_joblib, m)?)?;
    m.add_function(wrap_pyfunction!(persistence::dump_extent, m)?)?;
    m.add_class::<pool::ProcessPool>()?;
    m.add_class::<pool::Completion>()?;
    m.add_class::<pool::CompletionKind>()?;
    m.add_class::<scheduler::Scheduler>()?;
    m.add_function(wrap_pyfunction!(worker::serve_worker, m)?)?;
    m.add_function(wrap_pyfunction!(worker::run_items, m)?)?;
    m.add(
        "STATUS_TASKS_STARTED",
        ferrojob_engine::shm::STATUS_TASKS_STARTED,
    )?;
    m.add("STATUS_STOP", ferrojob_engine::shm::STATUS_STOP)?;
    // Decided here, at import, for the life of the process (see ferrojob_engine::platform).
    m.add("ENGINE_PATH", ferrojob_engine::platform::path().name())?;
    m.add(
        "STARTING_LIMIT",
        ferrojob_engine::pool::STARTING_LIMIT.as_secs_f64(),
    )?;
    Ok(())
}
