//! Content hashing for `ferrojob.hash` and the cache: xxh3-128 (default) or blake3.
//!
//! A stream of small pieces (the pickle of an object's structure) is fed as it comes; a large
//! buffer (an array's data) is cut into fixed blocks hashed on every core, and the digests of its
//! blocks are fed instead. The result depends only on the bytes — not on the number of threads.

use xxhash_rust::xxh3::{xxh3_128, Xxh3};

/// Buffers up to this size are fed directly; larger ones are hashed block by block in parallel.
pub const BLOCK: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Xxh3,
    Blake3,
}

impl Algorithm {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "xxh3" | "xxh3_128" => Some(Algorithm::Xxh3),
            "blake3" => Some(Algorithm::Blake3),
            _ => None,
        }
    }

    fn hash_block(self, block: &[u8]) -> [u8; 32] {
        let mut digest = [0u8; 32];
        match self {
            Algorithm::Xxh3 => digest[..16].copy_from_slice(&xxh3_128(block).to_le_bytes()),
            Algorithm::Blake3 => digest = *blake3::hash(block).as_bytes(),
        }
        digest
    }
}

/// A streaming hasher.
pub struct Hasher {
    algorithm: Algorithm,
    state: State,
}

enum State {
    Xxh3(Box<Xxh3>),
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Self {
        let state = match algorithm {
            Algorithm::Xxh3 => State::Xxh3(Box::new(Xxh3::new())),
            Algorithm::Blake3 => State::Blake3(Box::new(blake3::Hasher::new())),
        };
        Self { algorithm, state }
    }

    /// Feed bytes of the stream.
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.state {
            State::Xxh3(state) => state.update(bytes),
            State::Blake3(state) => {
                state.update(bytes);
            }
        }
    }

    /// Feed a whole buffer (its length first, so that adjacent buffers cannot be confused).
    pub fn update_buffer(&mut self, buffer: &[u8]) {
        self.update(&(buffer.len() as u64).to_le_bytes());
        if buffer.len() <= BLOCK {
            self.update(buffer);
            return;
        }
        let digests = block_digests(self.algorithm, buffer);
        for digest in &digests {
            self.update(digest);
        }
    }

    /// The digest, as lowercase hex (32 characters for xxh3-128, 64 for blake3).
    pub fn hexdigest(&self) -> String {
        let bytes: Vec<u8> = match &self.state {
            State::Xxh3(state) => state.digest128().to_be_bytes().to_vec(),
            State::Blake3(state) => state.finalize().as_bytes().to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A 128-bit fingerprint of `buffer`'s contents at memory speed (xxh3 of its blocks, on every
/// core): to tell whether a buffer changed since it was last seen.
pub fn fingerprint(buffer: &[u8]) -> u128 {
    let mut hasher = Hasher::new(Algorithm::Xxh3);
    hasher.update_buffer(buffer);
    match &hasher.state {
        State::Xxh3(state) => state.digest128(),
        State::Blake3(_) => 0, // not built above
    }
}

/// The digest of every `BLOCK` of `buffer`, in order, computed on all available cores.
fn block_digests(algorithm: Algorithm, buffer: &[u8]) -> Vec<[u8; 32]> {
    let blocks: Vec<&[u8]> = buffer.chunks(BLOCK).collect();
    let mut digests = vec![[0u8; 32]; blocks.len()];
    crate::parallel::zip(&blocks, &mut digests, |block, digest| {
        *digest = algorithm.hash_block(block);
    });
    digests
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(algorithm: Algorithm, pieces: &[&[u8]], buffer: &[u8]) -> String {
        let mut hasher = Hasher::new(algorithm);
        for piece in pieces {
            hasher.update(piece);
        }
        hasher.update_buffer(buffer);
        hasher.hexdigest()
    }

    #[test]
    fn digests_are_stable_and_have_the_expected_length() {
        let a = hex(Algorithm::Xxh3, &[b"abc"], b"data");
        assert_eq!(a, hex(Algorithm::Xxh3, &[b"abc"], b"data"));
        assert_eq!(a.len(), 32);
        assert_eq!(hex(Algorithm::Blake3, &[], b"").len(), 64);
        assert_ne!(a, hex(Algorithm::Xxh3, &[b"abd"], b"data"));
    }

    #[test]
    fn buffer_boundaries_matter() {
        let mut one = Hasher::new(Algorithm::Xxh3);
        one.update_buffer(b"ab");
        one.update_buffer(b"c");
        let mut other = Hasher::new(Algorithm::Xxh3);
        other.update_buffer(b"a");
        other.update_buffer(b"bc");
        assert_ne!(one.hexdigest(), other.hexdigest());
    }

    #[test]
    fn large_buffers_hash_the_same_whatever_the_thread_count() {
        let big: Vec<u8> = (0..(3 * BLOCK + 17)).map(|i| (i % 251) as u8).collect();
        let digest = hex(Algorithm::Xxh3, &[], &big);
        // The block scheme, computed sequentially by hand:
        let mut expected = Hasher::new(Algorithm::Xxh3);
        expected.update(&(big.len() as u64).to_le_bytes());
        for block in big.chunks(BLOCK) {
            expected.update(&Algorithm::Xxh3.hash_block(block));
        }
        assert_eq!(digest, expected.hexdigest());
        let mut changed = big.clone();
        changed[2 * BLOCK + 5] ^= 1;
        assert_ne!(digest, hex(Algorithm::Xxh3, &[], &changed));
        assert_ne!(
            hex(Algorithm::Blake3, &[], &big),
            hex(Algorithm::Blake3, &[], &changed)
        );
    }
}
