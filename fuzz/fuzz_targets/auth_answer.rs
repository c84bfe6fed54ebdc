#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| etls_proxy::fuzzing::auth_answer(data));
