//! zstd for float64 data that holds decimal numbers: prices, measurements, anything rounded to a
//! few decimal places or read from text.
//!
//! Such a value is `k / 10^d` for an integer `k` and a small `d`, but its binary fraction is a
//! long repeating pattern: a byte-oriented compressor sees mostly noise in the low bytes and
//! finds only repeats of whole values. A block whose values are (nearly all) decimal with a
//! common `d` is stored as the steps between successive `k`s instead, which are small integers
//! (a rounded random walk: 2 bytes per value before compression, ratio 6 instead of 3, and
//! zstd runs several times faster on the quarter-sized stream). The same idea as ALP (Afroozeh
//! et al., SIGMOD 2024), in its simplest form.
//!
//! Lossless by construction: a value is stored as its `k` only if `k as f64 / 10^d` gives back
//! its exact bits (IEEE division is correctly rounded everywhere); any other value (NaN, -0.0,
//! more digits, too large) is an *exception*, stored as its bits. A block that is not float64
//! decimals (integers, random floats, a pickle) is stored as plain zstd.
//!
//! ```text
//! block:   mode u8 | mode 0: zstd frame of the block
//!                  | mode 1: digits u8 | width u8 | n_exceptions u32 | first k i64
//!                            | zstd frame of: the steps k[i] - k[i-1] (i >= 1), zigzag, `width`
//!                              bytes each | exception indices u32 each | exception bits u64 each
//!                              | the block's last len % 8 bytes
//! ```
//!
//! Decoding is bounded like every codec's: the frame must decode to exactly the length the
//! small header implies, which the block's raw length bounds.

use std::io;

use super::zstd_block;

const PLAIN: u8 = 0;
const DECIMAL: u8 = 1;
/// Bytes of a decimal block's header after its mode byte.
const HEADER_LEN: usize = 1 + 1 + 4 + 8;
/// Powers of ten that are exact in an f64 (the divisors).
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];
/// Largest |k| whose f64 is exact.
const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
/// Values sampled to choose a block's number of digits.
const SAMPLES: usize = 64;
/// At most one value in this many may be an exception (else the block is stored plain).
const EXCEPTION_RATE: usize = 16;

/// Most raw bytes one stored byte may expand to: a plain block is zstd's (32 KiB per byte); a
/// decimal block's frame holds at least one byte per 8-byte value.
pub(super) const MAX_RATIO: u64 = 8 * (32 << 10);

/// Store `block` with zstd at `level`, as decimal steps if its values allow.
pub(super) fn compress(block: &[u8], level: i32) -> io::Result<Vec<u8>> {
    match Decimal::encode(block) {
        Some(decimal) => {
            let mut header = [0u8; 1 + HEADER_LEN];
            header[0] = DECIMAL;
            header[1] = decimal.digits;
            header[2] = decimal.width;
            header[3..7].copy_from_slice(&decimal.n_exceptions.to_le_bytes());
            header[7..].copy_from_slice(&decimal.first.to_le_bytes());
            zstd_block::compress_after(&header, &decimal.body, level)
        }
        None => zstd_block::compress_after(&[PLAIN], block, level),
    }
}

/// Decode a stored block into `out`, which must come out exactly full.
pub(super) fn decompress(stored: &[u8], out: &mut [u8]) -> Result<(), String> {
    let (&mode, rest) = stored.split_first().ok_or("an empty block")?;
    match mode {
        PLAIN => {
            let written = zstd::bulk::decompress_to_buffer(rest, out).map_err(|e| e.to_string())?;
            if written != out.len() {
                return Err(format!("{written} bytes instead of {}", out.len()));
            }
            Ok(())
        }
        DECIMAL => decode_decimal(rest, out),
        other => Err(format!("unknown block mode {other}")),
    }
}

/// A block as decimal steps, before compression.
struct Decimal {
    digits: u8,
    width: u8,
    n_exceptions: u32,
    first: i64,
    body: Vec<u8>,
}

fn value_bits(block: &[u8], index: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&block[8 * index..8 * index + 8]);
    u64::from_le_bytes(bytes)
}

/// Adding and subtracting 1.5 * 2^52 rounds an f64 below 2^51 in magnitude to the nearest
/// integer, in two additions instead of a call to libm's `round`.
const ROUNDER: f64 = 6_755_399_441_055_744.0;

/// The integer `k` with `k / scale == value` exactly (bit for bit), if there is one.
fn integer_of(bits: u64, scale: f64) -> Option<i64> {
    let scaled = f64::from_bits(bits) * scale;
    let scaled = if scaled.abs() < 2_251_799_813_685_248.0 {
        (scaled + ROUNDER) - ROUNDER
    } else {
        scaled.round()
    };
    // NaN and the infinities are not finite; past 2^53 an f64 skips integers.
    if !scaled.is_finite() || scaled.abs() > EXACT {
        return None;
    }
    let k = scaled as i64;
    ((k as f64 / scale).to_bits() == bits).then_some(k)
}

fn zigzag(step: i64) -> u64 {
    ((step << 1) ^ (step >> 63)) as u64
}

fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

impl Decimal {
    fn encode(block: &[u8]) -> Option<Decimal> {
        let n = block.len() / 8;
        if n < 2 * SAMPLES {
            return None;
        }
        let digits = choose_digits(block, n)?;
        let scale = POW10[usize::from(digits)];
        let mut ks = Vec::with_capacity(n);
        let mut exceptions: Vec<u32> = Vec::new();
        let mut previous = 0i64;
        let mut widest = 0u64;
        for index in 0..n {
            let k = match integer_of(value_bits(block, index), scale) {
                Some(k) => k,
                None => {
                    if exceptions.len() >= n / EXCEPTION_RATE {
                        return None;
                    }
                    exceptions.push(u32::try_from(index).ok()?);
                    previous // a step of 0: the exception's neighbours keep theirs
                }
            };
            if index > 0 {
                widest |= zigzag(k.wrapping_sub(previous));
            }
            ks.push(k);
            previous = k;
        }
        let width = (8 - widest.leading_zeros() as usize / 8).max(1);
        let tail = &block[8 * n..];
        let mut body = vec![0u8; (n - 1) * width];
        match width {
            1 => encode_steps::<1>(&ks, &mut body),
            2 => encode_steps::<2>(&ks, &mut body),
            3 => encode_steps::<3>(&ks, &mut body),
            4 => encode_steps::<4>(&ks, &mut body),
            5 => encode_steps::<5>(&ks, &mut body),
            6 => encode_steps::<6>(&ks, &mut body),
            7 => encode_steps::<7>(&ks, &mut body),
            _ => encode_steps::<8>(&ks, &mut body),
        }
        body.reserve(exceptions.len() * 12 + tail.len());
        for &index in &exceptions {
            body.extend_from_slice(&index.to_le_bytes());
        }
        for &index in &exceptions {
            body.extend_from_slice(&value_bits(block, index as usize).to_le_bytes());
        }
        body.extend_from_slice(tail);
        Some(Decimal {
            digits,
            width: width as u8,
            n_exceptions: exceptions.len() as u32,
            first: ks[0],
            body,
        })
    }
}

/// Write the steps between successive `ks`, zigzagged, `W` bytes each.
fn encode_steps<const W: usize>(ks: &[i64], body: &mut [u8]) {
    for (pair, out) in ks.windows(2).zip(body.chunks_exact_mut(W)) {
        out.copy_from_slice(&zigzag(pair[1].wrapping_sub(pair[0])).to_le_bytes()[..W]);
    }
}

/// The fewest decimal digits that express (nearly) every sampled value, if any do.
fn choose_digits(block: &[u8], n: usize) -> Option<u8> {
    let stride = n / SAMPLES;
    (0..POW10.len()).find_map(|digits| {
        let scale = POW10[digits];
        let misses = (0..SAMPLES)
            .filter(|sample| integer_of(value_bits(block, sample * stride), scale).is_none())
            .count();
        (misses <= SAMPLES / EXCEPTION_RATE).then_some(digits as u8)
    })
}

/// Rebuild the values after the first from their steps of `W` bytes (one copy of the loop per
/// width, so that reading a step is one load, not a variable-length copy).
fn decode_steps<const W: usize>(steps: &[u8], values: &mut [u8], first: i64, scale: f64) {
    let mut k = first;
    for (value, step) in values.chunks_exact_mut(8).zip(steps.chunks_exact(W)) {
        let mut bytes = [0u8; 8];
        bytes[..W].copy_from_slice(step);
        k = k.wrapping_add(unzigzag(u64::from_le_bytes(bytes)));
        value.copy_from_slice(&(k as f64 / scale).to_bits().to_le_bytes());
    }
}

fn decode_decimal(stored: &[u8], out: &mut [u8]) -> Result<(), String> {
    let (header, frame) = stored
        .split_at_checked(HEADER_LEN)
        .ok_or("the block ends inside its header")?;
    let digits = usize::from(header[0]);
    let width = usize::from(header[1]);
    let n_exceptions = u32::from_le_bytes(header[2..6].try_into().expect("4 bytes")) as usize;
    let first = i64::from_le_bytes(header[6..14].try_into().expect("8 bytes"));
    let scale = *POW10.get(digits).ok_or("too many digits")?;
    if !(1..=8).contains(&width) {
        return Err(format!("a step width of {width} bytes"));
    }
    let n = out.len() / 8;
    if n == 0 || n_exceptions > n / EXCEPTION_RATE {
        return Err(format!("{n_exceptions} exceptions in {n} values"));
    }
    let tail_len = out.len() % 8;
    let steps_len = (n - 1).checked_mul(width).ok_or("too long")?;
    let body_len = n_exceptions
        .checked_mul(12)
        .and_then(|exceptions| exceptions.checked_add(steps_len))
        .and_then(|len| len.checked_add(tail_len))
        .ok_or("too long")?;
    let mut body = vec![0u8; body_len];
    let written = zstd::bulk::decompress_to_buffer(frame, &mut body).map_err(|e| e.to_string())?;
    if written != body_len {
        return Err(format!("{written} bytes of steps instead of {body_len}"));
    }
    let (steps, rest) = body.split_at(steps_len);
    let (indices, rest) = rest.split_at(n_exceptions * 4);
    let (exception_bits, tail) = rest.split_at(n_exceptions * 8);
    let (values, out_tail) = out.split_at_mut(8 * n);
    values[..8].copy_from_slice(&(first as f64 / scale).to_bits().to_le_bytes());
    let rest = &mut values[8..];
    match width {
        1 => decode_steps::<1>(steps, rest, first, scale),
        2 => decode_steps::<2>(steps, rest, first, scale),
        3 => decode_steps::<3>(steps, rest, first, scale),
        4 => decode_steps::<4>(steps, rest, first, scale),
        5 => decode_steps::<5>(steps, rest, first, scale),
        6 => decode_steps::<6>(steps, rest, first, scale),
        7 => decode_steps::<7>(steps, rest, first, scale),
        _ => decode_steps::<8>(steps, rest, first, scale),
    }
    for (index, bits) in indices.chunks_exact(4).zip(exception_bits.chunks_exact(8)) {
        let index = u32::from_le_bytes(index.try_into().expect("4 bytes")) as usize;
        // Checked before any arithmetic on it: `8 * index` of a forged index could overflow
        // a 32-bit usize.
        if index >= n {
            return Err(format!("an exception at value {index} of {n}"));
        }
        values[8 * index..8 * index + 8].copy_from_slice(bits);
    }
    out_tail.copy_from_slice(tail);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(values: &[f64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn round_trip(block: &[u8]) -> Vec<u8> {
        let stored = compress(block, 1).unwrap();
        let mut out = vec![0u8; block.len()];
        decompress(&stored, &mut out).unwrap();
        assert_eq!(out, block);
        stored
    }

    /// A deterministic rounded random walk of `n` values with `digits` decimals.
    fn walk(n: usize, digits: i32) -> Vec<f64> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut value = 0.0f64;
        let scale = 10f64.powi(digits);
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                value += ((state >> 33) as f64 / (1u64 << 31) as f64) - 0.5;
                (value * scale).round() / scale
            })
            .collect()
    }

    #[test]
    fn decimal_values_are_stored_as_steps_and_come_back_exactly() {
        for digits in [0, 2, 5] {
            let block = bytes_of(&walk(100_000, digits));
            let stored = round_trip(&block);
            assert_eq!(stored[0], DECIMAL, "{digits} digits");
            assert_eq!(usize::from(stored[1]), digits as usize);
            let plain = zstd_block::compress_after(&[], &block, 1).unwrap();
            assert!(
                stored.len() < plain.len(),
                "{digits}: {} vs {}",
                stored.len(),
                plain.len()
            );
        }
    }

    #[test]
    fn special_values_are_exceptions_kept_bit_for_bit() {
        let mut values = walk(10_000, 2);
        let specials = [
            f64::NAN,
            -f64::NAN,
            f64::from_bits(0x7FF8_0000_DEAD_BEEF), // a NaN with a payload
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            f64::MIN_POSITIVE / 3.0, // subnormal
            0.1 + 0.2,               // more digits than the rest
            1e300,
        ];
        for (i, special) in specials.iter().enumerate() {
            values[100 * i + 7] = *special;
        }
        let mut block = bytes_of(&values);
        block.extend_from_slice(b"tail!"); // a length that is no multiple of 8
        let stored = round_trip(&block);
        assert_eq!(stored[0], DECIMAL);
        assert_eq!(
            u32::from_le_bytes(stored[3..7].try_into().unwrap()),
            specials.len() as u32
        );
    }

    #[test]
    fn other_data_is_stored_plain() {
        let mut state = 1u64;
        let random: Vec<f64> = (0..50_000)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                f64::from_bits((state >> 12) | 0x3FF0_0000_0000_0000) // in [1, 2)
            })
            .collect();
        let integers: Vec<u8> = (0..50_000i64).flat_map(|i| (i * i).to_le_bytes()).collect();
        for block in [bytes_of(&random), integers, b"short".to_vec(), Vec::new()] {
            assert_eq!(round_trip(&block)[0], PLAIN);
        }
    }

    #[test]
    fn wide_steps_and_extreme_integers_round_trip() {
        let values: Vec<f64> = (0..5_000)
            .map(|i| {
                if i % 2 == 0 {
                    9.0e15
                } else {
                    -9.0e15 + f64::from(i)
                }
            })
            .collect();
        let stored = round_trip(&bytes_of(&values));
        assert_eq!(stored[0], DECIMAL);
        assert!(stored[2] >= 7, "steps of 1.8e16 take 7 bytes or more");
    }

    #[test]
    fn damaged_or_hostile_blocks_are_errors_never_panics() {
        let block = bytes_of(&walk(20_000, 2));
        let stored = compress(&block, 1).unwrap();
        let mut out = vec![0u8; block.len()];
        for cut in [0, 1, 5, HEADER_LEN, stored.len() - 1] {
            assert!(
                decompress(&stored[..cut], &mut out).is_err(),
                "cut at {cut}"
            );
        }
        let mut forged = stored.clone();
        forged[1] = 16; // digits past the table
        assert!(decompress(&forged, &mut out).is_err());
        let mut forged = stored.clone();
        forged[2] = 9; // width
        assert!(decompress(&forged, &mut out).is_err());
        let mut forged = stored.clone();
        forged[3..7].copy_from_slice(&u32::MAX.to_le_bytes()); // exceptions
        assert!(decompress(&forged, &mut out).is_err());
        assert!(decompress(&[7], &mut out).is_err(), "unknown mode");
        // Every single-byte change decodes or fails, without panicking.
        for position in (0..stored.len()).step_by(97) {
            let mut flipped = stored.clone();
            flipped[position] ^= 0x5A;
            let _ = decompress(&flipped, &mut out);
        }
        // An exception index past the values is refused.
        let mut values = walk(20_000, 2);
        values[3] = f64::NAN;
        let stored = compress(&bytes_of(&values), 1).unwrap();
        let frame = &stored[1 + HEADER_LEN..];
        let mut body = zstd::bulk::decompress(frame, 1 << 20).unwrap();
        let at = body.len() - 12;
        body[at..at + 4].copy_from_slice(&20_000u32.to_le_bytes());
        let mut forged = stored[..1 + HEADER_LEN].to_vec();
        forged.extend_from_slice(&zstd::bulk::compress(&body, 1).unwrap());
        assert!(decompress(&forged, &mut vec![0u8; 20_000 * 8]).is_err());
    }
}
