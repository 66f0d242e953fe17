//! Framed messages between the parent and its worker processes over a Unix stream socket.
//!
//! A frame is a fixed 32-byte header followed by `len` payload bytes:
//!
//! ```text
//! magic u32 | kind u8 | n_fds u8 | reserved u16 | id u64 | aux u64 | len u64   (little endian)
//! ```
//!
//! `id` names the job a frame belongs to and `aux` carries a kind-specific number (a worker's
//! compute time in nanoseconds on `Done`/`Failed`). File descriptors (shared-memory segments) ride
//! with the header as `SCM_RIGHTS` ancillary data, so they arrive together with the frame that
//! uses them. One message carries at most [`MAX_FDS`] of them: a frame with more is preceded by
//! `Descriptors` frames that carry the first ones, and [`Connection::recv`] hands the frame over
//! with all of them, in order — no caller sees the carriers.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::cmsg_space;

use crate::cursor::Cursor;
use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned};

/// Bytes of a frame header.
pub const HEADER_LEN: usize = 32;
/// Most descriptors one message may carry: the kernel's limit (SCM_MAX_FD). A frame with more is
/// split across `Descriptors` carriers.
pub const MAX_FDS: usize = 253;
/// Most descriptors one frame may carry with its carriers: bounds what a hostile peer can make
/// the receiver hold (far beyond what a real batch refers to; the open-file limit comes first).
pub const MAX_FRAME_FDS: usize = 64 * MAX_FDS;
/// Largest payload a frame may declare. Large data travels in shared memory beside frames, so
/// a real payload is a pickle of the non-buffer part of a batch or its results; a header that
/// declares more is a broken or hostile peer, refused before anything is allocated.
pub const MAX_PAYLOAD_LEN: u64 = 16 << 30;
/// Payload bytes allocated ahead of reading them; beyond this the buffer grows only as bytes
/// actually arrive, so a peer that declares a large frame and sends little costs little.
const PREALLOCATE: usize = 64 << 20;
const MAGIC: u32 = u32::from_le_bytes(*b"FJOB");

/// What a frame means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Parent → worker, first frame: how to set the worker up (opaque to the engine).
    Init = 1,
    /// Parent → worker: run a job.
    Task = 2,
    /// Worker → parent: the job's results.
    Done = 3,
    /// Worker → parent: the job raised; the payload describes the error.
    Failed = 4,
    /// Parent → worker: exit cleanly.
    Shutdown = 5,
    /// Parent → worker: the parent no longer maps these result segments (u64 tokens, little
    /// endian); the worker may write into them again.
    Release = 6,
    /// Parent → worker: the settings of the current call (opaque to the engine), sent before
    /// the first job of each call a worker runs.
    Call = 7,
    /// Either way: descriptors of the next frame beyond the [`MAX_FDS`] one message carries
    /// (empty payload). Never handed to a caller: `recv` joins them to their frame.
    Descriptors = 8,
}

impl Kind {
    fn from_u8(value: u8) -> Result<Self, ProtocolError> {
        Ok(match value {
            1 => Self::Init,
            2 => Self::Task,
            3 => Self::Done,
            4 => Self::Failed,
            5 => Self::Shutdown,
            6 => Self::Release,
            7 => Self::Call,
            8 => Self::Descriptors,
            other => return Err(ProtocolError::UnknownKind(other)),
        })
    }
}

/// A received frame; it owns the descriptors that came with it.
#[derive(Debug)]
pub struct Frame {
    pub kind: Kind,
    pub id: u64,
    pub aux: u64,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// Why a frame could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    #[error("peer sent a frame with a bad magic number {0:#x} (not a ferrojob peer, or the stream is out of step)")]
    BadMagic(u32),
    #[error("peer sent a frame of unknown kind {0}")]
    UnknownKind(u8),
    #[error("a frame may carry at most {MAX_FRAME_FDS} file descriptors, got {0}")]
    TooManyFds(usize),
    #[error("peer sent descriptors for a frame, then {0} descriptors too many or a carrier with a payload")]
    BadCarrier(usize),
    #[error("peer closed the connection in the middle of a frame")]
    Truncated,
    #[error(
        "peer declared a frame of {0} bytes, more than the {MAX_PAYLOAD_LEN} a frame may carry"
    )]
    TooLarge(u64),
    #[error("no memory for a frame of {0} bytes")]
    OutOfMemory(u64),
}

/// One end of a parent↔worker socket. Sending and receiving take `&self`: one thread can read
/// while others write; frames sent from several threads never interleave.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    sending: std::sync::Mutex<()>,
}

impl Connection {
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            sending: std::sync::Mutex::new(()),
        }
    }

    /// Wrap an inherited descriptor (a worker's end of the socket).
    pub fn from_owned_fd(fd: OwnedFd) -> Self {
        Self::new(UnixStream::from(fd))
    }

    /// A connected pair, both ends close-on-exec.
    pub fn pair() -> io::Result<(Self, Self)> {
        let (a, b) = UnixStream::pair()?;
        Ok((Self::new(a), Self::new(b)))
    }

    pub fn into_owned_fd(self) -> OwnedFd {
        OwnedFd::from(self.stream)
    }

    /// Send one frame. Descriptors are duplicated into the receiver; the caller keeps its own.
    /// Beyond [`MAX_FDS`] of them, carriers go first (under the same lock, so that no other
    /// thread's frame comes between them and their frame).
    pub fn send(
        &self,
        kind: Kind,
        id: u64,
        aux: u64,
        payload: &[u8],
        fds: &[RawFd],
    ) -> Result<(), ProtocolError> {
        if fds.len() > MAX_FRAME_FDS {
            return Err(ProtocolError::TooManyFds(fds.len()));
        }
        let _one_frame_at_a_time = self
            .sending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let in_carriers = fds.len().saturating_sub(1) / MAX_FDS * MAX_FDS;
        let (carried, own) = fds.split_at(in_carriers);
        for part in carried.chunks(MAX_FDS) {
            self.send_one(Kind::Descriptors, id, 0, &[], part)?;
        }
        self.send_one(kind, id, aux, payload, own)
    }

    /// Send one frame of at most [`MAX_FDS`] descriptors (the sending lock held).
    fn send_one(
        &self,
        kind: Kind,
        id: u64,
        aux: u64,
        payload: &[u8],
        fds: &[RawFd],
    ) -> Result<(), ProtocolError> {
        let n_fds = u8::try_from(fds.len()).map_err(|_| ProtocolError::TooManyFds(fds.len()))?;
        let header = encode_header(kind, n_fds, id, aux, payload.len() as u64);
        let total = HEADER_LEN + payload.len();
        let iov = [IoSlice::new(&header), IoSlice::new(payload)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() {
            &[]
        } else {
            &[ControlMessage::ScmRights(fds)]
        };
        let sent = loop {
            match sendmsg::<()>(
                self.stream.as_raw_fd(),
                &iov,
                cmsgs,
                crate::platform::send_flags(),
                None,
            ) {
                Ok(n) => break n,
                Err(Errno::EINTR) => continue,
                Err(errno) => return Err(io::Error::from(errno).into()),
            }
        };
        // A stream socket may accept only part of a large frame; the descriptors went with the
        // first byte, the rest is plain bytes.
        if sent < total {
            let mut writer = &self.stream;
            if sent < HEADER_LEN {
                writer.write_all(&header[sent..])?;
                writer.write_all(payload)?;
            } else {
                writer.write_all(&payload[sent - HEADER_LEN..])?;
            }
        }
        Ok(())
    }

    /// Watch for up to `spin` for a frame to arrive (polling without sleeping, yielding the core
    /// between checks), so that a frame sent right after a reply is read without the cost of
    /// waking a sleeping thread.
    /// Returns whether one is ready; [`Connection::recv`] then blocks as usual.
    pub fn spin_until_readable(&self, spin: Duration) -> bool {
        let start = Instant::now();
        let mut poll = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: `poll` points to one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut poll, 1, 0) };
            if ready != 0 {
                return true; // readable, closed, or an error recv will report
            }
            if start.elapsed() >= spin {
                return false;
            }
            std::thread::yield_now(); // a runnable parent thread gets this core meanwhile
        }
    }

    /// Receive one frame (with the descriptors of its carriers); `Ok(None)` when the peer closed
    /// the socket between frames.
    pub fn recv(&self) -> Result<Option<Frame>, ProtocolError> {
        let mut carried: Vec<OwnedFd> = Vec::new();
        loop {
            let Some(mut frame) = self.recv_one()? else {
                return if carried.is_empty() {
                    Ok(None)
                } else {
                    Err(ProtocolError::Truncated)
                };
            };
            if frame.kind != Kind::Descriptors {
                if !carried.is_empty() {
                    carried.append(&mut frame.fds);
                    frame.fds = carried;
                }
                return Ok(Some(frame));
            }
            if !frame.payload.is_empty() || carried.len() + frame.fds.len() > MAX_FRAME_FDS {
                return Err(ProtocolError::BadCarrier(carried.len() + frame.fds.len()));
            }
            carried.append(&mut frame.fds);
        }
    }

    /// Receive one message's frame (a carrier included).
    fn recv_one(&self) -> Result<Option<Frame>, ProtocolError> {
        let mut header = [0u8; HEADER_LEN];
        let mut fds = Vec::new();
        let first = self.recv_with_fds(&mut header, &mut fds)?;
        if first == 0 {
            return Ok(None);
        }
        if first < HEADER_LEN {
            read_exact_or_truncated(&self.stream, &mut header[first..])?;
        }
        let (kind, n_fds, id, aux, len) = decode_header(&header)?;
        if fds.len() != n_fds {
            return Err(ProtocolError::Truncated);
        }
        let payload = read_payload(&self.stream, len)?;
        Ok(Some(Frame {
            kind,
            id,
            aux,
            payload,
            fds,
        }))
    }

    fn recv_with_fds(
        &self,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
    ) -> Result<usize, ProtocolError> {
        let mut cmsg_buf = cmsg_space!([RawFd; MAX_FDS]);
        loop {
            let mut iov = [IoSliceMut::new(buf)];
            let msg = match recvmsg::<()>(
                self.stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg_buf),
                crate::platform::receive_flags(),
            ) {
                Ok(msg) => msg,
                Err(Errno::EINTR) => continue,
                Err(errno) => return Err(io::Error::from(errno).into()),
            };
            for cmsg in msg.cmsgs().map_err(io::Error::from)? {
                if let ControlMessageOwned::ScmRights(received) = cmsg {
                    for raw in received {
                        // SAFETY: the kernel just installed `raw` in our table for us; nobody
                        // else holds it, so taking ownership is sound.
                        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                        crate::platform::close_on_exec(&fd)?;
                        fds.push(fd);
                    }
                }
            }
            return Ok(msg.bytes);
        }
    }

    /// Shut both directions down: the peer's blocked `recv` returns end-of-stream.
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

/// Read a payload of the declared length: capped, allocated fallibly, and grown only as bytes
/// arrive beyond the first `PREALLOCATE`.
fn read_payload(stream: &UnixStream, len: u64) -> Result<Vec<u8>, ProtocolError> {
    if len > MAX_PAYLOAD_LEN {
        return Err(ProtocolError::TooLarge(len));
    }
    let wanted = usize::try_from(len).map_err(|_| ProtocolError::TooLarge(len))?;
    let mut payload = Vec::new();
    payload
        .try_reserve_exact(wanted.min(PREALLOCATE))
        .map_err(|_| ProtocolError::OutOfMemory(len))?;
    // `read_to_end` reserves with `try_reserve`: an allocation failure is an error, not an abort.
    match stream.take(len).read_to_end(&mut payload) {
        Ok(n) if n == wanted => Ok(payload),
        Ok(_) => Err(ProtocolError::Truncated),
        Err(error) if error.kind() == io::ErrorKind::OutOfMemory => {
            Err(ProtocolError::OutOfMemory(len))
        }
        Err(error) => Err(ProtocolError::Io(error)),
    }
}

fn read_exact_or_truncated(mut stream: &UnixStream, buf: &mut [u8]) -> Result<(), ProtocolError> {
    stream.read_exact(buf).map_err(|err| match err.kind() {
        io::ErrorKind::UnexpectedEof => ProtocolError::Truncated,
        _ => ProtocolError::Io(err),
    })
}

/// The header of a frame. Public for test peers that misbehave on purpose, and fuzzing.
pub fn encode_header(kind: Kind, n_fds: u8, id: u64, aux: u64, len: u64) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    header[4] = kind as u8;
    header[5] = n_fds;
    header[8..16].copy_from_slice(&id.to_le_bytes());
    header[16..24].copy_from_slice(&aux.to_le_bytes());
    header[24..32].copy_from_slice(&len.to_le_bytes());
    header
}

fn decode_header(header: &[u8; HEADER_LEN]) -> Result<(Kind, usize, u64, u64, u64), ProtocolError> {
    let mut cursor = Cursor::new(header);
    let magic = cursor.u32().ok_or(ProtocolError::Truncated)?;
    if magic != MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    let kind = Kind::from_u8(cursor.u8().ok_or(ProtocolError::Truncated)?)?;
    let n_fds = cursor.u8().ok_or(ProtocolError::Truncated)?;
    let _reserved = cursor.take(2).ok_or(ProtocolError::Truncated)?;
    let (Some(id), Some(aux), Some(len)) = (cursor.u64(), cursor.u64(), cursor.u64()) else {
        return Err(ProtocolError::Truncated);
    };
    Ok((kind, usize::from(n_fds), id, aux, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Seek;

    #[test]
    fn a_frame_round_trips_with_its_fields() {
        let (a, b) = Connection::pair().unwrap();
        a.send(Kind::Task, 7, 99, b"hello", &[]).unwrap();
        let frame = b.recv().unwrap().unwrap();
        assert_eq!(frame.kind, Kind::Task);
        assert_eq!((frame.id, frame.aux), (7, 99));
        assert_eq!(frame.payload, b"hello");
        assert!(frame.fds.is_empty());
    }

    #[test]
    fn a_large_payload_arrives_whole_across_partial_writes() {
        let (a, b) = Connection::pair().unwrap();
        let payload: Vec<u8> = (0..8_000_000u32).map(|i| (i % 251) as u8).collect();
        let expected = payload.clone();
        let sender = std::thread::spawn(move || a.send(Kind::Done, 1, 0, &payload, &[]).unwrap());
        let frame = b.recv().unwrap().unwrap();
        sender.join().unwrap();
        assert_eq!(frame.payload, expected);
    }

    #[test]
    fn descriptors_travel_with_the_frame() {
        let (a, b) = Connection::pair().unwrap();
        let mut file = tempfile_with(b"shared bytes");
        a.send(Kind::Task, 1, 0, b"", &[file.as_raw_fd()]).unwrap();
        file.rewind().unwrap();
        let frame = b.recv().unwrap().unwrap();
        assert_eq!(frame.fds.len(), 1);
        let mut received = File::from(frame.fds.into_iter().next().unwrap());
        received.rewind().unwrap();
        let mut text = String::new();
        received.read_to_string(&mut text).unwrap();
        assert_eq!(text, "shared bytes");
    }

    #[test]
    fn more_descriptors_than_one_message_carries_arrive_with_their_frame_in_order() {
        let (a, b) = Connection::pair().unwrap();
        let files: Vec<File> = (0..600)
            .map(|i| tempfile_with(format!("file {i}").as_bytes()))
            .collect();
        let raw: Vec<RawFd> = files.iter().map(AsRawFd::as_raw_fd).collect();
        let sender = std::thread::spawn(move || {
            a.send(Kind::Task, 3, 0, b"job", &raw).unwrap();
            a.send(Kind::Shutdown, 0, 0, b"", &[]).unwrap();
            drop(files);
        });
        let frame = b.recv().unwrap().unwrap();
        assert_eq!(
            (frame.kind, frame.id, frame.payload.as_slice()),
            (Kind::Task, 3, &b"job"[..])
        );
        assert_eq!(frame.fds.len(), 600);
        for (i, fd) in frame.fds.into_iter().enumerate() {
            let mut received = File::from(fd);
            received.rewind().unwrap();
            let mut text = String::new();
            received.read_to_string(&mut text).unwrap();
            assert_eq!(text, format!("file {i}"));
        }
        assert_eq!(b.recv().unwrap().unwrap().kind, Kind::Shutdown);
        sender.join().unwrap();
    }

    #[test]
    fn a_carrier_with_a_payload_or_left_without_its_frame_is_refused() {
        let (a, b) = Connection::pair().unwrap();
        a.send_one(Kind::Descriptors, 1, 0, b"not empty", &[])
            .unwrap();
        assert!(matches!(b.recv(), Err(ProtocolError::BadCarrier(_))));
        let (a, b) = Connection::pair().unwrap();
        let file = tempfile_with(b"x");
        a.send_one(Kind::Descriptors, 1, 0, b"", &[file.as_raw_fd()])
            .unwrap();
        drop(a);
        assert!(matches!(b.recv(), Err(ProtocolError::Truncated)));
    }

    #[test]
    fn closing_between_frames_is_end_of_stream_not_an_error() {
        let (a, b) = Connection::pair().unwrap();
        a.send(Kind::Shutdown, 0, 0, b"", &[]).unwrap();
        drop(a);
        assert_eq!(b.recv().unwrap().unwrap().kind, Kind::Shutdown);
        assert!(b.recv().unwrap().is_none());
    }

    #[test]
    fn closing_inside_a_frame_is_reported_as_truncation() {
        let (a, b) = Connection::pair().unwrap();
        let header = encode_header(Kind::Done, 0, 1, 0, 100);
        (&a.stream).write_all(&header).unwrap();
        (&a.stream).write_all(b"only part").unwrap();
        drop(a);
        assert!(matches!(b.recv(), Err(ProtocolError::Truncated)));
    }

    #[test]
    fn an_oversized_frame_is_refused_before_allocating() {
        let (a, b) = Connection::pair().unwrap();
        let header = encode_header(Kind::Done, 0, 1, 0, u64::MAX);
        (&a.stream).write_all(&header).unwrap();
        assert!(matches!(b.recv(), Err(ProtocolError::TooLarge(u64::MAX))));
        let (a, b) = Connection::pair().unwrap();
        // Within the cap but a lie: the reader allocates as bytes arrive, then sees the end.
        let header = encode_header(Kind::Done, 0, 1, 0, MAX_PAYLOAD_LEN);
        (&a.stream).write_all(&header).unwrap();
        (&a.stream).write_all(b"a few bytes").unwrap();
        drop(a);
        assert!(matches!(b.recv(), Err(ProtocolError::Truncated)));
    }

    #[test]
    fn garbage_on_the_socket_is_rejected_by_magic() {
        let (a, b) = Connection::pair().unwrap();
        (&a.stream).write_all(&[0xAB; HEADER_LEN]).unwrap();
        assert!(matches!(b.recv(), Err(ProtocolError::BadMagic(_))));
    }

    fn tempfile_with(bytes: &[u8]) -> File {
        let mut file = crate::platform::shared_memory_file(c"test").unwrap();
        file.write_all(bytes).unwrap();
        file
    }
}
