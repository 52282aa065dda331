//! Cluster mode's forwarded push and result batches on arbitrary bytes.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pushgate_fuzz::cluster_wire(data));
