//! ferrojob's container format for `dump` / `load`.
//!
//! ```text
//! magic "FJDUMP\0" version u8 | header length u64 | header | xxh3-64 of header u64 | sections
//! header:  flags u32 (bit 0: raw buffers were modified in place through an "r+" mapping, so
//!          their checksums are stale), n_sections u32, then per section:
//!          kind u8 (0 pickle, 1 buffer) | codec u8 (0 raw, 1 zstd, 2 lz4, 3 zlib, 4 gzip,
//!          5 bz2, 6 xz, 7 zstd with decimal float blocks, see `decimal`) | raw length u64
//!          | offset u64 | n_blocks u32 | per block: raw length u64, stored length u64,
//!          xxh3-64 of the stored bytes u64
//! ```
//! Version 2 is written only when a section uses codec 7 (buffers compressed with zstd), so
//! a reader of version 1 reads every file that does not need more; both are read.
//! Sections start at multiples of 64 bytes, so raw buffers can be memory-mapped and used in
//! place as numpy arrays. Data is cut into blocks of `BLOCK_SIZE`, compressed (zstd or lz4) and
//! checksummed on every core; a damaged or truncated file is reported with the section and block.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use crate::cursor::Cursor;

mod compression;
mod decimal;
mod wrapped;
mod zstd_block;

use compression::max_raw_len;
pub use compression::Codec;
pub use wrapped::{write_wrapped, Wrapper};

const MAGIC: &[u8; 7] = b"FJDUMP\0";
/// The format version written: 2 when a section uses a codec version 1 did not have
/// (`ZstdDecimal`), else 1, so that older readers read every file they can.
const VERSION: u8 = 2;
/// Uncompressed bytes per block.
pub const BLOCK_SIZE: usize = 4 << 20;
/// Sections start at multiples of this.
pub const ALIGNMENT: u64 = 64;
const PREAMBLE: usize = 8 + 8;
/// Header flag: raw buffer sections were modified in place (`mmap_mode="r+"`).
const MODIFIED_IN_PLACE: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionKind {
    Pickle,
    Buffer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub raw_len: u64,
    pub stored_len: u64,
    pub checksum: u64,
}

/// Where a section lies and how it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub kind: SectionKind,
    pub codec: Codec,
    pub raw_len: u64,
    pub offset: u64,
    pub blocks: Vec<Block>,
}

impl Section {
    /// Bytes the section occupies in the file. Saturates: a damaged header's sum past `u64::MAX`
    /// is larger than any file, which [`Container::open`] refuses.
    pub fn stored_len(&self) -> u64 {
        self.blocks
            .iter()
            .fold(0u64, |total, block| total.saturating_add(block.stored_len))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("{path}: not a ferrojob dump{}", .looks_like.map(|l| format!(" (it looks like {l})")).unwrap_or_default())]
    NotAContainer {
        path: PathBuf,
        looks_like: Option<&'static str>,
    },
    #[error("{path}: written by a newer ferrojob (format version {version})")]
    UnsupportedVersion { path: PathBuf, version: u8 },
    #[error("{path}: the header is damaged ({reason})")]
    DamagedHeader { path: PathBuf, reason: String },
    #[error(
        "{path}: truncated: section {section} needs bytes up to {needed}, the file has {size}"
    )]
    Truncated {
        path: PathBuf,
        section: usize,
        needed: u64,
        size: u64,
    },
    #[error("{path}: section {section}, block {block} is damaged ({reason})")]
    DamagedBlock {
        path: PathBuf,
        section: usize,
        block: usize,
        reason: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CodecError + '_ {
    move |source| CodecError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a file that is not a ferrojob dump seems to be, from its first bytes.
fn sniff(start: &[u8]) -> Option<&'static str> {
    match start {
        [0x80, 2..=5, ..] => Some("a pickle, e.g. written by joblib.dump without compression"),
        [0x78, 0x01 | 0x5e | 0x9c | 0xda, ..] => {
            Some("a zlib stream, e.g. joblib.dump(compress=3)")
        }
        [0x1f, 0x8b, ..] => Some("a gzip file, e.g. joblib.dump(compress='gzip')"),
        [0x42, 0x5a, 0x68, ..] => Some("a bz2 file, e.g. joblib.dump(compress='bz2')"),
        [0xfd, 0x37, 0x7a, 0x58, 0x5a, ..] => Some("an xz file, e.g. joblib.dump(compress='xz')"),
        [0x5d, 0x00, 0x00, ..] => Some("an lzma file, e.g. joblib.dump(compress='lzma')"),
        [0x04, 0x22, 0x4d, 0x18, ..] => Some("an lz4 frame, e.g. joblib.dump(compress='lz4')"),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Some("a zstd frame"),
        [b'Z', b'F', b'0', b'x', ..] => Some("a zlib-compressed pickle written by joblib < 0.10"),
        [0x93, b'N', b'U', b'M', b'P', b'Y', ..] => {
            Some("a NumPy .npy file: read it with numpy.load")
        }
        [b'P', b'K', 0x03, 0x04, ..] => {
            Some("a zip archive (a NumPy .npz file? read it with numpy.load)")
        }
        [b'{' | b'[', ..] if is_text(start) => Some("JSON text (a dump is binary)"),
        _ if is_text(start) => Some("text (a dump is binary)"),
        _ => None,
    }
}

/// Whether `start` is printable text (a few bytes are enough to tell a dump from a text file).
fn is_text(start: &[u8]) -> bool {
    !start.is_empty()
        && start
            .iter()
            .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace())
}

/// Whether `start` (the first bytes of a file) looks like a joblib dump.
pub fn looks_like_joblib(start: &[u8]) -> bool {
    sniff(start).is_some_and(|what| what.contains("joblib"))
}

/// Store one block with `codec`: its entry in the header, and its stored bytes unless the codec
/// is raw (the block is then written from the input as it is).
fn encode_block(chunk: &[u8], codec: Codec) -> io::Result<(Block, Option<Vec<u8>>)> {
    let stored = match codec {
        Codec::Raw => None,
        _ => Some(codec.compress(chunk)?),
    };
    let checksum_source = stored.as_deref().unwrap_or(chunk);
    let block = Block {
        raw_len: chunk.len() as u64,
        stored_len: checksum_source.len() as u64,
        checksum: xxh3_64(checksum_source),
    };
    Ok((block, stored))
}

/// Blocks made ahead of the writer, per core: enough to keep every core busy while the writer
/// catches up, few enough to bound memory (each is at most `BLOCK_SIZE` stored).
const BLOCKS_AHEAD_PER_CORE: usize = 4;

/// Write a container with a pickle section and one section per buffer, atomically: into a
/// temporary file beside `path`, renamed over it once complete. Returns the file's size.
///
/// Blocks are compressed and checksummed on every core and written in order as they are done,
/// so writing overlaps compressing; the header, whose length depends only on the number of
/// blocks, is written last, in the room left for it.
pub fn write(
    path: &Path,
    pickle: &[u8],
    buffers: &[&[u8]],
    codec: Codec,
) -> Result<u64, CodecError> {
    let inputs: Vec<(SectionKind, &[u8])> = std::iter::once((SectionKind::Pickle, pickle))
        .chain(buffers.iter().map(|b| (SectionKind::Buffer, *b)))
        .collect();
    let mut sections: Vec<Section> = inputs
        .iter()
        .map(|(kind, data)| Section {
            kind: *kind,
            codec: match (kind, codec) {
                (SectionKind::Buffer, Codec::Zstd(level)) => Codec::ZstdDecimal(level),
                _ => codec,
            },
            raw_len: data.len() as u64,
            offset: 0,
            blocks: Vec::with_capacity(data.len().div_ceil(BLOCK_SIZE)),
        })
        .collect();
    // Every block of every section, in file order: (section, its bytes).
    let chunks: Vec<(usize, &[u8])> = inputs
        .iter()
        .enumerate()
        .flat_map(|(index, (_, data))| data.chunks(BLOCK_SIZE).map(move |chunk| (index, chunk)))
        .collect();
    let codecs: Vec<Codec> = sections.iter().map(|section| section.codec).collect();
    let version = if codecs.iter().any(|c| matches!(c, Codec::ZstdDecimal(_))) {
        VERSION
    } else {
        1
    };
    let header_len = header_len(sections.len(), chunks.len());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let temporary = crate::atomic::temporary_sibling(path, "tmp");
    let written = (|| -> io::Result<u64> {
        use std::os::unix::fs::FileExt;
        let file = File::create(&temporary)?;
        let mut out = io::BufWriter::with_capacity(1 << 20, file);
        out.write_all(MAGIC)?;
        out.write_all(&[version])?;
        out.write_all(&(header_len as u64).to_le_bytes())?;
        out.write_all(&vec![0u8; header_len + 8])?; // the header's room, filled in last
        let mut position = (PREAMBLE + header_len + 8) as u64;
        // The pickle's section is always there.
        let last_section = sections.len() - 1;
        // Sections before `placed` have their offset: each starts aligned where the last ended.
        let mut placed = 0;
        let mut place_through =
            |section: usize, position: &mut u64, out: &mut io::BufWriter<File>| {
                while placed <= section {
                    let offset = position.next_multiple_of(ALIGNMENT);
                    out.write_all(&vec![0u8; (offset - *position) as usize])?;
                    sections[placed].offset = offset;
                    *position = offset;
                    placed += 1;
                }
                io::Result::Ok(())
            };
        let mut blocks = Vec::with_capacity(chunks.len());
        crate::parallel::ordered(
            &chunks,
            cores * BLOCKS_AHEAD_PER_CORE,
            |&(section, chunk)| encode_block(chunk, codecs[section]),
            |index, encoded| {
                let (section, chunk) = chunks[index];
                let (block, stored) = encoded?;
                place_through(section, &mut position, &mut out)?;
                out.write_all(stored.as_deref().unwrap_or(chunk))?;
                position += block.stored_len;
                blocks.push((section, block));
                io::Result::Ok(())
            },
        )?;
        place_through(last_section, &mut position, &mut out)?; // empty sections at the end
        for (section, block) in blocks {
            sections[section].blocks.push(block);
        }
        let header = encode_header(0, &sections);
        if header.len() != header_len {
            // Its room was sized from the same counts: a bug, reported rather than written.
            return Err(io::Error::other(
                "the header does not fit the room left for it",
            ));
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        let mut sealed = header.clone();
        sealed.extend_from_slice(&xxh3_64(&header).to_le_bytes());
        file.write_all_at(&sealed, PREAMBLE as u64)?;
        // No fsync: the rename makes the file appear whole to other processes; surviving a power
        // cut is not promised (joblib does not either), and fsync would halve the throughput.
        Ok(position)
    })();
    match written {
        Ok(size) => {
            std::fs::rename(&temporary, path).map_err(io_error(path))?;
            Ok(size)
        }
        Err(error) => {
            let _ = std::fs::remove_file(&temporary);
            Err(io_error(path)(error))
        }
    }
}

/// Bytes of a header entry per section (kind, codec, raw length, offset, block count) and per
/// block (raw length, stored length, checksum).
const SECTION_ENTRY_LEN: usize = 1 + 1 + 8 + 8 + 4;
const BLOCK_ENTRY_LEN: usize = 8 + 8 + 8;

/// The length of the header of `n_sections` sections holding `n_blocks` blocks in all.
fn header_len(n_sections: usize, n_blocks: usize) -> usize {
    4 + 4 + n_sections * SECTION_ENTRY_LEN + n_blocks * BLOCK_ENTRY_LEN
}

fn encoded_header_len(sections: &[Section]) -> usize {
    header_len(
        sections.len(),
        sections.iter().map(|s| s.blocks.len()).sum(),
    )
}

fn encode_header(flags: u32, sections: &[Section]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_header_len(sections));
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    for section in sections {
        out.push(match section.kind {
            SectionKind::Pickle => 0,
            SectionKind::Buffer => 1,
        });
        out.push(section.codec.code());
        out.extend_from_slice(&section.raw_len.to_le_bytes());
        out.extend_from_slice(&section.offset.to_le_bytes());
        out.extend_from_slice(&(section.blocks.len() as u32).to_le_bytes());
        for block in &section.blocks {
            out.extend_from_slice(&block.raw_len.to_le_bytes());
            out.extend_from_slice(&block.stored_len.to_le_bytes());
            out.extend_from_slice(&block.checksum.to_le_bytes());
        }
    }
    out
}

fn decode_header(bytes: &[u8]) -> Result<(u32, Vec<Section>), String> {
    let ends_early = || "ends early".to_owned();
    let mut reader = Cursor::new(bytes);
    let flags = reader.u32().ok_or_else(ends_early)?;
    let count = reader.count(SECTION_ENTRY_LEN).ok_or_else(ends_early)?;
    let mut sections = Vec::with_capacity(count);
    for index in 0..count {
        let kind = match reader.u8().ok_or_else(ends_early)? {
            0 => SectionKind::Pickle,
            1 => SectionKind::Buffer,
            other => return Err(format!("unknown section kind {other}")),
        };
        let code = reader.u8().ok_or_else(ends_early)?;
        let codec = Codec::from_code(code).ok_or_else(|| format!("unknown codec {code}"))?;
        let raw_len = reader.u64().ok_or_else(ends_early)?;
        let offset = reader.u64().ok_or_else(ends_early)?;
        let n_blocks = reader.count(BLOCK_ENTRY_LEN).ok_or_else(ends_early)?;
        let mut blocks = Vec::with_capacity(n_blocks);
        let mut total: u64 = 0;
        for number in 0..n_blocks {
            let block = Block {
                raw_len: reader.u64().ok_or_else(ends_early)?,
                stored_len: reader.u64().ok_or_else(ends_early)?,
                checksum: reader.u64().ok_or_else(ends_early)?,
            };
            let plausible = block.raw_len <= BLOCK_SIZE as u64
                && block.raw_len <= max_raw_len(codec, block.stored_len)
                && (codec != Codec::Raw || block.raw_len == block.stored_len);
            if !plausible {
                return Err(format!(
                    "section {index}, block {number} claims {} bytes from {} stored",
                    block.raw_len, block.stored_len
                ));
            }
            total = total
                .checked_add(block.raw_len)
                .ok_or("block lengths overflow")?;
            blocks.push(block);
        }
        if total != raw_len {
            return Err(format!("section {index}: block lengths do not add up"));
        }
        sections.push(Section {
            kind,
            codec,
            raw_len,
            offset,
            blocks,
        });
    }
    if !reader.is_empty() {
        return Err("trailing bytes".into());
    }
    let pickles = sections
        .iter()
        .filter(|s| s.kind == SectionKind::Pickle)
        .count();
    if pickles != 1 || sections[0].kind != SectionKind::Pickle {
        return Err(format!(
            "{pickles} pickle sections; a dump has exactly one, first"
        ));
    }
    Ok((flags, sections))
}

fn damaged(path: &Path, reason: &str) -> CodecError {
    CodecError::DamagedHeader {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Check a container's preamble (magic, version; `start` may be shorter: a short file) and
/// return the header length it declares.
fn check_preamble(start: &[u8], path: &Path) -> Result<u64, CodecError> {
    if start.len() < MAGIC.len() || &start[..MAGIC.len()] != MAGIC {
        return Err(CodecError::NotAContainer {
            path: path.to_owned(),
            looks_like: sniff(start),
        });
    }
    if start.len() < PREAMBLE {
        return Err(damaged(path, "the file ends inside its preamble"));
    }
    if !(1..=VERSION).contains(&start[7]) {
        return Err(CodecError::UnsupportedVersion {
            path: path.to_owned(),
            version: start[7],
        });
    }
    let mut declared = [0u8; 8];
    declared.copy_from_slice(&start[8..PREAMBLE]);
    Ok(u64::from_le_bytes(declared))
}

/// Check the header and its checksum (`bytes`: the header, then its xxh3-64) and decode it;
/// every section must start at or after `header_end` (where the header's checksum ends), aligned.
fn check_header(
    bytes: &[u8],
    header_end: u64,
    path: &Path,
) -> Result<(u32, Vec<Section>), CodecError> {
    let Some(split) = bytes.len().checked_sub(8) else {
        return Err(damaged(path, "the header has no checksum"));
    };
    let (header, checksum) = bytes.split_at(split);
    let mut expected = [0u8; 8];
    expected.copy_from_slice(checksum);
    if xxh3_64(header) != u64::from_le_bytes(expected) {
        return Err(damaged(path, "checksum mismatch"));
    }
    let (flags, sections) = decode_header(header).map_err(|reason| damaged(path, &reason))?;
    // Each section starts where `write` puts it: aligned, right after the one before (the first
    // right after the header). A header cannot declare a gap, so the length it declares is the
    // sum of its sections, each of them checksummed: no run of unchecked bytes for a reader of a
    // stream to copy (a few-byte stream claiming a section at 512 MiB is refused here, unread).
    let mut end = header_end;
    for (index, section) in sections.iter().enumerate() {
        let expected = end.checked_next_multiple_of(ALIGNMENT);
        if Some(section.offset) != expected {
            return Err(damaged(
                path,
                &format!(
                    "section {index} starts at {}, not where the one before it ends ({})",
                    section.offset,
                    expected.map_or_else(|| "past 2^64".to_string(), |at| at.to_string()),
                ),
            ));
        }
        end = section
            .offset
            .checked_add(section.stored_len())
            .ok_or_else(|| damaged(path, "section lengths overflow"))?;
    }
    Ok((flags, sections))
}

/// The largest header [`extent`] accepts from a stream: 64 MiB of header describes over
/// 10 TB of data, and bounds what a hostile stream can make a reader buffer.
const MAX_STREAMED_HEADER: u64 = 64 << 20;

/// How much of a stream the container starting with `prefix` occupies, for reading one dump
/// from a stream (a socket, one of several dumps in a file) without reading past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    /// `prefix` is too short to tell: read until it has this many bytes, then ask again.
    Needs(u64),
    /// The container is this many bytes long, `prefix` included.
    Total(u64),
}

/// See [`Extent`]; `name` names the stream in errors.
pub fn extent(prefix: &[u8], name: &Path) -> Result<Extent, CodecError> {
    if prefix.len() < PREAMBLE {
        let shared = prefix.len().min(MAGIC.len());
        if prefix[..shared] != MAGIC[..shared] {
            check_preamble(prefix, name)?; // not a container: says what it looks like
        }
        return Ok(Extent::Needs(PREAMBLE as u64));
    }
    let header_len = check_preamble(prefix, name)?;
    if header_len > MAX_STREAMED_HEADER {
        return Err(damaged(name, "the header declares an implausible length"));
    }
    // At most 64 MiB + 24: no overflow, and it fits a usize.
    let header_end = header_len + (PREAMBLE + 8) as u64;
    let Some(head) = prefix.get(PREAMBLE..header_end as usize) else {
        return Ok(Extent::Needs(header_end));
    };
    let (_, sections) = check_header(head, header_end, name)?;
    let end = sections.iter().try_fold(header_end, |end, section| {
        section
            .offset
            .checked_add(section.stored_len())
            .map(|section_end| end.max(section_end))
    });
    end.map(Extent::Total)
        .ok_or_else(|| damaged(name, "section lengths overflow"))
}

/// An opened container: its sections, checked against the file's size.
#[derive(Debug)]
pub struct Container {
    path: PathBuf,
    file: File,
    flags: u32,
    sections: Vec<Section>,
}

impl Container {
    pub fn open(path: &Path) -> Result<Self, CodecError> {
        let file = File::open(path).map_err(io_error(path))?;
        Self::from_file(file, path)
    }

    /// Open a container from a file already open for reading (read from its start); `path`
    /// names it in errors.
    pub fn from_file(mut file: File, path: &Path) -> Result<Self, CodecError> {
        let size = file.metadata().map_err(io_error(path))?.len();
        let mut preamble = [0u8; PREAMBLE];
        let got = read_up_to(&mut file, &mut preamble).map_err(io_error(path))?;
        let header_len = check_preamble(&preamble[..got], path)?;
        let header_end = header_len
            .checked_add((PREAMBLE + 8) as u64)
            .filter(|&end| end <= size)
            .ok_or_else(|| damaged(path, "the file ends inside its header"))?;
        // Bounded by the file's size just above; fallible all the same (a huge file, little memory).
        let header_len = usize::try_from(header_len)
            .map_err(|_| damaged(path, "the header is larger than this machine's memory"))?;
        let mut header = Vec::new();
        header
            .try_reserve_exact(header_len + 8)
            .map_err(|_| damaged(path, "the header is larger than this machine's memory"))?;
        header.resize(header_len + 8, 0);
        file.read_exact(&mut header).map_err(io_error(path))?;
        let (flags, sections) = check_header(&header, header_end, path)?;
        for (index, section) in sections.iter().enumerate() {
            let needed = section.offset.saturating_add(section.stored_len());
            if needed > size {
                return Err(CodecError::Truncated {
                    path: path.to_owned(),
                    section: index,
                    needed,
                    size,
                });
            }
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            flags,
            sections,
        })
    }

    /// Record, before mapping the file writable ("r+"), that its raw buffers may change: their
    /// checksums are no longer verified (the pickle and compressed sections still are).
    pub fn mark_modified_in_place(&mut self) -> Result<(), CodecError> {
        use std::os::unix::fs::FileExt;
        if self.flags & MODIFIED_IN_PLACE != 0 {
            return Ok(());
        }
        self.flags |= MODIFIED_IN_PLACE;
        let header = encode_header(self.flags, &self.sections);
        let mut bytes = header.clone();
        bytes.extend_from_slice(&xxh3_64(&header).to_le_bytes());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .and_then(|file| file.write_all_at(&bytes, PREAMBLE as u64))
            .map_err(io_error(&self.path))
    }

    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// Whether every buffer section is stored raw (so it can be memory-mapped in place).
    pub fn is_mappable(&self) -> bool {
        self.sections
            .iter()
            .all(|s| s.kind == SectionKind::Pickle || s.codec == Codec::Raw)
    }

    /// Read, check and decompress section `index` into `out` (exactly its raw length).
    pub fn read_into(&self, index: usize, out: &mut [u8]) -> Result<(), CodecError> {
        use std::os::unix::fs::FileExt;
        let section = self
            .sections
            .get(index)
            .ok_or_else(|| CodecError::DamagedHeader {
                path: self.path.clone(),
                reason: format!("no section {index}"),
            })?;
        if out.len() as u64 != section.raw_len {
            return Err(CodecError::Io {
                path: self.path.clone(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "section {index} has {} bytes, not {}",
                        section.raw_len,
                        out.len()
                    ),
                ),
            });
        }
        // `open` checked that the section lies inside the file, so its length fits in memory's
        // address space only if the file does: convert without truncating.
        let stored_len = usize::try_from(section.stored_len()).map_err(|_| CodecError::Io {
            path: self.path.clone(),
            source: io::Error::from(io::ErrorKind::OutOfMemory),
        })?;
        let mut stored = crate::shm::anonymous(stored_len).map_err(io_error(&self.path))?;
        let stored = &mut stored[..stored_len];
        self.file
            .read_exact_at(stored, section.offset)
            .map_err(io_error(&self.path))?;
        // The header's block lengths add up to the section's (checked by `decode_header`); split
        // with checked calls all the same, so no header can make a slice go out of bounds.
        let inconsistent = || CodecError::DamagedHeader {
            path: self.path.clone(),
            reason: format!("section {index}: block lengths do not match the section"),
        };
        let mut inputs = Vec::with_capacity(section.blocks.len());
        let mut outputs: Vec<&mut [u8]> = Vec::with_capacity(section.blocks.len());
        let (mut stored_rest, mut out_rest): (&[u8], &mut [u8]) = (stored, out);
        for block in &section.blocks {
            let stored_len = usize::try_from(block.stored_len).map_err(|_| inconsistent())?;
            let raw_len = usize::try_from(block.raw_len).map_err(|_| inconsistent())?;
            let (bytes, tail) = stored_rest
                .split_at_checked(stored_len)
                .ok_or_else(inconsistent)?;
            stored_rest = tail;
            inputs.push((block, bytes));
            let (head, tail) = std::mem::take(&mut out_rest)
                .split_at_mut_checked(raw_len)
                .ok_or_else(inconsistent)?;
            out_rest = tail;
            outputs.push(head);
        }
        let mut results: Vec<Result<(), String>> = vec![Ok(()); inputs.len()];
        let mut work: Vec<(&mut [u8], &mut Result<(), String>)> =
            outputs.into_iter().zip(results.iter_mut()).collect();
        let verify = !(section.kind == SectionKind::Buffer
            && section.codec == Codec::Raw
            && self.flags & MODIFIED_IN_PLACE != 0);
        crate::parallel::zip(&inputs, &mut work, |(block, bytes), (out, result)| {
            **result = if verify && xxh3_64(bytes) != block.checksum {
                Err("checksum mismatch".into())
            } else {
                section.codec.decompress(bytes, out)
            };
        });
        for (number, result) in results.into_iter().enumerate() {
            if let Err(reason) = result {
                return Err(CodecError::DamagedBlock {
                    path: self.path.clone(),
                    section: index,
                    block: number,
                    reason,
                });
            }
        }
        Ok(())
    }
}

/// Make the checksums of a (mutated) container right again, where its layout can be read: each
/// block's from the bytes it covers, then the header's. Fuzzers use it so that mutations reach
/// the header decoder and the decompressors instead of stopping at a checksum. Never panics.
pub fn reseal(bytes: &mut [u8]) {
    let Some(declared) = bytes
        .get(8..PREAMBLE)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
    else {
        return;
    };
    let Some(header_end) = usize::try_from(u64::from_le_bytes(declared))
        .ok()
        .and_then(|len| len.checked_add(PREAMBLE))
        .filter(|&end| {
            end.checked_add(8)
                .is_some_and(|sum_end| sum_end <= bytes.len())
        })
    else {
        return;
    };
    if let Ok((flags, mut sections)) = decode_header(&bytes[PREAMBLE..header_end]) {
        for section in &mut sections {
            let mut at = section.offset;
            for block in &mut section.blocks {
                let end = at.saturating_add(block.stored_len);
                let range = usize::try_from(at).ok().zip(usize::try_from(end).ok());
                if let Some(stored) = range.and_then(|(start, end)| bytes.get(start..end)) {
                    block.checksum = xxh3_64(stored);
                }
                at = end;
            }
        }
        let header = encode_header(flags, &sections);
        if header.len() == header_end - PREAMBLE {
            bytes[PREAMBLE..header_end].copy_from_slice(&header);
        }
    }
    let checksum = xxh3_64(&bytes[PREAMBLE..header_end]).to_le_bytes();
    bytes[header_end..header_end + 8].copy_from_slice(&checksum);
}

fn read_up_to(file: &mut File, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_no_dump_is_said_what_it_looks_like() {
        let said = |start: &[u8]| sniff(start).unwrap_or("nothing known");
        assert!(said(b"\x93NUMPY\x01\x00v\x00").contains("NumPy .npy"));
        assert!(said(b"PK\x03\x04\x14\x00").contains("zip archive"));
        assert!(said(b"{\"a\": 1}").contains("JSON"));
        assert!(said(b"just some text\n").starts_with("text"));
        assert!(said(&[0x1f, 0x8b, 8, 0]).contains("gzip"));
        assert_eq!(said(&[0x00, 0xff, 0x10]), "nothing known");
        assert!(!looks_like_joblib(b"just some text"));
    }

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ferrojob-codec-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn round_trip(codec: Codec) {
        let dir = temp_dir();
        let path = dir.join("data.fj");
        let big: Vec<u8> = (0..(2 * BLOCK_SIZE + 1000))
            .map(|i| (i / 7 % 256) as u8)
            .collect();
        write(&path, b"pickle-bytes", &[&big, b"", b"small"], codec).unwrap();
        let container = Container::open(&path).unwrap();
        assert_eq!(container.sections().len(), 4);
        assert_eq!(container.is_mappable(), codec == Codec::Raw);
        for (index, expected) in [&b"pickle-bytes"[..], &big, b"", b"small"]
            .iter()
            .enumerate()
        {
            let section = &container.sections()[index];
            assert_eq!(section.offset % ALIGNMENT, 0);
            let mut out = vec![0u8; section.raw_len as usize];
            container.read_into(index, &mut out).unwrap();
            assert_eq!(&out, expected);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn every_codec_round_trips() {
        for codec in [
            Codec::Raw,
            Codec::Zstd(3),
            Codec::Lz4,
            Codec::Zlib(3),
            Codec::Gzip(3),
            Codec::Bz2(3),
            Codec::Xz(3),
        ] {
            round_trip(codec);
        }
        assert_eq!(Codec::from_name("gzip", 6), Some(Codec::Gzip(6)));
        assert_eq!(Codec::from_name("lzma", 0), Some(Codec::Xz(0)));
        assert_eq!(Codec::from_name("zlib", 10), None);
        assert_eq!(Codec::from_name("brotli", 3), None);
    }

    #[test]
    fn compression_shrinks_compressible_data() {
        let dir = temp_dir();
        let path = dir.join("zeros.fj");
        let size = write(&path, b"", &[&vec![0u8; 10 << 20]], Codec::Zstd(3)).unwrap();
        assert!(size < 100_000, "{size}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn damage_is_reported_with_its_place() {
        let dir = temp_dir();
        let path = dir.join("data.fj");
        let data: Vec<u8> = (0..(BLOCK_SIZE + 10)).map(|i| (i % 13) as u8).collect();
        let size = write(&path, b"p", &[&data], Codec::Zstd(1)).unwrap();
        let container = Container::open(&path).unwrap();
        let second_block =
            container.sections()[1].offset + container.sections()[1].blocks[0].stored_len;
        drop(container);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[second_block as usize] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let container = Container::open(&path).unwrap();
        let mut out = vec![0u8; data.len()];
        let error = container.read_into(1, &mut out).unwrap_err();
        assert!(
            matches!(
                error,
                CodecError::DamagedBlock {
                    section: 1,
                    block: 1,
                    ..
                }
            ),
            "{error}"
        );
        std::fs::write(&path, &bytes[..size as usize - 5]).unwrap();
        let error = Container::open(&path).unwrap_err();
        assert!(
            matches!(error, CodecError::Truncated { section: 1, .. }),
            "{error}"
        );
        std::fs::write(&path, &bytes[..20]).unwrap();
        assert!(matches!(
            Container::open(&path).unwrap_err(),
            CodecError::DamagedHeader { .. }
        ));
        bytes[20] ^= 1; // inside the header
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            Container::open(&path).unwrap_err(),
            CodecError::DamagedHeader { .. }
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn raw_buffers_modified_in_place_are_not_checked_but_the_rest_is() {
        let dir = temp_dir();
        let path = dir.join("data.fj");
        write(&path, b"pickle", &[&[1u8; 100]], Codec::Raw).unwrap();
        let mut container = Container::open(&path).unwrap();
        let offset = container.sections()[1].offset as usize;
        container.mark_modified_in_place().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offset] = 9; // what a write through an "r+" mapping does
        std::fs::write(&path, &bytes).unwrap();
        let container = Container::open(&path).unwrap();
        let mut out = vec![0u8; 100];
        container.read_into(1, &mut out).unwrap();
        assert_eq!(out[0], 9);
        let pickle_at = container.sections()[0].offset as usize;
        bytes[pickle_at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let container = Container::open(&path).unwrap();
        let mut out = vec![0u8; 6];
        assert!(container.read_into(0, &mut out).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn other_files_are_recognised() {
        let dir = temp_dir();
        let path = dir.join("joblib.pkl");
        std::fs::write(&path, [0x80, 4, 0x95, 0, 0]).unwrap();
        let error = Container::open(&path).unwrap_err();
        assert!(error.to_string().contains("joblib.dump"), "{error}");
        std::fs::write(&path, [0x00, 0xfe, 0x01]).unwrap();
        assert!(matches!(
            Container::open(&path).unwrap_err(),
            CodecError::NotAContainer {
                looks_like: None,
                ..
            }
        ));
        std::fs::write(&path, b"hello").unwrap();
        assert!(Container::open(&path)
            .unwrap_err()
            .to_string()
            .contains("(it looks like text (a dump is binary))"));
        assert!(looks_like_joblib(&[0x78, 0x9c]));
        assert!(looks_like_joblib(b"ZF0x1a3     "));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A file with this exact header (checksum made right) and `body` after it: what a hostile
    /// writer can make.
    fn forged(dir: &Path, sections: &[Section], body_len: usize) -> PathBuf {
        let header = encode_header(0, sections);
        let mut bytes = MAGIC.to_vec();
        bytes.push(VERSION);
        bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&xxh3_64(&header).to_le_bytes());
        bytes.resize(bytes.len().next_multiple_of(64) + body_len, 7);
        let path = dir.join(format!("forged-{}.fj", xxh3_64(&bytes)));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn section(kind: SectionKind, codec: Codec, offset: u64, blocks: &[(u64, u64)]) -> Section {
        Section {
            kind,
            codec,
            raw_len: blocks.iter().map(|b| b.0).fold(0u64, u64::wrapping_add),
            offset,
            blocks: blocks
                .iter()
                .map(|&(raw_len, stored_len)| Block {
                    raw_len,
                    stored_len,
                    checksum: 0,
                })
                .collect(),
        }
    }

    fn damaged_header(path: &Path) -> String {
        match Container::open(path) {
            Err(CodecError::DamagedHeader { reason, .. }) => reason,
            other => panic!("expected a damaged header, got {other:?}"),
        }
    }

    #[test]
    fn hostile_headers_are_refused_before_anything_is_sized_from_them() {
        let dir = temp_dir();
        let pickle = section(SectionKind::Pickle, Codec::Raw, 128, &[(4, 4)]);
        // A raw section that declares more than it stores: a mapping would reach past the file.
        let longer = section(SectionKind::Buffer, Codec::Raw, 192, &[(1 << 20, 64)]);
        let path = forged(&dir, &[pickle.clone(), longer], 256);
        assert!(damaged_header(&path).contains("claims"));
        // 1 TiB from a few bytes of zstd: more than any codec can expand to.
        let tebibyte = section(SectionKind::Buffer, Codec::Zstd(0), 192, &[(1 << 40, 16)]);
        assert!(damaged_header(&forged(&dir, &[pickle.clone(), tebibyte], 64)).contains("claims"));
        let blocks = vec![(BLOCK_SIZE as u64, 16); 64];
        let ratio = section(SectionKind::Buffer, Codec::Lz4, 192, &blocks);
        assert!(damaged_header(&forged(&dir, &[pickle.clone(), ratio], 2048)).contains("claims"));
        // An offset that wraps around 2^64 with its length.
        let wrapping = section(SectionKind::Buffer, Codec::Raw, u64::MAX - 63, &[(64, 64)]);
        damaged_header(&forged(&dir, &[pickle.clone(), wrapping], 256));
        // A gap: a section far from where the one before it ends (512 MiB of unchecked bytes
        // that a reader of a stream would copy).
        let far = section(SectionKind::Buffer, Codec::Raw, 512 << 20, &[(64, 64)]);
        let path = forged(&dir, &[pickle.clone(), far], 256);
        assert!(damaged_header(&path).contains("not where the one before it ends"));
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            extent(&bytes, &path).is_err(),
            "refused from the header alone"
        );
        // Block lengths whose sum overflows.
        let mut overflow = section(SectionKind::Buffer, Codec::Raw, 192, &[(8, 8), (8, 8)]);
        overflow.blocks[1].stored_len = u64::MAX;
        overflow.blocks[1].raw_len = u64::MAX;
        damaged_header(&forged(&dir, &[pickle.clone(), overflow], 64));
        // Sections inside the header, or unaligned.
        let inside = section(SectionKind::Buffer, Codec::Raw, 8, &[(4, 4)]);
        damaged_header(&forged(&dir, &[pickle.clone(), inside], 64));
        // No pickle section, two of them, or a pickle that is not first.
        let buffer = section(SectionKind::Buffer, Codec::Raw, 192, &[(4, 4)]);
        assert!(
            damaged_header(&forged(&dir, std::slice::from_ref(&buffer), 64)).contains("pickle")
        );
        let second = section(SectionKind::Pickle, Codec::Raw, 192, &[(4, 4)]);
        damaged_header(&forged(&dir, &[pickle.clone(), second], 64));
        damaged_header(&forged(&dir, &[buffer, pickle], 128));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_extent_of_a_streamed_container_is_its_file_size() {
        let dir = temp_dir();
        let path = dir.join("streamed.fj");
        for codec in [Codec::Raw, Codec::Zstd(3)] {
            let data: Vec<u8> = (0..100_000).map(|i| (i % 251) as u8).collect();
            let size = write(&path, b"pickle", &[&data, b"x"], codec).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(size, bytes.len() as u64);
            // Asked with a growing prefix, as a reader of a stream asks.
            let mut have = 0u64;
            let total = loop {
                match extent(&bytes[..have as usize], &path).unwrap() {
                    Extent::Needs(more) => {
                        assert!(more > have);
                        have = more;
                    }
                    Extent::Total(total) => break total,
                }
            };
            assert_eq!(total, size);
            // Any prefix that holds the header gives the same answer.
            assert_eq!(extent(&bytes, &path).unwrap(), Extent::Total(size));
        }
        assert!(matches!(
            extent(b"\x80\x04not a dump at all", &path),
            Err(CodecError::NotAContainer { .. })
        ));
        assert!(matches!(extent(b"FJD", &path), Ok(Extent::Needs(16))));
        assert!(matches!(
            extent(b"FJDUMP\0\x01", &path),
            Ok(Extent::Needs(16))
        ));
        assert!(matches!(
            extent(b"XJD", &path),
            Err(CodecError::NotAContainer { .. })
        ));
        // A declared header longer than any real one is refused before it is read.
        let mut huge = MAGIC.to_vec();
        huge.push(VERSION);
        huge.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            extent(&huge, &path),
            Err(CodecError::DamagedHeader { .. })
        ));
        // A damaged header is damage, whatever follows.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[PREAMBLE + 2] ^= 1;
        assert!(matches!(
            extent(&bytes, &path),
            Err(CodecError::DamagedHeader { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_header_length_near_u64_max_is_damage_not_a_panic() {
        let dir = temp_dir();
        for declared in [u64::MAX, u64::MAX - 7, 1 << 40] {
            let mut bytes = MAGIC.to_vec();
            bytes.push(VERSION);
            bytes.extend_from_slice(&declared.to_le_bytes());
            bytes.extend_from_slice(&[0u8; 100]);
            let path = dir.join("long-header.fj");
            std::fs::write(&path, &bytes).unwrap();
            damaged_header(&path);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn real_codecs_stay_within_the_ratio_limits() {
        for codec in [
            Codec::Zstd(19),
            Codec::Zstd(1),
            Codec::ZstdDecimal(1),
            Codec::Lz4,
            Codec::Zlib(9),
            Codec::Gzip(9),
            Codec::Bz2(9),
            Codec::Xz(9),
        ] {
            let zeros = vec![0u8; 2 * BLOCK_SIZE + 17];
            for chunk in zeros.chunks(BLOCK_SIZE) {
                let (block, _) = encode_block(chunk, codec).unwrap();
                assert!(
                    block.raw_len <= max_raw_len(codec, block.stored_len),
                    "{codec:?}"
                );
            }
        }
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let dir = temp_dir();
        let path = dir.join("missing-dir").join("x.fj");
        assert!(write(&path, b"", &[], Codec::Raw).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
