#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| axnt_oauth::fuzz::identifiers(data));
