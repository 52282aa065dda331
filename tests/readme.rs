//! README's "From your backend" and "From your app" sections, as written:
//! the curl line runs against the real binary and a device gets the push;
//! the Python and Java examples are the ones their clients' suites run and
//! compile (clients/python/tests/test_readme.py, clients/java/ci.sh).
//!
//! Needs `curl` on PATH (.ci/run installs it).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use pushgate::proto::Frame;

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

/// The first fenced block of `lang` after the heading `heading`.
fn block(text: &str, heading: &str, lang: &str) -> String {
    let section = text.split_once(heading).unwrap_or_else(|| panic!("README has no {heading:?}")).1;
    let start =
        section.find(&format!("```{lang}\n")).unwrap_or_else(|| panic!("no {lang} block in {heading:?}"));
    let body = &section[start + lang.len() + 4..];
    body[..body.find("```").expect("block closes")].to_string()
}

#[test]
fn the_curl_line_pushes_to_a_device() {
    let served = spawn_serve(&["--store", "memory"], "warn");
    let http = served.http.expect("the HTTP API is on by default");
    let mut dev = Raw::connect(served.device);
    let (token, _, _) = dev.hello("demo", &secret("readme-curl"), 0);
    let script = block(&readme(), "## From your backend: curl", "sh")
        .replace("http://localhost:7703", &format!("http://{http}"))
        .replace("<token from terminal 1>", &token.to_hex());
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_pushgate")).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("sh")
        .args(["-c", &script])
        .env("PATH", path)
        .env("PUSHGATE_APP_SECRET", &served.secret)
        .output()
        .expect("sh runs (is curl installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{script}\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(r#""status":"delivered""#), "{stdout}");
    let payload = dev.expect(|f| match f {
        Frame::Notify { payload, .. } => payload.to_vec(),
        other => panic!("expected NOTIFY, got {other:?}"),
    });
    assert_eq!(payload, b"hello from curl");
    assert!(matches!(dev.recv(Duration::from_millis(100)), Got::Timeout));
}

#[test]
fn the_python_and_java_examples_are_the_tested_ones() {
    let text = readme();
    let client =
        |path: &str| std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let python = block(&client("clients/python/README.md"), "## Example", "python");
    assert_eq!(block(&text, "## From your backend: Python", "python"), python);
    let java = client("clients/java/examples/PrintNotifications.java");
    assert_eq!(block(&text, "## From your app: Java", "java"), java);
}
