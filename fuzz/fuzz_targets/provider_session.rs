//! A provider's byte stream (after a 32-byte nonce) through the provider session rules.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pushgate_fuzz::provider_session(data));
