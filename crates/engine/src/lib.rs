//! ferrojob's engine: worker processes, scheduling, the wire protocol and shared memory.
//!
//! This crate knows nothing of Python. Workers are any program that adopts descriptors 3 (socket)
//! and 4 (status page) through [`worker::Endpoint::inherit`] and answers the protocol; ferrojob's
//! Python workers do that through the `ferrojob._core` bindings, and the tests use the tiny echo
//! worker in `src/bin`.

pub mod arena;
pub mod atomic;
pub mod codec;
pub mod cursor;
pub mod envelope;
pub mod fork;
pub mod fuzzing;
pub mod hash;
pub mod output;
pub mod parallel;
pub mod platform;
pub mod pool;
pub mod protocol;
pub mod scheduler;
pub mod shared_alloc;
pub mod shm;
pub mod store;
pub mod worker;
