//! Starting workers and reaping them: one spawner thread forks every worker (see the module docs
//! of [`super`] for why it must outlive them), each worker gets its socket and status page on
//! descriptors 3 and 4 (and, on the portable path, its lifeline on 5: see
//! [`crate::platform`]), and a reader thread ([`super::replies`]) from then on.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg};

use super::replies::read_replies;
use super::{PoolError, Shared, Worker, WORKER_SOCKET_FD, WORKER_STATUS_FD};
use crate::output::StderrTail;
use crate::platform::ParentDeath;
use crate::protocol::{Connection, Kind};
use crate::shm::StatusPage;
use crate::shm::STATUS_LIFELINE;

pub(super) fn spawn_worker(shared: &Arc<Shared>) -> Result<(), PoolError> {
    let (parent_end, child_end) = Connection::pair()?;
    let status = StatusPage::create()?;
    // Descriptors the child will move to 3 and 4 must not already sit on 3 or 4.
    let child_end = child_end.into_owned_fd();
    let child_socket = dup_above(child_end.as_raw_fd(), 10)?;
    drop(child_end);
    let child_status = dup_above(status.raw_fd(), 10)?;
    let (socket_raw, status_raw) = (child_socket.as_raw_fd(), child_status.as_raw_fd());
    let parent_pid = std::process::id() as libc::pid_t;
    let parent_death = ParentDeath::prepare()?;
    if parent_death.has_lifeline() {
        status.store(STATUS_LIFELINE, 1);
    }

    let spec = &shared.spec;
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (prctl or dup2, getppid, signal, dup2) on plain integers.
    unsafe {
        command.pre_exec(move || {
            parent_death.in_child()?;
            // The parent may have died before the child could notice it.
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
        state
            .log
            .record(pid.as_raw(), super::WorkerEventKind::Started);
        // A worker that boots while jobs wait takes the first one right away.
        state.workers.insert(
            id,
            Worker {
                pid,
                conn: Arc::clone(&conn),
                status: Arc::clone(&status),
                running: None,
                jobs_done: 0,
                tasks_done: 0,
                pending_release: Vec::new(),
                leaving: None,
                over_cap: false,
                call_seen: 0,
            },
        );
        if let Some(mut job) = state.queue.pop_front() {
            let dispatch = state.hand_out(id, &mut job);
            shared.job_started(&state);
            drop(state);
            if let Some(dispatch) = dispatch {
                dispatch.send(&job);
            }
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

/// The one thread that forks workers; see the module docs for why it must outlive them.
mod spawner {
    use std::io;
    use std::process::Command;

    use crossbeam_channel::Sender;
    use nix::unistd::Pid;

    use crate::fork::PerProcess;

    type Spawned = (Pid, Option<std::process::ChildStderr>);
    type Request = (Command, Sender<io::Result<Spawned>>);

    // After a fork the spawner thread exists only in the parent: the child starts its own.
    static SPAWNER: PerProcess<Sender<Request>> = PerProcess::new();

    pub(super) fn spawn(command: Command) -> io::Result<Spawned> {
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        SPAWNER
            .get(start)
            .send((command, reply_tx))
            .map_err(|_| io::Error::other("the spawner thread is gone"))?;
        reply_rx
            .recv()
            .map_err(|_| io::Error::other("the spawner thread is gone"))?
    }

    fn start() -> Sender<Request> {
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
        tx
    }
}
