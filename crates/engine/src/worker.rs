//! The worker side of the protocol: receive jobs, hand them to a handler, send the replies.
//!
//! The handler (in ferrojob, Python code) only sees payload bytes; the loop owns the socket, the
//! status page and the timing, so the parent learns the worker's compute time per job and can read
//! which task is running without a message.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use crate::cursor::Cursor;
use crate::pool::{WORKER_SOCKET_FD, WORKER_STATUS_FD};
use crate::protocol::{Connection, Kind, ProtocolError};
use crate::shm::{StatusPage, STATUS_JOB, STATUS_TASKS_STARTED};

/// What the parent asked for.
pub enum Request<'a> {
    /// Set the worker up (sent once, first).
    Init(&'a [u8]),
    /// Run a job.
    Task {
        job: u64,
        payload: &'a [u8],
        fds: Vec<OwnedFd>,
    },
    /// The parent unmapped these result segments (tokens); they may be written again.
    Release(Vec<u64>),
}

/// The handler's answer to a task.
pub enum Reply {
    Done { payload: Vec<u8>, fds: Vec<OwnedFd> },
    Failed { payload: Vec<u8> },
}

/// A worker's end of its parent connection.
pub struct Endpoint {
    conn: Connection,
    status: StatusPage,
    /// The worker process. A task may fork; a child that comes back into this loop must not
    /// speak on its parent's socket (a second reply for one job breaks the call).
    owner: u32,
}

impl Endpoint {
    /// Take over the descriptors the pool left at fds 3 (socket) and 4 (status page).
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
        Ok(Self::new(
            Connection::from_owned_fd(socket),
            StatusPage::open(status)?,
        ))
    }

    pub fn new(conn: Connection, status: StatusPage) -> Self {
        Self {
            conn,
            status,
            owner: std::process::id(),
        }
    }

    /// End a process forked by a task that returned into the worker loop: everything here (the
    /// socket, the status page, the segments) belongs to the worker that forked it.
    fn leave_if_forked(&self) {
        if std::process::id() != self.owner {
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

    /// The status page, so the handler can count the tasks it starts.
    pub fn status_mut(&mut self) -> &mut StatusPage {
        &mut self.status
    }

    /// Serve requests until the parent says `Shutdown` or closes the socket. A handler that
    /// returns `None` for an `Init` request is fine; for a task it must reply.
    pub fn serve<F>(&self, mut handler: F) -> Result<(), ProtocolError>
    where
        F: FnMut(Request<'_>, &StatusPage) -> Option<Reply>,
    {
        while let Some(frame) = self.conn.recv()? {
            match frame.kind {
                Kind::Init => {
                    handler(Request::Init(&frame.payload), &self.status);
                    self.leave_if_forked();
                }
                Kind::Task => {
                    self.status.store(STATUS_TASKS_STARTED, 0);
                    self.status.store(STATUS_JOB, frame.id);
                    let started = Instant::now();
                    let reply = handler(
                        Request::Task {
                            job: frame.id,
                            payload: &frame.payload,
                            fds: frame.fds,
                        },
                        &self.status,
                    );
                    self.leave_if_forked();
                    let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    match reply {
                        Some(Reply::Done { payload, fds }) => {
                            // The descriptors are closed here once sent: the parent has its own.
                            let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
                            self.conn
                                .send(Kind::Done, frame.id, elapsed, &payload, &raw)?
                        }
                        Some(Reply::Failed { payload }) => {
                            self.conn
                                .send(Kind::Failed, frame.id, elapsed, &payload, &[])?
                        }
                        None => self.conn.send(Kind::Failed, frame.id, elapsed, &[], &[])?,
                    }
                }
                Kind::Release => {
                    let mut cursor = Cursor::new(&frame.payload);
                    let tokens = std::iter::from_fn(|| cursor.u64()).collect();
                    handler(Request::Release(tokens), &self.status);
                }
                Kind::Shutdown => return Ok(()),
                Kind::Done | Kind::Failed => {
                    return Err(ProtocolError::UnknownKind(frame.kind as u8))
                }
            }
        }
        Ok(())
    }
}
