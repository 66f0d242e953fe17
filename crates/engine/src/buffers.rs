//! Out-of-band buffers: large byte ranges (pickle protocol 5 `PickleBuffer`s) that travel beside
//! a frame, in shared memory, instead of inside it.
//!
//! A frame that carries buffers starts with an *envelope*: how the receiver maps them, and where
//! each one lies — which of the frame's descriptors, at what offset, how long. The pickle body
//! follows. In the parent, an [`Arena`] packs the buffers of one call into a few memfd chunks, so
//! a 200 KB argument costs a `pwrite`, not a `memfd_create` + `mmap` + `munmap`.

use crossbeam_channel::Receiver;
use std::ffi::CStr;
use std::io;
use std::os::fd::OwnedFd;

use crate::shm::{self, Access, SharedFile};

/// Where one buffer lies: `len` bytes at `offset` in the frame's descriptor number `segment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferRef {
    pub segment: u32,
    pub offset: u64,
    pub len: u64,
}

/// A decoded envelope: the buffers' access and places, and the pickle body.
#[derive(Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub access: Access,
    pub buffers: Vec<BufferRef>,
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

const ENTRY_LEN: usize = 4 + 8 + 8;
const HEADER_LEN: usize = 1 + 4;

/// Prefix `body` with the envelope of `buffers`.
pub fn encode(access: Access, buffers: &[BufferRef], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + buffers.len() * ENTRY_LEN + body.len());
    out.push(access.code());
    out.extend_from_slice(&(buffers.len() as u32).to_le_bytes());
    for buffer in buffers {
        out.extend_from_slice(&buffer.segment.to_le_bytes());
        out.extend_from_slice(&buffer.offset.to_le_bytes());
        out.extend_from_slice(&buffer.len.to_le_bytes());
    }
    out.extend_from_slice(body);
    out
}

/// Split a payload made by [`encode`] into its envelope and body.
pub fn decode(payload: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    let header = payload.get(..HEADER_LEN).ok_or(EnvelopeError::Truncated)?;
    let access = Access::from_code(header[0]).ok_or(EnvelopeError::UnknownAccess(header[0]))?;
    let count = u32::from_le_bytes(header[1..5].try_into().expect("4 bytes")) as usize;
    let table_len = count
        .checked_mul(ENTRY_LEN)
        .ok_or(EnvelopeError::Truncated)?;
    let table = payload
        .get(HEADER_LEN..HEADER_LEN + table_len)
        .ok_or(EnvelopeError::Truncated)?;
    let buffers = table
        .chunks_exact(ENTRY_LEN)
        .map(|entry| BufferRef {
            segment: u32::from_le_bytes(entry[0..4].try_into().expect("4 bytes")),
            offset: u64::from_le_bytes(entry[4..12].try_into().expect("8 bytes")),
            len: u64::from_le_bytes(entry[12..20].try_into().expect("8 bytes")),
        })
        .collect();
    Ok(Envelope {
        access,
        buffers,
        body: &payload[HEADER_LEN + table_len..],
    })
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
pub const DEFAULT_CHUNK_SIZE: usize = 64 << 20;

/// Where [`Arena::place`] put a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub chunk: usize,
    pub offset: usize,
}

/// The shared memory of one call's arguments: buffers packed into memfd chunks.
///
/// Jobs *hold* the chunks their buffers lie in until they complete; a chunk that is full and
/// held by no job is closed at once. Closing the parent's descriptor is all it takes: a worker's
/// mapping keeps the memory only as long as its own objects use it.
///
/// Allocating tmpfs pages (and zeroing them) and freeing them costs as much as copying into them,
/// so a helper thread prepares the next chunk ahead of time and closes finished ones.
#[derive(Debug)]
pub struct Arena {
    chunk_size: usize,
    chunks: Vec<Option<Chunk>>,
    current: Option<usize>,
    spare: Option<Receiver<io::Result<SharedFile>>>,
}

#[derive(Debug)]
struct Chunk {
    file: SharedFile,
    used: usize,
    holds: usize,
    full: bool,
}

impl Arena {
    pub fn new(chunk_size: usize) -> Self {
        Self {
            chunk_size: chunk_size.max(ALIGNMENT),
            chunks: Vec::new(),
            current: None,
            spare: None,
        }
    }

    /// A fresh chunk of the standard size: the one prepared ahead if there is one.
    fn standard_file(&mut self) -> io::Result<SharedFile> {
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
            used: 0,
            holds: 0,
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

    /// A descriptor of `chunk` for a job (the job owns it).
    pub fn duplicate_fd(&self, chunk: usize) -> io::Result<OwnedFd> {
        self.live(chunk)?.file.duplicate_fd()
    }

    /// A job that refers to `chunk` was submitted.
    pub fn hold(&mut self, chunk: usize) -> io::Result<()> {
        self.live_mut(chunk)?.holds += 1;
        Ok(())
    }

    /// A job that held `chunk` completed. Returns whether the chunk was closed.
    pub fn release(&mut self, chunk: usize) -> bool {
        if let Some(Some(entry)) = self.chunks.get_mut(chunk) {
            entry.holds = entry.holds.saturating_sub(1);
        }
        self.close_if_unused(chunk)
    }

    /// Close every full chunk that no job holds; returns their numbers.
    pub fn sweep(&mut self) -> Vec<usize> {
        (0..self.chunks.len())
            .filter(|&chunk| self.close_if_unused(chunk))
            .collect()
    }

    fn close_if_unused(&mut self, chunk: usize) -> bool {
        let slot = match self.chunks.get_mut(chunk) {
            Some(slot) => slot,
            None => return false,
        };
        if slot.as_ref().is_some_and(|c| c.full && c.holds == 0) {
            if let Some(chunk) = slot.take() {
                shm::free_later(chunk.file);
            }
            return true;
        }
        false
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

/// Pack `buffers` into one fresh memfd (a worker's results); returns it with their places.
pub fn pack<'a>(
    name: &CStr,
    buffers: impl IntoIterator<Item = &'a [u8]>,
) -> io::Result<(SharedFile, Vec<BufferRef>)> {
    let mut file = SharedFile::create(name)?;
    let mut refs = Vec::new();
    let mut offset = 0usize;
    for bytes in buffers {
        file.write_at(offset, bytes)?;
        refs.push(BufferRef {
            segment: 0,
            offset: offset as u64,
            len: bytes.len() as u64,
        });
        offset = (offset + bytes.len()).next_multiple_of(ALIGNMENT);
    }
    Ok((file, refs))
}

impl Drop for Arena {
    fn drop(&mut self) {
        for chunk in self.chunks.drain(..).flatten() {
            shm::free_later(chunk.file);
        }
        // A chunk still being prepared is freed by the helper when its reply finds no receiver.
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
        let payload = encode(Access::CopyOnWrite, &buffers, b"pickle");
        let envelope = decode(&payload).unwrap();
        assert_eq!(envelope.access, Access::CopyOnWrite);
        assert_eq!(envelope.buffers, buffers);
        assert_eq!(envelope.body, b"pickle");
        assert_eq!(
            decode(&encode(Access::ReadOnly, &[], b"")).unwrap().body,
            b""
        );
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
        let payload = encode(Access::ReadOnly, &[one], b"");
        assert_eq!(decode(&payload[..8]), Err(EnvelopeError::Truncated));
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
        let mapping = Mapping::map(arena.duplicate_fd(0).unwrap(), Access::ReadOnly).unwrap();
        assert_eq!(read(&mapping, 128, 100), vec![2u8; 100]);
        let mapping = Mapping::map(arena.duplicate_fd(2).unwrap(), Access::ReadOnly).unwrap();
        assert_eq!(mapping.len(), 1000);
    }

    #[test]
    fn full_chunks_close_when_their_last_job_completes() {
        let mut arena = Arena::new(128);
        let first = arena.place(&[0u8; 100]).unwrap();
        arena.hold(first.chunk).unwrap();
        let second = arena.place(&[0u8; 100]).unwrap(); // fills chunk 0
        arena.hold(second.chunk).unwrap();
        assert!(arena.sweep().is_empty()); // chunk 0 is full but held
        assert!(arena.release(first.chunk));
        assert_eq!(arena.n_open_chunks(), 1);
        assert!(arena.duplicate_fd(first.chunk).is_err());
        assert!(!arena.release(second.chunk)); // the current chunk stays open
        assert_eq!(arena.n_open_chunks(), 1);
    }

    #[test]
    fn an_unheld_full_chunk_is_swept() {
        let mut arena = Arena::new(128);
        arena.place(&[0u8; 100]).unwrap();
        arena.place(&[0u8; 100]).unwrap();
        assert_eq!(arena.sweep(), vec![0]);
    }

    #[test]
    fn packed_buffers_map_back_in_another_mapping() {
        let (file, refs) = pack(c"test", [&b"hello"[..], &[7u8; 3][..]]).unwrap();
        assert_eq!(refs[1].offset, 64);
        let mapping = Mapping::map(file.duplicate_fd().unwrap(), Access::CopyOnWrite).unwrap();
        assert_eq!(read(&mapping, 0, 5), b"hello");
        assert_eq!(read(&mapping, 64, 3), vec![7u8; 3]);
        check_bounds(&refs, &[mapping.len()]).unwrap();
    }
}
