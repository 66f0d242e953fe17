//! Entry points that take untrusted bytes end to end, shared by both fuzzers: the libFuzzer
//! targets in `fuzz/` (coverage-guided, nightly toolchain) and the stable mutation harness that
//! `cargo test` runs (`tests/fuzz_parsers.rs`). Each returns for every input: an error value is
//! the expected answer to garbage; a panic, an abort, a hang or an out-of-bounds access is a bug.

use std::fs::File;
use std::io::{Seek, Write};
use std::path::Path;

use crate::codec::Container;
use crate::envelope;
use crate::protocol::Connection;

/// The bytes of a container file as `load` reads them: its streamed extent (checked against
/// opening it), open, then read every section. The
/// input's first byte is a switch: odd, the file (the rest of the input) has its checksums made
/// right first ([`crate::codec::reseal`]), as a hostile writer would, so that the checks behind
/// them are fuzzed too.
pub fn container(input: &[u8]) {
    let Some((switch, file)) = input.split_first() else {
        return;
    };
    let mut bytes = file.to_vec();
    if switch & 1 == 1 {
        crate::codec::reseal(&mut bytes);
    }
    // As a stream reader asks: the extent agrees with what opening the whole file finds.
    let streamed = crate::codec::extent(&bytes, Path::new("<fuzz>"));
    if let Ok(crate::codec::Extent::Needs(more)) = streamed {
        assert!(more > bytes.len() as u64, "asked for bytes it already has");
    }
    let Ok(mut file) = shared_file_with(&bytes) else {
        return;
    };
    if file.rewind().is_err() {
        return;
    }
    let opened = Container::from_file(file, Path::new("<fuzz>"));
    if let Ok(crate::codec::Extent::Total(total)) = streamed {
        if total <= bytes.len() as u64 {
            assert!(
                opened.is_ok(),
                "a complete streamed container does not open"
            );
        }
    }
    let Ok(container) = opened else {
        return;
    };
    for (index, section) in container.sections().iter().enumerate() {
        // The header was checked against the file: a section cannot claim more than its
        // stored bytes can expand to, so this allocation is bounded by the input.
        let Ok(len) = usize::try_from(section.raw_len) else {
            continue;
        };
        let mut out = Vec::new();
        if out.try_reserve_exact(len).is_err() {
            continue;
        }
        out.resize(len, 0);
        let _ = container.read_into(index, &mut out);
    }
}

/// The bytes a worker sends its parent: read frames until the end of the stream or an error.
pub fn frames(bytes: &[u8]) {
    // What fits in a socket buffer at once, so that writing never blocks.
    let bytes = &bytes[..bytes.len().min(64 << 10)];
    let Ok((writer, reader)) = Connection::pair() else {
        return;
    };
    let mut stream = std::os::unix::net::UnixStream::from(writer.into_owned_fd());
    if stream.write_all(bytes).is_err() {
        return;
    }
    drop(stream);
    while let Ok(Some(_)) = reader.recv() {}
}

/// The envelope of a job or a reply, checked against segments of a few sizes.
pub fn envelope(bytes: &[u8]) {
    if let Ok(envelope) = envelope::decode(bytes) {
        let _ = envelope::check_bounds(&envelope.buffers, &[0, 64, 4096, usize::MAX]);
    }
}

fn shared_file_with(bytes: &[u8]) -> std::io::Result<File> {
    let mut file = crate::platform::shared_memory_file(c"ferrojob-fuzz")?;
    file.write_all(bytes)?;
    Ok(file)
}
