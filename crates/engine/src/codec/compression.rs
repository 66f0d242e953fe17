//! The codecs of a container's blocks: each block is compressed on its own (so blocks compress
//! and decompress on every core), and decoding is bounded: a block decodes to exactly the length
//! its header gives, and a header may not claim more than its codec's ratio allows.

use std::io;

/// How a section's blocks are stored. zlib, gzip, bz2 and xz are joblib's codecs (chosen by
/// `compress=("gzip", 3)` or a file name ending in ".gz"), block by block like zstd, so they
/// too compress and decompress on every core; their levels are their own (1-9; xz 0-9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Raw,
    Zstd(i32),
    /// zstd, with float64 blocks of decimal numbers stored as the steps between them (see
    /// `decimal`): what `Zstd` becomes for buffer sections.
    ZstdDecimal(i32),
    Lz4,
    Zlib(u32),
    Gzip(u32),
    Bz2(u32),
    Xz(u32),
}

/// The most memory an xz block's decoder may use: our blocks are 4 MiB, so no honest block
/// needs a larger dictionary than the 64 MiB of level 9; a hostile header could ask for 4 GiB.
const XZ_MEMORY_LIMIT: u64 = 128 << 20;

impl Codec {
    pub(super) fn code(self) -> u8 {
        match self {
            Codec::Raw => 0,
            Codec::Zstd(_) => 1,
            Codec::Lz4 => 2,
            Codec::Zlib(_) => 3,
            Codec::Gzip(_) => 4,
            Codec::Bz2(_) => 5,
            Codec::Xz(_) => 6,
            Codec::ZstdDecimal(_) => 7,
        }
    }

    pub(super) fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Zstd(0)),
            2 => Some(Codec::Lz4),
            3 => Some(Codec::Zlib(0)),
            4 => Some(Codec::Gzip(0)),
            5 => Some(Codec::Bz2(0)),
            6 => Some(Codec::Xz(0)),
            7 => Some(Codec::ZstdDecimal(0)),
            _ => None,
        }
    }

    /// The codec called `name` ("raw", "zstd", "lz4", "zlib", "gzip", "bz2", "lzma" or "xz") at
    /// `level`, or None for an unknown name or a level out of the codec's range.
    pub fn from_name(name: &str, level: i32) -> Option<Self> {
        let classic = |max: i32| u32::try_from(level).ok().filter(|l| *l as i32 <= max);
        match name {
            "raw" => Some(Codec::Raw),
            "zstd" => (1..=22).contains(&level).then_some(Codec::Zstd(level)),
            "lz4" => Some(Codec::Lz4),
            "zlib" => classic(9).filter(|l| *l >= 1).map(Codec::Zlib),
            "gzip" => classic(9).filter(|l| *l >= 1).map(Codec::Gzip),
            "bz2" => classic(9).filter(|l| *l >= 1).map(Codec::Bz2),
            "lzma" | "xz" => classic(9).map(Codec::Xz),
            _ => None,
        }
    }

    pub(super) fn compress(self, block: &[u8]) -> io::Result<Vec<u8>> {
        use std::io::Write;
        match self {
            Codec::Raw => Ok(block.to_vec()),
            Codec::Zstd(level) => super::zstd_block::compress_after(&[], block, level),
            Codec::ZstdDecimal(level) => super::decimal::compress(block, level),
            Codec::Lz4 => Ok(lz4_flex::block::compress(block)),
            Codec::Zlib(level) => {
                let mut encoder =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(level));
                encoder.write_all(block)?;
                encoder.finish()
            }
            Codec::Gzip(level) => {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
                encoder.write_all(block)?;
                encoder.finish()
            }
            Codec::Bz2(level) => {
                let mut encoder =
                    bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::new(level));
                encoder.write_all(block)?;
                encoder.finish()
            }
            Codec::Xz(level) => {
                let mut encoder = liblzma::write::XzEncoder::new(Vec::new(), level);
                encoder.write_all(block)?;
                encoder.finish()
            }
        }
    }

    pub(super) fn decompress(self, stored: &[u8], out: &mut [u8]) -> Result<(), String> {
        let written = match self {
            Codec::Raw => {
                if stored.len() != out.len() {
                    return Err("length mismatch".into());
                }
                out.copy_from_slice(stored);
                out.len()
            }
            Codec::Zstd(_) => {
                zstd::bulk::decompress_to_buffer(stored, out).map_err(|e| e.to_string())?
            }
            Codec::ZstdDecimal(_) => {
                super::decimal::decompress(stored, out)?;
                out.len()
            }
            Codec::Lz4 => {
                lz4_flex::block::decompress_into(stored, out).map_err(|e| e.to_string())?
            }
            Codec::Zlib(_) => fill_exactly(flate2::read::ZlibDecoder::new(stored), out)?,
            Codec::Gzip(_) => fill_exactly(flate2::read::GzDecoder::new(stored), out)?,
            Codec::Bz2(_) => fill_exactly(bzip2::read::BzDecoder::new(stored), out)?,
            Codec::Xz(_) => {
                let stream = liblzma::stream::Stream::new_stream_decoder(XZ_MEMORY_LIMIT, 0)
                    .map_err(|e| e.to_string())?;
                fill_exactly(liblzma::read::XzDecoder::new_stream(stored, stream), out)?
            }
        };
        if written != out.len() {
            return Err(format!("{written} bytes instead of {}", out.len()));
        }
        Ok(())
    }
}

/// Decode exactly `out.len()` bytes from a streaming decoder, and nothing more: a block that
/// decodes to fewer or more bytes than its header says is damaged.
fn fill_exactly(mut decoder: impl io::Read, out: &mut [u8]) -> Result<usize, String> {
    decoder.read_exact(out).map_err(|e| e.to_string())?;
    let mut extra = [0u8; 1];
    match decoder.read(&mut extra) {
        Ok(0) => Ok(out.len()),
        Ok(_) => Err("it decodes to more bytes than its header says".into()),
        Err(error) => Err(error.to_string()),
    }
}

/// Most raw bytes one stored byte may expand to, per codec: zstd needs at least 4 bytes per
/// 128 KiB block of one repeated byte (ratio 32768), lz4 one byte per 255 bytes of a match. A
/// header that claims more than its stored bytes can hold is damaged (or hostile: it would make
/// `load` allocate memory the file cannot justify).
pub(super) fn max_raw_len(codec: Codec, stored_len: u64) -> u64 {
    match codec {
        Codec::Raw => stored_len,
        Codec::Zstd(_) => stored_len.saturating_mul(32 << 10),
        Codec::ZstdDecimal(_) => stored_len
            .saturating_mul(super::decimal::MAX_RATIO)
            .saturating_add(64),
        Codec::Lz4 => stored_len.saturating_mul(256).saturating_add(64),
        // Deflate's ratio is at most 1032:1, plus the zlib/gzip framing.
        Codec::Zlib(_) | Codec::Gzip(_) => stored_len.saturating_mul(1032).saturating_add(64),
        // bzip2's run-length stages and LZMA's long matches reach far higher ratios: the 4 MiB
        // block bound is what limits them (their decoders' memory is bounded too).
        Codec::Bz2(_) | Codec::Xz(_) => stored_len.saturating_mul(1 << 22),
    }
}
