//! Out-of-band buffers on the Python side: the parent's argument arena, and `Buffer`, the memory
//! (a shared mapping, a mapped file, heap bytes) that numpy arrays are rebuilt on.

use std::ffi::c_int;
use std::sync::Arc;

use ferrojob_engine::arena::{self, Arguments, Identity};
use ferrojob_engine::shm::{span_inside, Access, Mapping, SharedBuffer};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::{invalid_parameter, EngineError};

/// Memory that rebuilt objects (numpy arrays, bytes) live on.
pub enum Backing {
    /// A mapping of shared memory or of a file.
    Mapped(Arc<Mapping>),
    /// Bytes read into this process (a decompressed section of a dump).
    Heap(Arc<HeapBytes>),
}

/// Private memory whose address is handed to Python: it is kept as a raw pointer taken once,
/// rather than borrowed from the map afresh.
pub struct HeapBytes {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    _memory: ferrojob_engine::shm::AnonymousMemory,
}

// SAFETY: the map is owned and never touched again from Rust; the pointer is its address.
unsafe impl Send for HeapBytes {}
// SAFETY: &HeapBytes exposes only the address; access goes through the buffer protocol.
unsafe impl Sync for HeapBytes {}

impl HeapBytes {
    pub fn new(mut memory: ferrojob_engine::shm::AnonymousMemory) -> Self {
        // A map's address is never null; dangling stands for an (impossible) null with no bytes.
        let (ptr, len) = match std::ptr::NonNull::new(memory.as_mut_ptr()) {
            Some(ptr) => (ptr, memory.len()),
            None => (std::ptr::NonNull::dangling(), 0),
        };
        Self {
            ptr,
            len,
            _memory: memory,
        }
    }
}

impl Backing {
    fn ptr(&self) -> *mut u8 {
        match self {
            Backing::Mapped(mapping) => mapping.as_ptr(),
            Backing::Heap(heap) => heap.ptr.as_ptr(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Backing::Mapped(mapping) => mapping.len(),
            Backing::Heap(heap) => heap.len,
        }
    }

    fn writable(&self) -> bool {
        match self {
            Backing::Mapped(mapping) => mapping.access().is_writable(),
            Backing::Heap(_) => true,
        }
    }
}

/// `len` bytes at `offset` of some memory (a shared mapping, a mapped file, heap bytes), exported
/// through the buffer protocol. Read-only when the memory is (numpy then refuses writes, as with
/// `mmap_mode="r"`). The memory is freed when the last buffer over it (and every array built on
/// it) is gone.
#[pyclass(module = "ferrojob._core", frozen, weakref)]
pub struct Buffer {
    backing: Backing,
    offset: usize,
    len: usize,
}

impl Buffer {
    /// `len` bytes at `offset` of `backing`; None unless they lie inside it. Offsets and lengths
    /// come from files and frames, so this is the check that keeps every array built on a
    /// `Buffer` inside its memory.
    pub fn new(backing: Backing, offset: u64, len: u64) -> Option<Self> {
        let (offset, len) = span_inside(offset, len, backing.len())?;
        Some(Self {
            backing,
            offset,
            len,
        })
    }
}

#[pymethods]
impl Buffer {
    /// # Safety
    /// Called by CPython with a valid `view` to fill, per the buffer protocol.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let this = slf.get();
        let readonly = c_int::from(!this.backing.writable());
        // SAFETY: offset + len lies inside the memory (checked by `Buffer::new`), and
        // the view holds a reference to `slf`, which keeps the memory alive while it exists.
        let status = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                this.backing.ptr().add(this.offset).cast(),
                this.len as isize,
                readonly,
                flags,
            )
        };
        if status == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut pyo3::ffi::Py_buffer) {}

    fn __len__(&self) -> usize {
        self.len
    }

    #[getter]
    fn readonly(&self) -> bool {
        !self.backing.writable()
    }

    /// Pickled as the bytes it holds (a `bytearray` when writable), as pickle does with a
    /// `PickleBuffer` sent in-band.
    fn __reduce__<'py>(
        slf: Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyAny>,))> {
        let py = slf.py();
        let builtins = py.import("builtins")?;
        let kind = if slf.get().backing.writable() {
            "bytearray"
        } else {
            "bytes"
        };
        let copy = builtins.getattr("bytes")?.call1((&slf,))?;
        Ok((builtins.getattr(kind)?, (copy,)))
    }

    fn __repr__(&self) -> String {
        let what = match &self.backing {
            Backing::Mapped(mapping) => format!("{:?} mapping", mapping.access()),
            Backing::Heap(_) => "heap".to_owned(),
        };
        format!("<Buffer {} bytes, {what}>", self.len)
    }
}

pub fn access_from_mode(mode: &str) -> PyResult<Access> {
    match mode {
        "r" => Ok(Access::ReadOnly),
        "r+" | "w+" => Ok(Access::ReadWrite),
        "c" => Ok(Access::CopyOnWrite),
        other => Err(invalid_parameter(format!(
            "mmap_mode={other:?} is not a mapping mode: use 'r', 'r+', 'w+' or 'c'"
        ))),
    }
}

impl Buffer {
    /// A buffer of a received frame (bounds-checked when it was made).
    pub fn from_shared(shared: SharedBuffer) -> Option<Self> {
        Self::new(
            Backing::Mapped(Arc::clone(shared.mapping())),
            shared.offset() as u64,
            shared.len() as u64,
        )
    }
}

/// Wrap received buffers for Python.
pub fn to_python(py: Python<'_>, buffers: Vec<SharedBuffer>) -> PyResult<Vec<Py<Buffer>>> {
    buffers
        .into_iter()
        .map(|shared| {
            let buffer = Buffer::from_shared(shared)
                .ok_or_else(|| PyValueError::new_err("a buffer lies outside its shared memory"))?;
            Py::new(py, buffer)
        })
        .collect()
}

/// Contiguous bytes of any buffer-protocol object (a PickleBuffer, an array, bytes).
pub fn contiguous(object: &Bound<'_, PyAny>) -> PyResult<PyBuffer<u8>> {
    // A PickleBuffer exposes its bytes as a flat 'B' view through raw().
    let flat = match object.getattr("raw") {
        Ok(raw) => raw.call0()?,
        Err(_) => object.clone(),
    };
    let buffer = PyBuffer::<u8>::get(&flat)?;
    if !buffer.is_c_contiguous() {
        return Err(PyValueError::new_err(
            "out-of-band buffers must be contiguous",
        ));
    }
    Ok(buffer)
}

/// # Safety
/// `buffer` must stay alive (and its memory unchanged by this thread) while the slice is used.
pub unsafe fn bytes_of(buffer: &PyBuffer<u8>) -> &[u8] {
    // SAFETY: per the caller; a contiguous PyBuffer covers len_bytes() bytes from buf_ptr().
    unsafe { std::slice::from_raw_parts(buffer.buf_ptr().cast::<u8>(), buffer.len_bytes()) }
}

/// The shared memory of a session's arguments (see `ferrojob_engine::arena::Arguments`): buffers
/// are placed once per identity; jobs made from placements hold their chunks until they end.
#[pyclass(module = "ferrojob._core", frozen)]
pub struct Arena {
    pub inner: Arguments,
}

#[pymethods]
impl Arena {
    #[new]
    #[pyo3(signature = (chunk_size=arena::DEFAULT_CHUNK_SIZE))]
    fn new(chunk_size: usize) -> Self {
        Self {
            inner: Arguments::new(chunk_size),
        }
    }

    /// Copy `buffer` into shared memory, unless the buffer of `identity` (its owner's `id()`,
    /// address, length) is there already; returns its placement (opaque to Python).
    #[pyo3(signature = (buffer, identity=None))]
    fn place(
        &self,
        py: Python<'_>,
        buffer: Bound<'_, PyAny>,
        identity: Option<Identity>,
    ) -> PyResult<(usize, usize, usize, u64)> {
        let held = contiguous(&buffer)?;
        // SAFETY: `held` keeps the buffer exported until the end of this function. Another
        // thread writing to it meanwhile would race as it would with any GIL-free reader.
        let bytes = unsafe { bytes_of(&held) };
        let inner = &self.inner;
        let placement = py
            .detach(|| inner.place(identity, bytes))
            .map_err(EngineError::Arena)?;
        Ok((
            placement.chunk,
            placement.offset,
            placement.len,
            placement.token,
        ))
    }

    /// The owner of `identity` is gone: its memory may be reused for something else.
    fn forget(&self, identity: Identity) {
        self.inner.forget(identity)
    }

    /// A new call of the session begins (see `ferrojob_engine::arena::Arguments::new_call`).
    fn new_call(&self) {
        self.inner.new_call()
    }

    #[getter]
    fn n_open_chunks(&self) -> usize {
        self.inner.n_open_chunks()
    }

    /// Bytes copied into shared memory since the arena was made (a buffer placed again
    /// unchanged adds nothing).
    #[getter]
    fn bytes_written(&self) -> u64 {
        self.inner.bytes_written()
    }
}

/// Whether this process proves a large argument unchanged between calls by watching its pages
/// for writes (Linux 6.7+), rather than by reading it again for a fingerprint.
#[pyfunction]
pub fn watches_writes() -> bool {
    ferrojob_engine::platform::write_watch::available()
}

/// The address of the first byte of a buffer-protocol object (to recognise the same memory
/// passed twice).
#[pyfunction]
pub fn buffer_address(object: Bound<'_, PyAny>) -> PyResult<usize> {
    Ok(contiguous(&object)?.buf_ptr() as usize)
}
