//! Large allocations born in shared memory.
//!
//! A worker's numpy arrays above a size are allocated here (see the numpy memory handler in
//! `ferrojob._core`): each is a shared-memory file (see [`crate::platform`]) mapped read-write. Returning such an array to the parent
//! then sends its descriptor — the data is not copied at all. Freeing unmaps it and closes the
//! descriptor; the parent's own mapping keeps the pages for as long as it needs them.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard};

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// Allocations smaller than this stay on the ordinary heap: a shared-memory file costs a few system calls.
pub const MIN_SHARED_ALLOCATION: usize = 1 << 20;
/// Each live shared allocation holds a descriptor; past this many, allocate on the heap, so that
/// a program holding many large arrays never runs out of descriptors.
pub const MAX_LIVE_ALLOCATIONS: usize = 256;

struct Allocation {
    len: usize,
    fd: OwnedFd,
}

// Keyed by start address.
static LIVE: Mutex<BTreeMap<usize, Allocation>> = Mutex::new(BTreeMap::new());

fn live() -> MutexGuard<'static, BTreeMap<usize, Allocation>> {
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A zero-filled shared allocation of `len` bytes, or None (too small, too many live, or the
/// system refused): the caller then uses the heap.
pub fn allocate(len: usize) -> Option<NonNull<u8>> {
    if len < MIN_SHARED_ALLOCATION || live().len() >= MAX_LIVE_ALLOCATIONS {
        return None;
    }
    let file = crate::platform::shared_memory_file(c"ferrojob-array").ok()?;
    file.set_len(u64::try_from(len).ok()?).ok()?;
    // The parent maps it when it is returned: nobody may shrink it under that mapping.
    crate::platform::seal_against_shrinking(file.as_fd()).ok()?;
    let fd = OwnedFd::from(file);
    // SAFETY: a fresh mapping of a file we own and never truncate; no existing memory is touched.
    let ptr = unsafe {
        mmap(
            None,
            NonZeroUsize::new(len)?,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            fd.as_fd(),
            0,
        )
    }
    .ok()?;
    // Populating 2 MiB pages is what makes anonymous memory fast: ask for them where granted.
    // SAFETY: the mapping was just made, by us.
    unsafe { crate::platform::advise_huge_pages(ptr, len) };
    live().insert(ptr.as_ptr() as usize, Allocation { len, fd });
    Some(ptr.cast())
}

/// Whether `ptr` was returned by [`allocate`] (and not freed yet).
pub fn owns(ptr: *const u8) -> bool {
    live().contains_key(&(ptr as usize))
}

/// The size of the live allocation at `ptr`.
pub fn size_of(ptr: *const u8) -> Option<usize> {
    live().get(&(ptr as usize)).map(|a| a.len)
}

/// Free an allocation made by [`allocate`]. Returns false (and does nothing) for other pointers.
///
/// # Safety
/// No reference into the allocation may be used afterwards.
pub unsafe fn free(ptr: *mut u8) -> bool {
    let Some(allocation) = live().remove(&(ptr as usize)) else {
        return false;
    };
    // SAFETY: (ptr, len) is exactly a mapping made by `allocate`; per the caller, unused now.
    let _ = unsafe { munmap(NonNull::new_unchecked(ptr.cast::<c_void>()), allocation.len) };
    drop(allocation.fd);
    true
}

/// If `len` bytes at `ptr` lie inside a live shared allocation: a new descriptor of it and the
/// offset of `ptr` inside it.
pub fn locate(ptr: *const u8, len: usize) -> Option<(OwnedFd, u64)> {
    let address = ptr as usize;
    let live = live();
    let (&start, allocation) = live.range(..=address).next_back()?;
    let offset = address - start;
    if offset.checked_add(len)? > allocation.len {
        return None;
    }
    let fd = allocation.fd.as_fd().try_clone_to_owned().ok()?;
    Some((fd, offset as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::{Access, Mapping};

    #[test]
    fn small_allocations_are_declined() {
        assert!(allocate(MIN_SHARED_ALLOCATION - 1).is_none());
    }

    #[test]
    fn an_allocation_is_visible_through_its_descriptor() {
        let len = MIN_SHARED_ALLOCATION * 2;
        let ptr = allocate(len).unwrap().as_ptr();
        assert!(owns(ptr));
        assert_eq!(size_of(ptr), Some(len));
        // SAFETY: every offset used below lies inside the fresh allocation of `len` bytes.
        let (inside, near_end) = unsafe { (ptr.add(4096), ptr.add(len - 10)) };
        // SAFETY: 100 bytes from `inside` are within the allocation.
        unsafe { inside.write_bytes(7, 100) };
        let (fd, offset) = locate(inside, 100).unwrap();
        assert_eq!(offset, 4096);
        assert!(locate(near_end, 100).is_none());
        let mapping = Mapping::map(fd, Access::CopyOnWrite).unwrap();
        // SAFETY: the mapping is `len` bytes long.
        let seen = unsafe { std::slice::from_raw_parts(mapping.as_ptr().add(4096), 100) };
        assert_eq!(seen, &[7u8; 100][..]);
        // SAFETY: nothing uses the allocation any more; the mapping has its own pages.
        assert!(unsafe { free(ptr) });
        assert!(!owns(ptr));
        // SAFETY: the parent's mapping outlives the worker's allocation.
        let still = unsafe { std::slice::from_raw_parts(mapping.as_ptr().add(4096), 100) };
        assert_eq!(still, &[7u8; 100][..]);
    }

    #[test]
    fn foreign_pointers_are_not_freed() {
        let mut on_stack = 0u8;
        // SAFETY: `free` declines pointers it did not allocate without touching them.
        assert!(!unsafe { free(&mut on_stack) });
    }
}
