#![no_main]
//! See `ferrojob_engine::fuzzing::envelope`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrojob_engine::fuzzing::envelope(data));
