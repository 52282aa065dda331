//! Frames split and decoded with the device port's body limit; valid ones must round-trip.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pushgate_fuzz::device_decoder(data));
