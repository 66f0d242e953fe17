//! A worker's standard error: forwarded to the parent's as it is written (nothing is swallowed),
//! with its last bytes kept for the report if the worker dies or is stopped — the segfault
//! message, the import error of a worker that could not start, the stack dumped on a timeout.
//!
//! Forwarded a line at a time (up to `\n` or `\r`), each line written whole: two workers
//! dumping their stacks at once (faulthandler writes a frame in many small pieces) come out as
//! whole lines, never interleaved within one. A line left unfinished is written out after
//! [`PARTIAL_LINE_WAIT`] without more output, so a prompt without a newline still shows.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::process::ChildStderr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes of a worker's stderr kept for its report.
pub const TAIL_BYTES: usize = 4096;
/// How long an unfinished line waits for the rest of it before it is written as it is.
const PARTIAL_LINE_WAIT: Duration = Duration::from_millis(50);
/// An unfinished line this long is written as it is.
const LONGEST_LINE: usize = 64 << 10;

/// The last [`TAIL_BYTES`] a worker wrote to stderr.
#[derive(Debug, Default)]
pub struct StderrTail {
    state: Mutex<TailState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct TailState {
    bytes: VecDeque<u8>,
    ended: bool,
}

impl StderrTail {
    /// Forward `pipe` to this process's stderr on a thread of its own, keeping the tail.
    pub fn follow(pipe: ChildStderr, name: String) -> io::Result<Arc<Self>> {
        let tail = Arc::new(Self::default());
        let keeper = Arc::clone(&tail);
        std::thread::Builder::new()
            .name(name)
            .spawn(move || keeper.forward(pipe))?;
        Ok(tail)
    }

    fn state(&self) -> MutexGuard<'_, TailState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn forward(&self, mut pipe: ChildStderr) {
        let mut chunk = [0u8; 8192];
        let mut lines = Lines::default();
        loop {
            if lines.has_partial() && !readable_within(&pipe, PARTIAL_LINE_WAIT) {
                lines.flush_partial();
            }
            match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    let bytes = &chunk[..n];
                    self.keep(bytes);
                    lines.push(bytes);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        lines.flush_partial();
        self.state().ended = true;
        self.changed.notify_all();
    }

    /// Record bytes the worker wrote (the forwarding thread; tests).
    pub fn keep(&self, bytes: &[u8]) {
        let mut state = self.state();
        let skip = bytes.len().saturating_sub(TAIL_BYTES);
        state.bytes.extend(&bytes[skip..]);
        let excess = state.bytes.len().saturating_sub(TAIL_BYTES);
        state.bytes.drain(..excess);
    }

    /// The tail, once the worker's stderr has ended (it has died) or `patience` has passed.
    pub fn snapshot(&self, patience: Duration) -> Vec<u8> {
        let deadline = Instant::now().checked_add(patience);
        let mut state = self.state();
        while !state.ended {
            let left = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(1),
            };
            if left.is_zero() {
                break;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        state.bytes.iter().copied().collect()
    }

    /// The tail as it is now.
    pub fn current(&self) -> Vec<u8> {
        self.state().bytes.iter().copied().collect()
    }
}

/// A worker's output cut into whole lines, each written to this process's stderr at once.
#[derive(Debug, Default)]
struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    fn has_partial(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Add `bytes`; write every line they complete (or a partial line grown too long).
    fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        let complete = match self.pending.iter().rposition(|&b| b == b'\n' || b == b'\r') {
            Some(end) => end + 1,
            None if self.pending.len() >= LONGEST_LINE => self.pending.len(),
            None => return,
        };
        write_whole(&self.pending[..complete]);
        self.pending.drain(..complete);
    }

    fn flush_partial(&mut self) {
        if !self.pending.is_empty() {
            write_whole(&self.pending);
            self.pending.clear();
        }
    }
}

/// Write `bytes` to this process's stderr in one go, under the lock every forwarding thread
/// takes. The parent's stderr may be closed: the tail is still kept.
fn write_whole(bytes: &[u8]) {
    let _ = io::stderr().lock().write_all(bytes);
}

/// Whether `pipe` has something to read (or has ended) within `wait`.
fn readable_within(pipe: &ChildStderr, wait: Duration) -> bool {
    let mut poll = libc::pollfd {
        fd: pipe.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `poll` points to one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut poll, 1, millis) != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_cut_at_line_ends_and_partial_lines_wait() {
        let mut lines = Lines::default();
        lines.push(b"  File \"x.py\", line ");
        assert!(lines.has_partial());
        lines.push(b"3 in f\n  File \"y");
        assert_eq!(lines.pending, b"  File \"y");
        lines.push(b"\rprogress");
        assert_eq!(lines.pending, b"progress");
        lines.flush_partial();
        assert!(!lines.has_partial());
        lines.push(&vec![b'x'; LONGEST_LINE]);
        assert!(!lines.has_partial(), "a line too long is written as it is");
    }

    #[test]
    fn only_the_last_bytes_are_kept() {
        let tail = StderrTail::default();
        tail.keep(&vec![b'a'; TAIL_BYTES - 2]);
        tail.keep(b"xyz");
        let kept = tail.current();
        assert_eq!(kept.len(), TAIL_BYTES);
        assert!(kept.ends_with(b"axyz"));
        tail.keep(&vec![b'b'; 3 * TAIL_BYTES]);
        assert_eq!(tail.current(), vec![b'b'; TAIL_BYTES]);
        // Never ended: the snapshot gives up after its patience.
        assert_eq!(tail.snapshot(Duration::from_millis(1)).len(), TAIL_BYTES);
    }
}
