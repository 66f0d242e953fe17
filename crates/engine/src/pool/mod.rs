//! Worker processes: spawn, dispatch, supervision, respawn and idle shutdown.
//!
//! Every worker is a child process talking to the parent over its own Unix socket (fd 3 in the
//! child) and publishing its progress in a [`StatusPage`] (fd 4). One reader thread per worker
//! receives replies; as soon as a worker answers, its reader hands it the next queued job, so
//! workers never wait for the caller to come back for results. Completions (and losses: a worker
//! that died, was timed out or cancelled) arrive on one channel, read with [`Pool::recv`].
//!
//! Process hygiene: workers are started from one long-lived spawner thread (so that
//! `PR_SET_PDEATHSIG`, which fires when the *thread* that forked the child exits, means "when this
//! process exits"), ignore SIGINT (the parent decides what Ctrl-C means), and every child is reaped
//! by its reader thread, so no zombie survives.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

mod claims;
mod events;
mod memory;
mod replies;
mod spawn;
mod supervise;

pub use claims::Claim;
pub use events::{WorkerEvent, WorkerEventKind, MAX_UNREAD_EVENTS};
pub use supervise::STARTING_LIMIT;

use crate::fork::Birth;
use crate::protocol::{Connection, Kind};
use crate::shm::{SharedBuffer, StatusPage};

/// The descriptor number of the worker's socket in the child.
pub const WORKER_SOCKET_FD: RawFd = 3;
/// The descriptor number of the worker's status page in the child.
pub const WORKER_STATUS_FD: RawFd = 4;
/// How long [`Pool::cancel`] and [`Pool::terminate`] wait for the workers they killed to be
/// reaped. SIGKILL cannot be caught, so this only runs out for a process stuck in the kernel.
const REAP_WAIT: Duration = Duration::from_secs(2);

/// Identifies a job for the lifetime of a pool (callers choose ids; they must be unique).
pub type JobId = u64;

/// How to start a worker process.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The complete environment of the worker.
    pub env: Vec<(OsString, OsString)>,
    /// Payload of the `Init` frame every worker receives first.
    pub init: Vec<u8>,
}

/// A unit of work for one worker: its payload is an envelope (where its out-of-band buffers
/// lie, see [`crate::envelope`]) followed by its body. Jobs made by
/// [`crate::arena::Arguments::job`] hold their argument chunks until the job ends (the pool
/// drops `holds` then).
#[derive(Debug)]
pub struct Job {
    pub id: JobId,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
    pub holds: Option<Box<dyn JobHolds>>,
    /// The pool the job's arguments are laid out for (see [`crate::arena::Arguments::for_pool`]);
    /// None: no shared memory, or an arena of no pool's.
    pub pool: Option<u64>,
    /// Tasks in the job (counted against [`WorkerLimits::max_tasks`]).
    pub n_tasks: u64,
}

/// What a job holds while it runs (the shared memory of its arguments, see
/// [`crate::arena::Holds`]): let go of when the pool drops the job, whatever its end.
pub trait JobHolds: Send + std::fmt::Debug {
    /// The worker's reply said it no longer maps the memory of these tokens.
    fn unmapped(&self, tokens: &[u64]);
}

/// The current call's limits, enforced by the pool's supervisor (see `supervise`) whether or not
/// anyone waits for results. Set once per call ([`Pool::set_limits`]); values arrive validated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallLimits {
    /// A task running longer than this is killed (its job completes as [`LossCause::TimedOut`]).
    /// The clock starts when the task starts: a worker still starting is not running a task.
    pub task_timeout: Option<Duration>,
    /// A worker is replaced after this many tasks (checked after each job).
    pub max_tasks: Option<u64>,
    /// A worker whose resident memory exceeds this many bytes finishes its current task, stops
    /// its job there and is replaced.
    pub max_rss: Option<u64>,
}

impl Job {
    /// A job of `body` alone, with no shared memory.
    pub fn new(id: JobId, body: &[u8]) -> Self {
        Self {
            id,
            payload: crate::envelope::encode(crate::shm::Access::ReadOnly, &[], &[], &[], body),
            fds: Vec::new(),
            pool: None,
            holds: None,
            n_tasks: 1,
        }
    }
}

/// How a job ended.
#[derive(Debug)]
pub enum Outcome {
    /// The worker answered with results: the result buffers are mapped (copy-on-write; dropping
    /// the last one over a segment tells the worker it may write it again) and the body starts
    /// at `body_start` of `payload` (after the envelope).
    Done {
        payload: Vec<u8>,
        body_start: usize,
        buffers: Vec<SharedBuffer>,
    },
    /// The worker answered that the job raised.
    Failed { payload: Vec<u8> },
    /// The worker went away while running the job.
    Lost(Loss),
}

/// A worker that went away in the middle of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    pub pid: i32,
    pub cause: LossCause,
    /// How many of the job's tasks had started; the last one started is the culprit.
    pub tasks_started: u64,
    /// Jobs the worker had completed before this one (0: it never finished one).
    pub jobs_done: u64,
    /// The worker's peak resident memory in bytes (from its rusage when it was reaped).
    pub peak_rss: Option<u64>,
    /// The last bytes it wrote to stderr (see [`crate::output`]).
    pub stderr_tail: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LossCause {
    /// The process exited on its own with this code.
    Exited(i32),
    /// The process was killed by this signal (not by us).
    Signaled(i32),
    /// We killed it: its current task ran longer than this limit (the task timeout, or the
    /// start-up allowance for a job none of whose tasks had started).
    TimedOut(Duration),
    /// We killed it: the caller cancelled the work.
    Cancelled,
    /// The process could not be reaped (someone else waited for it).
    Vanished,
    /// We killed it: it broke the protocol (a frame out of turn, a reply for another job, a
    /// malformed or oversized frame), so nothing it says can be trusted.
    Protocol(String),
}

/// What [`Pool::next_event`] saw.
#[derive(Debug)]
pub enum Event {
    Completion(Completion),
    /// [`Pool::wake`] was called.
    Woken,
    /// Nothing within the timeout.
    Nothing,
}

/// Where a job was when [`Pool::cancel_job`] looked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for a worker: it was dropped.
    Queued,
    /// On a worker (killed if asked).
    Running,
    /// Done, already withdrawn, or never submitted.
    Unknown,
}

/// A job's end, as delivered by [`Pool::recv`].
#[derive(Debug)]
pub struct Completion {
    pub job: JobId,
    pub pid: i32,
    /// Time the worker spent on the job (zero for a lost job).
    pub elapsed: Duration,
    pub outcome: Outcome,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("could not start worker process {program:?}: {source}")]
    Spawn { program: PathBuf, source: io::Error },
    #[error("could not set up a worker channel: {0}")]
    Setup(#[from] io::Error),
    #[error("the pool is shut down")]
    Closed,
    #[error("this worker pool belongs to process {owner}; a forked child cannot use it (it starts its own)")]
    Forked { owner: u32 },
    #[error("job {job} was laid out in the shared memory of another pool; a session's arena serves its own pool only")]
    ForeignArena { job: JobId },
}

/// A set of warm worker processes.
pub struct Pool {
    shared: Arc<Shared>,
}

/// Tells a worker of the pool that the parent no longer maps some of its result segments (a
/// `Release` frame), from any thread: at once if the worker is idle, else before its next job.
/// A worker or pool that is gone is skipped.
#[derive(Clone)]
pub struct Releaser {
    shared: std::sync::Weak<Shared>,
}

impl Releaser {
    /// Send `tokens` to every live worker (argument chunks the parent gives up; see
    /// [`crate::arena::Forgetter`]).
    pub fn broadcast(&self, tokens: &[u64]) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        if !shared.owned_here() {
            return;
        }
        let pids: Vec<i32> = shared
            .state()
            .workers
            .values()
            .filter(|worker| worker.is_live())
            .map(|worker| worker.pid.as_raw())
            .collect();
        for pid in pids {
            self.release(pid, tokens);
        }
    }

    pub fn release(&self, pid: i32, tokens: &[u64]) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        // A forked child that drops results it inherited must not tell the parent's workers to
        // reuse memory the parent still maps.
        if !shared.owned_here() {
            return;
        }
        let mut state = shared.state();
        let Some(worker) = state
            .workers
            .values_mut()
            .find(|worker| worker.pid.as_raw() == pid && worker.is_live())
        else {
            return;
        };
        if worker.running.is_some() {
            worker.pending_release.extend_from_slice(tokens);
            return;
        }
        let conn = Arc::clone(&worker.conn);
        drop(state);
        send_releases(&conn, tokens);
    }
}

struct Shared {
    /// Unique among the pools of this process (see [`Pool::id`]).
    id: u64,
    spec: WorkerSpec,
    birth: Birth,
    idle_timeout: Option<Duration>,
    state: Mutex<State>,
    changed: Condvar,
    tx: Sender<Completion>,
    rx: Receiver<Completion>,
    /// Jobs whose completion a caller waits for in its own thread ([`Pool::claim`]).
    claims: claims::Claims,
    /// [`Pool::wake`]'s signal to a thread blocked in [`Pool::recv`].
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct State {
    workers: BTreeMap<u64, Worker>,
    queue: VecDeque<Job>,
    next_worker: u64,
    last_activity: Instant,
    closed: bool,
    limits: CallLimits,
    /// The supervisor sleeps without watching jobs: a job handed out under a limit wakes it.
    supervisor_parked: bool,
    /// Workers retired after a job (spent: task budget, memory cap) that the supervisor is to
    /// replace.
    replacements: usize,
    /// The current call's settings, sent to each worker before its first job of the call.
    call: CallSettings,
    /// Workers started, recycled, retired and lost, for run reports ([`Pool::take_worker_events`]).
    log: events::WorkerLog,
}

/// The settings of the current call ([`Pool::set_call`]), numbered so that each worker gets them
/// once per call.
struct CallSettings {
    generation: u64,
    payload: Arc<[u8]>,
}

/// What to send a worker handed a job, in this order, outside the pool's lock (see
/// [`State::hand_out`]).
struct Dispatch {
    conn: Arc<Connection>,
    releases: Vec<u64>,
    call: Option<Arc<[u8]>>,
}

impl Dispatch {
    fn send(self, job: &Job) {
        send_releases(&self.conn, &self.releases);
        if let Some(call) = &self.call {
            // A failed send means the worker is gone: its reader reports the job lost.
            let _ = self.conn.send(Kind::Call, 0, 0, call, &[]);
        }
        send_job(&self.conn, job);
    }
}

impl State {
    /// A pool with no worker yet, no job, no limits and no call settings.
    fn new() -> Self {
        Self {
            workers: BTreeMap::new(),
            queue: VecDeque::new(),
            next_worker: 0,
            last_activity: Instant::now(),
            closed: false,
            limits: CallLimits::default(),
            supervisor_parked: false,
            replacements: 0,
            call: CallSettings {
                generation: 0,
                payload: Arc::from(Vec::new()),
            },
            log: events::WorkerLog::default(),
        }
    }

    /// Record `job` as running on worker `id`, and say what to send it: the result segments
    /// released meanwhile, the call's settings if it has not had them, then the job.
    fn hand_out(&mut self, id: u64, job: &mut Job) -> Option<Dispatch> {
        let call = &self.call;
        let worker = self.workers.get_mut(&id)?;
        worker.running = Some(Running::new(job));
        let call = (worker.call_seen != call.generation).then(|| {
            worker.call_seen = call.generation;
            Arc::clone(&call.payload)
        });
        Some(Dispatch {
            conn: Arc::clone(&worker.conn),
            releases: std::mem::take(&mut worker.pending_release),
            call,
        })
    }
}

struct Worker {
    pid: Pid,
    conn: Arc<Connection>,
    status: Arc<StatusPage>,
    running: Option<Running>,
    leaving: Option<Leaving>,
    /// Jobs completed so far.
    jobs_done: u64,
    /// Tasks of those jobs.
    tasks_done: u64,
    /// Result segments released while the worker was busy: sent before its next frame, so that
    /// a busy worker's socket never fills up with them.
    pending_release: Vec<u64>,
    /// Told to stop its job after the current task (past its memory cap): replaced after it.
    over_cap: bool,
    /// The generation of the call settings it has had (0: none yet).
    call_seen: u64,
}

/// Why a worker is on its way out (it no longer counts as live).
#[derive(Clone, Copy)]
enum Leaving {
    Retired,
    Killed(KillReason),
}

#[derive(Clone, Copy)]
enum KillReason {
    TimedOut(Duration),
    Cancelled,
}

struct Running {
    job: JobId,
    tasks_seen: u64,
    task_since: Instant,
    /// The argument chunks the job holds (released when this is dropped).
    holds: Option<Box<dyn JobHolds>>,
    /// When the worker was asked to dump its stack (its task ran past `limit`).
    stack_requested: Option<(Instant, Duration)>,
    n_tasks: u64,
}

impl Running {
    fn new(job: &mut Job) -> Self {
        Self {
            n_tasks: job.n_tasks,
            job: job.id,
            tasks_seen: 0,
            task_since: Instant::now(),
            holds: job.holds.take(),
            stack_requested: None,
        }
    }
}

impl Worker {
    fn is_live(&self) -> bool {
        self.leaving.is_none()
    }

    fn is_idle(&self) -> bool {
        self.is_live() && self.running.is_none()
    }

    fn kill(&mut self, reason: KillReason) {
        // ESRCH: it already exited; its reader will report that.
        let _ = kill(self.pid, Signal::SIGKILL);
        self.leaving = Some(Leaving::Killed(reason));
    }

    fn retire(&mut self) {
        let _ = self.conn.send(Kind::Shutdown, 0, 0, &[], &[]);
        self.leaving = Some(Leaving::Retired);
    }
}

impl Pool {
    /// Start a pool with `n_workers` processes; they boot in parallel and receive jobs as soon
    /// as they are up. `idle_timeout`: retire all workers after this long without work.
    pub fn new(
        spec: WorkerSpec,
        n_workers: usize,
        idle_timeout: Option<Duration>,
    ) -> Result<Self, PoolError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        let shared = Arc::new(Shared {
            spec,
            birth: Birth::here(),
            id: {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
            idle_timeout,
            state: Mutex::new(State::new()),
            changed: Condvar::new(),
            tx,
            rx,
            claims: claims::Claims::default(),
            wake_tx,
            wake_rx,
            threads: Mutex::new(Vec::new()),
        });
        let supervisor_shared = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("ferrojob-supervisor".into())
            .spawn(move || supervise::supervise(&supervisor_shared))
            .map_err(PoolError::Setup)?;
        shared.threads().push(handle);
        let pool = Self { shared };
        pool.ensure_workers(n_workers)?;
        Ok(pool)
    }

    /// Make exactly `n` workers live: start missing ones, retire idle extras.
    pub fn ensure_workers(&self, n: usize) -> Result<(), PoolError> {
        self.shared.check_owner()?;
        let missing = {
            let mut state = self.shared.state();
            if state.closed {
                return Err(PoolError::Closed);
            }
            let live = state.workers.values().filter(|w| w.is_live()).count();
            let mut extra = live.saturating_sub(n);
            for worker in state.workers.values_mut() {
                if extra == 0 {
                    break;
                }
                if worker.is_idle() {
                    worker.retire();
                    extra -= 1;
                }
            }
            n.saturating_sub(live)
        };
        for _ in 0..missing {
            spawn::spawn_worker(&self.shared)?;
        }
        Ok(())
    }

    /// The settings of the calls from now on (opaque to the engine): each worker receives them
    /// once, before its first job after this.
    pub fn set_call(&self, payload: Vec<u8>) {
        let mut state = self.shared.state();
        let generation = state.call.generation.wrapping_add(1).max(1);
        state.call = CallSettings {
            generation,
            payload: Arc::from(payload),
        };
    }

    /// The limits of the calls from now on (each call sets its own).
    pub fn set_limits(&self, limits: CallLimits) {
        self.shared.state().limits = limits;
        self.shared.changed.notify_all();
    }

    /// Whether this process started the pool (false in a forked child, which must start its
    /// own).
    pub fn is_owned_here(&self) -> bool {
        self.shared.owned_here()
    }

    /// Number of live workers (started, not dying).
    pub fn n_workers(&self) -> usize {
        self.shared
            .state()
            .workers
            .values()
            .filter(|w| w.is_live())
            .count()
    }

    /// Process ids of the live workers.
    pub fn pids(&self) -> Vec<i32> {
        self.shared
            .state()
            .workers
            .values()
            .filter(|w| w.is_live())
            .map(|w| w.pid.as_raw())
            .collect()
    }

    /// This pool's identity among the pools of the process.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Hand a job to an idle worker now, or queue it for the first one to finish.
    pub fn submit(&self, job: Job) -> Result<(), PoolError> {
        self.shared.check_owner()?;
        if job.pool.is_some_and(|pool| pool != self.shared.id) {
            return Err(PoolError::ForeignArena { job: job.id });
        }
        let mut state = self.shared.state();
        if state.closed {
            return Err(PoolError::Closed);
        }
        state.last_activity = Instant::now();
        let idle = state
            .workers
            .iter()
            .find(|(_, worker)| worker.is_idle())
            .map(|(&id, _)| id);
        let Some(id) = idle else {
            state.queue.push_back(job);
            return Ok(());
        };
        let mut job = job;
        let dispatch = state.hand_out(id, &mut job);
        self.shared.job_started(&state);
        drop(state);
        if let Some(dispatch) = dispatch {
            dispatch.send(&job);
        }
        Ok(())
    }

    /// The next completion, waiting at most `timeout` (None also when woken, see
    /// [`Pool::wake`]).
    pub fn recv(&self, timeout: Duration) -> Option<Completion> {
        match self.next_event(timeout) {
            Event::Completion(completion) => Some(completion),
            Event::Woken | Event::Nothing => None,
        }
    }

    /// The next completion or wake-up, waiting at most `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Event {
        if !self.shared.owned_here() {
            // No reader thread survives a fork: nothing will ever arrive here.
            return Event::Nothing;
        }
        crossbeam_channel::select! {
            // Disconnected is impossible while the pool holds a sender.
            recv(self.shared.rx) -> completion => completion.map_or(Event::Nothing, Event::Completion),
            recv(self.shared.wake_rx) -> _ => Event::Woken,
            default(timeout) => Event::Nothing,
        }
    }

    /// The worker events logged since the last call (oldest first; at most
    /// [`MAX_UNREAD_EVENTS`] are kept unread).
    pub fn take_worker_events(&self) -> Vec<WorkerEvent> {
        self.shared.state().log.take()
    }

    /// Claim job `id`'s completion for the calling thread ([`Claim::wait`]) instead of the
    /// channel. None if the job is neither queued nor running (its completion is on the channel
    /// already, or was read) or another thread claimed it.
    pub fn claim(&self, id: JobId) -> Option<Claim> {
        if !self.shared.owned_here() {
            return None;
        }
        // Under the state lock: a pending job's completion is delivered after this claim.
        let state = self.shared.state();
        let pending = state.queue.iter().any(|job| job.id == id)
            || state
                .workers
                .values()
                .any(|worker| worker.running.as_ref().is_some_and(|r| r.job == id));
        if !pending {
            return None;
        }
        self.shared.claim(id)
    }

    /// Make a thread blocked in [`Pool::recv`] (now or next) return None at once: a collector
    /// that should stop does not wait out its timeout.
    pub fn wake(&self) {
        // Full: a wake is already pending, which is as good.
        let _ = self.shared.wake_tx.try_send(());
    }

    /// A handle to send `Release` frames to this pool's workers.
    pub fn releaser(&self) -> Releaser {
        Releaser {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// Withdraw one job: dropped if it is still queued, its worker killed if it is running and
    /// `kill_running`. A withdrawn job completes as [`LossCause::Cancelled`] (on the channel, like
    /// every completion; a queued one with pid 0 and no task started).
    pub fn cancel_job(&self, id: JobId, kill_running: bool) -> JobState {
        if !self.shared.owned_here() {
            return JobState::Unknown;
        }
        let mut state = self.shared.state();
        if let Some(position) = state.queue.iter().position(|job| job.id == id) {
            let job = state.queue.remove(position);
            drop(state);
            drop(job); // its argument holds go now
            self.shared.deliver(Completion {
                job: id,
                pid: 0,
                elapsed: Duration::ZERO,
                outcome: Outcome::Lost(Loss {
                    pid: 0,
                    cause: LossCause::Cancelled,
                    tasks_started: 0,
                    jobs_done: 0,
                    peak_rss: None,
                    stderr_tail: Vec::new(),
                }),
            });
            return JobState::Queued;
        }
        let running = state.workers.values_mut().find(|worker| {
            worker.is_live() && worker.running.as_ref().is_some_and(|r| r.job == id)
        });
        match running {
            Some(worker) if kill_running => {
                worker.kill(KillReason::Cancelled);
                JobState::Running
            }
            Some(_) => JobState::Running,
            None => JobState::Unknown,
        }
    }

    /// Drop every queued job and kill the workers running one. Returns the ids of the queued jobs
    /// that were dropped; the running ones complete as [`LossCause::Cancelled`]. Returns once the
    /// killed workers are reaped, so no zombie outlives the call.
    pub fn cancel(&self) -> Vec<JobId> {
        if !self.shared.owned_here() {
            return Vec::new();
        }
        let mut state = self.shared.state();
        let dropped = state.queue.drain(..).map(|job| job.id).collect();
        for worker in state.workers.values_mut() {
            if worker.is_live() && worker.running.is_some() {
                worker.kill(KillReason::Cancelled);
            }
        }
        drop(state);
        self.shared.wait_until_reaped(REAP_WAIT);
        dropped
    }

    /// Kill every worker at once (Ctrl-C) and reap them: nothing keeps running. The pool stays
    /// usable; [`Pool::ensure_workers`] starts fresh workers.
    pub fn terminate(&self) {
        if !self.shared.owned_here() {
            return;
        }
        let mut state = self.shared.state();
        state.queue.clear();
        for worker in state.workers.values_mut() {
            worker.kill(KillReason::Cancelled);
        }
        drop(state);
        self.shared.wait_until_reaped(REAP_WAIT);
    }

    /// Ask every worker to exit, wait up to `grace`, kill the rest, reap them all and join every
    /// thread of the pool. Idempotent.
    pub fn shutdown(&self, grace: Duration) {
        let shared = &self.shared;
        if !shared.owned_here() {
            return;
        }
        {
            let mut state = shared.state();
            state.closed = true;
            state.queue.clear();
            for worker in state.workers.values_mut() {
                if worker.is_live() {
                    worker.retire();
                }
            }
        }
        shared.changed.notify_all();
        if !shared.wait_until_empty(grace) {
            for worker in shared.state().workers.values_mut() {
                worker.kill(KillReason::Cancelled);
            }
            shared.wait_until_empty(Duration::from_secs(10));
        }
        let threads = std::mem::take(&mut *shared.threads());
        for handle in threads {
            let _ = handle.join();
        }
        // Losses of jobs nobody waits for any more.
        while shared.rx.try_recv().is_ok() {}
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // In a forked child the workers belong to the parent: `shutdown` leaves them alone.
        self.shutdown(Duration::from_secs(1));
    }
}

impl Shared {
    /// Whether this process is the one that started the pool. Everything a forked child inherits
    /// (sockets, worker pids, the state) belongs to the parent: a child acts on none of it.
    fn owned_here(&self) -> bool {
        self.birth.is_here()
    }

    fn check_owner(&self) -> Result<(), PoolError> {
        if self.owned_here() {
            Ok(())
        } else {
            Err(PoolError::Forked {
                owner: self.birth.pid(),
            })
        }
    }

    /// A worker was retired after its job: have the supervisor start its replacement (it boots
    /// while the job's result goes back; a failure to start shows as a smaller pool, which the
    /// next call's `ensure_workers` makes whole).
    fn want_replacement(&self) {
        self.state().replacements += 1;
        self.changed.notify_all();
    }

    /// A job was handed to a worker: wake the supervisor if it sleeps while limits apply.
    fn job_started(&self, state: &State) {
        if state.supervisor_parked && state.limits.watches_jobs() {
            self.changed.notify_all();
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the bookkeeping consistent enough to shut down.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn threads(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.threads
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait_until_empty(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |state| state.workers.is_empty())
    }

    /// Wait until every killed worker has been reaped (its reader thread saw it go).
    fn wait_until_reaped(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |state| {
            state
                .workers
                .values()
                .all(|worker| !matches!(worker.leaving, Some(Leaving::Killed(_))))
        })
    }

    fn wait_until(&self, timeout: Duration, done: impl Fn(&State) -> bool) -> bool {
        // A wait too long for an Instant is a wait without end.
        let deadline = Instant::now().checked_add(timeout);
        let mut state = self.state();
        while !done(&state) {
            let now = Instant::now();
            let left = match deadline {
                Some(deadline) if now >= deadline => return false,
                Some(deadline) => deadline - now,
                None => Duration::from_secs(3600),
            };
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        true
    }
}

fn send_releases(conn: &Connection, tokens: &[u64]) {
    if tokens.is_empty() {
        return;
    }
    let payload: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    // A failed send means the worker is gone, and its segments with it.
    let _ = conn.send(Kind::Release, 0, 0, &payload, &[]);
}

fn send_job(conn: &Connection, job: &Job) {
    let fds: Vec<RawFd> = job.fds.iter().map(|fd| fd.as_raw_fd()).collect();
    // A failed send means the worker is gone; its reader sees the end of the socket and reports
    // the job as lost, so there is nothing to do here.
    let _ = conn.send(Kind::Task, job.id, 0, &job.payload, &fds);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with_one_worker() -> (State, Connection) {
        let (parent, child) = Connection::pair().unwrap();
        let worker = Worker {
            pid: Pid::this(),
            conn: Arc::new(parent),
            status: Arc::new(StatusPage::create().unwrap()),
            running: None,
            leaving: None,
            jobs_done: 0,
            tasks_done: 0,
            pending_release: vec![7, 8],
            over_cap: false,
            call_seen: 0,
        };
        let mut state = State::new();
        state.workers.insert(0, worker);
        state.next_worker = 1;
        (state, child)
    }

    #[test]
    fn a_worker_gets_the_calls_settings_once_and_its_releases_with_its_next_job() {
        let (mut state, _child) = state_with_one_worker();
        let mut first = Job::new(1, b"a");
        let dispatch = state.hand_out(0, &mut first).unwrap();
        assert!(dispatch.call.is_none(), "no call set: nothing to send");
        assert_eq!(dispatch.releases, vec![7, 8]);
        assert_eq!(state.workers[&0].running.as_ref().map(|r| r.job), Some(1));

        state.call = CallSettings {
            generation: 1,
            payload: Arc::from(b"settings".to_vec()),
        };
        let mut second = Job::new(2, b"b");
        let dispatch = state.hand_out(0, &mut second).unwrap();
        assert_eq!(dispatch.call.as_deref(), Some(&b"settings"[..]));
        assert!(dispatch.releases.is_empty(), "released tokens go once");
        let mut third = Job::new(3, b"c");
        assert!(state.hand_out(0, &mut third).unwrap().call.is_none());
        assert!(
            state.hand_out(9, &mut Job::new(4, b"d")).is_none(),
            "no such worker"
        );
    }

    #[test]
    fn a_job_for_another_pools_arena_is_refused() {
        let spec = WorkerSpec {
            program: PathBuf::from("/bin/true"),
            args: Vec::new(),
            env: Vec::new(),
            init: Vec::new(),
        };
        let pool = Pool::new(spec, 0, None).unwrap();
        let mut job = Job::new(1, b"x");
        job.pool = Some(pool.id() + 1);
        assert!(matches!(
            pool.submit(job),
            Err(PoolError::ForeignArena { job: 1 })
        ));
    }
}
