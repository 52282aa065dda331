//! Replays every committed input (the seed corpora and any minimized crash kept in
//! `regressions/`) through the fuzz targets' checks: a plain `cargo test`, stable, no libFuzzer.

use std::path::Path;

/// A fuzz target's body.
type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 6] = [
    ("device_decoder", pushgate_fuzz::device_decoder),
    ("provider_decoder", pushgate_fuzz::provider_decoder),
    ("device_session", pushgate_fuzz::device_session),
    ("provider_session", pushgate_fuzz::provider_session),
    ("proxy_header", pushgate_fuzz::proxy_header),
    ("cluster_wire", pushgate_fuzz::cluster_wire),
];

fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .map(|p| (p.display().to_string(), std::fs::read(&p).expect("readable input")))
        .collect();
    out.sort();
    out
}

#[test]
fn every_target_has_seeds_and_they_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, run) in TARGETS {
        let seeds = inputs(&root.join("corpus").join(name));
        assert!(seeds.len() >= 3, "{name}: only {} seeds; run fuzz/seed.py", seeds.len());
        for (path, data) in seeds.iter().chain(&inputs(&root.join("regressions").join(name))) {
            eprintln!("{path}");
            run(data);
        }
    }
}

#[test]
fn provider_seed_logs_in() {
    // The seed carries protocol.md's AUTH proof for its nonce, so fuzzing starts from a
    // logged-in session: check that its first two frames really log in.
    use pushgate::proto::frame::split_frame;
    use pushgate::proto::session::{on_provider_frame, Apps, ProviderState};
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data =
        std::fs::read(root.join("corpus/provider_session/doc-client-frames")).expect("seed from seed.py");
    let (nonce, mut buf) = data.split_first_chunk::<32>().expect("nonce");
    let mut apps = Apps::new();
    apps.add(pushgate_fuzz::APP_ID, pushgate_fuzz::APP_SECRET);
    let mut state = ProviderState::AwaitHello;
    for _ in 0..2 {
        let (raw, n) = split_frame(buf, usize::MAX).expect("framing").expect("a frame");
        on_provider_frame(&mut state, raw, &apps, *nonce).expect("login step");
        buf = &buf[n..];
    }
    assert!(matches!(state, ProviderState::Ready { .. }), "{state:?}");
}
