//! Completions a caller waits for in its own thread.
//!
//! Every completion goes to the pool's one channel, read by whoever collects for the pool (a
//! collector thread). A caller blocked on one job's result would then be woken twice: the reader
//! thread wakes the collector, which wakes the caller. A [`Claim`] takes that job's completion off
//! the channel's path: the reader thread hands it straight to the claiming thread.
//!
//! Exactly one of the two gets each completion, never none: delivering and withdrawing a claim
//! happen under one lock, and a claim withdrawn with its completion inside puts it back on the
//! channel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::{Completion, JobId, Shared};

/// How long a claimant watches for its completion before it sleeps (as a worker watches for its
/// next job, `worker::SPIN_FOR_NEXT_JOB`): longer than a tiny task's whole round trip, short
/// enough that a long task's waiter wastes a negligible share of a core.
pub const SPIN_FOR_CLAIMED: Duration = Duration::from_micros(250);

/// The claimed jobs of a pool, each with where its completion goes.
#[derive(Default)]
pub(super) struct Claims {
    waiting: Mutex<HashMap<JobId, Sender<Completion>>>,
}

impl Claims {
    fn lock(&self) -> MutexGuard<'_, HashMap<JobId, Sender<Completion>>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Shared {
    /// Send a completion to the thread that claimed its job, else to the channel.
    pub(super) fn deliver(&self, completion: Completion) {
        let mut waiting = self.claims.lock();
        let completion = match waiting.remove(&completion.job) {
            // Capacity one, one completion per job: never blocks. A failed send (the claim was
            // dropped without withdrawing, impossible by `Drop`) falls through to the channel.
            Some(claimant) => match claimant.try_send(completion) {
                Ok(()) => return,
                Err(refused) => refused.into_inner(),
            },
            None => completion,
        };
        drop(waiting);
        // Disconnected is impossible while the pool holds a receiver.
        let _ = self.tx.send(completion);
    }

    /// Claim `job`'s completion for the calling thread (the state lock held, so that the job is
    /// still queued or running: its completion is delivered after, under this claim). None if
    /// another thread claimed it first.
    pub(super) fn claim(self: &Arc<Self>, job: JobId) -> Option<Claim> {
        let mut waiting = self.claims.lock();
        if waiting.contains_key(&job) {
            return None;
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        waiting.insert(job, tx);
        Some(Claim {
            shared: Arc::clone(self),
            job,
            rx,
        })
    }
}

/// A job's completion, claimed by one thread ([`super::Pool::claim`]). Dropping it withdraws the
/// claim: a completion that arrives after goes to the channel.
pub struct Claim {
    shared: Arc<Shared>,
    job: JobId,
    rx: Receiver<Completion>,
}

impl Claim {
    /// The claimed job's completion, or None if it has not come within `timeout`.
    ///
    /// The first [`SPIN_FOR_CLAIMED`] is spent watching for it without sleeping (yielding the
    /// core between looks): a short task's reply is then taken by a running thread, not one the
    /// reader thread must wake, which on a VM whose idle core has halted costs more than the
    /// task itself (a submit/result round trip: ~90 µs blocking at once, ~43 µs spinning first).
    pub fn wait(&self, timeout: Duration) -> Option<Completion> {
        let start = Instant::now();
        let spin = SPIN_FOR_CLAIMED.min(timeout);
        loop {
            match self.rx.try_recv() {
                Ok(completion) => return Some(completion),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            if start.elapsed() >= spin {
                break;
            }
            std::thread::yield_now(); // the reader thread that delivers may need this core
        }
        self.rx
            .recv_timeout(timeout.saturating_sub(start.elapsed()))
            .ok()
    }

    /// The job this claim is for.
    pub fn job(&self) -> JobId {
        self.job
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut waiting = self.shared.claims.lock();
        waiting.remove(&self.job);
        // Delivered but not taken: it belongs to the channel now.
        if let Ok(completion) = self.rx.try_recv() {
            drop(waiting);
            let _ = self.shared.tx.send(completion);
        }
    }
}
