//! The one place where engine errors become Python exceptions.

use ferrojob_engine::codec::CodecError;
use ferrojob_engine::pool::PoolError;
use ferrojob_engine::protocol::ProtocolError;
use ferrojob_engine::store::StoreError;
use pyo3::exceptions::{PyConnectionError, PyMemoryError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::hooks::{self, ErrorClass};

pub enum EngineError {
    Pool(PoolError),
    Protocol(ProtocolError),
    Codec(CodecError),
    Store(StoreError),
    /// The argument arena: shared memory could not be had, or a job cannot be made.
    Arena(std::io::Error),
    /// Memory for `what` could not be had.
    OutOfMemory {
        what: String,
    },
    /// Any other failed system call, with what it was for.
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl From<StoreError> for EngineError {
    fn from(err: StoreError) -> Self {
        Self::Store(err)
    }
}

impl From<CodecError> for EngineError {
    fn from(err: CodecError) -> Self {
        Self::Codec(err)
    }
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
            EngineError::Pool(
                err @ (PoolError::Closed
                | PoolError::Forked { .. }
                | PoolError::ForeignArena { .. }),
            ) => PyRuntimeError::new_err(err.to_string()),
            EngineError::Protocol(err @ ProtocolError::Io(_)) => {
                PyConnectionError::new_err(err.to_string())
            }
            EngineError::Protocol(
                err @ (ProtocolError::BadMagic(_)
                | ProtocolError::UnknownKind(_)
                | ProtocolError::TooManyFds(_)
                | ProtocolError::BadCarrier(_)
                | ProtocolError::Truncated
                | ProtocolError::TooLarge(_)
                | ProtocolError::OutOfMemory(_)),
            ) => PyConnectionError::new_err(err.to_string()),
            EngineError::Codec(CodecError::Io { path, source }) => {
                let message = format!("{}: {source}", path.display());
                match source.raw_os_error() {
                    Some(errno) => os_error_instance(errno, message, None),
                    None => PyOSError::new_err(message),
                }
            }
            // OSError(errno, strerror, filename): Python picks the subclass (PermissionError,
            // FileNotFoundError, ...) from the errno, and the path is in `.filename`.
            EngineError::Store(StoreError { path, source }) => match source.raw_os_error() {
                Some(errno) => {
                    os_error_instance(errno, strerror(errno), Some(path.display().to_string()))
                }
                None => PyOSError::new_err(format!("{}: {source}", path.display())),
            },
            EngineError::Arena(err) if err.kind() == std::io::ErrorKind::InvalidInput => {
                PyValueError::new_err(err.to_string())
            }
            EngineError::Arena(err) => os_error("shared memory for arguments", &err),
            EngineError::OutOfMemory { what } => {
                PyMemoryError::new_err(format!("no memory for {what}"))
            }
            EngineError::Io { context, source } => os_error(&context, &source),
            EngineError::Codec(err @ CodecError::NotAContainer { .. }) => {
                Python::attach(|py| hooks::error(py, ErrorClass::NotADumpFile, err.to_string()))
            }
            EngineError::Codec(
                err @ (CodecError::UnsupportedVersion { .. }
                | CodecError::DamagedHeader { .. }
                | CodecError::Truncated { .. }
                | CodecError::DamagedBlock { .. }),
            ) => damaged_file(err.to_string()),
        }
    }
}

/// `OSError(errno, "context: strerror")` (Python picks the subclass from the errno).
fn os_error(context: &str, error: &std::io::Error) -> PyErr {
    match error.raw_os_error() {
        Some(errno) => os_error_instance(errno, format!("{context}: {}", strerror(errno)), None),
        None => PyOSError::new_err(format!("{context}: {error}")),
    }
}

/// `OSError(*args)` made now, so that the exception has the subclass Python picks from the errno
/// (`PermissionError`, `FileNotFoundError`, ...) as its type, not only as its value's.
fn os_error_instance(errno: i32, message: String, filename: Option<String>) -> PyErr {
    Python::attach(|py| {
        let class = py.get_type::<PyOSError>();
        let made = match filename {
            Some(filename) => class.call1((errno, message, filename)),
            None => class.call1((errno, message)),
        };
        match made {
            Ok(instance) => PyErr::from_value(instance),
            Err(err) => err,
        }
    })
}

/// The C library's text for `errno`, as Python's own OSErrors show it.
fn strerror(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    // Rust appends " (os error N)"; Python shows the number separately.
    match text.rfind(" (os error ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

/// `InvalidParameterError` (FJ201, a `ValueError`) with this message.
pub fn invalid_parameter(message: String) -> PyErr {
    Python::attach(|py| hooks::error(py, ErrorClass::InvalidParameter, message))
}

/// `DamagedFileError` (FJ401, a `ValueError`) with this message.
pub fn damaged_file(message: String) -> PyErr {
    Python::attach(|py| hooks::error(py, ErrorClass::DamagedFile, message))
}
