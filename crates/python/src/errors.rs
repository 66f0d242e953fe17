//! The one place where engine errors become Python exceptions.

use ferrojob_engine::pool::PoolError;
use ferrojob_engine::protocol::ProtocolError;
use pyo3::exceptions::{PyConnectionError, PyOSError, PyRuntimeError};
use pyo3::PyErr;

pub enum EngineError {
    Pool(PoolError),
    Protocol(ProtocolError),
}

impl From<PoolError> for EngineError {
    fn from(err: PoolError) -> Self {
        Self::Pool(err)
    }
}

impl From<ProtocolError> for EngineError {
    fn from(err: ProtocolError) -> Self {
        Self::Protocol(err)
    }
}

impl From<EngineError> for PyErr {
    fn from(err: EngineError) -> Self {
        match err {
            EngineError::Pool(err @ (PoolError::Spawn { .. } | PoolError::Setup(_))) => {
                PyOSError::new_err(err.to_string())
            }
            EngineError::Pool(err @ PoolError::Closed) => PyRuntimeError::new_err(err.to_string()),
            EngineError::Protocol(err @ ProtocolError::Io(_)) => {
                PyConnectionError::new_err(err.to_string())
            }
            EngineError::Protocol(
                err @ (ProtocolError::BadMagic(_)
                | ProtocolError::UnknownKind(_)
                | ProtocolError::TooManyFds(_)
                | ProtocolError::Truncated),
            ) => PyConnectionError::new_err(err.to_string()),
        }
    }
}
