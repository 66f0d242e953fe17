//! Out-of-band buffers on the Python side: the parent's argument arena, and `Buffer`, the memory
//! (a shared mapping, a mapped file, heap bytes) that numpy arrays are rebuilt on.

use std::ffi::c_int;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use ferrojob_engine::buffers::{self, BufferRef, Envelope};
use ferrojob_engine::shared_alloc;
use ferrojob_engine::shm::{Access, Mapping};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

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
    _memory: memmap2::MmapMut,
}

// SAFETY: the map is owned and never touched again from Rust; the pointer is its address.
unsafe impl Send for HeapBytes {}
// SAFETY: &HeapBytes exposes only the address; access goes through the buffer protocol.
unsafe impl Sync for HeapBytes {}

impl HeapBytes {
    pub fn new(mut memory: memmap2::MmapMut) -> Self {
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
#[pyclass(module = "ferrojob._core", frozen)]
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
        let end = offset.checked_add(len)?;
        if end > backing.len() as u64 {
            return None;
        }
        Some(Self {
            backing,
            offset: usize::try_from(offset).ok()?,
            len: usize::try_from(len).ok()?,
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
        other => Err(PyValueError::new_err(format!(
            "unknown mmap_mode {other:?}: use 'r', 'r+', 'w+' or 'c'"
        ))),
    }
}

/// What to run when the mapping of a recyclable segment (its token) is dropped.
pub type UnmapHook = Box<dyn FnOnce() + Send + Sync>;

/// Map the descriptors of a received frame and make one `Buffer` per entry of its envelope.
/// `on_unmap(token)` gives the hook to run when a recyclable segment's mapping goes.
pub fn map_buffers(
    py: Python<'_>,
    envelope: &Envelope<'_>,
    fds: Vec<OwnedFd>,
    on_unmap: impl Fn(u64) -> UnmapHook,
) -> PyResult<Vec<Py<Buffer>>> {
    if envelope.buffers.is_empty() {
        return Ok(Vec::new());
    }
    let access = envelope.access;
    let mappings = py
        .detach(|| {
            fds.into_iter()
                .map(|fd| Mapping::map_segment(fd, access))
                .collect::<std::io::Result<Vec<_>>>()
        })
        .map_err(|e| PyOSError::new_err(format!("mapping shared memory: {e}")))?;
    let mappings: Vec<Arc<Mapping>> = mappings
        .into_iter()
        .enumerate()
        .map(|(segment, mapping)| match envelope.tokens.get(segment) {
            Some(&token) if token != 0 => Arc::new(mapping.on_drop(on_unmap(token))),
            _ => Arc::new(mapping),
        })
        .collect();
    let lens: Vec<usize> = mappings.iter().map(|m| m.len()).collect();
    buffers::check_bounds(&envelope.buffers, &lens)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    envelope
        .buffers
        .iter()
        .map(|buffer| {
            let outside = || PyValueError::new_err("a buffer lies outside its shared memory");
            let mapping = mappings.get(buffer.segment as usize).ok_or_else(outside)?;
            let buffer = Buffer::new(
                Backing::Mapped(Arc::clone(mapping)),
                buffer.offset,
                buffer.len,
            )
            .ok_or_else(outside)?;
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

/// Send `objects` (buffer-protocol objects: a worker's result buffers) through shared memory.
/// Those that live in a shared allocation (arrays made by the numpy handler) go as they are;
/// the others are copied into one fresh segment. Returns the descriptors and the places.
pub fn pack_buffers(
    py: Python<'_>,
    objects: &[Bound<'_, PyAny>],
) -> PyResult<(Vec<OwnedFd>, Vec<u64>, Vec<BufferRef>)> {
    let held = objects
        .iter()
        .map(contiguous)
        .collect::<PyResult<Vec<_>>>()?;
    // SAFETY: `held` keeps every buffer exported until the end of this function.
    let slices: Vec<&[u8]> = held.iter().map(|b| unsafe { bytes_of(b) }).collect();
    let mut fds = Vec::new();
    let mut tokens = Vec::new();
    let mut places: Vec<Option<BufferRef>> = Vec::with_capacity(slices.len());
    let mut to_copy = Vec::new();
    for bytes in &slices {
        match shared_alloc::locate(bytes.as_ptr(), bytes.len()) {
            Some((fd, offset)) => {
                fds.push(fd);
                tokens.push(0); // freed by numpy, never written again
                places.push(Some(BufferRef {
                    segment: (fds.len() - 1) as u32,
                    offset,
                    len: bytes.len() as u64,
                }));
            }
            None => {
                places.push(None);
                to_copy.push(*bytes);
            }
        }
    }
    if !to_copy.is_empty() {
        let (fd, token, copied) = py
            .detach(|| result_segments().pack(&to_copy))
            .map_err(|e| PyOSError::new_err(format!("writing results to shared memory: {e}")))?;
        fds.push(fd);
        tokens.push(token);
        let segment = (fds.len() - 1) as u32;
        let mut copied = copied.into_iter();
        for place in places.iter_mut().filter(|place| place.is_none()) {
            let packed = copied.next().expect("one packed place per copied buffer");
            *place = Some(BufferRef { segment, ..packed });
        }
    }
    Ok((fds, tokens, places.into_iter().flatten().collect()))
}

/// This worker's result segments (see `ferrojob_engine::buffers::ResultSegments`).
pub fn result_segments() -> std::sync::MutexGuard<'static, buffers::ResultSegments> {
    static SEGMENTS: std::sync::Mutex<buffers::ResultSegments> =
        std::sync::Mutex::new(buffers::ResultSegments::new());
    SEGMENTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The shared memory of one call's arguments (see `ferrojob_engine::buffers::Arena`).
#[pyclass(module = "ferrojob._core")]
pub struct Arena {
    inner: buffers::Arena,
}

#[pymethods]
impl Arena {
    #[new]
    #[pyo3(signature = (chunk_size=buffers::DEFAULT_CHUNK_SIZE))]
    fn new(chunk_size: usize) -> Self {
        Self {
            inner: buffers::Arena::new(chunk_size),
        }
    }

    /// Copy `buffer` into shared memory; returns `(chunk, offset, length)`.
    fn place(
        &mut self,
        py: Python<'_>,
        buffer: Bound<'_, PyAny>,
    ) -> PyResult<(usize, usize, usize)> {
        let held = contiguous(&buffer)?;
        // SAFETY: `held` keeps the buffer exported until the end of this function. Another
        // thread writing to it meanwhile would race as it would with any GIL-free reader.
        let bytes = unsafe { bytes_of(&held) };
        let inner = &mut self.inner;
        let placement = py.detach(|| inner.place(bytes)).map_err(|e| {
            PyOSError::new_err(format!("copying an argument to shared memory: {e}"))
        })?;
        Ok((placement.chunk, placement.offset, bytes.len()))
    }

    /// A job referring to `chunk` is being submitted.
    fn hold(&mut self, chunk: usize) -> PyResult<()> {
        self.inner
            .hold(chunk)
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// A job that held `chunk` completed; returns whether the chunk was retired.
    fn release(&mut self, chunk: usize) -> bool {
        self.inner.release(chunk)
    }

    /// Retire the full chunks no job holds and no worker maps; returns their numbers.
    fn sweep(&mut self) -> Vec<usize> {
        self.inner.sweep()
    }

    /// Workers reported these chunk tokens unmapped; returns the chunks retired.
    fn unmapped(&mut self, tokens: Vec<u64>) -> Vec<usize> {
        self.inner.unmapped(&tokens)
    }

    #[getter]
    fn n_open_chunks(&self) -> usize {
        self.inner.n_open_chunks()
    }
}

impl Arena {
    pub fn duplicate_fd(&self, chunk: usize) -> PyResult<(OwnedFd, u64)> {
        self.inner
            .duplicate_fd(chunk)
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }
}

/// The address of the first byte of a buffer-protocol object (to recognise the same memory
/// passed twice).
#[pyfunction]
pub fn buffer_address(object: Bound<'_, PyAny>) -> PyResult<usize> {
    Ok(contiguous(&object)?.buf_ptr() as usize)
}
