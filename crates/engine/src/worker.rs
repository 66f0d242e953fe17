//! The worker side of the protocol: receive jobs, hand them to a handler, send the replies.
//!
//! The handler (in ferrojob, Python code) sees a job's pickle body and its out-of-band buffers,
//! already mapped; it answers through a [`Responder`] with the result body and result buffers.
//! The loop owns everything else: the socket, the status page and the timing (so the parent
//! learns the worker's compute time per job and which task runs, without a message), the result
//! segments lent to the parent and recycled when it releases them, and the tokens of argument
//! chunks that nothing here maps any more (reported in the next reply, so the parent may write
//! them again).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::arena::ResultSegments;
use crate::cursor::Cursor;
use crate::envelope::{self, BufferRef};
use crate::fork::Birth;
use crate::pool::{WORKER_SOCKET_FD, WORKER_STATUS_FD};
use crate::protocol::{Connection, Kind, ProtocolError};
use crate::shared_alloc;
use crate::shm::{
    Access, Mapping, SharedBuffer, StatusPage, STATUS_JOB, STATUS_LIFELINE, STATUS_PEAK_RSS,
    STATUS_TASKS_STARTED,
};

/// What the parent asked for.
pub enum Request<'a> {
    /// Set the worker up (sent once, first).
    Init(&'a [u8]),
    /// The settings of the call whose jobs follow.
    Call(&'a [u8]),
    /// Run a job: its pickle body and out-of-band buffers; answer through `reply`.
    Task {
        job: u64,
        body: &'a [u8],
        buffers: Vec<SharedBuffer>,
        reply: Responder<'a>,
    },
}

/// Answers one job, once. A job the handler leaves unanswered is reported failed (with no
/// report: the parent says "internal error").
pub struct Responder<'a> {
    endpoint: &'a Endpoint,
    job: u64,
    started: Instant,
    answered: &'a AtomicBool,
    /// The worker time to report, when the handler measured it (else: since the job arrived).
    busy: Option<std::time::Duration>,
}

impl Responder<'_> {
    /// Report `busy` as the job's worker time: what its tasks took, without the fixed cost of
    /// receiving and decoding a job, so that the parent sizes batches on the tasks alone (a
    /// one-task probe of a 100 ns task takes ~30 µs end to end).
    pub fn busy_for(mut self, busy: std::time::Duration) -> Self {
        self.busy = Some(busy);
        self
    }

    /// The job's results: `body` (the pickle) and the out-of-band buffers it refers to, sent
    /// through shared memory — as they are when they already live in a shared allocation (the
    /// numpy handler's), else copied into one of this worker's recycled result segments.
    pub fn done(self, body: &[u8], buffers: &[&[u8]]) -> Result<(), ProtocolError> {
        self.endpoint.leave_if_forked();
        let (fds, tokens, places) = self.endpoint.pack(buffers)?;
        let released = std::mem::take(&mut *lock(&self.endpoint.unmapped));
        let payload = envelope::encode(Access::CopyOnWrite, &places, &tokens, &released, body);
        // The descriptors are closed once sent: the parent has its own.
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        self.answered.store(true, Ordering::Relaxed);
        self.endpoint.record_peak_memory();
        self.endpoint
            .conn
            .send(Kind::Done, self.job, self.elapsed(), &payload, &raw)
    }

    /// The job raised: `report` describes the error (opaque to the engine).
    pub fn failed(self, report: &[u8]) -> Result<(), ProtocolError> {
        self.endpoint.leave_if_forked();
        self.answered.store(true, Ordering::Relaxed);
        self.endpoint.record_peak_memory();
        self.endpoint
            .conn
            .send(Kind::Failed, self.job, self.elapsed(), report, &[])
    }

    fn elapsed(&self) -> u64 {
        let elapsed = self.busy.unwrap_or_else(|| self.started.elapsed());
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A worker's end of its parent connection.
pub struct Endpoint {
    conn: Connection,
    status: StatusPage,
    /// The worker process. A task may fork; a child that comes back into this loop must not
    /// speak on its parent's socket (a second reply for one job breaks the call).
    birth: Birth,
    /// Result segments lent to the parent, and those it released (to write again).
    results: Mutex<ResultSegments>,
    /// Tokens of argument chunks whose mappings were dropped since the last reply.
    unmapped: Arc<Mutex<Vec<u64>>>,
    /// Mappings of large argument chunks kept across jobs (a big array passed to call after
    /// call: its pages stay faulted in), until the parent says it retires them or others push
    /// them out.
    kept: Mutex<VecDeque<(u64, Access, Arc<Mapping>)>>,
}

/// Argument chunks larger than this are kept mapped across jobs.
const KEEP_ABOVE: usize = crate::arena::DEFAULT_CHUNK_SIZE;
/// At most this many kept mappings per worker.
const MAX_KEPT: usize = 2;
/// How long a worker that just answered watches its socket before going to sleep: a job sent
/// within this time is read without the kernel waking the process (measured: 10,000
/// submit-and-wait round trips of a tiny task, 81 µs each without, 45 µs with 100 µs). An
/// Executor's next submission comes after the parent's collector and caller have both woken
/// (60-80 µs here), so the watch lasts 300 µs, yielding the core on every check so that the
/// parent's threads run meanwhile (with 2 workers on 2 cores, a pure spin slowed the parent:
/// `Executor.map` 0.84-0.99x `multiprocessing.Pool.map`, with yielding 1.04-1.35x; round trips
/// 2.07-2.68x `ProcessPoolExecutor` at 100 µs, 2.54-2.75x now). While a call has batches
/// queued the next one is already there, so the watch ends at once.
const SPIN_FOR_NEXT_JOB: std::time::Duration = std::time::Duration::from_micros(300);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Endpoint {
    /// Take over the descriptors the pool left at fds 3 (socket) and 4 (status page), and, on the
    /// portable path, start watching the lifeline on fd 5 (see [`crate::platform`]).
    ///
    /// # Safety
    /// The caller must be a worker process started by [`crate::pool::Pool`] and call this at most
    /// once: the descriptors are adopted as owned.
    pub unsafe fn inherit() -> io::Result<Self> {
        // SAFETY: per the contract above, the pool installed these descriptors for us alone.
        let (socket, status) = unsafe {
            (
                OwnedFd::from_raw_fd(WORKER_SOCKET_FD),
                OwnedFd::from_raw_fd(WORKER_STATUS_FD),
            )
        };
        let watched = StatusPage::open(status.try_clone()?)?;
        if watched.load(STATUS_LIFELINE) == 1 {
            // SAFETY: per the contract above (the lifeline the pool left is ours too).
            unsafe {
                crate::platform::watch_parent(move |peak| watched.store(STATUS_PEAK_RSS, peak))?
            };
        }
        Ok(Self::new(
            Connection::from_owned_fd(socket),
            StatusPage::open(status)?,
        ))
    }

    /// On the portable path, before each reply: record this worker's peak memory on its status
    /// page, so that the parent's memory-cap check after the job reads a value that includes the
    /// job (the lifeline thread's ticks alone could lag behind it). The Linux path reads `/proc`.
    fn record_peak_memory(&self) {
        if self.status.load(STATUS_LIFELINE) != 1 {
            return;
        }
        if let Some(peak) = crate::platform::own_peak_rss() {
            self.status.store(STATUS_PEAK_RSS, peak);
        }
    }

    pub fn new(conn: Connection, status: StatusPage) -> Self {
        Self {
            conn,
            status,
            birth: Birth::here(),
            results: Mutex::new(ResultSegments::new()),
            unmapped: Arc::new(Mutex::new(Vec::new())),
            kept: Mutex::new(VecDeque::new()),
        }
    }

    /// The status page, so the handler can count the tasks it starts.
    pub fn status_mut(&mut self) -> &mut StatusPage {
        &mut self.status
    }

    /// The status page, shared (its words are atomics).
    pub fn status(&self) -> &StatusPage {
        &self.status
    }

    /// Result segments lent to the parent and not released yet (for tests and leak checks).
    pub fn n_lent_results(&self) -> usize {
        lock(&self.results).n_lent()
    }

    /// End a process forked by a task that returned into the worker loop: everything here (the
    /// socket, the status page, the segments) belongs to the worker that forked it.
    fn leave_if_forked(&self) {
        if !self.birth.is_here() {
            let note = b"ferrojob: a process forked inside a task returned into the worker loop; \
                         it exits here (end forked children with os._exit)\n";
            // SAFETY: writing a static buffer to stderr, then ending this process at once without
            // running the worker's exit handlers, which belong to the worker.
            unsafe {
                libc::write(2, note.as_ptr().cast(), note.len());
                libc::_exit(0)
            }
        }
    }

    /// Descriptors, tokens and places for result buffers: those in a live shared allocation go
    /// as they are (token 0: freed by numpy, never written again); the others are packed into one
    /// recycled result segment.
    fn pack(&self, buffers: &[&[u8]]) -> io::Result<(Vec<OwnedFd>, Vec<u64>, Vec<BufferRef>)> {
        let mut fds = Vec::new();
        let mut tokens = Vec::new();
        let mut places: Vec<Option<BufferRef>> = Vec::with_capacity(buffers.len());
        let mut to_copy = Vec::new();
        for bytes in buffers {
            match shared_alloc::locate(bytes.as_ptr(), bytes.len()) {
                Some((fd, offset)) => {
                    fds.push(fd);
                    tokens.push(0);
                    places.push(Some(BufferRef {
                        segment: segment_number(fds.len())?,
                        offset,
                        len: bytes.len() as u64,
                    }));
                }
                None => {
                    places.push(None);
                    to_copy.push(*bytes);
                }
            }
        }
        if !to_copy.is_empty() {
            let (fd, token, packed) = lock(&self.results).pack(&to_copy)?;
            fds.push(fd);
            tokens.push(token);
            let segment = segment_number(fds.len())?;
            let mut packed = packed.into_iter();
            for place in places.iter_mut().filter(|place| place.is_none()) {
                *place = packed.next().map(|copied| BufferRef { segment, ..copied });
            }
        }
        Ok((fds, tokens, places.into_iter().flatten().collect()))
    }

    /// Map a job's out-of-band buffers; each chunk's token is recorded as unmapped when the last
    /// buffer over it goes (a task may keep one past its job).
    fn map_arguments(
        &self,
        payload: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<(Vec<SharedBuffer>, usize), String> {
        let envelope = envelope::decode(payload).map_err(|e| e.to_string())?;
        let body_start = payload.len() - envelope.body.len();
        let buffers = envelope::map_buffers_with(&envelope, fds, |fd, token, access| {
            self.segment(fd, token, access)
        })
        .map_err(|e| e.to_string())?;
        Ok((buffers, body_start))
    }

    /// The mapping of an argument chunk: a kept one, or a fresh one whose token is reported
    /// unmapped when its last user goes (large ones are kept for later jobs).
    fn segment(&self, fd: OwnedFd, token: u64, access: Access) -> io::Result<Arc<Mapping>> {
        let mut kept = lock(&self.kept);
        if token != 0 {
            let found = kept.iter().find(|(t, a, _)| *t == token && *a == access);
            if let Some((_, _, mapping)) = found {
                // The parent counts a mapping per job that refers to the chunk; this job adds
                // none, so its count is settled now (the kept mapping reports itself when it
                // goes). `fd` is closed here: the mapping suffices.
                lock(&self.unmapped).push(token);
                return Ok(Arc::clone(mapping));
            }
        }
        let mapping = Mapping::map_segment(fd, access)?;
        if token == 0 {
            return Ok(Arc::new(mapping));
        }
        let unmapped = Arc::clone(&self.unmapped);
        let large = mapping.len() > KEEP_ABOVE;
        let mapping = Arc::new(mapping.on_drop(move || lock(&unmapped).push(token)));
        if large {
            kept.push_back((token, access, Arc::clone(&mapping)));
            if kept.len() > MAX_KEPT {
                kept.pop_front(); // reported unmapped once no task uses it either
            }
        }
        Ok(mapping)
    }

    /// The parent retires these argument chunks: stop keeping their mappings.
    fn forget_kept(&self, tokens: &[u64]) {
        lock(&self.kept).retain(|(token, _, _)| !tokens.contains(token));
    }

    /// Serve requests until the parent says `Shutdown` or closes the socket.
    pub fn serve<F>(&self, mut handler: F) -> Result<(), ProtocolError>
    where
        F: FnMut(Request<'_>, &StatusPage),
    {
        loop {
            self.conn.spin_until_readable(SPIN_FOR_NEXT_JOB);
            let Some(frame) = self.conn.recv()? else {
                break;
            };
            match frame.kind {
                Kind::Init => {
                    handler(Request::Init(&frame.payload), &self.status);
                    self.leave_if_forked();
                }
                Kind::Call => {
                    handler(Request::Call(&frame.payload), &self.status);
                    self.leave_if_forked();
                }
                Kind::Task => {
                    self.status.store(STATUS_TASKS_STARTED, 0);
                    self.status.store(STATUS_JOB, frame.id);
                    let started = Instant::now();
                    let answered = AtomicBool::new(false);
                    match self.map_arguments(&frame.payload, frame.fds) {
                        Ok((buffers, body_start)) => {
                            let reply = Responder {
                                endpoint: self,
                                job: frame.id,
                                started,
                                answered: &answered,
                                busy: None,
                            };
                            let body = frame.payload.get(body_start..).unwrap_or_default();
                            handler(
                                Request::Task {
                                    job: frame.id,
                                    body,
                                    buffers,
                                    reply,
                                },
                                &self.status,
                            );
                        }
                        Err(reason) => {
                            eprintln!("ferrojob worker: job {} is damaged: {reason}", frame.id)
                        }
                    }
                    self.leave_if_forked();
                    if !answered.load(Ordering::Relaxed) {
                        self.conn.send(Kind::Failed, frame.id, 0, &[], &[])?;
                    }
                }
                Kind::Release => {
                    // Tokens of result segments the parent unmapped, or of kept argument chunks
                    // it retires (tokens are unique across both).
                    let mut cursor = Cursor::new(&frame.payload);
                    let tokens: Vec<u64> = std::iter::from_fn(|| cursor.u64()).collect();
                    let mut results = lock(&self.results);
                    for &token in &tokens {
                        results.release(token);
                    }
                    drop(results);
                    self.forget_kept(&tokens);
                }
                Kind::Shutdown => return Ok(()),
                // Carriers never leave `recv`; replies never come to a worker.
                Kind::Descriptors | Kind::Done | Kind::Failed => {
                    return Err(ProtocolError::UnknownKind(frame.kind as u8))
                }
            }
        }
        Ok(())
    }
}

/// The envelope's number for the last of `n` descriptors.
fn segment_number(n: usize) -> io::Result<u32> {
    n.checked_sub(1)
        .and_then(|last| u32::try_from(last).ok())
        .ok_or_else(|| io::Error::other("too many result segments"))
}
