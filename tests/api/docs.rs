//! The README's curl walk-through, run as written: bash runs the block under "A whole
//! flow with curl" against the npm OpenID provider and the built binary, in an empty
//! directory. Only what builds or installs is replaced (`cargo run` by the binary the
//! suite built, `npm ci` by the install `scripts/test` made), and the two fixed ports
//! by free ones.

use std::process::Command;

use crate::support::free_port;

/// The body of the first `sh` block after the heading that starts with `heading`.
fn sh_block_after(markdown: &str, heading: &str) -> String {
    let from = markdown
        .find(&format!("### {heading}"))
        .unwrap_or_else(|| panic!("no heading {heading:?} in the README"));
    let rest = &markdown[from..];
    let start = rest.find("```sh\n").expect("an sh block after the heading") + "```sh\n".len();
    let end = rest[start..].find("```").expect("the block's end");
    rest[start..start + end].to_string()
}

/// Replaces `from` with `to`, which must occur.
fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the walk-through no longer says {from:?}"
    );
    text.replace(from, to)
}

#[test]
fn the_readme_curl_walk_through_runs_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let block = sh_block_after(&readme, "A whole flow with curl");
    let e2e = std::env::var("TEST_AXNT_NODE_E2E_DIR").unwrap_or_else(|_| {
        panic!("TEST_AXNT_NODE_E2E_DIR is not set: run the suite with scripts/test, which installs the npm provider")
    });
    let (service, provider) = (free_port().to_string(), free_port().to_string());
    let mut script = replaced(&block, "(cd tests/e2e && npm ci) && ", "");
    script = replaced(&script, "cargo run", env!("CARGO_BIN_EXE_axnt-oauth"));
    script = replaced(&script, "8080", &service);
    script = replaced(&script, "9400", &provider);

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("tests")).expect("tests/");
    std::os::unix::fs::symlink(&e2e, dir.path().join("tests/e2e")).expect("tests/e2e");
    let output = Command::new("timeout")
        .arg("120")
        .arg("bash")
        .arg("-c")
        // The service and the provider run in the background: stopped when it ends.
        .arg(format!("trap 'kill $(jobs -p) 2>/dev/null' EXIT\n{script}"))
        .current_dir(dir.path())
        .env("AXNT_LISTEN_ADDR", format!("127.0.0.1:{service}"))
        .env(
            "AXNT_PUBLIC_BASE_URL",
            format!("http://127.0.0.1:{service}"),
        )
        .env("AXNT_ADMIN_LISTEN_ADDR", "127.0.0.1:0")
        .env("AXNT_LOG", "warn")
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let said = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("/connected?status=pending_confirmation&provider=google&flowId="),
        "the browser came back pending confirmation: {said}"
    );
    assert!(
        stdout.contains(r#""userId":"u1""#) && stdout.contains(r#""replaced":false"#),
        "the confirm answered for u1: {said}"
    );
    assert!(
        stdout.contains(r#""accessToken":""#) && stdout.contains(r#""tokenType":"Bearer""#),
        "the token read answered a token: {said}"
    );
    assert!(
        output.status.success(),
        "the walk-through ended well: {said}"
    );
}
