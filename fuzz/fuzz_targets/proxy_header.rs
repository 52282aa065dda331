//! The PROXY protocol v1/v2 header parser on arbitrary bytes.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pushgate_fuzz::proxy_header(data));
