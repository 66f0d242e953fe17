//! Bookkeeping of one parallel call: how big the next batch is, how many batches may be in
//! flight (pre-dispatch), and in which order finished batches are handed back.
//!
//! It holds no processes and no threads, so every backend (the process pool, threads, a cluster)
//! drives the same logic; `T` is whatever a backend returns for a batch.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// How batch sizes are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BatchSizing {
    /// Always this many tasks per batch.
    Fixed(usize),
    /// Measure, and size batches so that one takes about `target` of a worker's time.
    Auto { target: Duration },
}

/// Batch duration the automatic sizing aims for: long enough that the per-message cost
/// (tens of microseconds) vanishes, short enough that the last batches balance across workers.
pub const DEFAULT_TARGET_BATCH_DURATION: Duration = Duration::from_millis(20);
/// Default upper bound on an automatic batch, so the parent keeps pickling while workers
/// compute. It also bounds the calls the parent holds read ahead (`lookahead`): live call tuples
/// make the garbage collector work, and 8192 here made 100,000 tiny tasks take 85 ms instead of
/// 55 ms. Callers whose tasks are bare items (no call tuples) raise it.
pub const MAX_AUTO_BATCH_SIZE: usize = 2048;
/// Tail batches are never split below `target / TAIL_SPLIT_LIMIT` of work (2 ms by default).
const TAIL_SPLIT_LIMIT: u32 = 10;

/// Where a call's batches stand.
#[derive(Debug)]
pub struct Scheduler<T> {
    n_workers: usize,
    max_in_flight: usize,
    sizing: BatchSizing,
    ordered: bool,
    /// Largest automatic batch (`max_batch_size`).
    max_auto: usize,
    /// Smoothed worker seconds per task, once a batch has been measured.
    seconds_per_task: Option<f64>,
    /// (worker seconds, tasks) of the batches measured, both decaying by half per batch.
    measured: (f64, f64),
    next_id: u64,
    next_out: u64,
    arrivals: u64,
    in_flight: HashMap<u64, usize>,
    ready: BTreeMap<u64, T>,
    /// Whether completed batches not yet handed back count against `max_in_flight` (a
    /// generator's consumer: what runs ahead of it stays within the window).
    bounded_run_ahead: bool,
}

impl<T> Scheduler<T> {
    /// `max_in_flight`: how many batches may be submitted and not yet completed (joblib's
    /// `pre_dispatch`); raised to `n_workers` so that every worker has work.
    pub fn new(n_workers: usize, max_in_flight: usize, sizing: BatchSizing, ordered: bool) -> Self {
        let n_workers = n_workers.max(1);
        Self {
            n_workers,
            max_in_flight: max_in_flight.max(n_workers),
            sizing,
            ordered,
            max_auto: MAX_AUTO_BATCH_SIZE,
            seconds_per_task: None,
            measured: (0.0, 0.0),
            next_id: 0,
            next_out: 0,
            arrivals: 0,
            in_flight: HashMap::new(),
            ready: BTreeMap::new(),
            bounded_run_ahead: false,
        }
    }

    /// Count completed batches not yet handed back against the pre-dispatch window, so that no
    /// more than `max_in_flight` batches run ahead of a consumer that reads results one batch at
    /// a time (a generator's): a straggler then holds the others back instead of letting the
    /// whole input be computed while its result is awaited.
    pub fn with_bounded_run_ahead(mut self) -> Self {
        self.bounded_run_ahead = true;
        self
    }

    /// Automatic batches never exceed `max` tasks (at least 1) instead of
    /// [`MAX_AUTO_BATCH_SIZE`].
    pub fn with_max_batch_size(mut self, max: usize) -> Self {
        self.max_auto = max.max(1);
        self
    }

    /// Whether another batch may be submitted now.
    pub fn can_submit(&self) -> bool {
        let waiting = if self.bounded_run_ahead {
            self.ready.len()
        } else {
            0
        };
        self.in_flight.len() + waiting < self.max_in_flight
    }

    pub fn n_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether every submitted batch has been completed and handed back.
    pub fn is_drained(&self) -> bool {
        self.in_flight.is_empty() && self.ready.is_empty()
    }

    /// How many tasks to put in the next batch. `remaining`: the exact number of tasks left,
    /// when the caller knows it (its input is exhausted); the tail is then split so that all
    /// workers finish together.
    pub fn next_batch_size(&self, remaining: Option<usize>) -> usize {
        let target = match self.sizing {
            BatchSizing::Fixed(size) => return size.max(1),
            BatchSizing::Auto { target } => target,
        };
        let size = self.tasks_lasting(target);
        match remaining {
            // Split the tail so that workers finish together, but not into batches so short
            // that the round trip costs more than the balance gains.
            Some(remaining) => {
                let shortest = self.tasks_lasting(target / TAIL_SPLIT_LIMIT);
                let tail = remaining.div_ceil(2 * self.n_workers).max(shortest);
                size.min(tail).min(remaining).max(1)
            }
            None => size,
        }
    }

    /// How many tasks fit in `duration` at the measured pace (1 before anything is measured).
    fn tasks_lasting(&self, duration: Duration) -> usize {
        match self.seconds_per_task {
            None => 1,
            Some(seconds) if seconds <= 0.0 => self.max_auto,
            Some(seconds) => {
                let ideal = duration.as_secs_f64() / seconds;
                (ideal as usize).clamp(1, self.max_auto)
            }
        }
    }

    /// How many tasks the caller should have read ahead before asking for a batch size, so that
    /// it knows when the tail begins.
    pub fn lookahead(&self) -> usize {
        match self.sizing {
            // Fixed batches are never cut at the tail: read no further than the next batch, so
            // that pre_dispatch bounds what is read, as in joblib.
            BatchSizing::Fixed(size) => size.max(1),
            // One batch per worker ahead: enough to see the tail coming (the last batches are
            // then split across the workers), and as lazy as joblib on a generator (the first
            // result of 2 workers and pre_dispatch="2 * n_jobs" comes after 6 items read).
            BatchSizing::Auto { .. } => self.next_batch_size(None) * self.n_workers,
        }
    }

    /// Record a batch of `n_tasks` about to be submitted; returns its id.
    pub fn register(&mut self, n_tasks: usize) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.in_flight.insert(id, n_tasks.max(1));
        id
    }

    /// Record that batch `id` finished, having taken `elapsed` of a worker's time. Unknown ids
    /// (a batch of an earlier, abandoned call) are ignored and `false` is returned.
    pub fn complete(&mut self, id: u64, elapsed: Duration, value: T) -> bool {
        let Some(n_tasks) = self.in_flight.remove(&id) else {
            return false;
        };
        if elapsed > Duration::ZERO {
            // A decaying sum of worker time over a decaying count of tasks: each batch weighs
            // by its size, so one big batch outweighs the one-task probes that began the call
            // (whose time is mostly the fixed cost of a job), and the sizing settles at once.
            let (seconds, tasks) = self.measured;
            self.measured = (
                0.5 * seconds + elapsed.as_secs_f64(),
                0.5 * tasks + n_tasks as f64,
            );
            self.seconds_per_task = Some(self.measured.0 / self.measured.1);
        }
        let key = if self.ordered {
            id
        } else {
            self.arrivals += 1;
            self.arrivals
        };
        self.ready.insert(key, value);
        true
    }

    /// The next finished batch to hand back: in submission order when ordered, else as completed.
    pub fn pop_ready(&mut self) -> Option<T> {
        if self.ordered {
            let value = self.ready.remove(&self.next_out)?;
            self.next_out += 1;
            Some(value)
        } else {
            self.ready.pop_first().map(|(_, value)| value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto() -> BatchSizing {
        BatchSizing::Auto {
            target: Duration::from_millis(20),
        }
    }

    #[test]
    fn a_bounded_run_ahead_counts_results_not_yet_handed_back() {
        for bounded in [false, true] {
            let mut s = Scheduler::new(2, 4, BatchSizing::Fixed(1), true);
            if bounded {
                s = s.with_bounded_run_ahead();
            }
            // Batch 0 straggles; the three after it complete, and their results wait for it.
            let ids: Vec<u64> = (0..4).map(|_| s.register(1)).collect();
            for &id in &ids[1..] {
                s.complete(id, Duration::from_millis(1), ());
            }
            assert!(s.pop_ready().is_none(), "in order: batch 0 first");
            assert_eq!(s.can_submit(), !bounded);
            s.complete(ids[0], Duration::from_millis(1), ());
            while s.pop_ready().is_some() {}
            assert!(s.can_submit() && s.is_drained());
        }
    }

    #[test]
    fn automatic_batches_respect_their_cap() {
        let mut s = Scheduler::new(2, 4, auto(), true).with_max_batch_size(8);
        let id = s.register(1);
        s.complete(id, Duration::from_micros(1), ()); // tiny tasks: thousands would fit
        assert_eq!(s.next_batch_size(None), 8);
    }

    #[test]
    fn ordered_results_come_back_in_submission_order() {
        let mut s = Scheduler::new(2, 4, BatchSizing::Fixed(1), true);
        let ids: Vec<u64> = (0..3).map(|_| s.register(1)).collect();
        s.complete(ids[2], Duration::ZERO, "c");
        assert_eq!(s.pop_ready(), None);
        s.complete(ids[0], Duration::ZERO, "a");
        assert_eq!(s.pop_ready(), Some("a"));
        assert_eq!(s.pop_ready(), None);
        s.complete(ids[1], Duration::ZERO, "b");
        assert_eq!(s.pop_ready(), Some("b"));
        assert_eq!(s.pop_ready(), Some("c"));
        assert!(s.is_drained());
    }

    #[test]
    fn unordered_results_come_back_as_completed() {
        let mut s = Scheduler::new(2, 4, BatchSizing::Fixed(1), false);
        let a = s.register(1);
        let b = s.register(1);
        s.complete(b, Duration::ZERO, "b");
        s.complete(a, Duration::ZERO, "a");
        assert_eq!(s.pop_ready(), Some("b"));
        assert_eq!(s.pop_ready(), Some("a"));
    }

    #[test]
    fn pre_dispatch_bounds_the_batches_in_flight() {
        let mut s: Scheduler<()> = Scheduler::new(2, 3, BatchSizing::Fixed(1), true);
        for _ in 0..3 {
            assert!(s.can_submit());
            s.register(1);
        }
        assert!(!s.can_submit());
        s.complete(0, Duration::ZERO, ());
        assert!(s.can_submit());
    }

    #[test]
    fn pre_dispatch_is_never_below_the_number_of_workers() {
        let mut s: Scheduler<()> = Scheduler::new(4, 1, BatchSizing::Fixed(1), true);
        for _ in 0..4 {
            s.register(1);
        }
        assert!(!s.can_submit());
        assert_eq!(s.n_in_flight(), 4);
    }

    #[test]
    fn auto_sizing_starts_at_one_and_aims_at_the_target_duration() {
        let mut s = Scheduler::new(2, 4, auto(), true);
        assert_eq!(s.next_batch_size(None), 1);
        let id = s.register(10);
        s.complete(id, Duration::from_millis(10), ()); // 1 ms per task
        assert_eq!(s.next_batch_size(None), 20);
    }

    #[test]
    fn auto_sizing_is_capped_for_tiny_tasks() {
        let mut s = Scheduler::new(2, 4, auto(), true);
        let id = s.register(1000);
        s.complete(id, Duration::from_nanos(1000), ());
        assert_eq!(s.next_batch_size(None), MAX_AUTO_BATCH_SIZE);
    }

    #[test]
    fn a_big_batch_outweighs_the_one_task_probes_at_once() {
        let mut s = Scheduler::new(2, 4, auto(), true).with_max_batch_size(1 << 20);
        // Four probes whose time is mostly the fixed cost of a job: 40 µs for one task.
        for _ in 0..4 {
            let id = s.register(1);
            s.complete(id, Duration::from_micros(40), ());
        }
        assert!((499..=500).contains(&s.next_batch_size(None)));
        // Then 500 tasks take 50 µs (100 ns each): the next batch is about 20 ms of them (an
        // average of rates would have said 1,000, and taken eight batches to get there).
        let id = s.register(500);
        s.complete(id, Duration::from_micros(50), ());
        let next = s.next_batch_size(None);
        assert!((100_000..=200_000).contains(&next), "{next}");
    }

    #[test]
    fn the_tail_is_split_across_workers() {
        let mut s = Scheduler::new(2, 4, auto(), true);
        let id = s.register(100);
        s.complete(id, Duration::from_millis(100), ()); // 20 per batch
        assert_eq!(s.next_batch_size(Some(1000)), 20);
        assert_eq!(s.next_batch_size(Some(12)), 3);
        assert_eq!(s.next_batch_size(Some(1)), 1);
    }

    #[test]
    fn the_tail_of_tiny_tasks_is_not_split_below_a_tenth_of_the_target() {
        let mut s = Scheduler::new(2, 4, auto(), true);
        let id = s.register(1000);
        s.complete(id, Duration::from_millis(1), ()); // 1 µs per task: 20,000 per 20 ms
        assert_eq!(s.next_batch_size(Some(100_000)), MAX_AUTO_BATCH_SIZE);
        assert_eq!(s.next_batch_size(Some(5000)), 2000);
        assert_eq!(s.next_batch_size(Some(300)), 300);
    }

    #[test]
    fn fixed_batches_read_no_further_than_the_next_batch() {
        let s = Scheduler::<()>::new(2, 3, BatchSizing::Fixed(1), true);
        assert_eq!(s.lookahead(), 1);
        let s = Scheduler::<()>::new(2, 3, BatchSizing::Fixed(4), true);
        assert_eq!(s.lookahead(), 4);
    }

    #[test]
    fn a_fixed_size_is_used_as_given() {
        let s: Scheduler<()> = Scheduler::new(2, 4, BatchSizing::Fixed(7), true);
        assert_eq!(s.next_batch_size(Some(3)), 7);
    }

    #[test]
    fn completions_of_unknown_batches_are_ignored() {
        let mut s = Scheduler::new(2, 4, BatchSizing::Fixed(1), true);
        assert!(!s.complete(99, Duration::ZERO, ()));
        assert!(s.is_drained());
    }
}
