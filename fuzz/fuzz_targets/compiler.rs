//! Random small clusters through the compiler and `eval::allows`, against the oracle.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| netpol_fuzz::check_compiler(data));
