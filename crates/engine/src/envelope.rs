//! The wire envelope: how a frame that carries out-of-band buffers (pickle protocol 5
//! `PickleBuffer`s, in shared memory beside the frame) says where they are.
//!
//! A frame that carries buffers starts with the envelope: how the receiver maps them, and where
//! each one lies — which of the frame's descriptors, at what offset, how long — then a token per
//! descriptor (for recycling, see [`crate::arena`]) and the tokens the sender stopped mapping.
//! The pickle body follows.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::cursor::Cursor;
use crate::shm::{Access, Mapping, SharedBuffer};

/// What to run when the mapping of a recyclable segment is dropped (nothing reads it any more).
pub type UnmapHook = Box<dyn FnOnce() + Send + Sync>;

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

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
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
    #[error("mapping shared memory: {0}")]
    Map(String),
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

/// Map the descriptors of a received frame and make one [`SharedBuffer`] per entry of its
/// envelope. `on_unmap(token)` gives what to run when the mapping of a recyclable segment (token
/// not 0) goes. Every segment must accept a seal against shrinking (see `Mapping::map_segment`)
/// and every buffer lie inside its segment.
pub fn map_buffers(
    envelope: &Envelope<'_>,
    fds: Vec<OwnedFd>,
    on_unmap: impl Fn(u64) -> UnmapHook,
) -> Result<Vec<SharedBuffer>, EnvelopeError> {
    map_buffers_with(envelope, fds, |fd, token, access| {
        let mapping = Mapping::map_segment(fd, access)?;
        Ok(Arc::new(match token {
            0 => mapping,
            token => mapping.on_drop(on_unmap(token)),
        }))
    })
}

/// [`map_buffers`], with `segment(fd, token, access)` giving each segment's mapping (a worker
/// may reuse one it kept from an earlier job).
pub fn map_buffers_with(
    envelope: &Envelope<'_>,
    fds: Vec<OwnedFd>,
    mut segment: impl FnMut(OwnedFd, u64, Access) -> std::io::Result<Arc<Mapping>>,
) -> Result<Vec<SharedBuffer>, EnvelopeError> {
    if envelope.buffers.is_empty() {
        return Ok(Vec::new());
    }
    let mut mappings = Vec::with_capacity(fds.len());
    for (index, fd) in fds.into_iter().enumerate() {
        let token = envelope.tokens.get(index).copied().unwrap_or(0);
        let mapping = segment(fd, token, envelope.access)
            .map_err(|error| EnvelopeError::Map(error.to_string()))?;
        mappings.push(mapping);
    }
    let lens: Vec<usize> = mappings.iter().map(|m| m.len()).collect();
    check_bounds(&envelope.buffers, &lens)?;
    envelope
        .buffers
        .iter()
        .enumerate()
        .map(|(index, buffer)| {
            let outside = EnvelopeError::OutOfBounds {
                index,
                offset: buffer.offset,
                len: buffer.len,
                segment_len: 0,
            };
            let mapping = mappings
                .get(buffer.segment as usize)
                .ok_or(outside.clone())?;
            SharedBuffer::new(Arc::clone(mapping), buffer.offset, buffer.len).ok_or(outside)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
