//! Shared-memory segments: nameless shared-memory files mapped into both processes.
//!
//! A segment never has a name (a memfd, or a file unlinked as soon as it is made: see
//! [`crate::platform`]), so nothing outlives its last descriptor or mapping, even when a process
//! is SIGKILLed.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crossbeam_channel::{Receiver, Sender};

use crate::fork::PerProcess;

use memmap2::MmapMut;

use crate::platform::{self, seal_against_shrinking};

/// A shared-memory file of a fixed length, mapped read-write into this process.
#[derive(Debug)]
pub struct Segment {
    file: File,
    map: MmapMut,
}

impl Segment {
    /// Create and map a zero-filled segment of `len` bytes, sealed against shrinking.
    pub fn create(name: &CStr, len: usize) -> io::Result<Self> {
        let file = platform::shared_memory_file(name)?;
        file.set_len(len as u64)?;
        seal_against_shrinking(file.as_fd())?;
        Self::map(file)
    }

    /// Map a segment received from another process.
    pub fn open(fd: OwnedFd) -> io::Result<Self> {
        Self::map(File::from(fd))
    }

    fn map(file: File) -> io::Result<Self> {
        // SAFETY: the file is a shared-memory file that only ferrojob processes hold; they agree on its layout
        // and never truncate it, so the mapping stays backed for its whole life.
        let map = unsafe { MmapMut::map_mut(&file)? };
        Ok(Self { file, map })
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.map
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Segment {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// A worker's progress, published through shared memory so the parent can read it without a
/// message — even after the worker has died.
///
/// Word 0 holds the id of the job being run, word 1 how many of its tasks have started. The worker
/// bumps word 1 before each task (a single store), so the parent knows exactly which task a crash
/// or a timeout belongs to, and when the current task began.
#[derive(Debug)]
pub struct StatusPage {
    segment: Segment,
}

/// Index of the job-id word.
pub const STATUS_JOB: usize = 0;
/// Index of the tasks-started word.
pub const STATUS_TASKS_STARTED: usize = 1;
/// Index of the stop word: the parent sets it to 1 when the worker should stop its job after the
/// task it runs (it is over its memory cap and will be replaced); never cleared.
pub const STATUS_STOP: usize = 2;
/// Index of the lifeline word: 1 when the parent left the worker a lifeline (portable path: see
/// [`crate::platform`]).
pub const STATUS_LIFELINE: usize = 3;
/// Index of the peak-memory word: the worker's peak resident size in bytes, which it records
/// itself on the portable path.
pub const STATUS_PEAK_RSS: usize = 4;
const STATUS_WORDS: usize = 8;

impl StatusPage {
    pub fn create() -> io::Result<Self> {
        Ok(Self {
            segment: Segment::create(c"ferrojob-status", STATUS_WORDS * 8)?,
        })
    }

    pub fn open(fd: OwnedFd) -> io::Result<Self> {
        let segment = Segment::open(fd)?;
        if segment.len() < STATUS_WORDS * 8 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "status page is smaller than its layout",
            ));
        }
        Ok(Self { segment })
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        assert!(index < STATUS_WORDS);
        let base = self.segment.as_slice().as_ptr() as *const AtomicU64;
        // SAFETY: the mapping is page-aligned, at least STATUS_WORDS words long (checked at
        // creation/open) and lives as long as `self`; AtomicU64 has u64's layout and the other
        // process only ever does aligned 8-byte stores to it.
        unsafe { &*base.add(index) }
    }

    pub fn load(&self, index: usize) -> u64 {
        self.word(index).load(Ordering::Acquire)
    }

    pub fn store(&self, index: usize, value: u64) {
        self.word(index).store(value, Ordering::Release)
    }

    /// Start address of the words, for exposing them to the worker's Python code.
    pub fn words_ptr(&mut self) -> *mut u64 {
        self.segment.as_mut_ptr() as *mut u64
    }

    pub const fn n_words() -> usize {
        STATUS_WORDS
    }

    pub fn raw_fd(&self) -> RawFd {
        self.segment.raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_lets_go_of_maps_kept_too_long() {
        let stale = MmapMut::map_anon(REUSE_MIN_LEN).unwrap();
        let address = stale.as_ptr() as usize;
        let long_ago = std::time::Instant::now()
            .checked_sub(RESERVE_KEEP * 2)
            .unwrap();
        reserve().push((stale, long_ago));
        purge_reserve();
        assert!(reserve()
            .iter()
            .all(|(map, _)| map.as_ptr() as usize != address));
    }

    #[test]
    fn released_anonymous_memory_is_reused_by_a_call_it_fits() {
        let len = 3 << 20;
        let mut first = anonymous(len).unwrap();
        assert_eq!(first.len(), len);
        first.fill(7);
        let address = first.as_ptr() as usize;
        drop(first);
        // Other tests may take it from the reserve first: look for it among a few.
        let mut again: Vec<AnonymousMemory> =
            (0..8).map(|_| anonymous(len - 100).unwrap()).collect();
        let reused = again
            .iter()
            .find(|memory| memory.as_ptr() as usize == address);
        let reused = reused.expect("the released map was not reused");
        assert_eq!(reused.len(), len - 100); // the caller's length, not the map's
        assert_eq!(reused[0], 7); // its old bytes: callers write every byte they expose
        again.clear();
        // Far smaller requests do not take a large map; small maps are not kept at all.
        let small = anonymous(1 << 10).unwrap();
        assert_eq!(small.len(), 1 << 10);
        let tiny_address = small.as_ptr() as usize;
        drop(small);
        assert!(reserve()
            .iter()
            .all(|(map, _)| map.as_ptr() as usize != tiny_address));
        assert!(anonymous(len / 2).unwrap().len() == len / 2);
    }

    #[test]
    fn a_status_page_is_shared_between_two_mappings() {
        let page = StatusPage::create().unwrap();
        let dup = page.segment.as_fd().try_clone_to_owned().unwrap();
        let other = StatusPage::open(dup).unwrap();
        page.store(STATUS_TASKS_STARTED, 41);
        other.store(STATUS_JOB, 7);
        assert_eq!(other.load(STATUS_TASKS_STARTED), 41);
        assert_eq!(page.load(STATUS_JOB), 7);
    }

    #[test]
    fn lent_segments_cannot_shrink_under_a_mapping() {
        let mut file = SharedFile::create(c"t").unwrap();
        file.write_at(0, &[1u8; 8192]).unwrap();
        let fd = File::from(file.duplicate_fd().unwrap());
        let mapping =
            Mapping::map_segment(fd.try_clone().unwrap().into(), Access::ReadOnly).unwrap();
        fd.set_len(16384).unwrap(); // growing is fine
                                    // SAFETY: reading the last byte of a live 8192-byte mapping.
        assert_eq!(unsafe { *mapping.as_ptr().add(8191) }, 1);
        // Only the Linux path has seals (the portable path's limit: see crate::platform).
        if platform::path() == platform::EnginePath::Linux {
            assert!(fd.set_len(0).is_err(), "shrinking a lent segment must fail");
            let plain = tempfile_fd();
            assert!(Mapping::map_segment(plain, Access::ReadOnly).is_err());
        }
    }

    fn tempfile_fd() -> OwnedFd {
        let path = std::env::temp_dir().join(format!("ferrojob-shm-{}", std::process::id()));
        std::fs::write(&path, [0u8; 64]).unwrap();
        let file = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        file.into()
    }

    #[test]
    fn a_shared_file_written_again_holds_the_latest_bytes_whatever_the_way() {
        // Fresh bytes go through pwrite, bytes over earlier ones through a kept mapping (Linux
        // path), and a write past the end grows the file again: every byte must land.
        let mut file = SharedFile::create(c"t").unwrap();
        file.write_at(0, &[1u8; 10_000]).unwrap();
        let _lent = file.duplicate_fd().unwrap(); // sealed, as when lent
        file.write_at(100, &[2u8; 50]).unwrap();
        file.write_at(9_990, &[3u8; 30]).unwrap(); // crosses the end
        file.write_at(10_000, &[4u8; 15]).unwrap(); // inside the new end
        let mapping = Mapping::map(file.duplicate_fd().unwrap(), Access::ReadOnly).unwrap();
        // SAFETY: a live mapping of 10,020 bytes, read inside its bounds.
        let bytes = unsafe { std::slice::from_raw_parts(mapping.as_ptr(), mapping.len()) };
        assert_eq!(bytes.len(), 10_020);
        assert!(bytes[..100].iter().all(|&b| b == 1));
        assert!(bytes[100..150].iter().all(|&b| b == 2));
        assert!(bytes[150..9_990].iter().all(|&b| b == 1));
        assert!(bytes[9_990..10_000].iter().all(|&b| b == 3));
        assert!(bytes[10_000..10_015].iter().all(|&b| b == 4));
        assert!(bytes[10_015..].iter().all(|&b| b == 3));
    }

    #[test]
    fn a_segment_starts_zeroed_and_has_its_length() {
        let segment = Segment::create(c"t", 10_000).unwrap();
        assert_eq!(segment.len(), 10_000);
        assert!(segment.as_slice().iter().all(|&b| b == 0));
    }
}

/// A shared-memory file written here, for a reader that maps it in another process.
///
/// Fresh pages are written with `pwrite`: the kernel allocates them in bulk, with no page fault
/// per 4 KiB. A recycled file is written again through a mapping kept for its life (made once,
/// populated): a `memcpy` into pages that exist is about twice as fast as `pwrite` (50 MB: ~5 ms
/// against ~11 ms on the build machine). Only where lent files are sealed against shrinking
/// (the Linux path): elsewhere another process could cut the mapping short under us.
#[derive(Debug)]
pub struct SharedFile {
    file: File,
    len: usize,
    /// The first `len` bytes (at the time it was made) mapped writable, once written again.
    mapped: Option<MmapMut>,
}

impl SharedFile {
    /// A zero-length file that grows as it is written.
    pub fn create(name: &CStr) -> io::Result<Self> {
        Ok(Self {
            file: platform::shared_memory_file(name)?,
            len: 0,
            mapped: None,
        })
    }

    /// Allocate (and zero) the first `len` bytes now, so that later writes only copy.
    pub fn preallocate(&mut self, len: usize) -> io::Result<()> {
        platform::preallocate(&self.file, len as u64)
    }

    /// Write `bytes` at `offset` (the file grows to fit).
    pub fn write_at(&mut self, offset: usize, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let end = offset
            .checked_add(bytes.len())
            .ok_or_else(|| io::Error::other("write past the address space"))?;
        if end <= self.len && !bytes.is_empty() && platform::seals_shared_memory() {
            if !matches!(&self.mapped, Some(map) if map.len() >= end) {
                // SAFETY: the file is at least `len` bytes long (a write ended there) and cannot
                // shrink: it is sealed against it once lent (this path seals), and before that
                // no other process holds it. Writes through the map stay below `len`.
                let map = unsafe {
                    memmap2::MmapOptions::new()
                        .len(self.len)
                        .populate()
                        .map_mut(&self.file)?
                };
                self.mapped = Some(map);
            }
            if let Some(map) = self.mapped.as_mut() {
                map[offset..end].copy_from_slice(bytes);
                return Ok(());
            }
        }
        self.file.write_all_at(bytes, offset as u64)?;
        self.len = self.len.max(end);
        Ok(())
    }

    /// Bytes written so far (the end of the furthest write).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A new descriptor of the same file, to hand to another process: from then on the file
    /// can grow but never shrink, so the other process's mapping stays backed.
    pub fn duplicate_fd(&self) -> io::Result<OwnedFd> {
        seal_against_shrinking(self.file.as_fd())?;
        self.file.as_fd().try_clone_to_owned()
    }
}

impl AsFd for SharedFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// How a received segment is mapped, after numpy's `mmap_mode`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `'r'`: read-only; writing through it is refused.
    ReadOnly,
    /// `'r+'` / `'w+'`: writable and shared with every other mapping of the segment.
    ReadWrite,
    /// `'c'` (and results): writable, copy-on-write, private to this mapping.
    CopyOnWrite,
}

impl Access {
    pub fn code(self) -> u8 {
        match self {
            Access::ReadOnly => 0,
            Access::ReadWrite => 1,
            Access::CopyOnWrite => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Access::ReadOnly),
            1 => Some(Access::ReadWrite),
            2 => Some(Access::CopyOnWrite),
            _ => None,
        }
    }

    pub fn is_writable(self) -> bool {
        self != Access::ReadOnly
    }
}

/// A whole received segment, mapped with some [`Access`]; unmapped when dropped. The descriptor
/// is closed as soon as the mapping exists: the mapping alone keeps the memory.
///
/// The memory is handed to Python as a raw pointer (buffer protocol), so the mapping keeps the
/// pointer it was created with rather than borrowing the map object afresh.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    access: Access,
    owner: Option<MappedMemory>,
    on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

#[derive(Debug)]
enum MappedMemory {
    ReadOnly(memmap2::Mmap),
    Writable(MmapMut),
}

// SAFETY: a Mapping owns its pages exclusively (no other Rust value aliases them); the raw
// pointer is only a cached address of that owned mapping, valid from any thread.
unsafe impl Send for Mapping {}
// SAFETY: &Mapping only exposes the address and length; reads and writes through the address
// happen in Python under the buffer protocol's rules, as for any shared bytearray.
unsafe impl Sync for Mapping {}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("len", &self.len)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

impl Mapping {
    /// Map a shared-memory segment received from another process, after sealing it against
    /// shrinking: a descriptor that cannot be sealed (not a ferrojob memfd, on the Linux path) is refused.
    pub fn map_segment(fd: OwnedFd, access: Access) -> io::Result<Self> {
        seal_against_shrinking(fd.as_fd()).map_err(|error| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a shared-memory segment that cannot be sealed against shrinking: {error}"),
            )
        })?;
        Self::map(fd, access)
    }

    /// Map a file (a segment, or a file on disk for `load(mmap_mode=...)`).
    pub fn map(fd: OwnedFd, access: Access) -> io::Result<Self> {
        let file = File::from(fd);
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "segment too large"))?;
        if len == 0 {
            // Mapping zero bytes is an error (EINVAL): an empty segment maps to nothing.
            return Ok(Self {
                ptr: NonNull::dangling(),
                len,
                access,
                owner: None,
                on_drop: None,
            });
        }
        // SAFETY: ferrojob segments are shared-memory files that no process truncates after sending them, so
        // every mapped page stays backed while the mapping lives.
        let owner = unsafe {
            match access {
                Access::ReadOnly => MappedMemory::ReadOnly(memmap2::Mmap::map(&file)?),
                Access::ReadWrite => MappedMemory::Writable(MmapMut::map_mut(&file)?),
                Access::CopyOnWrite => {
                    MappedMemory::Writable(memmap2::MmapOptions::new().map_copy(&file)?)
                }
            }
        };
        let mut owner = owner;
        let raw = match &mut owner {
            MappedMemory::ReadOnly(map) => map.as_ptr().cast_mut(),
            MappedMemory::Writable(map) => map.as_mut_ptr(),
        };
        let ptr = NonNull::new(raw).expect("mmap never returns null");
        Ok(Self {
            ptr,
            len,
            access,
            owner: Some(owner),
            on_drop: None,
        })
    }

    /// Run `hook` when the mapping is dropped — when nothing can read it any more, so that
    /// whoever wrote the segment may write into it again.
    pub fn on_drop(mut self, hook: impl FnOnce() + Send + Sync + 'static) -> Self {
        self.on_drop = Some(Box::new(hook));
        self
    }

    pub fn access(&self) -> Access {
        self.access
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte of the mapping (dangling but non-null when empty). Writable unless the
    /// access is [`Access::ReadOnly`].
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Some(hook) = self.on_drop.take() {
            hook();
        }
        // Unmapping the last mapping of a segment frees its pages, which takes as long as
        // filling them: let the helper thread do it.
        if let Some(owner) = self.owner.take() {
            free_later(owner);
        }
    }
}

/// `(offset, len)` as memory indices if `len` bytes at `offset` lie inside `total` bytes: the one
/// bounds rule for buffers over memory whose offsets come from files and frames.
pub fn span_inside(offset: u64, len: u64, total: usize) -> Option<(usize, usize)> {
    let end = offset.checked_add(len)?;
    if end > total as u64 {
        return None;
    }
    Some((usize::try_from(offset).ok()?, usize::try_from(len).ok()?))
}

/// `len` bytes at `offset` of a shared mapping, which it keeps alive: an out-of-band buffer of a
/// received frame. Made only inside its mapping ([`SharedBuffer::new`] checks), so the memory it
/// names is always mapped.
#[derive(Clone)]
pub struct SharedBuffer {
    mapping: std::sync::Arc<Mapping>,
    offset: usize,
    len: usize,
}

impl SharedBuffer {
    /// The buffer at `offset..offset + len` of `mapping`; None unless it lies inside.
    pub fn new(mapping: std::sync::Arc<Mapping>, offset: u64, len: u64) -> Option<Self> {
        let (offset, len) = span_inside(offset, len, mapping.len())?;
        Some(Self {
            mapping,
            offset,
            len,
        })
    }

    pub fn mapping(&self) -> &std::sync::Arc<Mapping> {
        &self.mapping
    }

    pub fn offset(&self) -> usize {
        self.offset
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes (for tests and for the engine's own reads; Python reads through the pointer).
    pub fn to_vec(&self) -> Vec<u8> {
        if self.len == 0 {
            return Vec::new();
        }
        // SAFETY: offset + len lies inside the live mapping (checked by `new`), which `self`
        // keeps alive; the copy is taken at once.
        unsafe { std::slice::from_raw_parts(self.mapping.as_ptr().add(self.offset), self.len) }
            .to_vec()
    }
}

impl std::fmt::Debug for SharedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBuffer")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("access", &self.mapping.access())
            .finish()
    }
}

/// Work for the shared-memory helper thread: allocating segments ahead of time, and freeing
/// them, off the calling thread.
enum Chore {
    Prepare {
        name: &'static CStr,
        len: usize,
        reply: Sender<io::Result<SharedFile>>,
    },
    Free(Box<dyn Send>),
    /// A map entered the reserve: purge it once it has been kept too long.
    Wake,
}

fn helper() -> &'static Sender<Chore> {
    // Each process has its own helper: a forked child does not inherit the parent's thread.
    static HELPER: PerProcess<Sender<Chore>> = PerProcess::new();
    HELPER.get(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<Chore>();
        std::thread::Builder::new()
            .name("ferrojob-shm".into())
            .spawn(move || {
                loop {
                    // Wait for a chore; while the reserve holds maps, wake up to purge them.
                    let chore = if reserve().is_empty() {
                        rx.recv().ok()
                    } else {
                        match rx.recv_timeout(RESERVE_KEEP) {
                            Ok(chore) => Some(chore),
                            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Some(Chore::Wake),
                            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => None,
                        }
                    };
                    let Some(chore) = chore else { break };
                    match chore {
                        Chore::Prepare { name, len, reply } => {
                            let prepared = SharedFile::create(name).and_then(|mut file| {
                                file.preallocate(len)?;
                                Ok(file)
                            });
                            // Nobody waiting any more: the file is dropped here.
                            let _ = reply.send(prepared);
                        }
                        Chore::Free(value) => drop(value),
                        Chore::Wake => {}
                    }
                    purge_reserve();
                }
            })
            .expect("spawn the shared-memory helper thread");
        tx
    })
}

/// Drop `value` (a segment, a mapping) on the helper thread.
pub fn free_later(value: impl Send + 'static) {
    // The helper never hangs up; should it be gone, the value is dropped right here.
    let _ = helper().send(Chore::Free(Box::new(value)));
}

/// Ask the helper thread for a shared-memory file of `len` allocated bytes; receive it when needed.
pub fn prepare_later(name: &'static CStr, len: usize) -> Option<Receiver<io::Result<SharedFile>>> {
    let (reply, rx) = crossbeam_channel::bounded(1);
    helper()
        .send(Chore::Prepare { name, len, reply })
        .ok()
        .map(|()| rx)
}

/// How many bytes of released memory a process keeps for reuse, per pool (result segments of a
/// worker, anonymous maps of `load`): an eighth of the machine's memory shared by one process per
/// CPU, at most 1 GiB (24 GiB and 2 CPUs: 1 GiB; 4 GiB and 4 CPUs: 128 MiB). Writing into pages
/// that exist is far cheaper than into new ones, above all in a virtual machine, whose host may
/// have to back every new page: 512 MB of new pages took 0.05 to 0.6 s on the build machine.
pub fn reuse_budget() -> usize {
    static BYTES: OnceLock<usize> = OnceLock::new();
    *BYTES.get_or_init(|| {
        // SAFETY: sysconf only reads configuration values.
        let (pages, page_size) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let memory = usize::try_from(pages)
            .unwrap_or(0)
            .saturating_mul(usize::try_from(page_size).unwrap_or(0));
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        (memory / 8 / cpus).min(1 << 30)
    })
}

/// Maps smaller than this are not kept for reuse: new ones cost little.
const REUSE_MIN_LEN: usize = 1 << 20;

/// How long a released anonymous map is kept unused: long enough for a loop of loads to reuse
/// it, short enough that memory a program let go of leaves it soon (the helper thread unmaps it).
const RESERVE_KEEP: std::time::Duration = std::time::Duration::from_secs(10);

/// A released anonymous map and when it was released.
type Kept = (MmapMut, std::time::Instant);

/// Released anonymous maps, kept for the next [`anonymous`] call they fit (within
/// [`reuse_budget`] bytes in all, for at most [`RESERVE_KEEP`]); each process keeps its own.
static RESERVE: PerProcess<std::sync::Mutex<Vec<Kept>>> = PerProcess::new();

fn reserve() -> std::sync::MutexGuard<'static, Vec<Kept>> {
    RESERVE
        .get(|| std::sync::Mutex::new(Vec::new()))
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Unmap the reserve's maps kept longer than [`RESERVE_KEEP`] (outside the lock).
fn purge_reserve() {
    let expired: Vec<Kept> = {
        let mut kept = reserve();
        let (expired, fresh) = std::mem::take(&mut *kept)
            .into_iter()
            .partition(|(_, released)| released.elapsed() >= RESERVE_KEEP);
        *kept = fresh;
        expired
    };
    drop(expired);
}

/// Private anonymous memory for large outputs (decompressed sections, compressed bytes read),
/// with transparent huge pages requested: filling 512 MB of 2 MiB pages costs a fraction of
/// 4 KiB page faults. When dropped, a large map is kept for the next call it fits (at most a
/// quarter larger): its pages exist already. Its bytes are then those of its last use: callers
/// write every byte they expose (`Container::read_into` fills its output exactly or fails).
pub fn anonymous(len: usize) -> io::Result<AnonymousMemory> {
    if len >= REUSE_MIN_LEN {
        let mut kept = reserve();
        let fitting = kept
            .iter()
            .enumerate()
            .filter(|(_, (map, _))| map.len() >= len && map.len() - len <= len / 4)
            .min_by_key(|(_, (map, _))| map.len())
            .map(|(index, _)| index);
        if let Some(index) = fitting {
            let (map, _) = kept.swap_remove(index);
            return Ok(AnonymousMemory {
                map: Some(map),
                len,
            });
        }
    }
    let map = MmapMut::map_anon(len.max(1))?;
    crate::platform::advise_huge_pages_on(&map);
    Ok(AnonymousMemory {
        map: Some(map),
        len,
    })
}

/// Memory from [`anonymous`]: `len` bytes (of a map that may be larger), handed back to the
/// reserve when dropped.
#[derive(Debug)]
pub struct AnonymousMemory {
    map: Option<MmapMut>,
    len: usize,
}

impl std::ops::Deref for AnonymousMemory {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.map.as_ref().map_or(&[], |map| &map[..self.len])
    }
}

impl std::ops::DerefMut for AnonymousMemory {
    fn deref_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        self.map.as_mut().map_or(&mut [], |map| &mut map[..len])
    }
}

impl Drop for AnonymousMemory {
    fn drop(&mut self) {
        let Some(map) = self.map.take() else { return };
        if map.len() < REUSE_MIN_LEN {
            return;
        }
        let mut kept = reserve();
        let held: usize = kept.iter().map(|(kept, _)| kept.len()).sum();
        if held.saturating_add(map.len()) <= reuse_budget() {
            kept.push((map, std::time::Instant::now()));
            drop(kept);
            // The helper thread unmaps it if nothing reuses it in time.
            let _ = helper().send(Chore::Wake);
        }
    }
}
