//! The audit trail under a flood: one caller, with a valid key, floods refused token
//! reads while it reads its users' tokens, against a small audit queue (and a flow-log
//! queue small enough to drop). Every read answered 200 is in `GET /v1/audit`, counted
//! once; every refusal too; a read the trail could not take is answered 503
//! `audit_unavailable`, never served unrecorded.

on_every_backend!(an_audit_flood_leaves_every_served_read_in_the_audit_trail);

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{Backend, FakeProvider, TestApp};

const USERS: [&str; 3] = ["ada", "bob", "cy"];
const ROUNDS: usize = 3;
/// Reads sent at once per round: a third served, two thirds refused.
const READS: usize = 150;

/// The audit items of `query` (newest first, one page of 500).
async fn audit(app: &TestApp, query: &str) -> Vec<Value> {
    let response = app.api_get(&format!("/v1/audit?{query}&limit=500")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    body["items"].as_array().cloned().unwrap_or_default()
}

fn counted(items: &[Value], outcomes: &[&str]) -> u64 {
    items
        .iter()
        .filter(|i| outcomes.iter().any(|o| i["outcome"] == *o))
        .map(|i| i["count"].as_u64().unwrap_or(0))
        .sum()
}

async fn an_audit_flood_leaves_every_served_read_in_the_audit_trail(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(
        backend,
        &provider,
        &[
            ("AXNT_AUDIT_WINDOW_SECS", "1"),
            ("AXNT_AUDIT_BUFFER", "4"),
            // The flow log's own queue still drops when full: the audit must not share it.
            ("AXNT_FLOW_LOG_BUFFER", "2"),
        ],
    )
    .await;
    for user in USERS {
        assert!(app.connect(user).await.status().is_success());
    }

    let mut served: HashMap<String, u64> = HashMap::new();
    let (mut refused, mut unavailable) = (0u64, 0u64);
    for round in 0..ROUNDS {
        let mut reads = tokio::task::JoinSet::new();
        for i in 0..READS {
            let user = if i % 3 == 0 {
                USERS[(i / 3) % USERS.len()].to_string()
            } else {
                format!("ghost-{round}-{i}")
            };
            let (http, url) = (
                app.http.clone(),
                app.url(&format!("/v1/users/{user}/tokens/google")),
            );
            reads.spawn(async move {
                let response = http
                    .get(url)
                    .bearer_auth(crate::support::API_KEY)
                    .send()
                    .await
                    .expect("token read");
                let status = response.status();
                let body: Value = response.json().await.unwrap_or_default();
                (
                    user,
                    status,
                    body["code"].as_str().unwrap_or_default().to_string(),
                )
            });
        }
        while let Some(read) = reads.join_next().await {
            let (user, status, code) = read.expect("read task");
            match (status, code.as_str()) {
                (StatusCode::OK, _) => *served.entry(user).or_default() += 1,
                (StatusCode::NOT_FOUND, "not_connected") => refused += 1,
                (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable") => unavailable += 1,
                other => panic!("{user}: unexpected answer {other:?}"),
            }
        }
        // Past the window: the next round opens new ones.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
    }
    assert!(
        served.values().sum::<u64>() > 0,
        "tokens were served ({unavailable} reads refused by the audit)"
    );

    // Every served read is in the audit, counted exactly once, per user and per caller.
    let mut last = Vec::new();
    for _ in 0..100 {
        let mut all_in = true;
        for user in USERS {
            let items = audit(&app, &format!("userId={user}")).await;
            let want = served.get(user).copied().unwrap_or(0);
            all_in &= counted(&items, &["served", "refreshed"]) == want;
            last = items;
        }
        if all_in {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for user in USERS {
        let items = audit(&app, &format!("userId={user}")).await;
        assert_eq!(
            counted(&items, &["served", "refreshed"]),
            served.get(user).copied().unwrap_or(0),
            "every read of {user}'s token answered 200 is audited once: {last:?}"
        );
    }
    let caller = audit(&app, "userId=ada").await[0]["caller"]
        .as_str()
        .expect("the caller's id")
        .to_string();
    let by_caller = audit(&app, &format!("caller={caller}")).await;
    assert_eq!(
        counted(&by_caller, &["refused"]),
        refused,
        "every refusal answered is audited once"
    );
    assert_eq!(
        counted(&by_caller, &["served", "refreshed"]),
        served.values().sum::<u64>()
    );

    let metrics = app.metrics().await;
    for series in ["axnt_audit_queue_depth", "axnt_audit_queue_oldest_seconds"] {
        assert!(
            metrics.lines().any(|l| l.starts_with(series)),
            "{series} is exported"
        );
    }
    assert!(
        metrics.lines().any(
            |l| l.starts_with("axnt_audit_waits_total{outcome=\"waited\"}") && !l.ends_with(" 0")
        ),
        "reads waited for room in the full queue"
    );
}

/// A key limited to GitHub: its Google token reads are refused before any store call.
const GITHUB_ONLY: &str = "github-only-key-0123456789";

/// DynamoDB away: reads go on from the token cache while the audit queue holds their
/// records; once the queue is full (2 here) a read waits `AXNT_AUDIT_WAIT_MS`, then is
/// answered 503 `audit_unavailable` — a cached token included, never served
/// unrecorded. When DynamoDB is back every record it took is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_holds_the_audit_and_at_its_bound_reads_wait_then_answer_503() {
    let provider = FakeProvider::start().await;
    let proxy = crate::support::CuttableProxy::start(&crate::support::aws::moto_endpoint()).await;
    let keys = format!(r#"[{{"name":"github-ops","key":"{GITHUB_ONLY}","providers":["github"]}}]"#);
    let settings = [
        ("AXNT_AUDIT_WINDOW_SECS", "1"),
        ("AXNT_AUDIT_BUFFER", "2"),
        ("AXNT_AUDIT_WAIT_MS", "300"),
        ("AXNT_TOKEN_CACHE_SECS", "60"),
    ];
    let first = TestApp::aws_behind(&proxy, &provider, &settings).await;
    // Besides the secret's keys (aws mode's own environment leaves AXNT_API_KEYS out).
    let app = first.sibling_with(&[("AXNT_API_KEYS", &keys)]).await;
    first.stop().await;
    for user in ["kim", "lee"] {
        assert!(app.connect(user).await.status().is_success());
        assert_eq!(
            app.token(user).await.status(),
            StatusCode::OK,
            "warms the cache"
        );
    }
    let limited = |user: &str| {
        app.http
            .get(app.url(&format!("/v1/users/{user}/tokens/google")))
            .bearer_auth(GITHUB_ONLY)
            .send()
    };
    // A listing waits for the records queued before it: the queue is empty now.
    assert_eq!(counted(&audit(&app, "userId=lee").await, &["served"]), 1);

    proxy.cut();
    // In its window: counted in memory, served from the cache.
    assert_eq!(app.token("kim").await.status(), StatusCode::OK);
    // Two refusals take the two slots; their writes wait for the store.
    for user in ["r1", "r2"] {
        let refused = limited(user).await.expect("read");
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    }
    // The queue is full: the next record waits 300 ms for room, then 503.
    let started = std::time::Instant::now();
    let full = limited("r3").await.expect("read");
    assert!(started.elapsed() >= Duration::from_millis(300), "it waited");
    crate::support::assert_problem(full, 503, "audit_unavailable").await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // Past its window, kim's read joins the window's record waiting in the queue
    // (identical records merge: no slot needed)...
    assert_eq!(app.token("kim").await.status(), StatusCode::OK);
    // ...but lee's needs a record of its own: its cached token is not handed out
    // unrecorded.
    crate::support::assert_problem(app.token("lee").await, 503, "audit_unavailable").await;
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .expect("healthz")
            .status(),
        StatusCode::OK
    );

    proxy.restore();
    let served = |items: &[Value]| counted(items, &["served", "refreshed"]);
    let (mut kim, mut lee) = (Vec::new(), Vec::new());
    for _ in 0..150 {
        kim = audit(&app, "userId=kim").await;
        lee = audit(&app, "userId=lee").await;
        if served(&kim) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        served(&kim),
        3,
        "every read of kim's answered 200 is audited: {kim:?}"
    );
    assert_eq!(served(&lee), 1, "lee's refused read is not: {lee:?}");
    let refusals = audit(&app, "caller=github-ops").await;
    let users: Vec<&str> = refusals
        .iter()
        .filter_map(|i| i["userId"].as_str())
        .collect();
    assert_eq!(counted(&refusals, &["refused"]), 2, "{refusals:?}");
    assert!(users.contains(&"r1") && users.contains(&"r2") && !users.contains(&"r3"));
}
