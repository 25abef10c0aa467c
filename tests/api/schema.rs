//! The OpenAPI document at `/openapi.json`: served to anyone, the same as the checked-in
//! `docs/openapi.json`, and true of the live service, as schemathesis (run by
//! `scripts/test`, `TEST_AXNT_SCHEMATHESIS_BIN`) finds it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{API_KEY, FakeProvider, TestApp};

#[tokio::test]
async fn openapi_json_is_served_without_a_key_as_checked_in() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with(&provider, &[]).await;
    let response = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.headers()["content-type"], "application/json");
    let served = response.text().await.expect("body");
    let checked_in = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json"),
    )
    .expect("docs/openapi.json");
    assert!(served == checked_in, "/openapi.json is docs/openapi.json");
    let document: Value = serde_json::from_str(&served).expect("JSON");
    assert!(
        document["paths"]["/v1/users/{userId}/tokens/{provider}"]["get"]["responses"]["409"]
            .is_object(),
        "the token read documents its 409"
    );
}

/// Examples per operation and phase: enough to reach every documented answer of the
/// routes, few enough to finish in well under a minute on two busy cores.
const MAX_EXAMPLES: &str = "50";
/// A run longer than this fails the test (and the process is killed).
const WALL_CLOCK: Duration = Duration::from_secs(120);

/// schemathesis against the live service: no 5xx, every answer (status, content type,
/// headers, body) one the document describes, keyless calls refused, other methods 405
/// with `Allow`, bad input refused. The document's examples name the
/// user connected here, so its examples reach tokens, connections and flow-log items
/// rather than only 404s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_the_service_true_to_its_document() {
    let bin = std::env::var("TEST_AXNT_SCHEMATHESIS_BIN").unwrap_or_else(|_| {
        panic!(
            "TEST_AXNT_SCHEMATHESIS_BIN is not set: run the suite with scripts/test, or export it \
             as the path of schemathesis (e.g. .venv-moto/bin/schemathesis)"
        )
    });
    let provider = FakeProvider::start().await;
    // The brake on failed authentication off: the run sends keyless requests on purpose.
    // The key names every operation, the import (never implied) included, so every
    // route is reached past its key check.
    let key = serde_json::json!([{
        "name": "schema",
        "key": API_KEY,
        "operations": ["read_tokens", "manage_connections", "read_logs", "consume_events", "import_connections"],
    }])
    .to_string();
    let app = TestApp::spawn_with(
        &provider,
        &[
            ("AXNT_RATE_LIMIT_AUTH_FAILURES_PER_MINUTE", "0"),
            ("AXNT_API_KEYS", &key),
        ],
    )
    .await;
    assert!(app.connect("u-1").await.status().is_success());
    let workdir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let run = tokio::process::Command::new(&bin)
        .arg("run")
        .arg(app.url("/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {API_KEY}")])
        // Every check but one: positive_data_acceptance expects any schema-valid body to
        // be accepted, and a connect session's returnTo is judged against the configured
        // allow-list (and the whole link against a size bound), which no schema can say.
        .args(["--checks", "all"])
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", MAX_EXAMPLES])
        // The same cases every run (no seed, no example database), so a failure
        // reproduces: run the same command line again.
        .arg("--generation-deterministic")
        .args(["--workers", "1"])
        .args(["--request-timeout", "10"])
        .arg("--no-color")
        // Loopback only, and nothing written into the repository (.hypothesis, reports).
        .env("NO_PROXY", "*")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .current_dir(workdir.path())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WALL_CLOCK, run)
        .await
        .unwrap_or_else(|_| panic!("schemathesis ran longer than {WALL_CLOCK:?}"))
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("schemathesis took {:?}:\n{stdout}", started.elapsed());
    assert!(
        output.status.success(),
        "schemathesis found answers the document does not describe \
         (exit {:?}):\n{stdout}\n{stderr}",
        output.status.code()
    );
    assert!(
        stdout.contains("14 selected") && !stdout.contains("Authentication failed"),
        "schemathesis tested every documented operation:\n{stdout}"
    );
}
