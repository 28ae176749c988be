//! libFuzzer entry point; the target and its properties: `multicloud_fuzz::standalone`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| multicloud_fuzz::standalone::run(data));
