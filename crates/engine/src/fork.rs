//! What a forked child inherits, and what it may use: the engine's one owner of fork safety.
//!
//! `fork()` copies a process's memory but only the thread that called it. A child therefore
//! inherits the engine's pools, arenas, channels and locks while the threads behind them (the
//! shared-memory helper, the spawner, each pool's readers and supervisor) exist only in the
//! parent: a channel to a thread that is not there accepts work that is never done, and a lock
//! some parent thread held at the moment of the fork stays locked for good.
//!
//! Two rules, and every owner of threads, sockets or mappings follows one of them:
//! - Process-wide services (helper threads and what they guard) are [`PerProcess`] values: each
//!   process builds its own on first use, so a child starts them fresh and never touches the
//!   parent's (not even their locks).
//! - Objects made for one process's use (a pool, an arena, a worker's endpoint) keep the
//!   [`Birth`] of the process that made them and act only while [`Birth::is_here`]: in a child
//!   they do nothing (or refuse, with the parent's pid in the error), and the child makes its own.
//!
//! A fork is noticed by a `pthread_atfork` child hook that moves a generation counter: one
//! atomic load answers "is this still the process that made it?", and it is right even where pids
//! are reused (a pid namespace) or a child forks again.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::Once;

/// Moves once in every child, before anything else runs there.
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// Whether the hook is in place (else [`Birth::is_here`] asks for the pid, a system call).
static WATCHING: AtomicBool = AtomicBool::new(false);

extern "C" fn after_fork_in_child() {
    // Only async-signal-safe work here: one atomic add.
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

fn watch_forks() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // SAFETY: registering a hook that only touches an atomic. It fails only for lack of
        // memory; then `Birth::is_here` compares pids instead.
        let registered = unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        WATCHING.store(registered == 0, Ordering::SeqCst);
    });
}

fn generation() -> u64 {
    GENERATION.load(Ordering::SeqCst)
}

/// The process something was made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Birth {
    pid: u32,
    generation: u64,
}

impl Birth {
    /// This process, now.
    pub fn here() -> Self {
        watch_forks();
        Self {
            pid: std::process::id(),
            generation: generation(),
        }
    }

    /// Whether this is still the process it names (false in every forked child).
    pub fn is_here(&self) -> bool {
        self.generation == generation()
            && (WATCHING.load(Ordering::Relaxed) || self.pid == std::process::id())
    }

    /// The process id it names (for error messages: "belongs to process N").
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// A value each process builds for itself on first use: a forked child gets a fresh one and
/// leaves the parent's alone (it is not dropped there: it may hold a lock a parent thread held at
/// the fork, or name threads the child does not have). One value is kept per process for good
/// (its memory is never freed), so use it for process-wide services, in a `static`.
pub struct PerProcess<T: Send + Sync + 'static> {
    current: AtomicPtr<Entry<T>>,
}

struct Entry<T> {
    birth: Birth,
    value: T,
}

impl<T: Send + Sync + 'static> PerProcess<T> {
    pub const fn new() -> Self {
        Self {
            current: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// This process's value, built by `make` if this process has none yet.
    pub fn get(&'static self, make: impl FnOnce() -> T) -> &'static T {
        if let Some(value) = self.mine() {
            return value;
        }
        let fresh = Box::into_raw(Box::new(Entry {
            birth: Birth::here(),
            value: make(),
        }));
        let seen = self.current.load(Ordering::Acquire);
        // SAFETY: entries are leaked boxes, never freed, so a pointer read here stays valid.
        let seen_is_mine = !seen.is_null() && unsafe { &*seen }.birth.is_here();
        if !seen_is_mine
            && self
                .current
                .compare_exchange(seen, fresh, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // SAFETY: `fresh` is now published and, like every entry, never freed.
            return &unsafe { &*fresh }.value;
        }
        // Another thread of this process won the race: ours was never shared, so drop it.
        // SAFETY: `fresh` came from Box::into_raw above and no one else has seen it.
        drop(unsafe { Box::from_raw(fresh) });
        self.mine()
            .expect("a value of this process was just published")
    }

    fn mine(&'static self) -> Option<&'static T> {
        let entry = self.current.load(Ordering::Acquire);
        if entry.is_null() {
            return None;
        }
        // SAFETY: entries are leaked boxes, never freed.
        let entry = unsafe { &*entry };
        entry.birth.is_here().then_some(&entry.value)
    }
}

impl<T: Send + Sync + 'static> Default for PerProcess<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static COUNTER: PerProcess<AtomicU64> = PerProcess::new();

    /// Run `child` in a forked child and return its exit code.
    fn in_child(child: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child runs only `child`, then `_exit`s without unwinding or running the
        // parent's destructors.
        match unsafe { libc::fork() } {
            0 => {
                let code =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(101);
                // SAFETY: ending the child at once.
                unsafe { libc::_exit(code) }
            }
            pid if pid > 0 => {
                let mut status = 0;
                // SAFETY: waiting for our own child, writing into a local.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                libc::WEXITSTATUS(status)
            }
            _ => panic!("fork failed"),
        }
    }

    #[test]
    fn a_birth_is_here_until_a_fork() {
        let birth = Birth::here();
        assert!(birth.is_here());
        assert_eq!(birth.pid(), std::process::id());
        let code = in_child(|| {
            let child_birth = Birth::here();
            i32::from(birth.is_here()) * 10 + i32::from(!child_birth.is_here())
        });
        assert_eq!(
            code, 0,
            "the child must see the parent's birth as elsewhere"
        );
        assert!(birth.is_here());
    }

    #[test]
    fn a_forked_child_builds_its_own_per_process_value() {
        let parents = COUNTER.get(|| AtomicU64::new(7));
        parents.fetch_add(1, Ordering::SeqCst);
        let before = parents.load(Ordering::SeqCst);
        let code = in_child(|| {
            let childs = COUNTER.get(|| AtomicU64::new(100));
            let again = COUNTER.get(|| AtomicU64::new(200));
            let fresh = childs.load(Ordering::SeqCst) == 100 && std::ptr::eq(childs, again);
            i32::from(!fresh)
        });
        assert_eq!(code, 0, "the child must get a fresh value, once");
        assert!(std::ptr::eq(parents, COUNTER.get(|| AtomicU64::new(0))));
        assert_eq!(
            COUNTER.get(|| AtomicU64::new(0)).load(Ordering::SeqCst),
            before
        );
    }
}
