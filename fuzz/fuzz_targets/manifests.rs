//! Random bytes as one manifest file: no panic, and every problem names its object or file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netpol_fuzz::check_manifest(data));
