//! The audit trail under a flood: one caller, with a valid key, floods refused token
//! reads while it reads its users' tokens, against a small audit queue (and a flow-log
//! queue small enough to drop). Every read answered 200 is in `GET /v1/audit`, counted
//! once; every refusal too; a read the trail could not take is answered 503
//! `audit_unavailable`, never served unrecorded. One caller's flood never holds up
//! another caller's reads: each caller has its share of the queue, and a probe of
//! random user ids is folded into one counted record.

on_every_backend!(
    an_audit_flood_leaves_every_served_read_in_the_audit_trail,
    one_callers_probe_of_random_users_never_holds_up_another_callers_reads,
);

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{API_KEY, Backend, CuttableProxy, FakeProvider, TestApp};

const USERS: [&str; 3] = ["ada", "bob", "cy"];
const ROUNDS: usize = 3;
/// Reads sent at once per round: a third served, two thirds refused.
const READS: usize = 150;

/// The audit items of `query` (newest first, one page of 500).
async fn audit(app: &TestApp, query: &str) -> Vec<Value> {
    let response = app.api_get(&format!("/v1/audit?{query}&limit=500")).await;
    let status = response.status();
    let body: Value = response.json().await.expect("json");
    assert_eq!(status, StatusCode::OK, "{body}");
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
            // A round's reads open more connections than one client may hold idle (128):
            // the cap would close a fresh one before its request arrived.
            ("AXNT_MAX_CONNECTIONS_PER_CLIENT", "1000"),
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

/// The store stops taking writes: moto cut away (aws), or another connection holding
/// SQLite's write lock (embedded; writes wait, within the busy timeout).
enum Stall<'a> {
    Cut(&'a CuttableProxy),
    Locked {
        release: std::sync::mpsc::Sender<()>,
        holder: std::thread::JoinHandle<()>,
    },
}

impl Stall<'_> {
    fn sqlite(app: &TestApp) -> Self {
        let path = app.data_dir.path().join("axnt-oauth.db");
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let db = rusqlite::Connection::open(path).expect("open the database");
            db.execute_batch("BEGIN IMMEDIATE")
                .expect("take the write lock");
            held_tx.send(()).expect("held");
            // At most four seconds: within the five-second busy timeout.
            let _ = released.recv_timeout(Duration::from_secs(4));
            db.execute_batch("COMMIT").expect("release it");
        });
        held_rx.recv().expect("the lock is held");
        Self::Locked { release, holder }
    }

    fn release(self) {
        match self {
            Self::Cut(proxy) => proxy.restore(),
            Self::Locked { release, holder } => {
                let _ = release.send(());
                holder.join().expect("the lock holder");
            }
        }
    }
}

/// A key that may read logs but not tokens: each token read it sends is refused (403
/// `caller_not_allowed`) and audited.
const PROBER: &str = "prober-key-0123456789abcdef";
const READ_USERS: [&str; 3] = ["ann", "ben", "cat"];

/// One key probes random user ids while the store is stalled and another reads its
/// users' tokens. Each caller holds at most a quarter of the queue (10 of 40 here), and
/// past its first 5 refusals in a window the prober's are folded into one record: the
/// reader's reads are all served and all audited (with nothing written during the
/// stall, a read that had to wait for room would get 503), and the prober's refusals
/// are all counted, in a few items naming no user past the first.
async fn one_callers_probe_of_random_users_never_holds_up_another_callers_reads(backend: Backend) {
    let provider = FakeProvider::start().await;
    let settings = [
        ("AXNT_AUDIT_WINDOW_SECS", "1"),
        ("AXNT_AUDIT_BUFFER", "40"),
        ("AXNT_AUDIT_WAIT_MS", "300"),
        ("AXNT_TOKEN_CACHE_SECS", "60"),
    ];
    let prober = json!({"name": "prober", "key": PROBER, "operations": ["read_logs"]});
    let (app, proxy) = match backend {
        Backend::Embedded => {
            let keys = json!([API_KEY, prober]).to_string();
            let mut env = settings.to_vec();
            env.push(("AXNT_API_KEYS", &keys));
            (TestApp::on(backend, &provider, &env).await, None)
        }
        Backend::Aws => {
            let proxy = CuttableProxy::start(&crate::support::aws::moto_endpoint()).await;
            let first = TestApp::aws_behind(&proxy, &provider, &settings).await;
            // Besides the secret's key.
            let keys = json!([prober]).to_string();
            let app = first.sibling_with(&[("AXNT_API_KEYS", &keys)]).await;
            first.stop().await;
            (app, Some(proxy))
        }
    };
    let mut served: HashMap<&str, u64> = HashMap::new();
    for user in READ_USERS {
        assert!(app.connect(user).await.status().is_success());
        // Warms the token cache: reads go on while the store is stalled.
        assert_eq!(app.token(user).await.status(), StatusCode::OK);
        *served.entry(user).or_default() += 1;
    }
    // Written (a listing waits for the records queued before it), and their windows
    // passed: the reads below each need a new record.
    assert_eq!(counted(&audit(&app, "userId=ann").await, &["served"]), 1);
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let stall = match &proxy {
        Some(proxy) => {
            proxy.cut();
            Stall::Cut(proxy)
        }
        None => Stall::sqlite(&app),
    };
    let probe = |from: usize, to: usize| {
        let (http, base) = (app.http.clone(), app.base.clone());
        async move {
            let mut answers = Vec::new();
            for chunk in (from..to).collect::<Vec<_>>().chunks(15) {
                let mut batch = tokio::task::JoinSet::new();
                for i in chunk {
                    let request = http
                        .get(format!("{base}/v1/users/probe-{i}/tokens/google"))
                        .bearer_auth(PROBER);
                    batch.spawn(async move {
                        let response = request.send().await.expect("probe");
                        let status = response.status();
                        let body: Value = response.json().await.unwrap_or_default();
                        (
                            status,
                            body["code"].as_str().unwrap_or_default().to_string(),
                        )
                    });
                }
                while let Some(answer) = batch.join_next().await {
                    answers.push(answer.expect("probe task"));
                }
            }
            answers
        }
    };
    // The probe first fills what it may of the queue...
    let mut probes = probe(0, 60).await;
    // ...then goes on while the other caller reads.
    let more = tokio::spawn(probe(60, 150));
    for round in 0..5 {
        for user in READ_USERS {
            let response = app.token(user).await;
            let status = response.status();
            let body: Value = response.json().await.unwrap_or_default();
            assert_eq!(
                status,
                StatusCode::OK,
                "round {round}: {user}'s read is held up by another caller's probe: {body}"
            );
            *served.entry(user).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    probes.extend(more.await.expect("the probe"));
    stall.release();

    let mut refused = 0u64;
    for (status, code) in &probes {
        match (*status, code.as_str()) {
            (StatusCode::FORBIDDEN, "caller_not_allowed") => refused += 1,
            // The prober past its own share: never served, and not a refusal recorded.
            (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable") => {}
            other => panic!("a probe answered {other:?}"),
        }
    }
    assert!(
        refused >= 100,
        "most probes are refused and recorded: {refused}"
    );

    // Written once the store is back (within a few retries' backoff).
    let mut probed = Vec::new();
    for _ in 0..100 {
        probed = audit(&app, "caller=prober").await;
        let mut all_in = counted(&probed, &["refused"]) == refused;
        for user in READ_USERS {
            let items = audit(&app, &format!("userId={user}")).await;
            all_in &= counted(&items, &["served", "refreshed"]) == served[user];
        }
        if all_in {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for user in READ_USERS {
        let items = audit(&app, &format!("userId={user}")).await;
        assert_eq!(
            counted(&items, &["served", "refreshed"]),
            served[user],
            "every read of {user}'s token answered 200 is audited once: {items:?}"
        );
    }
    assert_eq!(
        counted(&probed, &["refused"]),
        refused,
        "every refusal answered is counted: {probed:?}"
    );
    let folded: Vec<&Value> = probed.iter().filter(|i| i["folded"] == true).collect();
    assert!(
        !folded.is_empty()
            && folded
                .iter()
                .all(|i| i["userId"].is_null() && i["provider"].is_null()),
        "refusals past the first in a window are folded, naming no user: {folded:?}"
    );
    assert!(
        folded.iter().any(|i| i["count"].as_u64() > Some(1)),
        "a folded item counts many refusals: {folded:?}"
    );
    assert!(
        probed.len() <= 20,
        "{refused} probes of distinct users cost a few items, not one each: {}",
        probed.len()
    );
    assert!(
        probed
            .iter()
            .filter(|i| i["folded"] == false)
            .all(|i| i["userId"]
                .as_str()
                .is_some_and(|u| u.starts_with("probe-"))),
        "the first refusals of a window name their user: {probed:?}"
    );
}

/// A key limited to GitHub: its Google token reads are refused before any store call.
const GITHUB_ONLY: &str = "github-only-key-0123456789";

/// DynamoDB away: reads go on from the token cache while the audit queue holds their
/// records. A caller holds at most a quarter of the queue (2 of 8 here): once its share
/// is full its next read that needs a record waits `AXNT_AUDIT_WAIT_MS`, then is
/// answered 503 `audit_unavailable` — a cached token included, never served unrecorded
/// — while slots are still free for others. A limited key's refusals past its first in
/// the window fold into one record, so its probe takes no more. When DynamoDB is back
/// every record taken is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_holds_the_audit_and_at_its_share_reads_wait_then_answer_503() {
    let provider = FakeProvider::start().await;
    let proxy = crate::support::CuttableProxy::start(&crate::support::aws::moto_endpoint()).await;
    let keys = format!(r#"[{{"name":"github-ops","key":"{GITHUB_ONLY}","providers":["github"]}}]"#);
    let settings = [
        // Windows of 2 s: the six refusals below fall in one even on a loaded machine.
        ("AXNT_AUDIT_WINDOW_SECS", "2"),
        ("AXNT_AUDIT_BUFFER", "8"),
        ("AXNT_AUDIT_WAIT_MS", "300"),
        ("AXNT_TOKEN_CACHE_SECS", "60"),
        // One write in flight: the records after it wait (and merge) in the queue.
        ("AXNT_FLOW_LOG_WRITE_CONCURRENCY", "1"),
    ];
    let first = TestApp::aws_behind(&proxy, &provider, &settings).await;
    // Besides the secret's keys (aws mode's own environment leaves AXNT_API_KEYS out).
    let app = first.sibling_with(&[("AXNT_API_KEYS", &keys)]).await;
    first.stop().await;
    for user in ["kim", "lee", "mo"] {
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
    // The warming reads' windows pass: each read below needs a record of its own.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    // The limited key's first refusal takes a slot, its second the folded record's;
    // the rest join that record: none of them waits.
    for i in 1..=6 {
        let refused = limited(&format!("r{i}")).await.expect("read");
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    }
    // The other key's share: two records, served from the cache...
    assert_eq!(app.token("kim").await.status(), StatusCode::OK);
    assert_eq!(app.token("lee").await.status(), StatusCode::OK);
    // ...then a read that needs a third waits 300 ms for room, then 503: its cached
    // token is not handed out unrecorded, though four slots of the queue are free.
    let started = std::time::Instant::now();
    let full = app.token("mo").await;
    assert!(started.elapsed() >= Duration::from_millis(300), "it waited");
    crate::support::assert_problem(full, 503, "audit_unavailable").await;
    // In its window, kim's read is counted in memory: no slot needed.
    assert_eq!(app.token("kim").await.status(), StatusCode::OK);
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
    let (mut kim, mut lee, mut mo) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..150 {
        kim = audit(&app, "userId=kim").await;
        lee = audit(&app, "userId=lee").await;
        mo = audit(&app, "userId=mo").await;
        if served(&kim) >= 3 && served(&lee) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        served(&kim),
        3,
        "every read of kim's answered 200 is audited: {kim:?}"
    );
    assert_eq!(served(&lee), 2, "{lee:?}");
    assert_eq!(served(&mo), 1, "mo's refused read is not: {mo:?}");
    let refusals = audit(&app, "caller=github-ops").await;
    assert_eq!(counted(&refusals, &["refused"]), 6, "{refusals:?}");
    let named: Vec<&str> = refusals
        .iter()
        .filter_map(|i| i["userId"].as_str())
        .collect();
    assert_eq!(
        named,
        ["r1"],
        "the first refusal names its user: {refusals:?}"
    );
    let folded: Vec<&Value> = refusals.iter().filter(|i| i["folded"] == true).collect();
    assert_eq!(folded.len(), 1, "{refusals:?}");
    assert_eq!(folded[0]["count"], 5);
    assert_eq!(folded[0]["reason"], "caller_not_allowed");
    assert!(folded[0]["provider"].is_null());
    // Listed under its caller only, not under any user.
    assert!(audit(&app, "userId=r2").await.is_empty());
}
