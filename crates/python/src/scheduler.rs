//! `Scheduler`: the engine's per-call bookkeeping (batch sizes, pre-dispatch, ordering).

use std::time::Duration;

use ferrojob_engine::scheduler::{self, BatchSizing, DEFAULT_TARGET_BATCH_DURATION};
use pyo3::prelude::*;

use crate::errors::invalid_parameter;

/// Batch sizing, pre-dispatch accounting and result ordering of one parallel call.
#[pyclass(module = "ferrojob._core")]
pub struct Scheduler {
    inner: scheduler::Scheduler<Py<PyAny>>,
}

#[pymethods]
impl Scheduler {
    #[new]
    #[pyo3(signature = (n_workers, max_in_flight, batch_size=None, ordered=true, target_batch_duration=None, max_batch_size=None, bounded_run_ahead=false))]
    fn new(
        n_workers: usize,
        max_in_flight: usize,
        batch_size: Option<usize>,
        ordered: bool,
        target_batch_duration: Option<f64>,
        max_batch_size: Option<usize>,
        bounded_run_ahead: bool,
    ) -> PyResult<Self> {
        let sizing = match (batch_size, target_batch_duration) {
            (Some(0), _) => return Err(invalid_parameter("batch_size must be at least 1".into())),
            (Some(size), _) => BatchSizing::Fixed(size),
            (None, None) => BatchSizing::Auto {
                target: DEFAULT_TARGET_BATCH_DURATION,
            },
            (None, Some(seconds)) => BatchSizing::Auto {
                target: Duration::try_from_secs_f64(seconds)
                    .map_err(|e| invalid_parameter(format!("target_batch_duration: {e}")))?,
            },
        };
        let mut inner = scheduler::Scheduler::new(n_workers, max_in_flight, sizing, ordered);
        if let Some(max) = max_batch_size {
            inner = inner.with_max_batch_size(max);
        }
        if bounded_run_ahead {
            inner = inner.with_bounded_run_ahead();
        }
        Ok(Self { inner })
    }

    fn can_submit(&self) -> bool {
        self.inner.can_submit()
    }

    fn is_drained(&self) -> bool {
        self.inner.is_drained()
    }

    #[pyo3(signature = (remaining=None))]
    fn next_batch_size(&self, remaining: Option<usize>) -> usize {
        self.inner.next_batch_size(remaining)
    }

    fn lookahead(&self) -> usize {
        self.inner.lookahead()
    }

    fn register(&mut self, n_tasks: usize) -> u64 {
        self.inner.register(n_tasks)
    }

    fn complete(&mut self, batch_id: u64, elapsed: f64, value: Py<PyAny>) -> bool {
        let elapsed = Duration::try_from_secs_f64(elapsed).unwrap_or(Duration::ZERO);
        self.inner.complete(batch_id, elapsed, value)
    }

    fn pop_ready(&mut self) -> Option<Py<PyAny>> {
        self.inner.pop_ready()
    }
}
