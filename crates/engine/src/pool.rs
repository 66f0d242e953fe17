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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::arena::Holds;
use crate::output::StderrTail;
use crate::protocol::{Connection, Kind, ProtocolError};
use crate::shm::{SharedBuffer, StatusPage, STATUS_JOB, STATUS_TASKS_STARTED};

/// The descriptor number of the worker's socket in the child.
pub const WORKER_SOCKET_FD: RawFd = 3;
/// The descriptor number of the worker's status page in the child.
pub const WORKER_STATUS_FD: RawFd = 4;
/// How long a timed-out worker has to dump its Python stack (SIGUSR1, faulthandler) before it
/// is killed.
const STACK_GRACE: Duration = Duration::from_millis(200);
/// How long a lost worker's report waits for the rest of its stderr.
const TAIL_PATIENCE: Duration = Duration::from_millis(500);
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
    pub holds: Option<Holds>,
    /// Tasks in the job (counted against [`WorkerLimits::max_tasks`]).
    pub n_tasks: u64,
}

/// When a worker is replaced by a fresh one, checked after each of its jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerLimits {
    /// After this many tasks.
    pub max_tasks: Option<u64>,
    /// Once its resident memory exceeds this many bytes.
    pub max_rss: Option<u64>,
}

impl Job {
    /// A job of `body` alone, with no shared memory.
    pub fn new(id: JobId, body: &[u8]) -> Self {
        Self {
            id,
            payload: crate::envelope::encode(crate::shm::Access::ReadOnly, &[], &[], &[], body),
            fds: Vec::new(),
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
    /// We killed it: its current task ran longer than the limit.
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
    spec: WorkerSpec,
    owner: u32,
    idle_timeout: Option<Duration>,
    state: Mutex<State>,
    changed: Condvar,
    tx: Sender<Completion>,
    rx: Receiver<Completion>,
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
    limits: WorkerLimits,
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
    holds: Option<Holds>,
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
            owner: std::process::id(),
            idle_timeout,
            state: Mutex::new(State {
                workers: BTreeMap::new(),
                queue: VecDeque::new(),
                next_worker: 0,
                last_activity: Instant::now(),
                closed: false,
                limits: WorkerLimits::default(),
            }),
            changed: Condvar::new(),
            tx,
            rx,
            wake_tx,
            wake_rx,
            threads: Mutex::new(Vec::new()),
        });
        if idle_timeout.is_some() {
            let reaper_shared = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name("ferrojob-idle".into())
                .spawn(move || idle_reaper(&reaper_shared))
                .map_err(PoolError::Setup)?;
            shared.threads().push(handle);
        }
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
            spawn_worker(&self.shared)?;
        }
        Ok(())
    }

    /// Replace workers after `limits` (this pool's calls from now on).
    pub fn set_worker_limits(&self, limits: WorkerLimits) {
        self.shared.state().limits = limits;
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

    /// Hand a job to an idle worker now, or queue it for the first one to finish.
    pub fn submit(&self, job: Job) -> Result<(), PoolError> {
        self.shared.check_owner()?;
        let mut state = self.shared.state();
        if state.closed {
            return Err(PoolError::Closed);
        }
        state.last_activity = Instant::now();
        let Some(worker) = state.workers.values_mut().find(|w| w.is_idle()) else {
            state.queue.push_back(job);
            return Ok(());
        };
        let mut job = job;
        worker.running = Some(Running::new(&mut job));
        let conn = Arc::clone(&worker.conn);
        let releases = std::mem::take(&mut worker.pending_release);
        drop(state);
        send_releases(&conn, &releases);
        send_job(&conn, &job);
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

    /// Make a thread blocked in [`Pool::recv`] (now or next) return None at once: a collector
    /// that should stop does not wait out its timeout.
    pub fn wake(&self) {
        // Full: a wake is already pending, which is as good.
        let _ = self.shared.wake_tx.try_send(());
    }

    /// Kill every worker whose current task has run longer than `limit`; their jobs complete as
    /// [`LossCause::TimedOut`]. Call it periodically while waiting.
    pub fn enforce_task_timeout(&self, limit: Duration) {
        if !self.shared.owned_here() {
            return;
        }
        let now = Instant::now();
        let mut state = self.shared.state();
        for worker in state.workers.values_mut().filter(|w| w.is_live()) {
            let Some(running) = worker.running.as_mut() else {
                continue;
            };
            if worker.status.load(STATUS_JOB) == running.job {
                let started = worker.status.load(STATUS_TASKS_STARTED);
                if started != running.tasks_seen {
                    running.tasks_seen = started;
                    running.task_since = now;
                }
            }
            if now.duration_since(running.task_since) <= limit {
                continue;
            }
            // First ask for the stuck task's stack (the worker's faulthandler writes it to
            // stderr, kept in its tail), then kill: a task deaf to signals is killed all the same.
            match running.stack_requested {
                None => {
                    let _ = kill(worker.pid, Signal::SIGUSR1);
                    running.stack_requested = Some((now, limit));
                }
                Some((asked, _)) if now.duration_since(asked) >= STACK_GRACE => {
                    worker.kill(KillReason::TimedOut(limit));
                }
                Some(_) => {}
            }
        }
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
            let _ = self.shared.tx.send(Completion {
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
        std::process::id() == self.owner
    }

    fn check_owner(&self) -> Result<(), PoolError> {
        if self.owned_here() {
            Ok(())
        } else {
            Err(PoolError::Forked { owner: self.owner })
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

fn spawn_worker(shared: &Arc<Shared>) -> Result<(), PoolError> {
    let (parent_end, child_end) = Connection::pair()?;
    let status = StatusPage::create()?;
    // Descriptors the child will move to 3 and 4 must not already sit on 3 or 4.
    let child_end = child_end.into_owned_fd();
    let child_socket = dup_above(child_end.as_raw_fd(), 10)?;
    drop(child_end);
    let child_status = dup_above(status.raw_fd(), 10)?;
    let (socket_raw, status_raw) = (child_socket.as_raw_fd(), child_status.as_raw_fd());
    let parent_pid = std::process::id() as libc::pid_t;

    let spec = &shared.spec;
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (prctl, getppid, signal, dup2) on plain integers.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent_pid {
                libc::_exit(1);
            }
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            if libc::dup2(socket_raw, WORKER_SOCKET_FD) < 0
                || libc::dup2(status_raw, WORKER_STATUS_FD) < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (pid, stderr) = spawner::spawn(command).map_err(|source| PoolError::Spawn {
        program: spec.program.clone(),
        source,
    })?;
    let tail = stderr
        .map(|pipe| StderrTail::follow(pipe, format!("ferrojob-stderr-{}", pid.as_raw())))
        .transpose()?;
    drop((child_socket, child_status));

    let conn = Arc::new(parent_end);
    // The Init frame waits in the socket buffer while the interpreter boots.
    let _ = conn.send(Kind::Init, 0, 0, &spec.init, &[]);
    let status = Arc::new(status);
    let id = {
        let mut state = shared.state();
        let id = state.next_worker;
        state.next_worker += 1;
        // A worker that boots while jobs wait takes the first one right away.
        let mut first_job = state.queue.pop_front();
        state.workers.insert(
            id,
            Worker {
                pid,
                conn: Arc::clone(&conn),
                status: Arc::clone(&status),
                running: first_job.as_mut().map(Running::new),
                jobs_done: 0,
                tasks_done: 0,
                pending_release: Vec::new(),
                leaving: None,
            },
        );
        if let Some(job) = first_job {
            drop(state);
            send_job(&conn, &job);
        }
        id
    };
    let reader_shared = Arc::clone(shared);
    let handle = std::thread::Builder::new()
        .name(format!("ferrojob-worker-{}", pid.as_raw()))
        .spawn(move || read_replies(&reader_shared, id, &conn, pid, tail.as_deref()))
        .map_err(PoolError::Setup)?;
    shared.threads().push(handle);
    Ok(())
}

fn dup_above(fd: RawFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: `fd` is open for the duration of the call; the duplicate is a new descriptor that
    // we own from here on.
    let raw = fcntl(
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        FcntlArg::F_DUPFD_CLOEXEC(min),
    )
    .map_err(io::Error::from)?;
    // SAFETY: `raw` was just returned by F_DUPFD_CLOEXEC, so it is open and ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A worker's reader thread: relay replies, keep the worker fed, and report its death.
fn read_replies(
    shared: &Arc<Shared>,
    id: u64,
    conn: &Connection,
    pid: Pid,
    tail: Option<&StderrTail>,
) {
    let violation = loop {
        match conn.recv() {
            Ok(Some(frame)) if matches!(frame.kind, Kind::Done | Kind::Failed) => {
                if let Err(reason) = on_reply(shared, id, frame) {
                    break Some(reason);
                }
            }
            Ok(Some(frame)) => {
                break Some(format!(
                    "it sent a {:?} frame, which only the parent sends",
                    frame.kind
                ))
            }
            // The end of the socket, in or between frames: the worker exited or was killed.
            Ok(None) | Err(ProtocolError::Truncated | ProtocolError::Io(_)) => break None,
            Err(error) => break Some(error.to_string()),
        }
    };
    if violation.is_some() {
        // A worker that speaks out of turn cannot be trusted with more work.
        let _ = kill(pid, Signal::SIGKILL);
    }
    conn.shutdown();
    let (exit, peak_rss) = reap(pid);
    let lost_a_job = shared
        .state()
        .workers
        .get(&id)
        .is_some_and(|worker| worker.running.is_some());
    // The report wants the worker's last words: wait (briefly, unlocked) for its stderr to end.
    let stderr_tail = match tail {
        Some(tail) if lost_a_job => tail.snapshot(TAIL_PATIENCE),
        _ => Vec::new(),
    };
    let mut state = shared.state();
    if let Some(worker) = state.workers.remove(&id) {
        if let Some(running) = worker.running {
            // A worker asked for its stack (SIGUSR1) that died of it had no handler: a timeout.
            let asked_for_stack = running.stack_requested.map(|(_, limit)| limit);
            let cause = match (violation, worker.leaving, asked_for_stack) {
                (_, Some(Leaving::Killed(KillReason::TimedOut(limit))), _)
                | (_, _, Some(limit)) => LossCause::TimedOut(limit),
                (_, Some(Leaving::Killed(KillReason::Cancelled)), None) => LossCause::Cancelled,
                (Some(reason), _, None) => LossCause::Protocol(reason),
                (None, Some(Leaving::Retired) | None, None) => exit,
            };
            let tasks_started = if worker.status.load(STATUS_JOB) == running.job {
                worker.status.load(STATUS_TASKS_STARTED)
            } else {
                0
            };
            let _ = shared.tx.send(Completion {
                job: running.job,
                pid: pid.as_raw(),
                elapsed: Duration::ZERO,
                outcome: Outcome::Lost(Loss {
                    pid: pid.as_raw(),
                    cause,
                    tasks_started,
                    jobs_done: worker.jobs_done,
                    peak_rss,
                    stderr_tail,
                }),
            });
        }
    }
    drop(state);
    shared.changed.notify_all();
}

/// Record a reply, give the worker its next job, and deliver the completion. A reply that makes
/// no sense (for another job than the one the worker runs, or while it runs none; a damaged
/// envelope or segments that cannot be mapped) is an error: the worker's job stays recorded as
/// running, so its loss is reported when the worker goes.
fn on_reply(shared: &Arc<Shared>, id: u64, frame: crate::protocol::Frame) -> Result<(), String> {
    let mut state = shared.state();
    state.last_activity = Instant::now();
    let Some(worker) = state.workers.get_mut(&id) else {
        return Err("it is no longer part of the pool".into());
    };
    let (conn, worker_pid) = (Arc::clone(&worker.conn), worker.pid);
    let pid = worker_pid.as_raw();
    match &worker.running {
        Some(running) if running.job == frame.id => {}
        Some(running) => {
            return Err(format!(
                "it replied for job {} while running job {}",
                frame.id, running.job
            ))
        }
        None => return Err(format!("it replied for job {} while idle", frame.id)),
    }
    let limits = state.limits;
    drop(state);
    let (released, outcome) = match frame.kind {
        Kind::Done => {
            let releaser = Releaser {
                shared: Arc::downgrade(shared),
            };
            let (released, body_start, buffers) =
                open_reply(&frame.payload, frame.fds, pid, &releaser)
                    .map_err(|error| format!("its reply is damaged: {error}"))?;
            let outcome = Outcome::Done {
                payload: frame.payload,
                body_start,
                buffers,
            };
            (released, outcome)
        }
        _ => (
            Vec::new(),
            Outcome::Failed {
                payload: frame.payload,
            },
        ),
    };
    // Past its memory cap? (Read from /proc outside the pool's lock.)
    let over_memory = limits
        .max_rss
        .is_some_and(|max| resident_bytes(worker_pid).is_some_and(|rss| rss > max));
    let mut state = shared.state();
    let Some(worker) = state.workers.get_mut(&id) else {
        return Err("it is no longer part of the pool".into());
    };
    let finished = worker.running.take();
    worker.jobs_done += 1;
    worker.tasks_done += finished.as_ref().map_or(0, |running| running.n_tasks);
    let spent = over_memory || limits.max_tasks.is_some_and(|max| worker.tasks_done >= max);
    if spent && worker.is_live() {
        // Replaced before its next task: a fresh worker takes the queue from here.
        worker.retire();
    }
    let live = worker.is_live();
    let releases = std::mem::take(&mut worker.pending_release);
    let mut next = if live { state.queue.pop_front() } else { None };
    if let (Some(job), Some(worker)) = (next.as_mut(), state.workers.get_mut(&id)) {
        worker.running = Some(Running::new(job));
    }
    drop(state);
    // The job's argument chunks: those the worker no longer maps, then the job's holds.
    if let Some(holds) = finished.and_then(|running| running.holds) {
        holds.unmapped(&released);
    }
    send_releases(&conn, &releases);
    if let Some(job) = next {
        send_job(&conn, &job);
    }
    if spent {
        // The replacement boots while the result goes back; a failure to start shows as a
        // smaller pool, which the next call's `ensure_workers` makes whole.
        let _ = spawn_worker(shared);
    }
    let _ = shared.tx.send(Completion {
        job: frame.id,
        pid,
        elapsed: Duration::from_nanos(frame.aux),
        outcome,
    });
    Ok(())
}

/// Decode a reply's envelope and map its result buffers: the tokens of argument chunks the
/// worker released, where the body starts, and the buffers (each result segment's release is
/// sent back to worker `pid` when nothing here maps it any more).
fn open_reply(
    payload: &[u8],
    fds: Vec<OwnedFd>,
    pid: i32,
    releaser: &Releaser,
) -> Result<(Vec<u64>, usize, Vec<SharedBuffer>), crate::envelope::EnvelopeError> {
    let envelope = crate::envelope::decode(payload)?;
    let body_start = payload.len() - envelope.body.len();
    let buffers = crate::envelope::map_buffers(&envelope, fds, |token| {
        let releaser = releaser.clone();
        Box::new(move || releaser.release(pid, &[token]))
    })?;
    Ok((envelope.released, body_start, buffers))
}

/// A process's resident memory in bytes (`/proc/<pid>/statm`), or None if it cannot be read.
fn resident_bytes(pid: Pid) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{}/statm", pid.as_raw())).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    pages.checked_mul(page_size)
}

/// Wait for a child that closed its socket: how it ended and its peak resident memory (bytes).
/// A child that lingers is killed after a grace period.
fn reap(pid: Pid) -> (LossCause, Option<u64>) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut pause = Duration::from_micros(200);
    loop {
        let blocking = Instant::now() >= deadline;
        if blocking {
            let _ = kill(pid, Signal::SIGKILL);
        }
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero rusage is a valid value of this plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let flags = if blocking { 0 } else { libc::WNOHANG };
        // SAFETY: wait4 writes only into the two locals passed by pointer, which outlive the call.
        let reaped = unsafe { libc::wait4(pid.as_raw(), &mut status, flags, &mut usage) };
        // ru_maxrss is in KiB on Linux.
        let peak_rss = u64::try_from(usage.ru_maxrss)
            .ok()
            .map(|kib| kib.saturating_mul(1024));
        match reaped {
            0 => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            n if n == pid.as_raw() => {
                if libc::WIFEXITED(status) {
                    return (LossCause::Exited(libc::WEXITSTATUS(status)), peak_rss);
                }
                if libc::WIFSIGNALED(status) {
                    return (LossCause::Signaled(libc::WTERMSIG(status)), peak_rss);
                }
            }
            _ if Errno::last() == Errno::EINTR => {}
            _ => return (LossCause::Vanished, None),
        }
    }
}

fn idle_reaper(shared: &Shared) {
    let Some(idle_timeout) = shared.idle_timeout else {
        return;
    };
    let mut state = shared.state();
    loop {
        if state.closed {
            return;
        }
        let idle_for = state.last_activity.elapsed();
        let all_idle =
            state.queue.is_empty() && state.workers.values().all(|w| w.running.is_none());
        if all_idle && idle_for >= idle_timeout {
            for worker in state.workers.values_mut().filter(|w| w.is_live()) {
                worker.retire();
            }
        }
        let wait = idle_timeout
            .saturating_sub(idle_for)
            .max(Duration::from_millis(100));
        state = shared
            .changed
            .wait_timeout(state, wait)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0;
    }
}

/// The one thread that forks workers; see the module docs for why it must outlive them.
mod spawner {
    use super::*;

    type Spawned = (Pid, Option<std::process::ChildStderr>);
    type Request = (Command, Sender<io::Result<Spawned>>);

    static SPAWNER: OnceLock<Mutex<(u32, Sender<Request>)>> = OnceLock::new();

    pub(super) fn spawn(command: Command) -> io::Result<Spawned> {
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        let cell = SPAWNER.get_or_init(|| Mutex::new(start()));
        {
            let mut guard = cell.lock().unwrap_or_else(|p| p.into_inner());
            // After a fork the spawner thread exists only in the parent.
            if guard.0 != std::process::id() {
                *guard = start();
            }
            guard
                .1
                .send((command, reply_tx))
                .map_err(|_| io::Error::other("the spawner thread is gone"))?;
        }
        reply_rx
            .recv()
            .map_err(|_| io::Error::other("the spawner thread is gone"))?
    }

    fn start() -> (u32, Sender<Request>) {
        let (tx, rx) = crossbeam_channel::unbounded::<Request>();
        std::thread::Builder::new()
            .name("ferrojob-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let result = command
                        .spawn()
                        .map(|mut child| (Pid::from_raw(child.id() as i32), child.stderr.take()));
                    let _ = reply.send(result);
                }
            })
            .expect("cannot start the ferrojob spawner thread");
        (std::process::id(), tx)
    }
}
