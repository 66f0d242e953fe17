//! What the engine asks of the operating system beyond POSIX: the one module that knows which
//! path it runs.
//!
//! Two paths, chosen once per process (see [`path`]):
//!
//! - **Linux** (the default there): shared memory is an anonymous memfd, sealed so that no
//!   process can shrink it under another's mapping; a worker dies with its parent through
//!   `prctl(PR_SET_PDEATHSIG)`; a worker's resident memory is read from `/proc/<pid>/statm`.
//! - **Portable** (every other POSIX system, and Linux with `FERROJOB_PORTABLE=1` or the
//!   `portable` cargo feature): shared memory is a file created and at once unlinked in a
//!   memory-backed directory (`/dev/shm` where it exists, else the temporary directory), so it
//!   also has no name once made; a worker watches a *lifeline* pipe whose only writer is its
//!   parent and kills itself when the pipe reports end-of-file; a worker's memory is its peak
//!   resident size (`getrusage`), which the worker writes on its status page.
//!
//! What the portable path gives up: no seals, so a task that truncates a descriptor it finds
//! can make a reader of that segment die of SIGBUS (the Linux path refuses the truncation); the
//! memory cap is checked against the worker's peak, not its current, resident size; and a
//! process forked (without exec) from the parent keeps the lifeline open, so workers outlive a
//! parent that dies while such a child lives.
//!
//! On the Linux path only, a large argument reused by a later call is proven unchanged by
//! watching its pages for writes ([`write_watch`]); the portable path reads it again for a
//! fingerprint.
//!
//! Compile-time facts of the target (the socket flags, huge-page advice) are not part of the
//! runtime choice: they follow the target, whichever path runs.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::OnceLock;

use nix::sys::socket::MsgFlags;

pub mod write_watch;

/// The worker's end of its lifeline, on the portable path (fd 3 is its socket, 4 its status page).
pub const WORKER_LIFELINE_FD: RawFd = 5;
/// How often a portable worker looks at its lifeline and records its peak memory.
const WATCH_TICK_MS: u16 = 20;

/// Which of the two paths this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnginePath {
    Linux,
    Portable,
}

impl EnginePath {
    pub fn name(self) -> &'static str {
        match self {
            EnginePath::Linux => "linux",
            EnginePath::Portable => "portable",
        }
    }
}

/// The path of this process, decided at its first use: portable off Linux, with the `portable`
/// feature, or when `FERROJOB_PORTABLE=1`. Workers inherit the variable, so they agree with the
/// parent that started them.
pub fn path() -> EnginePath {
    static PATH: OnceLock<EnginePath> = OnceLock::new();
    *PATH.get_or_init(|| {
        let forced = cfg!(feature = "portable")
            || std::env::var_os("FERROJOB_PORTABLE").is_some_and(|value| value == "1");
        if cfg!(target_os = "linux") && !forced {
            EnginePath::Linux
        } else {
            EnginePath::Portable
        }
    })
}

fn portable() -> bool {
    path() == EnginePath::Portable
}

// ---------------------------------------------------------------------------------------------
// Shared memory

/// A new, empty, nameless file for shared memory, closed on exec.
pub fn shared_memory_file(name: &CStr) -> io::Result<File> {
    #[cfg(target_os = "linux")]
    if !portable() {
        return linux::memfd(name).map(File::from);
    }
    unlinked_file(name)
}

/// Forbid shrinking a shared-memory file for every process that holds it (Linux path: a seal;
/// fails for a descriptor that is not a sealable memfd, what a broken or hostile peer could
/// send). The portable path has no seals: see the module docs.
pub fn seal_against_shrinking(fd: BorrowedFd<'_>) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    if !portable() {
        return linux::seal_against_shrinking(fd);
    }
    let _ = fd;
    Ok(())
}

/// Whether shared-memory files are sealed against shrinking when lent ([`seal_against_shrinking`]
/// does something): only then may this process write one through a mapping without another
/// process being able to cut the mapping short under it (SIGBUS).
pub fn seals_shared_memory() -> bool {
    cfg!(target_os = "linux") && !portable()
}

/// Allocate the first `len` bytes of `file` now (zero-filled), so that later writes only copy.
pub fn preallocate(file: &File, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let len = libc::off_t::try_from(len).map_err(|_| io::Error::other("length too large"))?;
        nix::fcntl::fallocate(file, nix::fcntl::FallocateFlags::empty(), 0, len)
            .map_err(io::Error::from)
    }
    #[cfg(not(target_os = "linux"))]
    {
        // No fallocate: growing the file is enough (its pages are allocated as they are written).
        if file.metadata()?.len() < len {
            file.set_len(len)?;
        }
        Ok(())
    }
}

/// Ask for huge pages on a fresh shared mapping, where the kernel grants them on request
/// (Linux's `shmem_enabled=advise`); elsewhere nothing.
///
/// # Safety
/// `ptr..ptr+len` must be a mapping this process just made and owns.
pub unsafe fn advise_huge_pages(ptr: std::ptr::NonNull<std::ffi::c_void>, len: usize) {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::mman::{madvise, MmapAdvise};
        // SAFETY: per the caller; advice does not change the mapping's contents.
        let _ = unsafe { madvise(ptr, len, MmapAdvise::MADV_HUGEPAGE) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}

/// [`advise_huge_pages`] for a mapping this process owns through memmap2.
pub fn advise_huge_pages_on(map: &memmap2::MmapMut) {
    #[cfg(target_os = "linux")]
    {
        // Advice only: where THP is off, the memory works the same.
        let _ = map.advise(memmap2::Advice::HugePage);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = map;
}

/// Portable shared memory: a file created exclusively in a memory-backed directory and unlinked
/// at once, so that, like a memfd, it lives exactly as long as its descriptors and mappings.
fn unlinked_file(name: &CStr) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};

    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = shared_memory_dir();
    let label = name.to_string_lossy();
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let file_path = dir.join(format!(".{label}-{}-{n}", std::process::id()));
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&file_path);
        match opened {
            Ok(file) => {
                std::fs::remove_file(&file_path)?;
                return Ok(file);
            }
            // Left by a process that died between open and unlink: take the next number.
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => {
                return Err(io::Error::new(
                    err.kind(),
                    format!("cannot create shared memory in {}: {err}", dir.display()),
                ))
            }
        }
    }
}

fn shared_memory_dir() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dev_shm = std::path::Path::new("/dev/shm");
        if dev_shm.is_dir() {
            dev_shm.to_path_buf()
        } else {
            std::env::temp_dir()
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The socket

/// Flags for `sendmsg`: no SIGPIPE where the flag exists (elsewhere ferrojob's processes are
/// Python interpreters, which ignore SIGPIPE).
pub fn send_flags() -> MsgFlags {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    return MsgFlags::MSG_NOSIGNAL;
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    return MsgFlags::empty();
}

/// Flags for `recvmsg`: received descriptors closed on exec, atomically where the flag exists.
pub fn receive_flags() -> MsgFlags {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    return MsgFlags::MSG_CMSG_CLOEXEC;
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    return MsgFlags::empty();
}

/// Mark a received descriptor close-on-exec where [`receive_flags`] could not.
pub fn close_on_exec(fd: &OwnedFd) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    let _ = fd;
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Workers: dying with the parent, and their memory

/// What a worker about to be spawned needs so that it dies with its parent: prepared in the
/// parent, applied in the child between fork and exec (see [`ParentDeath::in_child`]).
pub struct ParentDeath {
    /// The lifeline's read end (portable path), to be placed on [`WORKER_LIFELINE_FD`].
    lifeline: Option<RawFd>,
}

impl ParentDeath {
    /// Prepare for one worker (on the portable path, the lifeline it will watch).
    pub fn prepare() -> io::Result<Self> {
        if !portable() {
            return Ok(Self { lifeline: None });
        }
        Ok(Self {
            lifeline: Some(lifeline::read_end()?),
        })
    }

    /// Whether the worker gets a lifeline on [`WORKER_LIFELINE_FD`] (the pool tells it so on its
    /// status page, and the worker then calls [`watch_parent`]).
    pub fn has_lifeline(&self) -> bool {
        self.lifeline.is_some()
    }

    /// In the forked child, before exec: arrange to die with the parent. Only async-signal-safe
    /// calls on plain integers.
    pub fn in_child(&self) -> io::Result<()> {
        match self.lifeline {
            Some(read_end) => {
                // SAFETY: dup2 on descriptors that are open in this (forked) process.
                if unsafe { libc::dup2(read_end, WORKER_LIFELINE_FD) } < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }
            None => {
                #[cfg(target_os = "linux")]
                // SAFETY: prctl with constant arguments.
                if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }
        }
    }
}

/// In a worker given a lifeline: watch it on a thread of its own, which kills this process when
/// the parent is gone and, every tick, hands this process's peak memory to `record_peak` when
/// it changed.
///
/// # Safety
/// The caller must be a worker started by the pool with a lifeline, and call this at most once:
/// the lifeline descriptor is adopted as owned.
pub unsafe fn watch_parent(record_peak: impl Fn(u64) + Send + 'static) -> io::Result<()> {
    // SAFETY: per the contract above, the pool installed the lifeline for us alone.
    let lifeline = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(WORKER_LIFELINE_FD) };
    std::thread::Builder::new()
        .name("ferrojob-lifeline".into())
        .spawn(move || lifeline::watch(&lifeline, record_peak))?;
    Ok(())
}

/// A worker's resident memory in bytes as the memory cap reads it: current on the Linux path
/// (from `/proc`), else `reported_peak`, the peak the worker reported on its status page (0:
/// none yet); None when unknown.
pub fn worker_memory(pid: nix::unistd::Pid, reported_peak: u64) -> Option<u64> {
    #[cfg(target_os = "linux")]
    if !portable() {
        return linux::resident_bytes(pid);
    }
    let _ = pid;
    Some(reported_peak).filter(|&bytes| bytes > 0)
}

/// This process's peak resident size in bytes.
pub fn own_peak_rss() -> Option<u64> {
    // SAFETY: getrusage writes only into the struct passed by pointer, which outlives the call.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return None;
        }
        usage
    };
    max_rss_bytes(usage.ru_maxrss)
}

/// Seconds on the clock Python's `time.monotonic()` reads (system-wide, so a worker's and its
/// parent's readings compare): `CLOCK_MONOTONIC`, or on Apple `CLOCK_UPTIME_RAW`
/// (`mach_absolute_time`'s clock).
pub fn monotonic_seconds() -> f64 {
    #[cfg(target_vendor = "apple")]
    let clock = libc::CLOCK_UPTIME_RAW;
    #[cfg(not(target_vendor = "apple"))]
    let clock = libc::CLOCK_MONOTONIC;
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the timespec passed by pointer, which outlives
    // the call; the clock exists on every target this crate builds for.
    unsafe { libc::clock_gettime(clock, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

/// `ru_maxrss` in bytes: the kernel counts KiB on Linux and bytes on macOS.
pub fn max_rss_bytes(ru_maxrss: libc::c_long) -> Option<u64> {
    let value = u64::try_from(ru_maxrss).ok()?;
    if cfg!(target_vendor = "apple") {
        Some(value)
    } else {
        value.checked_mul(1024)
    }
}

mod lifeline {
    //! The portable path's parent-death signal: one pipe per process, whose write end only this
    //! process holds (close-on-exec, so no worker inherits it); each worker holds a read end and
    //! sees end-of-file when the parent is gone, however it died.

    use super::*;
    use crate::fork::PerProcess;

    struct Pipe {
        read: OwnedFd,
        _write: OwnedFd,
    }

    // A forked child makes its own: its workers must watch it, not its parent.
    static PIPE: PerProcess<io::Result<Pipe>> = PerProcess::new();

    pub(super) fn read_end() -> io::Result<RawFd> {
        match PIPE.get(make) {
            Ok(pipe) => Ok(pipe.read.as_raw_fd()),
            Err(err) => Err(io::Error::new(err.kind(), format!("lifeline pipe: {err}"))),
        }
    }

    fn make() -> io::Result<Pipe> {
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
        let (read, write) = {
            use nix::fcntl::{fcntl, FcntlArg, FdFlag};
            let (read, write) = nix::unistd::pipe().map_err(io::Error::from)?;
            for end in [&read, &write] {
                fcntl(end, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
            }
            (read, write)
        };
        // The read end sits above the descriptors a worker is given (3, 4, 5), so that the
        // child's dup2 onto WORKER_LIFELINE_FD always makes a new descriptor: dup2 of a
        // descriptor onto itself is a no-op that keeps close-on-exec, and the worker would find
        // its lifeline closed (and kill itself at once).
        let read = {
            use nix::fcntl::{fcntl, FcntlArg};
            let raw = fcntl(&read, FcntlArg::F_DUPFD_CLOEXEC(10)).map_err(io::Error::from)?;
            // SAFETY: `raw` was just returned by F_DUPFD_CLOEXEC: open, and ours alone.
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) }
        };
        Ok(Pipe {
            read,
            _write: write,
        })
    }

    #[cfg(test)]
    #[test]
    fn the_read_end_is_never_one_of_the_descriptors_a_worker_is_given() {
        // Whatever descriptors are free (a fresh process has 3, 4 and 5 free), the read end is
        // above them: at 5, the child's dup2 onto 5 would keep close-on-exec.
        let pipe = make().unwrap();
        assert!(pipe.read.as_raw_fd() > WORKER_LIFELINE_FD + 4);
    }

    pub(super) fn watch(lifeline: &OwnedFd, record_peak: impl Fn(u64)) {
        use nix::errno::Errno;
        use nix::poll::{poll, PollFd, PollFlags};
        let mut recorded = 0;
        loop {
            let mut fds = [PollFd::new(lifeline.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, WATCH_TICK_MS) {
                Ok(0) | Err(Errno::EINTR) => {
                    if let Some(peak) = own_peak_rss().filter(|&peak| peak != recorded) {
                        record_peak(peak);
                        recorded = peak;
                    }
                }
                // Readable means end-of-file (nobody writes): the parent is gone. So is a
                // lifeline that cannot be watched: dying is the safe side.
                _ => {
                    // SAFETY: kill with this process's own id and a constant signal.
                    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                }
            }
        }
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use super::*;

    pub(super) fn memfd(name: &CStr) -> io::Result<OwnedFd> {
        use nix::sys::memfd::{memfd_create, MFdFlags};
        memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
            .map_err(io::Error::from)
    }

    pub(super) fn seal_against_shrinking(fd: BorrowedFd<'_>) -> io::Result<()> {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_ADD_SEALS(nix::fcntl::SealFlag::F_SEAL_SHRINK),
        )
        .map(drop)
        .map_err(io::Error::from)
    }

    /// A process's resident memory in bytes (`/proc/<pid>/statm`), or None if it cannot be read.
    pub(super) fn resident_bytes(pid: nix::unistd::Pid) -> Option<u64> {
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", pid.as_raw())).ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: sysconf only reads a configuration value.
        let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
        pages.checked_mul(page_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_memory_file_has_no_name_and_can_grow() {
        let file = shared_memory_file(c"platform-test").unwrap();
        preallocate(&file, 1 << 16).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 1 << 16);
        seal_against_shrinking(file.as_fd()).unwrap();
        file.set_len(1 << 17).unwrap();
        // Nameless: the link count is zero (a memfd, or a file already unlinked).
        use std::os::unix::fs::MetadataExt;
        assert_eq!(file.metadata().unwrap().nlink(), 0);
    }

    #[test]
    fn this_process_has_a_peak_resident_size() {
        assert!(own_peak_rss().unwrap() > 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_linux_path_reads_a_processes_memory_from_proc() {
        let rss = linux::resident_bytes(nix::unistd::Pid::this()).expect("own statm");
        assert!(rss > 0);
        assert!(linux::resident_bytes(nix::unistd::Pid::from_raw(i32::MAX)).is_none());
    }

    #[test]
    fn both_paths_make_usable_shared_memory() {
        // Whichever path this process runs, the other one works too.
        let portable = unlinked_file(c"platform-test").unwrap();
        portable.set_len(4096).unwrap();
        #[cfg(target_os = "linux")]
        {
            let memfd = File::from(linux::memfd(c"platform-test").unwrap());
            memfd.set_len(4096).unwrap();
            linux::seal_against_shrinking(memfd.as_fd()).unwrap();
            assert!(memfd.set_len(0).is_err(), "the seal refuses shrinking");
        }
    }
}
