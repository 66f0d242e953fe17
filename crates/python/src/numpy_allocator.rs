//! numpy's memory-handler hook (NEP 49) in worker processes: arrays of at least
//! `MIN_SHARED_ALLOCATION` bytes are allocated in shared memory (`ferrojob_engine::shared_alloc`),
//! so a task returning a large array sends a descriptor instead of copying its data.

use std::ffi::{c_char, c_void};

use ferrojob_engine::shared_alloc;
use pyo3::prelude::*;
use pyo3::types::PyCapsule;

/// numpy's `PyDataMemAllocator` (ndarraytypes.h, version 1).
#[repr(C)]
struct Allocator {
    ctx: *mut c_void,
    malloc: unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void,
    calloc: unsafe extern "C" fn(*mut c_void, usize, usize) -> *mut c_void,
    realloc: unsafe extern "C" fn(*mut c_void, *mut c_void, usize) -> *mut c_void,
    free: unsafe extern "C" fn(*mut c_void, *mut c_void, usize),
}

/// numpy's `PyDataMem_Handler`.
#[repr(C)]
struct Handler {
    name: [c_char; 127],
    version: u8,
    allocator: Allocator,
}

// SAFETY: the handler is immutable, and its context pointer is null and never used.
unsafe impl Sync for Handler {}

const fn handler_name(text: &str) -> [c_char; 127] {
    let bytes = text.as_bytes();
    let mut name = [0 as c_char; 127];
    let mut i = 0;
    while i < bytes.len() && i < 126 {
        name[i] = bytes[i] as c_char;
        i += 1;
    }
    name
}

static HANDLER: Handler = Handler {
    name: handler_name("ferrojob_shared_memory"),
    version: 1,
    allocator: Allocator {
        ctx: std::ptr::null_mut(),
        malloc: shared_malloc,
        calloc: shared_calloc,
        realloc: shared_realloc,
        free: shared_free,
    },
};

unsafe extern "C" fn shared_malloc(_ctx: *mut c_void, size: usize) -> *mut c_void {
    match shared_alloc::allocate(size) {
        Some(ptr) => ptr.as_ptr().cast(),
        // SAFETY: plain heap allocation; never ask for 0 bytes, whose NULL means failure to numpy.
        None => unsafe { libc::malloc(size.max(1)) },
    }
}

unsafe extern "C" fn shared_calloc(_ctx: *mut c_void, count: usize, size: usize) -> *mut c_void {
    let Some(total) = count.checked_mul(size) else {
        return std::ptr::null_mut();
    };
    match shared_alloc::allocate(total) {
        // A fresh memfd reads as zeros.
        Some(ptr) => ptr.as_ptr().cast(),
        // SAFETY: plain heap allocation of at least one byte.
        None => unsafe { libc::calloc(count.max(1), size.max(1)) },
    }
}

unsafe extern "C" fn shared_realloc(
    ctx: *mut c_void,
    ptr: *mut c_void,
    size: usize,
) -> *mut c_void {
    if ptr.is_null() {
        // SAFETY: realloc(NULL, n) is malloc(n).
        return unsafe { shared_malloc(ctx, size) };
    }
    let Some(old_len) = shared_alloc::size_of(ptr.cast()) else {
        // SAFETY: `ptr` came from libc::malloc/calloc above (numpy only reallocs its own data).
        return unsafe { libc::realloc(ptr, size.max(1)) };
    };
    // SAFETY: a fresh allocation of `size` bytes.
    let moved = unsafe { shared_malloc(ctx, size) };
    if moved.is_null() {
        return moved;
    }
    // SAFETY: both regions are live, distinct, and at least min(old_len, size) bytes long; the
    // old one is freed after the copy, as realloc does.
    unsafe {
        std::ptr::copy_nonoverlapping(ptr.cast::<u8>(), moved.cast::<u8>(), old_len.min(size));
        shared_alloc::free(ptr.cast());
    }
    moved
}

unsafe extern "C" fn shared_free(_ctx: *mut c_void, ptr: *mut c_void, _size: usize) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: numpy frees each pointer it got from this handler exactly once, after its last use.
    if !unsafe { shared_alloc::free(ptr.cast()) } {
        // SAFETY: not ours, so it came from libc::malloc/calloc/realloc above.
        unsafe { libc::free(ptr) };
    }
}

/// numpy's C-API table index of `PyDataMem_SetHandler` (numpy >= 1.22, `__multiarray_api.h`).
const SET_HANDLER_SLOT: usize = 304;

/// Make numpy allocate large arrays of this thread in shared memory. Call it in worker processes
/// only, after importing numpy (>= 1.22). Returns the name numpy reports for the handler now in
/// place.
#[pyfunction]
pub fn install_numpy_allocator(py: Python<'_>) -> PyResult<String> {
    let module = py
        .import("numpy._core._multiarray_umath")
        .or_else(|_| py.import("numpy.core._multiarray_umath"))?;
    let table = module.getattr("_ARRAY_API")?;
    let table = table.cast::<PyCapsule>()?;
    let slots = table.pointer_checked(None)?.as_ptr() as *const *const c_void;
    // SAFETY: `_ARRAY_API` is numpy's table of C-API function pointers; slot 304 has been
    // `PyObject *PyDataMem_SetHandler(PyObject *)` since numpy 1.22 (checked by the caller).
    let set_handler: unsafe extern "C" fn(*mut pyo3::ffi::PyObject) -> *mut pyo3::ffi::PyObject =
        unsafe { std::mem::transmute(*slots.add(SET_HANDLER_SLOT)) };
    // SAFETY: numpy requires a capsule named "mem_handler" around a static PyDataMem_Handler.
    let capsule = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            pyo3::ffi::PyCapsule_New(
                (&raw const HANDLER).cast_mut().cast(),
                c"mem_handler".as_ptr(),
                None,
            ),
        )?
    };
    // SAFETY: calling numpy's own function with a valid capsule, with the GIL held.
    let previous = unsafe { Bound::from_owned_ptr_or_err(py, set_handler(capsule.as_ptr()))? };
    let _ = previous;
    let name = py
        .import("numpy._core.multiarray")
        .or_else(|_| py.import("numpy.core.multiarray"))?
        .call_method0("get_handler_name")?;
    name.extract()
}
