//! `/metrics` as an operator's Prometheus sees it, from the binary (a process of its
//! own, so no other test's counts mix in): every named series present at zero right
//! after start, then the right counts after a connect flow, a refresh, a cached read
//! and a read for a user who never connected.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use url::Url;

use crate::support::{API_KEY, FakeProvider, aws, env_for, env_for_secret, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_axnt-oauth");

#[tokio::test]
async fn embedded_metrics_start_at_zero_and_count_a_flow_and_a_refresh() {
    scrape_through_a_flow(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_metrics_start_at_zero_and_count_a_flow_and_a_refresh() {
    scrape_through_a_flow(true).await;
}

/// Label pairs as a test names them.
type Labels<'a> = Vec<(&'a str, &'a str)>;

/// One sample: the series name and its labels, as written.
type Series = (String, Vec<(String, String)>);

/// Parses the Prometheus text format's sample lines (no label value here holds `",`).
fn parse(text: &str) -> HashMap<Series, f64> {
    let mut samples = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut labels: Vec<(String, String)> = labels
            .split("\",")
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').expect("label pair");
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        labels.sort();
        samples.insert(
            (name.to_string(), labels),
            value.parse::<f64>().expect("value"),
        );
    }
    samples
}

fn value(samples: &HashMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    labels.sort();
    samples.get(&(name.to_string(), labels)).copied()
}

struct Server {
    child: std::process::Child,
    base: String,
    admin: String,
    http: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    async fn text(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("text")
    }

    async fn scrape(&self) -> HashMap<Series, f64> {
        parse(&self.text().await)
    }

    async fn token(&self, user: &str) -> StatusCode {
        self.http
            .get(format!("{}/v1/users/{user}/tokens/google", self.base))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("token")
            .status()
    }
}

async fn scrape_through_a_flow(on_aws: bool) {
    let provider = FakeProvider::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, admin_port) = (free_port(), free_port());
    let mut env = if on_aws {
        let mut env = env_for_secret(&provider, &[]);
        env.extend(aws::aws_env(&provider.client_id(), &provider.client_secret(), API_KEY).await);
        env
    } else {
        env_for(&provider, &[])
    };
    env.retain(|(k, _)| k != "AXNT_LOG");
    let child = Command::new(BIN)
        .arg("serve")
        .current_dir(dir.path())
        .envs(env)
        .env("AXNT_LOG", "warn")
        .env("AXNT_DATA_DIR", dir.path().join("data"))
        .env("AXNT_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("AXNT_PUBLIC_BASE_URL", format!("http://127.0.0.1:{port}"))
        .env("AXNT_ADMIN_LISTEN_ADDR", format!("127.0.0.1:{admin_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        admin: format!("http://127.0.0.1:{admin_port}"),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let start = loop {
        match server
            .http
            .get(format!("{}/metrics", server.admin))
            .send()
            .await
        {
            Ok(r) if r.status() == StatusCode::OK => break parse(&r.text().await.expect("text")),
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => panic!("the server did not come up"),
        }
    };

    // Right after start: every series an alert or a dashboard names, at zero.
    let g = [("provider", "google")];
    let token_route = [
        ("method", "GET"),
        ("route", "/v1/users/{user_id}/tokens/{provider}"),
    ];
    let mut at_zero: Vec<(&str, Labels)> = vec![
        ("axnt_flows_started_total", g.to_vec()),
        ("axnt_flows_completed_total", g.to_vec()),
        (
            "axnt_flows_failed_total",
            vec![g[0], ("reason", "access_denied")],
        ),
        (
            "axnt_flows_failed_total",
            vec![g[0], ("reason", "invalid_state")],
        ),
        ("axnt_token_refreshes_total", vec![g[0], ("outcome", "ok")]),
        (
            "axnt_token_refreshes_total",
            vec![g[0], ("outcome", "invalid_grant")],
        ),
        (
            "axnt_token_refresh_suppressed_total",
            vec![g[0], ("reason", "circuit_open")],
        ),
        ("axnt_token_cache_total", vec![("outcome", "hit")]),
        (
            "axnt_data_key_cache_total",
            vec![("operation", "open"), ("outcome", "miss")],
        ),
        ("axnt_flow_log_queue_depth", vec![]),
        ("axnt_flow_log_dropped_total", vec![]),
        ("axnt_flow_log_write_failures_total", vec![]),
        ("axnt_audit_queue_depth", vec![]),
        ("axnt_audit_queue_oldest_seconds", vec![]),
        ("axnt_audit_waits_total", vec![("outcome", "timed_out")]),
        ("axnt_audit_write_failures_total", vec![]),
        ("axnt_audit_lost_total", vec![]),
        ("axnt_audit_folded_total", vec![]),
        ("axnt_confirmations_total", vec![("outcome", "confirmed")]),
        (
            "axnt_http_requests_total",
            [&token_route[..], &[("status", "500")]].concat(),
        ),
        (
            "axnt_http_requests_total",
            [&token_route[..], &[("status", "503")]].concat(),
        ),
        (
            "axnt_http_request_duration_seconds_count",
            token_route.to_vec(),
        ),
        (
            "axnt_http_connections_closed_total",
            vec![("listener", "public"), ("reason", "first_request_timeout")],
        ),
        (
            "axnt_http_connections_closed_total",
            vec![("listener", "public"), ("reason", "shed_client_cap")],
        ),
    ];
    for outcome in [
        "cache_hit",
        "store_read",
        "refreshed",
        "not_found",
        "reauthorization_required",
    ] {
        at_zero.push(("axnt_token_reads_total", vec![g[0], ("outcome", outcome)]));
    }
    if on_aws {
        for (service, operation) in [
            ("kms", "Decrypt"),
            ("kms", "GenerateDataKey"),
            ("dynamodb", "GetItem"),
        ] {
            for outcome in ["ok", "throttled", "unavailable", "access_denied"] {
                at_zero.push((
                    "axnt_aws_calls_total",
                    vec![
                        ("service", service),
                        ("operation", operation),
                        ("outcome", outcome),
                    ],
                ));
            }
            at_zero.push((
                "axnt_aws_retries_total",
                vec![("service", service), ("operation", operation)],
            ));
            at_zero.push((
                "axnt_aws_throttles_total",
                vec![("service", service), ("operation", operation)],
            ));
        }
    }
    for (name, labels) in &at_zero {
        // The secret and the readiness probe are read at start: those calls may be counted.
        let v = value(&start, name, labels);
        assert!(v.is_some(), "{name}{labels:?} is present at start");
        if !(name.starts_with("axnt_aws_calls") || name.starts_with("axnt_data_key")) {
            assert_eq!(v, Some(0.0), "{name}{labels:?} is zero at start");
        }
    }
    let backend = if on_aws { "dynamodb" } else { "embedded" };
    for name in ["axnt_store_reads_total", "axnt_store_writes_total"] {
        assert!(
            value(&start, name, &[("backend", backend)]).is_some(),
            "{name} present"
        );
    }
    assert!(
        value(
            &start,
            "axnt_http_connections_open",
            &[("listener", "public")]
        )
        .is_some()
    );

    // A connect flow whose access token lives 2 s: the read after it refreshes.
    provider.set_access_token_ttl(2);
    let session: Value = server
        .http
        .post(format!("{}/v1/connect-sessions", server.base))
        .bearer_auth(API_KEY)
        .json(&json!({"userId": "metrics-user", "provider": "google"}))
        .send()
        .await
        .expect("session")
        .json()
        .await
        .expect("json");
    let started = server
        .http
        .get(session["url"].as_str().expect("url"))
        .send()
        .await
        .expect("start");
    assert_eq!(started.status(), StatusCode::FOUND);
    let cookie = started
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.contains("axnt_flow_"))
        .and_then(|c| c.split(';').next())
        .expect("binding cookie")
        .to_string();
    let to_provider = started.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_string();
    let approved = server
        .http
        .get(&to_provider)
        .send()
        .await
        .expect("authorize");
    let callback =
        Url::parse(approved.headers()["location"].to_str().expect("ascii")).expect("url");
    let back = server
        .http
        .get(callback.as_str())
        .header("cookie", cookie)
        .send()
        .await
        .expect("callback");
    assert_eq!(
        back.status(),
        StatusCode::OK,
        "no return URL: the page with the confirmation code"
    );
    let page = back.text().await.expect("page");
    let code = crate::support::page_confirmation_code(&page).expect("code");
    let confirmed = server
        .http
        .post(format!(
            "{}/v1/connect-sessions/{}/confirm",
            server.base,
            session["flowId"].as_str().expect("flowId")
        ))
        .bearer_auth(API_KEY)
        .json(&json!({"userId": "metrics-user", "confirmationCode": code}))
        .send()
        .await
        .expect("confirm");
    assert_eq!(confirmed.status(), StatusCode::OK);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    provider.set_access_token_ttl(3600);
    assert_eq!(
        server.token("metrics-user").await,
        StatusCode::OK,
        "refreshed"
    );
    assert_eq!(server.token("metrics-user").await, StatusCode::OK, "cached");
    assert_eq!(server.token("never-connected").await, StatusCode::NOT_FOUND);
    assert_eq!(provider.refresh_count(), 1);

    let after = server.scrape().await;
    let token = |status| [&token_route[..], &[("status", status)]].concat();
    let callback = [
        ("method", "GET"),
        ("route", "/oauth/{provider}/callback"),
        ("status", "200"),
    ];
    let read = |outcome| vec![g[0], ("outcome", outcome)];
    let expected: [(&str, Labels, f64); 15] = [
        ("axnt_flows_started_total", g.to_vec(), 1.0),
        ("axnt_flows_completed_total", g.to_vec(), 1.0),
        (
            "axnt_confirmations_total",
            vec![("outcome", "confirmed")],
            1.0,
        ),
        (
            "axnt_held_grants_discarded_total",
            vec![("reason", "wrong_code")],
            0.0,
        ),
        (
            "axnt_flows_failed_total",
            vec![g[0], ("reason", "invalid_state")],
            0.0,
        ),
        (
            "axnt_token_refreshes_total",
            vec![g[0], ("outcome", "ok")],
            1.0,
        ),
        ("axnt_token_reads_total", read("refreshed"), 1.0),
        ("axnt_token_reads_total", read("cache_hit"), 1.0),
        ("axnt_token_reads_total", read("not_found"), 1.0),
        ("axnt_token_reads_total", read("store_read"), 0.0),
        ("axnt_http_requests_total", token("200"), 2.0),
        ("axnt_http_requests_total", token("404"), 1.0),
        ("axnt_http_requests_total", callback.to_vec(), 1.0),
        (
            "axnt_http_request_duration_seconds_count",
            token_route.to_vec(),
            3.0,
        ),
        ("axnt_http_requests_total", token("500"), 0.0),
    ];
    for (name, labels, want) in &expected {
        assert_eq!(value(&after, name, labels), Some(*want), "{name}{labels:?}");
    }
    for name in ["axnt_store_reads_total", "axnt_store_writes_total"] {
        let n = value(&after, name, &[("backend", backend)]).unwrap_or_default();
        assert!(n >= 1.0, "{name}: {n}");
    }
    let seals = value(
        &after,
        "axnt_data_key_cache_total",
        &[("operation", "seal"), ("outcome", "miss")],
    );
    assert!(
        seals.unwrap_or_default() >= 1.0,
        "a data key was generated: {seals:?}"
    );
    if on_aws {
        let generated = value(
            &after,
            "axnt_aws_calls_total",
            &[
                ("service", "kms"),
                ("operation", "GenerateDataKey"),
                ("outcome", "ok"),
            ],
        );
        assert!(generated.unwrap_or_default() >= 1.0, "{generated:?}");
    }
    // Every other route once: each is counted under its own template, none as `other`.
    for (method, path) in [
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/openapi.json"),
        ("GET", "/v1/users/metrics-user/connections"),
        ("GET", "/v1/connections?health=dead"),
        ("GET", "/v1/audit?userId=metrics-user"),
        ("GET", "/v1/events"),
        ("POST", "/risc/google"),
        ("GET", "/v1/users/metrics-user/flow-logs"),
        ("POST", "/v1/connect-sessions/no-such-flow/confirm"),
        ("DELETE", "/v1/users/metrics-user/connections/google"),
        ("POST", "/v1/users/metrics-user/connections/google/import"),
        ("GET", "/v1/whoami"),
    ] {
        let request = match method {
            "POST" => server
                .http
                .post(format!("{}{path}", server.base))
                .json(&json!({})),
            "DELETE" => server.http.delete(format!("{}{path}", server.base)),
            _ => server.http.get(format!("{}{path}", server.base)),
        };
        let answer = request.bearer_auth(API_KEY).send().await.expect("send");
        assert!(
            answer.status().as_u16() < 500,
            "{method} {path}: {}",
            answer.status()
        );
    }
    let every_route = server.scrape().await;
    let others: Vec<_> = every_route
        .keys()
        .filter(|(name, labels)| {
            name == "axnt_http_requests_total"
                && labels
                    .iter()
                    .any(|(k, v)| k == "route" && (v == "other" || v == "unmatched"))
        })
        .collect();
    assert!(
        others.is_empty(),
        "routes missing from the route table: {others:?}"
    );
    // No user id or token anywhere in the scrape.
    let text = server.text().await;
    assert!(!text.contains("metrics-user") && !text.contains("never-connected"));
    let token = provider.latest_access_token().expect("a token was issued");
    assert!(!text.contains(&token), "no access token in the scrape");
}
