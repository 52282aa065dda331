//! A device's byte stream through the device session rules, state carried frame to frame.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pushgate_fuzz::device_session(data));
