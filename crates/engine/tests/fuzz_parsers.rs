//! A stable-toolchain mutation fuzzer for the parsers of untrusted bytes (the same entry points
//! as the libFuzzer targets in `fuzz/`, see `ferrojob_engine::fuzzing`).
//!
//! Each target first replays its corpus and every crash found earlier (`fuzz/corpus/<target>`,
//! `fuzz/regressions/<target>`), then mutates valid seeds for `FERROJOB_FUZZ_SECONDS` seconds
//! (default 2; CI runs 20 per target) from `FERROJOB_FUZZ_SEED` (default: a fixed seed, so a
//! plain `cargo test` is deterministic). A panic fails the test and prints the input's seed and
//! round; an abort or a crash fails the test binary.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferrojob_engine::codec::{self, Codec};
use ferrojob_engine::envelope::{self, BufferRef};
use ferrojob_engine::fuzzing;
use ferrojob_engine::protocol::{encode_header, Kind};
use ferrojob_engine::shm::Access;

/// xorshift64*: small, fast, reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: [u64; 12] = [
    0,
    1,
    7,
    63,
    64,
    4 << 20,
    (4 << 20) + 1,
    1 << 32,
    1 << 40,
    1 << 63,
    u64::MAX - 63,
    u64::MAX,
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => input[rng.below(len)] ^= 1 << rng.below(8),
            1 if len > 0 => input[rng.below(len)] = rng.next() as u8,
            2 if len >= 8 => {
                let at = rng.below(len - 7);
                let value = INTERESTING[rng.below(INTERESTING.len())];
                input[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
            3 if len >= 4 => {
                let at = rng.below(len - 3);
                let value = INTERESTING[rng.below(INTERESTING.len())] as u32;
                input[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
            4 => {
                let at = rng.below(len + 1);
                let extra: Vec<u8> = (0..=rng.below(16)).map(|_| rng.next() as u8).collect();
                input.splice(at..at, extra);
            }
            5 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(32)).min(len);
                input.drain(at..end);
            }
            6 if len > 0 => input.truncate(rng.below(len)),
            7 => {
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let piece = other[from..(from + rng.below(64) + 1).min(other.len())].to_vec();
                    let at = rng.below(len + 1);
                    input.splice(at..at, piece);
                }
            }
            _ => {}
        }
    }
}

fn fuzz_dir(kind: &str, target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(kind)
        .join(target)
}

fn files_in(kind: &str, target: &str) -> Vec<Vec<u8>> {
    let Ok(listing) = std::fs::read_dir(fuzz_dir(kind, target)) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = listing.flatten().map(|entry| entry.path()).collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|path| std::fs::read(path).ok())
        .collect()
}

fn budget() -> Duration {
    let seconds = std::env::var("FERROJOB_FUZZ_SECONDS")
        .ok()
        .and_then(|text| text.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(seconds.max(0.0))
}

fn seed() -> u64 {
    std::env::var("FERROJOB_FUZZ_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(0x5EED_F00D_2026_1126)
        | 1
}

fn run(target: &str, mut seeds: Vec<Vec<u8>>, parse: fn(&[u8])) {
    for input in files_in("regressions", target)
        .into_iter()
        .chain(files_in("corpus", target))
    {
        parse(&input);
        seeds.push(input);
    }
    let start_seed = seed();
    let mut rng = Rng(start_seed);
    let deadline = Instant::now() + budget();
    let mut rounds = 0u64;
    while Instant::now() < deadline {
        let mut input = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &seeds, &mut input);
        let outcome = std::panic::catch_unwind(|| parse(&input));
        assert!(
            outcome.is_ok(),
            "{target}: panicked on round {rounds} from seed {start_seed} (input {input:?})"
        );
        rounds += 1;
    }
    eprintln!("fuzz {target}: {rounds} inputs, seed {start_seed}");
}

fn container_seeds() -> Vec<Vec<u8>> {
    let dir = std::env::temp_dir().join(format!("ferrojob-fuzz-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("seed.fj");
    let big: Vec<u8> = (0..(codec::BLOCK_SIZE + 300))
        .map(|i| (i % 7) as u8)
        .collect();
    // Float64 decimals (prices in cents), which zstd stores as steps between values, with an
    // exception (NaN) among them.
    let decimals: Vec<u8> = (0..20_000u32)
        .map(|i| {
            if i == 77 {
                f64::NAN
            } else {
                f64::from(i % 1000) / 100.0 + 10.0
            }
        })
        .flat_map(f64::to_le_bytes)
        .collect();
    let mut seeds = Vec::new();
    for codec in [Codec::Raw, Codec::Zstd(1), Codec::Lz4] {
        for buffers in [
            &[][..],
            &[&b"abc"[..], &b""[..]][..],
            &[&big[..]][..],
            &[&decimals[..]][..],
        ] {
            codec::write(&path, b"\x80\x05pickle.", buffers, codec).unwrap();
            let file = std::fs::read(&path).unwrap();
            for switch in [0u8, 1] {
                let mut input = vec![switch];
                input.extend_from_slice(&file);
                seeds.push(input);
            }
        }
    }
    std::fs::remove_dir_all(dir).unwrap();
    seeds
}

fn frame(kind: Kind, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut bytes = encode_header(kind, 0, id, 0, payload.len() as u64).to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

#[test]
fn fuzz_container() {
    run("container", container_seeds(), fuzzing::container);
}

#[test]
fn fuzz_frames() {
    let mut two = frame(Kind::Done, 1, b"results");
    two.extend(frame(Kind::Failed, 2, b"error"));
    let seeds = vec![
        two,
        frame(Kind::Done, 7, &[0u8; 300]),
        frame(Kind::Release, 0, &7u64.to_le_bytes()),
    ];
    run("frames", seeds, fuzzing::frames);
}

#[test]
fn fuzz_envelope() {
    let one = BufferRef {
        segment: 0,
        offset: 64,
        len: 100,
    };
    let seeds = vec![
        envelope::encode(Access::ReadOnly, &[one], &[3], &[], b"body"),
        envelope::encode(Access::CopyOnWrite, &[one, one], &[1, 0], &[5, 6], b""),
        envelope::encode(Access::ReadWrite, &[], &[], &[], b"pickle"),
    ];
    run("envelope", seeds, fuzzing::envelope);
}
