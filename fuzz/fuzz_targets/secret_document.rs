#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| axnt_oauth::fuzz::secret_document(data));
