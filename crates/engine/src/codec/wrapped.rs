//! A container written as a real stream of the codec its file name asks for (`.gz`, `.z`,
//! `.bz2`, `.xz`, `.lzma`, as joblib names its compressed files), so that `gunzip`, `xz -d` and
//! every other tool read the file: the container is written raw, then compressed as a whole.
//!
//! gzip, bz2 and xz allow a stream of several members, each a complete stream of its own: the
//! raw container is cut into `MEMBER_SIZE` pieces compressed on every core and written in order
//! (`parallel::ordered`). zlib (`.z`) and lzma's legacy format (`.lzma`) have no members: they are
//! compressed in one piece, on one core. Readers of the result (ferrojob's `load`, Python's
//! `gzip`/`bz2`/`lzma` modules, the command-line tools) read the members one after another.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use super::{io_error, write, Codec, CodecError};

/// Uncompressed bytes per member: large enough that a member's header and trailer cost
/// nothing, small enough to spread a dump of tens of MB over the cores.
const MEMBER_SIZE: usize = 8 << 20;
/// Members compressed ahead of the writer, per core (memory stays bounded).
const MEMBERS_AHEAD_PER_CORE: usize = 2;

/// The whole-file codecs, as a file name's ending picks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrapper {
    Gzip(u32),
    Zlib(u32),
    Bz2(u32),
    Xz(u32),
    /// lzma's legacy format ("lzma alone"), which joblib's `.lzma` files use.
    Lzma(u32),
}

impl Wrapper {
    /// The wrapper called `name` ("gzip", "zlib", "bz2", "xz", "lzma") at `level` (1-9; xz
    /// and lzma 0-9), or None.
    pub fn from_name(name: &str, level: u32) -> Option<Self> {
        let classic = (1..=9).contains(&level);
        match name {
            "gzip" if classic => Some(Wrapper::Gzip(level)),
            "zlib" if classic => Some(Wrapper::Zlib(level)),
            "bz2" if classic => Some(Wrapper::Bz2(level)),
            "xz" if level <= 9 => Some(Wrapper::Xz(level)),
            "lzma" if level <= 9 => Some(Wrapper::Lzma(level)),
            _ => None,
        }
    }

    /// The member codec, for the wrappers whose streams concatenate.
    fn members(self) -> Option<Codec> {
        match self {
            Wrapper::Gzip(level) => Some(Codec::Gzip(level)),
            Wrapper::Bz2(level) => Some(Codec::Bz2(level)),
            Wrapper::Xz(level) => Some(Codec::Xz(level)),
            Wrapper::Zlib(_) | Wrapper::Lzma(_) => None,
        }
    }
}

/// Write the container of `pickle` and `buffers` to `path` as one stream of `wrapper`.
/// Atomic, as [`write`]. Returns the file's size.
pub fn write_wrapped(
    path: &Path,
    pickle: &[u8],
    buffers: &[&[u8]],
    wrapper: Wrapper,
) -> Result<u64, CodecError> {
    let raw = crate::atomic::temporary_sibling(path, "raw");
    let compressed = crate::atomic::temporary_sibling(path, "tmp");
    let written = write(&raw, pickle, buffers, Codec::Raw).and_then(|_| {
        let size = compress_file(&raw, &compressed, wrapper).map_err(io_error(path))?;
        std::fs::rename(&compressed, path).map_err(io_error(path))?;
        Ok(size)
    });
    let _ = std::fs::remove_file(&raw);
    if written.is_err() {
        let _ = std::fs::remove_file(&compressed);
    }
    written
}

fn compress_file(raw: &Path, out: &Path, wrapper: Wrapper) -> io::Result<u64> {
    let source = File::open(raw)?;
    // SAFETY: the raw file is this function's own temporary, which nothing else writes or
    // truncates while it is mapped (it is removed after).
    let map = unsafe { memmap2::Mmap::map(&source)? };
    let mut file = io::BufWriter::with_capacity(1 << 20, File::create(out)?);
    let mut size = 0u64;
    match wrapper.members() {
        Some(codec) => {
            let pieces: Vec<&[u8]> = map.chunks(MEMBER_SIZE).collect();
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            crate::parallel::ordered(
                &pieces,
                cores * MEMBERS_AHEAD_PER_CORE,
                |piece| codec.compress(piece),
                |_, member| {
                    let member = member?;
                    file.write_all(&member)?;
                    size += member.len() as u64;
                    io::Result::Ok(())
                },
            )?;
        }
        None => {
            let mut counting = Counting {
                inner: &mut file,
                written: 0,
            };
            one_stream(&map, &mut counting, wrapper)?;
            size = counting.written;
        }
    }
    file.flush()?;
    Ok(size)
}

/// `data` as a single stream of `wrapper` (zlib, lzma alone), on one core.
fn one_stream(data: &[u8], out: &mut impl Write, wrapper: Wrapper) -> io::Result<()> {
    match wrapper {
        Wrapper::Zlib(level) => {
            let mut encoder = flate2::write::ZlibEncoder::new(out, flate2::Compression::new(level));
            encoder.write_all(data)?;
            encoder.finish()?;
        }
        Wrapper::Lzma(level) => {
            let options = liblzma::stream::LzmaOptions::new_preset(level)?;
            let stream = liblzma::stream::Stream::new_lzma_encoder(&options)?;
            let mut encoder = liblzma::write::XzEncoder::new_stream(out, stream);
            encoder.write_all(data)?;
            encoder.finish()?;
        }
        Wrapper::Gzip(_) | Wrapper::Bz2(_) | Wrapper::Xz(_) => {
            unreachable!("wrappers with members are compressed member by member")
        }
    }
    Ok(())
}

/// A writer that counts what passes through it.
struct Counting<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn unwrap_all(bytes: &[u8], wrapper: Wrapper) -> Vec<u8> {
        let mut out = Vec::new();
        match wrapper {
            Wrapper::Gzip(_) => flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out),
            Wrapper::Zlib(_) => flate2::read::ZlibDecoder::new(bytes).read_to_end(&mut out),
            Wrapper::Bz2(_) => bzip2::read::MultiBzDecoder::new(bytes).read_to_end(&mut out),
            Wrapper::Xz(_) => {
                liblzma::read::XzDecoder::new_multi_decoder(bytes).read_to_end(&mut out)
            }
            Wrapper::Lzma(_) => {
                let stream = liblzma::stream::Stream::new_lzma_decoder(u64::MAX).unwrap();
                liblzma::read::XzDecoder::new_stream(bytes, stream).read_to_end(&mut out)
            }
        }
        .unwrap();
        out
    }

    #[test]
    fn a_wrapped_container_is_the_raw_container_in_a_real_stream() {
        let dir = std::env::temp_dir().join(format!("ferrojob-wrapped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Over two members' worth, so that gzip, bz2 and xz write several.
        let data: Vec<u8> = (0..(MEMBER_SIZE * 2 + 12345))
            .map(|i| (i % 251) as u8)
            .collect();
        let raw_path = dir.join("raw.fj");
        write(&raw_path, b"pickle", &[&data], Codec::Raw).unwrap();
        let raw = std::fs::read(&raw_path).unwrap();
        for wrapper in [
            Wrapper::Gzip(1),
            Wrapper::Zlib(1),
            Wrapper::Bz2(1),
            Wrapper::Xz(0),
            Wrapper::Lzma(0),
        ] {
            let path = dir.join("wrapped");
            let size = write_wrapped(&path, b"pickle", &[&data], wrapper).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(size, bytes.len() as u64, "{wrapper:?}");
            assert_eq!(unwrap_all(&bytes, wrapper), raw, "{wrapper:?}");
        }
        // Nothing left beside the file: the raw and compressed temporaries are gone.
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["raw.fj", "wrapped"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn wrapper_names_and_levels() {
        assert_eq!(Wrapper::from_name("gzip", 3), Some(Wrapper::Gzip(3)));
        assert_eq!(Wrapper::from_name("xz", 0), Some(Wrapper::Xz(0)));
        assert_eq!(Wrapper::from_name("gzip", 0), None);
        assert_eq!(Wrapper::from_name("zstd", 3), None);
        assert_eq!(Wrapper::from_name("bz2", 10), None);
    }
}
