//! The binary as an operator runs it: `serve` on a fresh machine with no settings,
//! `setup` twice, `check`, bad settings, and SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::free_port;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_axnt-oauth");

/// A command in a fresh working directory with none of our variables set.
pub(crate) fn command(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir);
    for (name, _) in std::env::vars() {
        if name.starts_with("AXNT_") || name.starts_with("DYNAMODB_") || name.starts_with("AWS_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Kills the server if the test fails half-way, so no orphan keeps the port.
pub(crate) struct KillOnDrop(pub(crate) std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The drain deadline the SIGTERM case runs with.
const DRAIN_SECS: u64 = 3;

#[tokio::test]
async fn serve_starts_on_a_fresh_machine_with_no_settings_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // Only the ports differ from a bare `cargo run`, so tests can run side by side.
    let mut child = KillOnDrop(
        command(dir.path())
            .env("AXNT_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("AXNT_ADMIN_LISTEN_ADDR", "127.0.0.1:0")
            .env("AXNT_PUBLIC_BASE_URL", format!("http://127.0.0.1:{port}"))
            // Shorter than the header timeout: the stop's deadline, not the stalled
            // client's own timeout, must end the run.
            .env("AXNT_DRAIN_TIMEOUT_SECS", DRAIN_SECS.to_string())
            .env("AXNT_HEADER_READ_TIMEOUT_SECS", "120")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    let stderr = child.0.stderr.take().expect("stderr");
    let lines = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });

    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = reqwest::Client::new();
    let health = loop {
        match client.get(format!("{base}/healthz")).send().await {
            Ok(r) => break r,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("server did not come up: {e}"),
        }
    };
    assert_eq!(health.status().as_u16(), 200);

    let ready = client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 503);
    let body: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(body["checks"]["store"], "ok");
    assert_eq!(body["checks"]["provider"], "not_configured");

    let data = dir.path().join("data");
    for file in ["axnt-oauth.db", "master.key", "state.key", "api-key"] {
        assert!(data.join(file).exists(), "{file} created");
    }
    // The database's WAL and shared-memory files exist while the server runs.
    for file in ["axnt-oauth.db-wal", "axnt-oauth.db-shm"] {
        assert!(data.join(file).exists(), "{file} created");
    }
    #[cfg(unix)]
    for file in [
        "master.key",
        "state.key",
        "api-key",
        "axnt-oauth.db",
        "axnt-oauth.db-wal",
        "axnt-oauth.db-shm",
    ] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.join(file))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{file} is private");
    }
    let key = std::fs::read_to_string(data.join("api-key"))
        .expect("key")
        .trim()
        .to_string();

    // The internal API answers with the generated key; starting a flow names the settings.
    let response = client
        .post(format!("{base}/v1/connect-sessions"))
        .bearer_auth(&key)
        .json(&serde_json::json!({ "userId": "u1", "provider": "google" }))
        .send()
        .await
        .expect("session");
    assert_eq!(response.status().as_u16(), 201);
    let url = response.json::<serde_json::Value>().await.expect("json")["url"]
        .as_str()
        .expect("url")
        .to_string();
    let start = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(url)
        .send()
        .await
        .expect("start");
    assert_eq!(start.status().as_u16(), 503);
    let page = start.text().await.expect("page");
    assert!(page.contains("AXNT_GOOGLE_CLIENT_ID") && page.contains("AXNT_GOOGLE_CLIENT_SECRET"));

    // A client that sent half a request head and stalls: it must not hold the stop
    // past the drain deadline.
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    std::io::Write::write_all(&mut stalled, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .expect("half a head");

    let pid = child.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(DRAIN_SECS + 5),
            "still running {DRAIN_SECS} s after SIGTERM with a half-sent request open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0), "graceful exit on SIGTERM");
    drop(stalled);
    // The flow log reached the database before the process ended.
    let store = axnt_oauth::store::embedded::EmbeddedStore::open(&data.join("axnt-oauth.db"))
        .expect("reopen the database");
    let steps = axnt_oauth::store::FlowLog::list(&store, "u1", 50, None)
        .await
        .expect("flow log");
    assert!(
        steps
            .iter()
            .any(|e| e.step == axnt_oauth::store::FlowStep::SessionCreated),
        "the flow log was written: {steps:?}"
    );
    let log = lines.join().expect("stderr reader").join("\n");
    assert!(log.contains("api-key"), "the log says where the key is");
    assert!(!log.contains(&key), "the log never shows the key");
}

#[test]
fn setup_is_idempotent_and_dry_run_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = command(dir.path())
        .args(["setup", "--dry-run"])
        .output()
        .expect("run");
    assert!(plan.status.success());
    assert!(String::from_utf8_lossy(&plan.stdout).contains("create"));
    assert!(!dir.path().join("data").exists(), "dry run created nothing");

    let first = command(dir.path()).arg("setup").output().expect("run");
    assert!(first.status.success());
    let out = String::from_utf8_lossy(&first.stdout);
    assert!(
        out.contains("created database") && out.contains("created master key"),
        "{out}"
    );

    let master = std::fs::read(dir.path().join("data/master.key")).expect("key");
    let second = command(dir.path()).arg("setup").output().expect("run");
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stdout).contains("already as wanted"));
    assert_eq!(
        std::fs::read(dir.path().join("data/master.key")).expect("key"),
        master,
        "keys kept"
    );
}

#[test]
fn rotate_keys_retires_the_local_master_key_and_reports_progress() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(
        command(dir.path())
            .arg("setup")
            .status()
            .expect("run")
            .success()
    );
    let master = std::fs::read_to_string(dir.path().join("data/master.key")).expect("key");

    let plan = command(dir.path())
        .args(["rotate-keys", "--dry-run", "--new-local-key"])
        .output()
        .expect("run");
    assert!(plan.status.success());
    assert!(
        String::from_utf8_lossy(&plan.stdout)
            .contains("dry run: a new master key would be made and all 0 rows, 0 kept revocations, 0 held grants re-wrapped"),
        "{}",
        String::from_utf8_lossy(&plan.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("data/master.key")).expect("key"),
        master,
        "a dry run makes no key"
    );

    let run = command(dir.path())
        .args(["rotate-keys", "--new-local-key"])
        .output()
        .expect("run");
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{out}");
    assert!(
        out.contains("retired (still readable)")
            && out.contains(
                "verified: 0 rows, 0 kept revocations, 0 held grants; 0 not under the current key"
            ),
        "{out}"
    );
    let retired: Vec<_> = std::fs::read_dir(dir.path().join("data/master-keys"))
        .expect("retired keys")
        .map(|e| std::fs::read_to_string(e.expect("entry").path()).expect("read"))
        .collect();
    assert_eq!(
        retired,
        vec![master.clone()],
        "the old key is kept, as it was"
    );
    assert_ne!(
        std::fs::read_to_string(dir.path().join("data/master.key")).expect("key"),
        master
    );
    assert!(!out.contains(master.trim()), "no key in the output");

    let aws = command(dir.path())
        .args(["rotate-keys", "--new-local-key"])
        .env("AXNT_BACKEND", "aws")
        .env("AWS_REGION", "us-east-1")
        .output()
        .expect("run");
    assert!(!aws.status.success());
    assert!(
        String::from_utf8_lossy(&aws.stderr)
            .contains("--new-local-key is for the embedded backend")
    );
}

#[test]
fn check_passes_when_configured_and_fails_with_a_hint_when_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = command(dir.path()).arg("check").output().expect("run");
    assert!(!bad.status.success());
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(out.contains("FAIL  client credentials"), "{out}");
    assert!(out.contains("hint:"));
    assert!(
        out.contains("ok    tokens table")
            && out.contains("ok    logs table")
            && out.contains("ok    key round trip")
    );
}

#[test]
fn a_present_and_wrong_setting_stops_start_up_with_exit_code_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, value) in [
        ("AXNT_BACKEND", "cloud"),
        ("AXNT_PUBLIC_BASE_URL", "not a url"),
        ("AXNT_LISTEN_ADDR", "nowhere"),
        ("AXNT_GOOGLE_ISSUER", "ftp://x"),
        ("AXNT_ALLOWED_RETURN_URLS", "app.example.com"),
        // Too large: each would overflow where it meets a clock, or is a slip.
        ("AXNT_CONNECT_SESSION_TTL_SECS", "9223372036854775807"),
        ("AXNT_FLOW_STATE_TTL_SECS", "31536000"),
        ("AXNT_CONNECTION_TTL_DAYS", "18446744073709551615"),
        ("AXNT_FLOW_LOG_RETENTION_DAYS", "999999999999"),
        ("AXNT_PROVIDER_TIMEOUT_SECS", "86400"),
        ("AXNT_DATA_KEY_MAX_USES", "18446744073709551615"),
    ] {
        let out = command(dir.path())
            .env(name, value)
            .arg("serve")
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(name), "{name} named in: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one clear line");
    }
    assert!(
        !dir.path().join("data").exists(),
        "nothing created on a bad configuration"
    );
}

#[test]
fn a_malformed_dot_env_stops_start_up_naming_the_line_not_its_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join(".env"),
        "AXNT_LOG=warn\n# a comment\nAXNT_API_KEYS planted-dotenv-secret\n",
    )
    .expect("write .env");
    let out = command(dir.path()).arg("check").output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(".env line 3"), "{err}");
    assert!(!err.contains("planted-dotenv-secret"), "{err}");
    assert!(out.stdout.is_empty(), "nothing ran");
}

#[test]
fn a_dot_env_sets_what_the_environment_does_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join(".env"),
        "AXNT_DATA_DIR=from-dot-env\nAXNT_LOG=warn\n",
    )
    .expect("write .env");
    let plan = command(dir.path())
        .args(["setup", "--dry-run"])
        .output()
        .expect("run");
    assert!(plan.status.success());
    let out = String::from_utf8_lossy(&plan.stdout);
    assert!(out.contains("from-dot-env/axnt-oauth.db"), "{out}");

    let plan = command(dir.path())
        .env("AXNT_DATA_DIR", "from-environment")
        .args(["setup", "--dry-run"])
        .output()
        .expect("run");
    let out = String::from_utf8_lossy(&plan.stdout);
    assert!(
        out.contains("from-environment/axnt-oauth.db"),
        "set variables win: {out}"
    );
}

/// As the container runs it: listening on the wildcard address, stderr a pipe. The
/// `healthcheck` subcommand (the image's HEALTHCHECK) finds the server through the
/// configured listen address, and the log is JSON lines with no colour codes.
#[tokio::test]
async fn healthcheck_and_piped_logs_as_a_container_runs_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let listen = [("AXNT_LISTEN_ADDR", format!("0.0.0.0:{port}"))];
    let healthcheck = || {
        command(dir.path())
            .envs(listen.iter().map(|(k, v)| (*k, v.as_str())))
            .arg("healthcheck")
            .output()
            .expect("run healthcheck")
    };
    let before = healthcheck();
    assert_eq!(before.status.code(), Some(1), "nothing listens yet");
    assert!(String::from_utf8_lossy(&before.stdout).contains("unhealthy"));

    let mut child = KillOnDrop(
        command(dir.path())
            .envs(listen.iter().map(|(k, v)| (*k, v.as_str())))
            .env("AXNT_ADMIN_LISTEN_ADDR", "127.0.0.1:0")
            .env("AXNT_PUBLIC_BASE_URL", format!("http://127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    let stderr = child.0.stderr.take().expect("stderr");
    let lines = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = healthcheck();
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("answered 200"));
            break;
        }
        assert!(Instant::now() < deadline, "healthcheck never passed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A refused call with an id of the caller's: its log line carries the same id.
    let answer = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/v1/users/u1/connections"))
        .header("x-request-id", "req-from-the-caller-1")
        .send()
        .await
        .expect("healthz");
    assert_eq!(answer.status().as_u16(), 401);
    assert_eq!(
        answer.headers().get("x-request-id").map(|v| v.as_bytes()),
        Some(&b"req-from-the-caller-1"[..]),
        "the caller's request id comes back"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = child.0.wait().expect("wait");
    assert!(status.success());
    let log = lines.join().expect("stderr reader");
    assert!(!log.is_empty());
    for line in &log {
        assert!(
            !line.contains('\u{1b}'),
            "no colour codes in a pipe: {line}"
        );
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            value["level"].is_string() && value["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(
        log.iter().any(|l| l.contains("req-from-the-caller-1")),
        "the request's id is in its log line: {log:?}"
    );
    assert_eq!(healthcheck().status.code(), Some(1), "stopped: unhealthy");
}
