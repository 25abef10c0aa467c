//! Start-up while AWS is away: an instance (the binary, or the library's app as tests
//! start it) started while Secrets Manager is unreachable serves `/healthz` (200) and
//! `/readyz` (503, naming what it waits for), and serves everything once it is back,
//! without a restart. A secret that is present and wrong still stops start-up at once.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::cli::{KillOnDrop, command};
use crate::support::aws::moto_endpoint;
use crate::support::free_port;
use crate::support::{API_KEY, CuttableProxy, FakeProvider, TestApp, assert_problem};

/// `/readyz` while waiting: 503, `starting`, naming Secrets Manager.
async fn assert_waiting(http: &reqwest::Client, base: &str) {
    let health = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), StatusCode::OK, "alive while it waits");
    let ready = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await.expect("json");
    assert_eq!(body["status"], "starting", "{body}");
    assert_eq!(body["checks"]["secrets"], "unavailable", "{body}");
    assert!(
        body["waitingFor"]
            .as_str()
            .is_some_and(|w| w.starts_with("secrets manager")),
        "{body}"
    );
}

/// A token read of `user`.
async fn read(http: &reqwest::Client, base: &str, user: &str) -> reqwest::Response {
    http.get(format!("{base}/v1/users/{user}/tokens/google"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("token read")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_started_while_secrets_manager_is_unreachable_comes_up_once_it_is_back() {
    let provider = FakeProvider::start().await;
    let proxy = CuttableProxy::start(&moto_endpoint()).await;
    let first = TestApp::aws_behind(&proxy, &provider, &[]).await;
    assert!(first.connect("kim").await.status().is_success());
    proxy.cut();

    let dir = tempfile::tempdir().expect("tempdir");
    let (port, admin_port) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{port}");
    let mut child = KillOnDrop(
        command(dir.path())
            .envs(
                first
                    .base_env
                    .iter()
                    .filter(|(k, _)| k != "AXNT_LOG")
                    .cloned(),
            )
            .env("AXNT_LOG", "info")
            .env("AXNT_DATA_DIR", dir.path().join("data"))
            .env("AXNT_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("AXNT_ADMIN_LISTEN_ADDR", format!("127.0.0.1:{admin_port}"))
            .env("AXNT_PUBLIC_BASE_URL", &base)
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
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            panic!("the instance exited ({status}) instead of waiting for Secrets Manager");
        }
        match http.get(format!("{base}/healthz")).send().await {
            Ok(r) if r.status() == StatusCode::OK => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => panic!("/healthz never answered while Secrets Manager was unreachable"),
        }
    }
    assert_waiting(&http, &base).await;
    assert_problem(read(&http, &base, "kim").await, 503, "starting").await;
    // A few seconds away: it keeps waiting (and retrying) rather than exit.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        child.0.try_wait().expect("try_wait").is_none(),
        "still running"
    );
    assert_waiting(&http, &base).await;

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz");
        if ready.status() == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never ready after Secrets Manager came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let token = read(&http, &base, "kim").await;
    assert_eq!(
        token.status(),
        StatusCode::OK,
        "serves on the same listener"
    );
    let body: Value = token.json().await.expect("json");
    assert!(body["accessToken"].is_string());

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = child.0.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "graceful exit");
    let log = lines.join().expect("stderr reader");
    // One line per failed attempt (the SDK's own retries inside an attempt are not
    // lines of their own), each naming the dependency and the attempt.
    let attempts: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("start-up is waiting for a dependency"))
        .collect();
    assert!(!attempts.is_empty(), "the wait is logged: {log:?}");
    for (n, line) in attempts.iter().enumerate() {
        assert!(
            line.contains(&format!("\"attempt\":{}", n + 1))
                && line.contains("\"waiting_for\":\"secrets manager\""),
            "{line}"
        );
    }
    let text = log.join("\n");
    assert!(text.contains("secrets manager"), "names what it waits for");
    for secret in [provider.client_secret(), API_KEY.to_string()] {
        assert!(!text.contains(&secret), "no secret in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_instance_started_while_aws_is_cut_waits_and_comes_up() {
    let provider = FakeProvider::start().await;
    let proxy = CuttableProxy::start(&moto_endpoint()).await;
    let first = TestApp::aws_behind(&proxy, &provider, &[]).await;
    assert!(first.connect("kim").await.status().is_success());
    proxy.cut();
    // Spawned as every test spawns an instance: it returns serving probes.
    let second = first.sibling().await;
    assert_waiting(&second.http, &second.base).await;
    assert_problem(second.token("kim").await, 503, "starting").await;
    proxy.restore();
    second.started(Duration::from_secs(30)).await;
    assert_eq!(second.token("kim").await.status(), StatusCode::OK);
    second.stop().await;
    first.stop().await;
}

#[tokio::test]
async fn a_missing_secret_still_stops_start_up_at_once() {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(crate::support::Backend::Aws, &provider, &[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let started = Instant::now();
    let out = command(dir.path())
        .envs(app.base_env.iter().cloned())
        .env("AXNT_GOOGLE_SECRET_ID", "axnt-test/no-such-secret")
        .env("AXNT_DATA_DIR", dir.path().join("data"))
        .env("AXNT_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("AXNT_ADMIN_LISTEN_ADDR", "127.0.0.1:0")
        .env("AXNT_PUBLIC_BASE_URL", format!("http://127.0.0.1:{port}"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "no waiting for a secret that does not exist"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("axnt-test/no-such-secret") && err.contains("not found"),
        "{err}"
    );
}
