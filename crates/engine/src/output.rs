//! A worker's standard error: forwarded to the parent's as it is written (nothing is swallowed),
//! with its last bytes kept for the report if the worker dies or is stopped — the segfault
//! message, the import error of a worker that could not start, the stack dumped on a timeout.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::process::ChildStderr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes of a worker's stderr kept for its report.
pub const TAIL_BYTES: usize = 4096;

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
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    let bytes = &chunk[..n];
                    // The parent's stderr may be closed: the tail is still kept.
                    let _ = io::stderr().lock().write_all(bytes);
                    self.keep(bytes);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
