//! Out-of-band buffers: large byte ranges (pickle protocol 5 `PickleBuffer`s) that travel beside
//! a frame, in shared memory, instead of inside it.
//!
//! A frame that carries buffers starts with an *envelope*: how the receiver maps them, and where
//! each one lies — which of the frame's descriptors, at what offset, how long. The pickle body
//! follows. In the parent, an [`Arena`] packs the buffers of one call into a few memfd chunks, so
//! a 200 KB argument costs a `pwrite`, not a `memfd_create` + `mmap` + `munmap`.

use crossbeam_channel::Receiver;
use std::io;
use std::os::fd::OwnedFd;

use crate::cursor::Cursor;
use crate::shm::{self, Access, SharedFile};

/// Where one buffer lies: `len` bytes at `offset` in the frame's descriptor number `segment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferRef {
    pub segment: u32,
    pub offset: u64,
    pub len: u64,
}

/// A decoded envelope: the buffers' access and places, a token per descriptor, the tokens the
/// sender has stopped mapping, and the pickle body.
///
/// Tokens name shared segments across the two processes so they can be recycled: a segment's
/// writer reuses it (writing into pages that already exist is several times cheaper than fresh
/// ones) once the reader says, with its token, that nothing maps it any more. Token 0: not
/// recyclable.
#[derive(Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub access: Access,
    pub buffers: Vec<BufferRef>,
    pub tokens: Vec<u64>,
    pub released: Vec<u64>,
    pub body: &'a [u8],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("frame too short for its buffer table")]
    Truncated,
    #[error("unknown buffer access mode {0}")]
    UnknownAccess(u8),
    #[error("buffer {index} refers to descriptor {segment}, but the frame carries {n_segments}")]
    MissingSegment {
        index: usize,
        segment: u32,
        n_segments: usize,
    },
    #[error("buffer {index} ({offset}+{len}) lies outside its segment of {segment_len} bytes")]
    OutOfBounds {
        index: usize,
        offset: u64,
        len: u64,
        segment_len: usize,
    },
}

/// Prefix `body` with the envelope: `access u8 | n u32 | n × (segment u32, offset u64, len u64)
/// | m u32 | m × token u64 | r u32 | r × released token u64`.
pub fn encode(
    access: Access,
    buffers: &[BufferRef],
    tokens: &[u64],
    released: &[u64],
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        1 + 12 + buffers.len() * 20 + (tokens.len() + released.len()) * 8 + body.len(),
    );
    out.push(access.code());
    out.extend_from_slice(&(buffers.len() as u32).to_le_bytes());
    for buffer in buffers {
        out.extend_from_slice(&buffer.segment.to_le_bytes());
        out.extend_from_slice(&buffer.offset.to_le_bytes());
        out.extend_from_slice(&buffer.len.to_le_bytes());
    }
    for list in [tokens, released] {
        out.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for token in list {
            out.extend_from_slice(&token.to_le_bytes());
        }
    }
    out.extend_from_slice(body);
    out
}

/// Split a payload made by [`encode`] into its envelope and body.
pub fn decode(payload: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    let mut cursor = Cursor::new(payload);
    let code = cursor.u8().ok_or(EnvelopeError::Truncated)?;
    let access = Access::from_code(code).ok_or(EnvelopeError::UnknownAccess(code))?;
    let count = cursor.count(20).ok_or(EnvelopeError::Truncated)?;
    let mut buffers = Vec::with_capacity(count);
    for _ in 0..count {
        let (Some(segment), Some(offset), Some(len)) = (cursor.u32(), cursor.u64(), cursor.u64())
        else {
            return Err(EnvelopeError::Truncated);
        };
        buffers.push(BufferRef {
            segment,
            offset,
            len,
        });
    }
    let tokens = u64_list(&mut cursor)?;
    let released = u64_list(&mut cursor)?;
    Ok(Envelope {
        access,
        buffers,
        tokens,
        released,
        body: cursor.rest(),
    })
}

fn u64_list(cursor: &mut Cursor<'_>) -> Result<Vec<u64>, EnvelopeError> {
    let count = cursor.count(8).ok_or(EnvelopeError::Truncated)?;
    (0..count)
        .map(|_| cursor.u64().ok_or(EnvelopeError::Truncated))
        .collect()
}

/// Check that every buffer lies inside one of the segments, given their lengths.
pub fn check_bounds(buffers: &[BufferRef], segment_lens: &[usize]) -> Result<(), EnvelopeError> {
    for (index, buffer) in buffers.iter().enumerate() {
        let segment_len =
            *segment_lens
                .get(buffer.segment as usize)
                .ok_or(EnvelopeError::MissingSegment {
                    index,
                    segment: buffer.segment,
                    n_segments: segment_lens.len(),
                })?;
        let inside = matches!(
            buffer.offset.checked_add(buffer.len),
            Some(end) if end <= segment_len as u64
        );
        if !inside {
            return Err(EnvelopeError::OutOfBounds {
                index,
                offset: buffer.offset,
                len: buffer.len,
                segment_len,
            });
        }
    }
    Ok(())
}

/// Buffers start at multiples of this, so that arrays rebuilt over them are aligned for any
/// dtype (and for SIMD loads).
pub const ALIGNMENT: usize = 64;
/// Default size of an arena chunk; a larger buffer gets a chunk of its own.
pub const DEFAULT_CHUNK_SIZE: usize = 16 << 20;

/// Where [`Arena::place`] put a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub chunk: usize,
    pub offset: usize,
}

/// Recyclable segments kept ready at most (per arena, per worker).
const MAX_FREE_SEGMENTS: usize = 4;

/// A process-wide unique token for a recyclable segment (0 is "not recyclable").
fn new_token() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The shared memory of one call's arguments: buffers packed into memfd chunks.
///
/// Jobs *hold* the chunks their buffers lie in until they complete; each job also makes its
/// worker map the chunk, until the worker reports (by the chunk's token) that nothing there uses
/// it any more. A full chunk neither held nor mapped is recycled — its pages are written again,
/// several times cheaper than fresh ones — or closed. Chunks still mapped by a worker when the
/// arena goes are closed: the worker's mapping keeps the memory while its objects use it.
///
/// Allocating tmpfs pages (and zeroing them) costs as much as copying into them, so a helper
/// thread prepares the next chunk ahead of time, and frees closed ones.
#[derive(Debug)]
pub struct Arena {
    chunk_size: usize,
    chunks: Vec<Option<Chunk>>,
    current: Option<usize>,
    spare: Option<Receiver<io::Result<SharedFile>>>,
    recycled: Vec<SharedFile>,
    /// The process whose workers map the chunks: a forked child shares the memfds, so its
    /// writes would land in memory the parent's jobs use.
    owner: u32,
}

#[derive(Debug)]
struct Chunk {
    file: SharedFile,
    token: u64,
    used: usize,
    holds: usize,
    mapped: usize,
    full: bool,
}

impl Arena {
    pub fn new(chunk_size: usize) -> Self {
        Self {
            chunk_size: chunk_size.max(ALIGNMENT),
            chunks: Vec::new(),
            current: None,
            spare: None,
            recycled: Vec::new(),
            owner: std::process::id(),
        }
    }

    /// A chunk of the standard size: a recycled one, or the one prepared ahead, or a new one.
    fn standard_file(&mut self) -> io::Result<SharedFile> {
        if let Some(file) = self.recycled.pop() {
            return Ok(file);
        }
        let prepared = self.spare.take().and_then(|rx| rx.recv().ok());
        self.spare = shm::prepare_later(c"ferrojob-arguments", self.chunk_size);
        match prepared {
            Some(Ok(file)) => Ok(file),
            // A failed preallocation (or none yet): allocate as we write.
            Some(Err(_)) | None => SharedFile::create(c"ferrojob-arguments"),
        }
    }

    /// Copy `bytes` into the arena.
    pub fn place(&mut self, bytes: &[u8]) -> io::Result<Placement> {
        if std::process::id() != self.owner {
            return Err(io::Error::other(format!(
                "this shared-memory arena belongs to process {}; a forked child cannot write to it",
                self.owner
            )));
        }
        if bytes.len() > self.chunk_size {
            let chunk = self.new_chunk(SharedFile::create(c"ferrojob-arguments")?);
            self.write(chunk, 0, bytes)?;
            self.chunks[chunk].as_mut().expect("new").full = true;
            return Ok(Placement { chunk, offset: 0 });
        }
        let (chunk, offset) = match self.current.and_then(|c| self.room_in(c, bytes.len())) {
            Some(place) => place,
            None => {
                if let Some(previous) = self.current.take() {
                    if let Some(chunk) = self.chunks[previous].as_mut() {
                        chunk.full = true;
                    }
                }
                let file = self.standard_file()?;
                let chunk = self.new_chunk(file);
                self.current = Some(chunk);
                (chunk, 0)
            }
        };
        self.write(chunk, offset, bytes)?;
        Ok(Placement { chunk, offset })
    }

    fn room_in(&self, chunk: usize, len: usize) -> Option<(usize, usize)> {
        let used = self.chunks[chunk].as_ref()?.used;
        let offset = used.next_multiple_of(ALIGNMENT);
        (offset + len <= self.chunk_size).then_some((chunk, offset))
    }

    fn new_chunk(&mut self, file: SharedFile) -> usize {
        self.chunks.push(Some(Chunk {
            file,
            token: new_token(),
            used: 0,
            holds: 0,
            mapped: 0,
            full: false,
        }));
        self.chunks.len() - 1
    }

    fn write(&mut self, chunk: usize, offset: usize, bytes: &[u8]) -> io::Result<()> {
        let entry = self.chunks[chunk].as_mut().expect("placed in a live chunk");
        entry.file.write_at(offset, bytes)?;
        entry.used = offset + bytes.len();
        Ok(())
    }

    /// A descriptor of `chunk` for a job (the job owns it), and the chunk's token.
    pub fn duplicate_fd(&self, chunk: usize) -> io::Result<(OwnedFd, u64)> {
        let entry = self.live(chunk)?;
        Ok((entry.file.duplicate_fd()?, entry.token))
    }

    /// A job that refers to `chunk` was submitted: it holds the chunk, and its worker maps it.
    pub fn hold(&mut self, chunk: usize) -> io::Result<()> {
        let entry = self.live_mut(chunk)?;
        entry.holds += 1;
        entry.mapped += 1;
        Ok(())
    }

    /// A job that held `chunk` completed. Returns whether the chunk was retired (recycled or
    /// closed: what was placed in it is gone).
    pub fn release(&mut self, chunk: usize) -> bool {
        if let Some(Some(entry)) = self.chunks.get_mut(chunk) {
            entry.holds = entry.holds.saturating_sub(1);
        }
        self.retire_if_unused(chunk)
    }

    /// A worker no longer maps the chunks of these tokens (tokens of other arenas are ignored).
    /// Returns the chunks retired.
    pub fn unmapped(&mut self, tokens: &[u64]) -> Vec<usize> {
        let mut retired = Vec::new();
        for &token in tokens {
            let found = self
                .chunks
                .iter()
                .position(|c| c.as_ref().is_some_and(|c| c.token == token));
            if let Some(chunk) = found {
                let entry = self.chunks[chunk].as_mut().expect("found");
                entry.mapped = entry.mapped.saturating_sub(1);
                if self.retire_if_unused(chunk) {
                    retired.push(chunk);
                }
            }
        }
        retired
    }

    /// Retire every full chunk that no job holds and no worker maps; returns their numbers.
    pub fn sweep(&mut self) -> Vec<usize> {
        (0..self.chunks.len())
            .filter(|&chunk| self.retire_if_unused(chunk))
            .collect()
    }

    fn retire_if_unused(&mut self, chunk: usize) -> bool {
        let slot = match self.chunks.get_mut(chunk) {
            Some(slot) => slot,
            None => return false,
        };
        if !slot
            .as_ref()
            .is_some_and(|c| c.full && c.holds == 0 && c.mapped == 0)
        {
            return false;
        }
        let entry = slot.take().expect("checked");
        let standard = entry.file.len() <= self.chunk_size;
        if standard && self.recycled.len() < MAX_FREE_SEGMENTS {
            self.recycled.push(entry.file);
        } else {
            shm::free_later(entry.file);
        }
        true
    }

    /// Chunks currently open (for tests and leak checks).
    pub fn n_open_chunks(&self) -> usize {
        self.chunks.iter().flatten().count()
    }

    fn live(&self, chunk: usize) -> io::Result<&Chunk> {
        self.chunks
            .get(chunk)
            .and_then(Option::as_ref)
            .ok_or_else(|| closed_chunk(chunk))
    }

    fn live_mut(&mut self, chunk: usize) -> io::Result<&mut Chunk> {
        self.chunks
            .get_mut(chunk)
            .and_then(Option::as_mut)
            .ok_or_else(|| closed_chunk(chunk))
    }
}

fn closed_chunk(chunk: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("arena chunk {chunk} is closed"),
    )
}

impl Drop for Arena {
    fn drop(&mut self) {
        for chunk in self.chunks.drain(..).flatten() {
            shm::free_later(chunk.file);
        }
        for file in self.recycled.drain(..) {
            shm::free_later(file);
        }
        // A chunk still being prepared is freed by the helper when its reply finds no receiver.
    }
}

/// A worker's result segments: each reply's buffers are packed into one segment, lent to the
/// parent under a token; when the parent releases the token, the segment is written again for a
/// later reply (its pages already exist), up to `MAX_FREE_SEGMENTS` of them.
#[derive(Debug, Default)]
pub struct ResultSegments {
    lent: Vec<(u64, SharedFile)>,
    free: Vec<SharedFile>,
}

impl ResultSegments {
    pub const fn new() -> Self {
        Self {
            lent: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Pack `buffers` into a segment (the smallest free one large enough, else a new one) and
    /// lend it: returns a descriptor for the reply, the segment's token and the buffers' places.
    pub fn pack(&mut self, buffers: &[&[u8]]) -> io::Result<(OwnedFd, u64, Vec<BufferRef>)> {
        let mut places = Vec::with_capacity(buffers.len());
        let mut end = 0usize;
        for bytes in buffers {
            places.push(BufferRef {
                segment: 0,
                offset: end as u64,
                len: bytes.len() as u64,
            });
            end = (end + bytes.len()).next_multiple_of(ALIGNMENT);
        }
        let reusable = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, file)| file.len() >= end)
            .min_by_key(|(_, file)| file.len())
            .map(|(index, _)| index);
        let mut file = match reusable {
            Some(index) => self.free.swap_remove(index),
            None => SharedFile::create(c"ferrojob-results")?,
        };
        for (bytes, place) in buffers.iter().zip(&places) {
            file.write_at(place.offset as usize, bytes)?;
        }
        let fd = file.duplicate_fd()?;
        let token = new_token();
        self.lent.push((token, file));
        Ok((fd, token, places))
    }

    /// The parent no longer maps the segment of `token`: it may be written again.
    pub fn release(&mut self, token: u64) {
        if let Some(index) = self.lent.iter().position(|(t, _)| *t == token) {
            let (_, file) = self.lent.swap_remove(index);
            if self.free.len() < MAX_FREE_SEGMENTS {
                self.free.push(file);
            }
        }
    }

    /// Segments lent and not released yet (for tests).
    pub fn n_lent(&self) -> usize {
        self.lent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::Mapping;

    fn read(mapping: &Mapping, offset: usize, len: usize) -> Vec<u8> {
        // SAFETY: test-only read of a live mapping, inside its bounds (checked by the caller).
        unsafe { std::slice::from_raw_parts(mapping.as_ptr().add(offset), len).to_vec() }
    }

    #[test]
    fn envelopes_round_trip() {
        let buffers = [
            BufferRef {
                segment: 0,
                offset: 0,
                len: 10,
            },
            BufferRef {
                segment: 1,
                offset: 64,
                len: 5,
            },
        ];
        let payload = encode(Access::CopyOnWrite, &buffers, &[7, 0], &[3], b"pickle");
        let envelope = decode(&payload).unwrap();
        assert_eq!(envelope.access, Access::CopyOnWrite);
        assert_eq!(envelope.buffers, buffers);
        assert_eq!(envelope.tokens, [7, 0]);
        assert_eq!(envelope.released, [3]);
        assert_eq!(envelope.body, b"pickle");
        let empty = encode(Access::ReadOnly, &[], &[], &[], b"");
        assert_eq!(decode(&empty).unwrap().body, b"");
    }

    #[test]
    fn damaged_envelopes_are_refused() {
        assert_eq!(decode(b"\x00\x01"), Err(EnvelopeError::Truncated));
        assert_eq!(
            decode(b"\x09\x00\x00\x00\x00"),
            Err(EnvelopeError::UnknownAccess(9))
        );
        let one = BufferRef {
            segment: 0,
            offset: 0,
            len: 1,
        };
        let payload = encode(Access::ReadOnly, &[one], &[1], &[], b"");
        for cut in [8, 25, 30, payload.len() - 1] {
            assert_eq!(
                decode(&payload[..cut]),
                Err(EnvelopeError::Truncated),
                "{cut}"
            );
        }
        assert!(matches!(
            check_bounds(&[one], &[]),
            Err(EnvelopeError::MissingSegment { .. })
        ));
        let long = BufferRef { len: 100, ..one };
        assert!(matches!(
            check_bounds(&[long], &[10]),
            Err(EnvelopeError::OutOfBounds { .. })
        ));
        let overflow = BufferRef {
            offset: u64::MAX,
            ..one
        };
        assert!(check_bounds(&[overflow], &[10]).is_err());
        assert!(check_bounds(&[one], &[1]).is_ok());
    }

    #[test]
    fn the_arena_packs_aligned_buffers_into_chunks() {
        let mut arena = Arena::new(256);
        let a = arena.place(&[1u8; 100]).unwrap();
        let b = arena.place(&[2u8; 100]).unwrap();
        let c = arena.place(&[3u8; 100]).unwrap(); // does not fit after b: a new chunk
        let big = arena.place(&[4u8; 1000]).unwrap(); // larger than a chunk: its own
        assert_eq!((a.chunk, a.offset), (0, 0));
        assert_eq!((b.chunk, b.offset), (0, 128));
        assert_eq!((c.chunk, c.offset), (1, 0));
        assert_eq!((big.chunk, big.offset), (2, 0));
        let (fd, token) = arena.duplicate_fd(0).unwrap();
        assert_ne!(token, 0);
        let mapping = Mapping::map(fd, Access::ReadOnly).unwrap();
        assert_eq!(read(&mapping, 128, 100), vec![2u8; 100]);
        let mapping = Mapping::map(arena.duplicate_fd(2).unwrap().0, Access::ReadOnly).unwrap();
        assert_eq!(mapping.len(), 1000);
    }

    #[test]
    fn full_chunks_retire_when_no_job_holds_and_no_worker_maps_them() {
        let mut arena = Arena::new(128);
        let first = arena.place(&[0u8; 100]).unwrap();
        arena.hold(first.chunk).unwrap();
        let (_, token) = arena.duplicate_fd(first.chunk).unwrap();
        let second = arena.place(&[0u8; 100]).unwrap(); // fills chunk 0
        arena.hold(second.chunk).unwrap();
        assert!(arena.sweep().is_empty()); // chunk 0 is full but held
        assert!(!arena.release(first.chunk)); // no longer held, still mapped by its worker
        assert_eq!(arena.unmapped(&[token, 12345]), vec![first.chunk]);
        assert!(arena.duplicate_fd(first.chunk).is_err());
        assert!(!arena.release(second.chunk)); // the current chunk stays open
        assert_eq!(arena.n_open_chunks(), 1);
    }

    #[test]
    fn retired_chunks_are_recycled_with_their_contents_replaced() {
        let mut arena = Arena::new(128);
        let old = arena.place(&[1u8; 100]).unwrap();
        arena.place(&[2u8; 100]).unwrap(); // fills chunk 0: it retires at the sweep
        assert_eq!(arena.sweep(), vec![old.chunk]);
        let reused = arena.place(&[3u8; 64]).unwrap(); // chunk 1 is full: chunk 0's file again
        let (fd, _) = arena.duplicate_fd(reused.chunk).unwrap();
        let mapping = Mapping::map(fd, Access::ReadOnly).unwrap();
        assert_eq!(read(&mapping, 0, 64), vec![3u8; 64]);
        assert_eq!(read(&mapping, 64, 36), vec![1u8; 36]); // the old bytes beyond: recycled
    }

    #[test]
    fn a_forked_child_cannot_write_into_its_parents_arena() {
        let mut arena = Arena::new(256);
        let placed = arena.place(&[1u8; 100]).unwrap();
        // SAFETY: the child only calls `place` (no lock shared with other threads) and _exit.
        match unsafe { libc::fork() } {
            0 => {
                let refused = arena.place(&[9u8; 100]).is_err();
                std::mem::forget(arena);
                // SAFETY: leave the forked child at once, without the parent's destructors.
                unsafe { libc::_exit(if refused { 0 } else { 1 }) }
            }
            child => {
                let mut status = 0;
                // SAFETY: waiting for the child we just forked.
                assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
                assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
            }
        }
        let next = arena.place(&[2u8; 100]).unwrap();
        let mapping = Mapping::map(
            arena.duplicate_fd(placed.chunk).unwrap().0,
            Access::ReadOnly,
        )
        .unwrap();
        assert_eq!(read(&mapping, next.offset, 100), vec![2u8; 100]);
    }

    #[test]
    fn result_segments_are_lent_and_reused_once_released() {
        let mut segments = ResultSegments::new();
        let (fd, token, refs) = segments.pack(&[&b"hello"[..], &[7u8; 3][..]]).unwrap();
        assert_eq!(refs[1].offset, 64);
        let mapping = Mapping::map(fd, Access::CopyOnWrite).unwrap();
        assert_eq!(read(&mapping, 0, 5), b"hello");
        assert_eq!(read(&mapping, 64, 3), vec![7u8; 3]);
        check_bounds(&refs, &[mapping.len()]).unwrap();
        drop(mapping);
        assert_eq!(segments.n_lent(), 1);
        segments.release(token);
        let (fd, second, _) = segments.pack(&[&b"HELLO"[..]]).unwrap();
        assert_ne!(second, token);
        let mapping = Mapping::map(fd, Access::ReadOnly).unwrap();
        assert_eq!(read(&mapping, 0, 5), b"HELLO");
        assert_eq!(mapping.len(), 67); // the first segment, written again
        assert_eq!(segments.n_lent(), 1);
    }
}
