//! Durable store benchmarks (being written).
fn main() {}
