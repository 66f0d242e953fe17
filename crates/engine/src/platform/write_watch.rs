//! Whether memory was written since a moment: the proof that lets a large buffer copied into
//! shared memory in one call be reused by the next call without reading it again.
//!
//! A content fingerprint answers the same question but reads the whole buffer (a 400 MB array
//! costs about as much as the tasks that use it). On Linux 6.7 and later the kernel can answer
//! from the page tables instead:
//!
//! - the buffer's pages are registered with a userfaultfd in *asynchronous write-protect* mode
//!   (`UFFD_FEATURE_WP_ASYNC`): a write to a protected page is let through by the kernel at
//!   once, and the page is marked written. Nothing waits on the descriptor; no thread serves it;
//! - `PAGEMAP_SCAN` on `/proc/self/pagemap` walks the range's page tables and reports pages that
//!   were written, or that are no longer present (dropped by `MADV_DONTNEED`, swapped out), in
//!   well under a millisecond for 400 MB.
//!
//! Every way of changing private anonymous memory goes through those page tables: the program's
//! own stores, a system call that writes into it (`read`), another process (`process_vm_writev`,
//! a debugger), a new mapping over it (no longer registered: the scan refuses). Only private
//! anonymous memory is watched: a shared or file-backed mapping can change through another
//! process's page tables or the file, which no page table here sees. Anything the watch cannot
//! vouch for (another userfaultfd on the range, KSM merging the pages, a swapped-out page)
//! reads as *written*: the cost of a false alarm is one copy, never stale data.
//!
//! One userfaultfd serves the whole process, and watched ranges may overlap (a buffer and a view
//! of it): protecting a range again erases what the scan knew of every range that overlaps it,
//! so each watched range carries an *epoch* that moves when that happens, and a [`Watch`] is
//! only believed while its range's epoch is the one it began in.
//!
//! Elsewhere (another system, an older kernel, userfaultfd forbidden, the portable path)
//! [`Watch::start`] returns `None` and the caller falls back to a fingerprint.

use crate::fork::Birth;

/// A watch over one buffer, from the moment it was started: its whole pages are watched for
/// writes; the bytes it has in the partial pages at either end, which it shares with other
/// memory (a neighbour's writes there are not its own), are compared by fingerprint.
#[derive(Debug)]
pub struct Watch {
    start: usize,
    end: usize,
    epoch: u64,
    edges: u128,
    birth: Birth,
}

impl Watch {
    /// Start watching `bytes` for writes, or `None` where this system cannot, or the buffer
    /// holds no whole page (then use a fingerprint). Start the watch *before* reading the bytes
    /// it is to vouch for (to copy them, or to check them against a copy): a write during that
    /// read is then seen by the next [`Watch::unchanged`].
    pub fn start(bytes: &[u8]) -> Option<Watch> {
        let split = Split::of(bytes)?;
        let epoch = imp::watcher()?.start(split.start, split.end)?;
        Some(Watch {
            start: split.start,
            end: split.end,
            epoch,
            edges: split.edges_fingerprint(),
            birth: Birth::here(),
        })
    }

    /// Whether `bytes` is unchanged since the watch started (no page written or dropped, the
    /// edges equal): `bytes` must be the memory the watch was started on (same address and
    /// length), and, being a live slice, is mapped.
    pub fn unchanged(&self, bytes: &[u8]) -> bool {
        let Some(split) = Split::of(bytes) else {
            return false;
        };
        (split.start, split.end) == (self.start, self.end)
            && self.birth.is_here()
            && imp::watcher()
                .is_some_and(|watcher| watcher.unchanged(self.start, self.end, self.epoch))
            && split.edges_fingerprint() == self.edges
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.birth.is_here() {
            if let Some(watcher) = imp::watcher() {
                watcher.release(self.start, self.end);
            }
        }
    }
}

/// A buffer cut at page boundaries: the whole pages inside it, `[start, end)` as addresses, and
/// its bytes before and after them.
struct Split<'a> {
    start: usize,
    end: usize,
    head: &'a [u8],
    tail: &'a [u8],
}

impl<'a> Split<'a> {
    /// `None` when `bytes` holds no whole page.
    fn of(bytes: &'a [u8]) -> Option<Self> {
        let page = page_size();
        let address = bytes.as_ptr() as usize;
        let start = address.checked_next_multiple_of(page)?;
        let past = address.checked_add(bytes.len())?;
        let end = past - past % page;
        if start >= end {
            return None;
        }
        Some(Split {
            start,
            end,
            head: &bytes[..start - address],
            tail: &bytes[end - address..],
        })
    }

    /// The fingerprint of the head and tail bytes (at most two pages).
    fn edges_fingerprint(&self) -> u128 {
        let mut edges = Vec::with_capacity(self.head.len() + self.tail.len());
        edges.extend_from_slice(self.head);
        edges.extend_from_slice(self.tail);
        crate::hash::fingerprint(&edges)
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

/// Whether this process can watch memory for writes (for tests and diagnostics).
pub fn available() -> bool {
    imp::watcher().is_some()
}

#[cfg(target_os = "linux")]
mod imp {
    use std::fs::File;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::{Mutex, MutexGuard};

    use crate::fork::PerProcess;
    use crate::platform::{self, EnginePath};

    // The kernel's ABI (include/uapi/linux/userfaultfd.h and fs.h, Linux 6.7), spelled out here
    // because the libc crate does not carry it yet.
    const UFFD_API: u64 = 0xAA;
    const UFFD_USER_MODE_ONLY: libc::c_int = 1;
    const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
    const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
    const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
    const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
    const PAGE_IS_WRITTEN: u64 = 1 << 1;
    const PAGE_IS_PRESENT: u64 = 1 << 3;
    const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

    #[repr(C)]
    struct UffdioApi {
        api: u64,
        features: u64,
        ioctls: u64,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct UffdioRange {
        start: u64,
        len: u64,
    }

    #[repr(C)]
    struct UffdioRegister {
        range: UffdioRange,
        mode: u64,
        ioctls: u64,
    }

    #[repr(C)]
    struct UffdioWriteprotect {
        range: UffdioRange,
        mode: u64,
    }

    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct PageRegion {
        start: u64,
        end: u64,
        categories: u64,
    }

    #[repr(C)]
    struct PmScanArg {
        size: u64,
        flags: u64,
        start: u64,
        end: u64,
        walk_end: u64,
        vec: u64,
        vec_len: u64,
        max_pages: u64,
        category_inverted: u64,
        category_mask: u64,
        category_anyof_mask: u64,
        return_mask: u64,
    }

    /// `_IOWR(kind, number, size)` and `_IOR` as the kernel encodes them.
    const fn ioctl_number(direction: u64, kind: u8, number: u8, size: usize) -> u64 {
        (direction << 30) | ((size as u64) << 16) | ((kind as u64) << 8) | number as u64
    }
    const READ_WRITE: u64 = 3;
    const READ: u64 = 2;
    const UFFDIO_API: u64 = ioctl_number(READ_WRITE, 0xAA, 0x3F, size_of::<UffdioApi>());
    const UFFDIO_REGISTER: u64 = ioctl_number(READ_WRITE, 0xAA, 0x00, size_of::<UffdioRegister>());
    const UFFDIO_UNREGISTER: u64 = ioctl_number(READ, 0xAA, 0x01, size_of::<UffdioRange>());
    const UFFDIO_WRITEPROTECT: u64 =
        ioctl_number(READ_WRITE, 0xAA, 0x06, size_of::<UffdioWriteprotect>());
    const PAGEMAP_SCAN: u64 = ioctl_number(READ_WRITE, b'f', 16, size_of::<PmScanArg>());

    /// One `ioctl` whose argument is `arg`; true when it succeeded.
    fn ioctl<T>(fd: &impl AsRawFd, request: u64, arg: &mut T) -> bool {
        // SAFETY: `request` encodes the size of `T`, a `#[repr(C)]` struct the kernel reads and
        // writes in place; `arg` is a live, exclusive reference for the call's duration.
        unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::Ioctl, arg as *mut T) >= 0 }
    }

    /// A watched range and the watches that share it.
    struct Range {
        start: usize,
        end: usize,
        epoch: u64,
        watches: usize,
    }

    /// The process's userfaultfd, its pagemap and the ranges it watches.
    pub(super) struct Watcher {
        uffd: OwnedFd,
        pagemap: File,
        ranges: Mutex<Vec<Range>>,
    }

    /// This process's watcher, made on first use (a forked child makes its own: a userfaultfd
    /// and `/proc/self/pagemap` act on the process that opened them).
    pub(super) fn watcher() -> Option<&'static Watcher> {
        static WATCHER: PerProcess<Option<Watcher>> = PerProcess::new();
        WATCHER.get(Watcher::open).as_ref()
    }

    impl Watcher {
        fn open() -> Option<Watcher> {
            if platform::path() != EnginePath::Linux {
                return None;
            }
            // User-mode-only descriptors need no privilege (vm.unprivileged_userfaultfd=0); in
            // asynchronous mode the kernel resolves every write fault itself, from user or
            // kernel mode alike.
            // SAFETY: a plain system call with integer flags; it returns a new descriptor or -1.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_userfaultfd,
                    libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY,
                )
            };
            let fd = libc::c_int::try_from(fd).ok().filter(|&fd| fd >= 0)?;
            // SAFETY: the kernel just gave us this descriptor, and nothing else owns it.
            let uffd = unsafe { OwnedFd::from_raw_fd(fd) };
            let wanted = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
            let mut api = UffdioApi {
                api: UFFD_API,
                features: wanted,
                ioctls: 0,
            };
            if !ioctl(&uffd, UFFDIO_API, &mut api) || api.features & wanted != wanted {
                return None;
            }
            let pagemap = File::open("/proc/self/pagemap").ok()?;
            let watcher = Watcher {
                uffd,
                pagemap,
                ranges: Mutex::new(Vec::new()),
            };
            // Kernels before 6.7 know the userfaultfd features but not PAGEMAP_SCAN.
            watcher.scan_is_clean(0, 0).then_some(watcher)
        }

        fn ranges(&self) -> MutexGuard<'_, Vec<Range>> {
            self.ranges
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        }

        /// Watch `[start, end)` from now: returns the epoch the watch begins in.
        pub(super) fn start(&self, start: usize, end: usize) -> Option<u64> {
            let mut ranges = self.ranges();
            let known = ranges.iter().any(|r| (r.start, r.end) == (start, end));
            // Protected (by this watch or one overlapping it) and not written since: the pages
            // already report the next write, so join without protecting again.
            if self.scan_is_clean(start, end) && (known || private_anonymous(start, end)) {
                return Some(Self::join(&mut ranges, start, end));
            }
            // Registered again even when known: the memory may have been unmapped and mapped
            // anew at the same address, without the registration.
            if !private_anonymous(start, end) || !self.register(start, end) {
                return None;
            }
            let mut protect = UffdioWriteprotect {
                range: UffdioRange {
                    start: start as u64,
                    len: (end - start) as u64,
                },
                mode: UFFDIO_WRITEPROTECT_MODE_WP,
            };
            if !ioctl(&self.uffd, UFFDIO_WRITEPROTECT, &mut protect) {
                if !known {
                    self.unregister(&ranges, start, end);
                }
                return None;
            }
            // Protecting again erased what was known of every range overlapping this one.
            for range in ranges.iter_mut().filter(|r| r.start < end && start < r.end) {
                range.epoch += 1;
            }
            Some(Self::join(&mut ranges, start, end))
        }

        /// One more watch of `[start, end)`, in its current epoch.
        fn join(ranges: &mut Vec<Range>, start: usize, end: usize) -> u64 {
            match ranges.iter_mut().find(|r| (r.start, r.end) == (start, end)) {
                Some(range) => {
                    range.watches += 1;
                    range.epoch
                }
                None => {
                    ranges.push(Range {
                        start,
                        end,
                        epoch: 0,
                        watches: 1,
                    });
                    0
                }
            }
        }

        /// Whether `[start, end)` is unwritten since the watch that began in `epoch`.
        pub(super) fn unchanged(&self, start: usize, end: usize, epoch: u64) -> bool {
            let ranges = self.ranges();
            ranges
                .iter()
                .any(|r| (r.start, r.end, r.epoch) == (start, end, epoch))
                && self.scan_is_clean(start, end)
        }

        /// One watch of `[start, end)` ended; the last one stops watching it (unless a range
        /// that overlaps it is still watched: unregistering would stop that one too).
        pub(super) fn release(&self, start: usize, end: usize) {
            let mut ranges = self.ranges();
            let Some(index) = ranges.iter().position(|r| (r.start, r.end) == (start, end)) else {
                return;
            };
            ranges[index].watches -= 1;
            if ranges[index].watches == 0 {
                ranges.swap_remove(index);
                self.unregister(&ranges, start, end);
            }
        }

        fn register(&self, start: usize, end: usize) -> bool {
            let mut register = UffdioRegister {
                range: UffdioRange {
                    start: start as u64,
                    len: (end - start) as u64,
                },
                mode: UFFDIO_REGISTER_MODE_WP,
                ioctls: 0,
            };
            ioctl(&self.uffd, UFFDIO_REGISTER, &mut register)
        }

        fn unregister(&self, others: &[Range], start: usize, end: usize) {
            if others.iter().any(|r| r.start < end && start < r.end) {
                return;
            }
            let mut range = UffdioRange {
                start: start as u64,
                len: (end - start) as u64,
            };
            // Fails harmlessly if the memory was unmapped since (its registration went with it).
            ioctl(&self.uffd, UFFDIO_UNREGISTER, &mut range);
        }

        /// Whether every page of `[start, end)` is present and unwritten since it was last
        /// protected. Any doubt (an error, a range not watched by this descriptor) is "no".
        fn scan_is_clean(&self, start: usize, end: usize) -> bool {
            let mut found = [PageRegion::default(); 1];
            let mut scan = PmScanArg {
                size: size_of::<PmScanArg>() as u64,
                // Refuse (EPERM) a range that is not write-protected in asynchronous mode.
                flags: PM_SCAN_CHECK_WPASYNC,
                start: start as u64,
                end: end as u64,
                walk_end: 0,
                vec: found.as_mut_ptr() as u64,
                vec_len: found.len() as u64,
                max_pages: 1,
                // Report a page that is written, or not present.
                category_inverted: PAGE_IS_PRESENT,
                category_mask: 0,
                category_anyof_mask: PAGE_IS_WRITTEN | PAGE_IS_PRESENT,
                return_mask: PAGE_IS_WRITTEN | PAGE_IS_PRESENT,
            };
            // SAFETY: as in `ioctl`: PAGEMAP_SCAN encodes the size of `PmScanArg`; the kernel
            // writes at most `vec_len` regions into `found`, which outlives the call.
            let n = unsafe {
                libc::ioctl(
                    self.pagemap.as_raw_fd(),
                    PAGEMAP_SCAN as libc::Ioctl,
                    &mut scan as *mut PmScanArg,
                )
            };
            n == 0 && scan.walk_end == end as u64
        }
    }

    /// Whether every mapping over `[start, end)` is private and anonymous (the only memory whose
    /// every write goes through this process's page tables), from `/proc/self/maps`.
    fn private_anonymous(start: usize, end: usize) -> bool {
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return false;
        };
        let mut covered = start;
        for line in maps.lines() {
            let Some(mapping) = Mapping::parse(line) else {
                return false;
            };
            if mapping.end <= covered || mapping.start >= end {
                continue;
            }
            if mapping.start > covered || !mapping.private_anonymous {
                return false;
            }
            covered = mapping.end;
            if covered >= end {
                return true;
            }
        }
        false
    }

    /// One line of `/proc/self/maps`: `start-end perms offset dev inode [path]`.
    struct Mapping {
        start: usize,
        end: usize,
        private_anonymous: bool,
    }

    impl Mapping {
        fn parse(line: &str) -> Option<Mapping> {
            let mut fields = line.split_ascii_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?;
            let _offset = fields.next()?;
            let _device = fields.next()?;
            let inode = fields.next()?;
            // Anonymous memory has no file (inode 0); a name, if any, is the kernel's ("[heap]",
            // "[anon:...]"), never a path ("/memfd:...", "/dev/zero (deleted)" are shared).
            let name = fields.next().unwrap_or("");
            Some(Mapping {
                start: usize::from_str_radix(start, 16).ok()?,
                end: usize::from_str_radix(end, 16).ok()?,
                private_anonymous: perms.as_bytes().get(3) == Some(&b'p')
                    && inode == "0"
                    && !name.starts_with('/'),
            })
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    /// No write watch off Linux.
    pub(super) enum Watcher {}

    impl Watcher {
        pub(super) fn start(&self, _: usize, _: usize) -> Option<u64> {
            match *self {}
        }
        pub(super) fn unchanged(&self, _: usize, _: usize, _: u64) -> bool {
            match *self {}
        }
        pub(super) fn release(&self, _: usize, _: usize) {
            match *self {}
        }
    }

    pub(super) fn watcher() -> Option<&'static Watcher> {
        None
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// A private anonymous buffer of `pages` pages, like a large numpy array's.
    struct Anonymous(memmap2::MmapMut);

    impl Anonymous {
        fn new(pages: usize) -> Self {
            let mut map = memmap2::MmapMut::map_anon(pages * page_size()).expect("mmap");
            map.fill(1);
            Self(map)
        }

        fn bytes(&self) -> &[u8] {
            &self.0
        }

        fn bytes_mut(&mut self) -> &mut [u8] {
            &mut self.0
        }
    }

    fn watching() -> bool {
        let supported = available();
        if !supported {
            eprintln!("this kernel cannot watch memory for writes; skipped");
        }
        supported
    }

    #[test]
    fn a_write_after_the_start_is_seen_and_none_before() {
        if !watching() {
            return;
        }
        let mut buffer = Anonymous::new(64);
        buffer.bytes_mut()[10] = 2; // before the watch: not a change
        let watch = Watch::start(buffer.bytes()).expect("anonymous memory can be watched");
        assert!(watch.unchanged(buffer.bytes()));
        assert!(watch.unchanged(buffer.bytes()), "checking is not a change");
        buffer.bytes_mut()[5 * 4096 + 7] = 3;
        assert!(!watch.unchanged(buffer.bytes()));
        assert!(!watch.unchanged(buffer.bytes()), "a change stays seen");
        drop(watch);
        let again = Watch::start(buffer.bytes()).expect("watched again");
        assert!(again.unchanged(buffer.bytes()));
    }

    #[test]
    fn a_system_call_writing_into_the_buffer_is_a_change() {
        if !watching() {
            return;
        }
        let mut buffer = Anonymous::new(16);
        let watch = Watch::start(buffer.bytes()).expect("watched");
        let mut fds = [0; 2];
        // SAFETY: a new pipe into a local array; both ends closed below.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let target = buffer.bytes_mut()[8000..8003].as_mut_ptr();
        // SAFETY: writing 3 bytes from a static into the pipe, then reading them back into 3
        // bytes of our own buffer (the kernel writes them, not this process's code).
        let read = unsafe {
            libc::write(fds[1], b"new".as_ptr().cast(), 3);
            let read = libc::read(fds[0], target.cast(), 3);
            libc::close(fds[0]);
            libc::close(fds[1]);
            read
        };
        assert_eq!(read, 3);
        assert!(!watch.unchanged(buffer.bytes()));
    }

    #[test]
    fn dropped_pages_are_a_change() {
        if !watching() {
            return;
        }
        let buffer = Anonymous::new(16);
        let watch = Watch::start(buffer.bytes()).expect("watched");
        // SAFETY: discarding one page of our own mapping (it reads as zeros afterwards).
        let advised = unsafe {
            libc::madvise(
                buffer.0.as_ptr().add(4096) as *mut _,
                4096,
                libc::MADV_DONTNEED,
            )
        };
        assert_eq!(advised, 0);
        assert!(!watch.unchanged(buffer.bytes()));
    }

    #[test]
    fn overlapping_watches_never_hide_a_write_from_each_other() {
        if !watching() {
            return;
        }
        let mut buffer = Anonymous::new(32);
        let whole = Watch::start(buffer.bytes()).expect("watched");
        let head = Watch::start(&buffer.bytes()[..8 * 4096]).expect("watched");
        assert!(whole.unchanged(buffer.bytes()));
        buffer.bytes_mut()[100] = 9;
        // The head's watch sees the write and starts over, protecting its pages again: the
        // whole buffer's watch must still answer "changed".
        assert!(!head.unchanged(&buffer.bytes()[..8 * 4096]));
        drop(head);
        let head = Watch::start(&buffer.bytes()[..8 * 4096]).expect("watched again");
        assert!(head.unchanged(&buffer.bytes()[..8 * 4096]));
        assert!(!whole.unchanged(buffer.bytes()));
    }

    #[test]
    fn two_watches_of_one_buffer_share_it() {
        if !watching() {
            return;
        }
        let mut buffer = Anonymous::new(8);
        let first = Watch::start(buffer.bytes()).expect("watched");
        let second = Watch::start(buffer.bytes()).expect("watched");
        assert!(first.unchanged(buffer.bytes()) && second.unchanged(buffer.bytes()));
        drop(first);
        assert!(second.unchanged(buffer.bytes()), "the other watch goes on");
        buffer.bytes_mut()[0] = 4;
        assert!(!second.unchanged(buffer.bytes()));
    }

    #[test]
    fn memory_mapped_anew_at_the_same_address_is_a_change_and_can_be_watched_again() {
        if !watching() {
            return;
        }
        let buffer = Anonymous::new(8);
        let watch = Watch::start(buffer.bytes()).expect("watched");
        // SAFETY: replacing our own mapping's pages in place with fresh (zero) ones.
        let remapped = unsafe {
            libc::mmap(
                buffer.0.as_ptr() as *mut _,
                buffer.0.len(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        assert_eq!(remapped, buffer.0.as_ptr() as *mut _);
        assert!(
            !watch.unchanged(buffer.bytes()),
            "the new mapping is not registered"
        );
        let again = Watch::start(buffer.bytes()).expect("registered again");
        // Pages never touched are not there yet (read as "changed") until read, as copying the
        // buffer does: reading maps the zero page, which stays write-protected.
        assert!(buffer.bytes().iter().all(|&byte| byte == 0));
        assert!(again.unchanged(buffer.bytes()));
        let mut buffer = buffer;
        buffer.bytes_mut()[3 * 4096] = 1;
        assert!(!again.unchanged(buffer.bytes()));
    }

    #[test]
    fn a_buffer_sharing_its_edge_pages_sees_its_own_writes_there_and_not_its_neighbours() {
        if !watching() {
            return;
        }
        let mut memory = Anonymous::new(16);
        let (from, to) = (100, 12 * 4096 + 50); // starts and ends inside a page
        let watch = Watch::start(&memory.bytes()[from..to]).expect("watched");
        memory.bytes_mut()[10] = 5; // a neighbour on its first page
        memory.bytes_mut()[to + 10] = 5; // and on its last
        assert!(watch.unchanged(&memory.bytes()[from..to]));
        memory.bytes_mut()[to - 1] = 5; // its own last byte
        assert!(!watch.unchanged(&memory.bytes()[from..to]));
        assert!(
            Watch::start(&memory.bytes()[10..4000]).is_none(),
            "no whole page"
        );
    }

    #[test]
    fn shared_memory_is_not_watched() {
        if !watching() {
            return;
        }
        // SAFETY: a fresh shared anonymous mapping, unmapped below.
        let pointer = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8 * 4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(pointer, libc::MAP_FAILED);
        // SAFETY: the mapping is 8 pages, alive until the munmap below.
        let bytes = unsafe { std::slice::from_raw_parts(pointer.cast::<u8>(), 8 * 4096) };
        assert!(Watch::start(bytes).is_none());
        // SAFETY: unmapping our own mapping, no longer borrowed.
        unsafe { libc::munmap(pointer, 8 * 4096) };
    }

    #[test]
    fn another_buffer_at_another_address_is_never_vouched_for() {
        if !watching() {
            return;
        }
        let buffer = Anonymous::new(8);
        let other = Anonymous::new(8);
        let watch = Watch::start(buffer.bytes()).expect("watched");
        assert!(!watch.unchanged(other.bytes()));
        assert!(!watch.unchanged(&buffer.bytes()[..4096]));
    }
}
