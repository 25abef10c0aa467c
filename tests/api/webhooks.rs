//! Webhook delivery to a real receiver on loopback: each event once, signed as
//! Standard Webhooks sign (verified here with the algorithm, not the product's code);
//! a receiver that fails three times gets the event once more, in order; a restart in
//! the middle of retries loses nothing; a delivery in progress at shutdown is finished
//! and not sent again; loopback and private URLs are refused unless allowed.

on_every_backend!(
    each_event_is_delivered_once_signed_as_standard_webhooks_sign,
    a_receiver_failing_three_times_gets_the_event_once_more_in_order,
    a_restart_in_the_middle_of_retries_loses_nothing,
    a_delivery_in_progress_at_shutdown_is_finished_and_not_sent_again,
    every_event_type_reaches_the_receiver_once_signed,
);

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::support::webhook_receiver::{Received, Receiver};
use crate::support::{Backend, FakeProvider, TestApp};

/// 32 bytes, `whsec_` + base64.
const SECRET: &str = "whsec_C2FtcGxlLXdlYmhvb2stc2VjcmV0LTMyLWJ5dGVzIQ==";

/// Settings delivering to `receiver`, polling often.
pub(crate) fn env(receiver: &Receiver) -> Vec<(&'static str, String)> {
    vec![
        ("AXNT_WEBHOOK_URLS", receiver.url.clone()),
        ("AXNT_WEBHOOK_SECRET", SECRET.into()),
        // The receiver is on loopback: allowed for this test only.
        ("AXNT_WEBHOOK_ALLOW_PRIVATE", "true".into()),
        ("AXNT_WEBHOOK_POLL_MS", "100".into()),
        ("AXNT_WEBHOOK_BACKOFF_MS", "200".into()),
        ("AXNT_WEBHOOK_TIMEOUT_MS", "2000".into()),
        ("AXNT_EVENTS_FEED_DELAY_MS", "0".into()),
    ]
}

async fn app_with(
    backend: Backend,
    provider: &FakeProvider,
    env: &[(&'static str, String)],
) -> TestApp {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    TestApp::on(backend, provider, &pairs).await
}

/// Standard Webhooks' verification, written from the specification: HMAC-SHA256 of
/// `{id}.{timestamp}.{body}` under the base64-decoded secret, `v1,` + base64.
fn verify(r: &Received) -> bool {
    let key_bytes = STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .expect("secret");
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key_bytes);
    let mut signed = format!("{}.{}.", r.id, r.timestamp).into_bytes();
    signed.extend_from_slice(&r.body);
    let expected = format!(
        "v1,{}",
        STANDARD.encode(aws_lc_rs::hmac::sign(&key, &signed).as_ref())
    );
    r.signature.split(' ').any(|s| s == expected)
}

fn body(r: &Received) -> Value {
    serde_json::from_slice(&r.body).expect("JSON body")
}

async fn each_event_is_delivered_once_signed_as_standard_webhooks_sign(backend: Backend) {
    let provider = FakeProvider::start().await;
    let receiver = Receiver::start(0).await;
    let app = app_with(backend, &provider, &env(&receiver)).await;
    assert!(app.connect("kim").await.status().is_success());
    let deleted = app.api_delete("/v1/users/kim/connections/google").await;
    assert_eq!(deleted.status(), reqwest::StatusCode::OK);

    let got = receiver.wait_for(2).await;
    // Passes go on: nothing is sent twice.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got_later = receiver.received();
    assert_eq!(got_later.len(), 2, "each event once: {got_later:#?}");
    let feed: Value = app.api_get("/v1/events").await.json().await.expect("feed");
    let items = feed["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    for (r, item) in got.iter().zip(items) {
        assert!(verify(r), "a valid Standard Webhooks signature: {r:?}");
        let now = chrono::Utc::now().timestamp();
        let sent: i64 = r.timestamp.parse().expect("seconds");
        assert!(
            (now - sent).abs() < 60,
            "webhook-timestamp is the send time"
        );
        assert_eq!(r.id, item["id"], "webhook-id is the event's id");
        assert_eq!(
            body(r),
            json!({"type": item["type"], "timestamp": item["timestamp"], "data": item["data"]})
        );
    }
    assert_eq!(body(&got[0])["type"], "connection.created");
    assert_eq!(body(&got[1])["type"], "connection.deleted");
    // A tampered body does not verify.
    let mut forged = got[0].clone();
    forged.body = br#"{"type":"connection.deleted"}"#.to_vec();
    assert!(!verify(&forged));
    // Nothing secret in a delivery.
    let text: String = got
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    for token in provider.issued_refresh_tokens() {
        assert!(!text.contains(&token));
    }
}

async fn a_receiver_failing_three_times_gets_the_event_once_more_in_order(backend: Backend) {
    let provider = FakeProvider::start().await;
    let receiver = Receiver::start(3).await;
    let app = app_with(backend, &provider, &env(&receiver)).await;
    assert!(app.connect("lee").await.status().is_success());
    // The connection's next event waits behind the failing one.
    let deleted = app
        .api_delete("/v1/users/lee/connections/google?revoke=false")
        .await;
    assert_eq!(deleted.status(), reqwest::StatusCode::OK);

    let delivered = receiver.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let all = receiver.received();
    let kinds: Vec<String> = all
        .iter()
        .map(|r| format!("{}:{}", body(r)["type"].as_str().unwrap_or("?"), r.answered))
        .collect();
    assert_eq!(
        kinds,
        [
            "connection.created:500",
            "connection.created:500",
            "connection.created:500",
            "connection.created:204",
            "connection.deleted:204",
        ],
        "three failures, then once more, then the next event: {all:#?}"
    );
    assert_eq!(delivered.len(), 2);
    assert!(
        all.windows(2).take(3).all(|w| w[0].id == w[1].id),
        "the same event retried"
    );
    assert!(all.iter().all(verify));
}

async fn a_restart_in_the_middle_of_retries_loses_nothing(backend: Backend) {
    let provider = FakeProvider::start().await;
    let receiver = Receiver::start(usize::MAX).await;
    let mut settings = env(&receiver);
    settings.push(("AXNT_WEBHOOK_BACKOFF_MS", "100".into()));
    let app = app_with(backend, &provider, &settings).await;
    assert!(app.connect("max").await.status().is_success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while receiver.received().len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(receiver.received().len() >= 2, "retried while failing");
    // The instance stops in the middle of its retries; another starts on the same
    // storage once the receiver is back.
    let next = app.sibling().await;
    app.stop().await;
    receiver.fail_next(0);
    let delivered = receiver.wait_for(1).await;
    assert_eq!(delivered.len(), 1, "{:#?}", receiver.received());
    assert_eq!(body(&delivered[0])["type"], "connection.created");
    assert_eq!(body(&delivered[0])["data"]["userId"], "max");
    assert!(verify(&delivered[0]));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.delivered().len(), 1, "once");
    next.stop().await;
}

/// Shutdown stops the delivery job between events, not in the middle of one: the
/// answer the receiver holds back is awaited, the endpoint's cursor is stored past the
/// event, and the instance that carries on (same storage) does not send it again once
/// the stopped instance's lease has lapsed.
async fn a_delivery_in_progress_at_shutdown_is_finished_and_not_sent_again(backend: Backend) {
    let provider = FakeProvider::start().await;
    let receiver = Receiver::start(0).await;
    receiver.hold_answers(Duration::from_secs(3));
    let mut settings = env(&receiver);
    settings.push(("AXNT_WEBHOOK_TIMEOUT_MS", "4000".into()));
    let app = app_with(backend, &provider, &settings).await;
    assert!(app.connect("max").await.status().is_success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while receiver.arrived() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(receiver.arrived(), 1, "the delivery began");
    receiver.hold_answers(Duration::ZERO);
    // The instance that carries on starts while the first one's delivery waits.
    let next = app.sibling().await;
    app.stop().await;
    assert_eq!(
        receiver.received().len(),
        1,
        "the stop waited for the receiver's answer"
    );
    // The stopped instance's lease (two attempt limits: 8 s) lapses; the remaining
    // instance polls every 50 ms.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let got = receiver.received();
    assert_eq!(got.len(), 1, "sent once: {got:#?}");
    assert_eq!(body(&got[0])["type"], "connection.created");
    assert_eq!(got[0].answered, 204);
    next.stop().await;
}

#[test]
fn loopback_and_private_urls_are_refused_unless_allowed() {
    let load = |url: &str, allow: bool| {
        axnt_oauth::config::Settings::load(
            None,
            [
                ("AXNT_WEBHOOK_URLS".to_string(), url.to_string()),
                ("AXNT_WEBHOOK_SECRET".to_string(), SECRET.to_string()),
                ("AXNT_WEBHOOK_ALLOW_PRIVATE".to_string(), allow.to_string()),
            ],
        )
    };
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "https://10.0.0.5/hook",
        "https://192.168.1.20/hook",
        "http://169.254.169.254/latest/meta-data",
    ] {
        let e = load(url, false).expect_err(url).to_string();
        assert!(e.contains("AXNT_WEBHOOK_URLS"), "{url}: {e}");
        assert!(e.contains("AXNT_WEBHOOK_ALLOW_PRIVATE"), "{e}");
        load(url, true).unwrap_or_else(|e| panic!("{url} allowed: {e}"));
    }
    load("https://hooks.example.com/axnt", false).expect("a public name");
    let e = load("ftp://hooks.example.com/", true).expect_err("not http");
    assert!(e.to_string().contains("AXNT_WEBHOOK_URLS"), "{e}");
    let e = axnt_oauth::config::Settings::load(
        None,
        [(
            "AXNT_WEBHOOK_SECRET".to_string(),
            "whsec_not base64!".to_string(),
        )],
    )
    .expect_err("a bad secret");
    assert!(!e.to_string().contains("not base64!"), "never quoted: {e}");
}

/// `axnt-oauth events replay --since …` (the binary, as an operator runs it beside the
/// running service): prints the events, and the service delivers them again.
#[tokio::test]
async fn an_operator_replays_events_since_a_time() {
    let provider = FakeProvider::start().await;
    let receiver = Receiver::start(0).await;
    let app = app_with(Backend::Embedded, &provider, &env(&receiver)).await;
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);
    assert!(app.connect("ned").await.status().is_success());
    assert_eq!(receiver.wait_for(1).await.len(), 1);

    let run = |extra: &[&str]| {
        let mut args = vec![
            "events".to_string(),
            "replay".to_string(),
            "--since".to_string(),
            since.to_rfc3339(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        std::process::Command::new(env!("CARGO_BIN_EXE_axnt-oauth"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(app.base_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("AXNT_DATA_DIR", app.data_dir.path())
            .env("AXNT_LOG", "warn")
            .output()
            .expect("run axnt-oauth")
    };
    let dry = run(&["--dry-run"]);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let printed = String::from_utf8_lossy(&dry.stdout);
    let lines: Vec<Value> = printed
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 1, "{printed}");
    assert_eq!(lines[0]["type"], "connection.created");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        receiver.delivered().len(),
        1,
        "a dry run delivers nothing again"
    );

    let replay = run(&[]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(String::from_utf8_lossy(&replay.stderr).contains("will be delivered again"));
    let got = receiver.wait_for(2).await;
    assert_eq!(got.len(), 2, "delivered again");
    assert_eq!(got[0].id, got[1].id, "the same event (webhook-id) again");
    assert!(verify(&got[1]));
}

/// Every kind of lifecycle event, each made by its cause, reaches the receiver once,
/// signed, in the order it happened.
async fn every_event_type_reaches_the_receiver_once_signed(backend: Backend) {
    const DRIVE: &str = "https://www.googleapis.com/auth/drive.readonly";
    let provider = FakeProvider::start().await;
    let receiver = Receiver::start(0).await;
    let mut settings = env(&receiver);
    settings.extend([
        ("AXNT_GOOGLE_PUBLISHING_STATUS", "testing".to_string()),
        ("AXNT_KEEPALIVE_INTERVAL_SECS", "1".to_string()),
        ("AXNT_GOOGLE_RISC_ISSUER", provider.issuer()),
        ("AXNT_REFRESH_COOLDOWN_SECS", "0".to_string()),
        ("AXNT_REFRESH_DEADLINE_SECS", "1".to_string()),
    ]);
    let app = app_with(backend, &provider, &settings).await;
    provider.set_access_token_ttl(0);
    super::events::flow(&app, "ola", json!({ "scopes": [DRIVE] })).await; // created
    super::events::flow(
        &app,
        "ola",
        json!({ "scopes": ["https://www.googleapis.com/auth/calendar.readonly"] }),
    )
    .await; // reauthorized, scopes_changed
    provider
        .refresh_failure(crate::support::fake_provider::RefreshBehaviour::Status(503).times(1000));
    assert_eq!(
        app.token("ola").await.status(),
        reqwest::StatusCode::SERVICE_UNAVAILABLE
    ); // refresh_failed
    provider.clear_refresh_failures();
    assert_eq!(app.token("ola").await.status(), reqwest::StatusCode::OK); // recovered
    assert_eq!(receiver.wait_for(5).await.len(), 5);

    // Consent 6 days 23 hours ago, in Testing status: expiring_soon from the keep-alive.
    let row = app.stored_row("ola").await.expect("row");
    let aged = axnt_oauth::store::Connection {
        grant: axnt_oauth::store::GrantLedger {
            consented_at: Some(
                chrono::Utc::now() - chrono::Duration::days(6) - chrono::Duration::hours(23),
            ),
            ..row.grant.clone()
        },
        version: row.version + 1,
        ..row.clone()
    };
    app.store
        .put(&aged, Some(row.version), &[])
        .await
        .expect("age");
    assert_eq!(receiver.wait_for(6).await.len(), 6);

    // Google says the user revoked access (RISC): revoked_by_user. Then deleted. The
    // event type as Google's Cross-Account Protection page prints it
    // (https://developers.google.com/identity/protocols/risc, "Supported event types").
    let set = provider.security_event_token(
        &json!({
            "iss": provider.issuer(),
            "aud": provider.client_id(),
            "iat": chrono::Utc::now().timestamp(),
            "jti": "jti-webhooks",
            "events": { "https://schemas.openid.net/secevent/oauth/event-type/tokens-revoked": {
                "subject": {"subject_type": "iss-sub", "iss": provider.issuer(), "sub": row.user_info.sub}
            } },
        }),
        false,
    );
    let posted = reqwest::Client::new()
        .post(app.url("/risc/google"))
        .body(set)
        .send()
        .await
        .expect("POST /risc/google");
    assert_eq!(posted.status(), reqwest::StatusCode::ACCEPTED);
    let deleted = app
        .api_delete("/v1/users/ola/connections/google?revoke=false")
        .await;
    assert_eq!(deleted.status(), reqwest::StatusCode::OK);

    let got = receiver.wait_for(8).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let all = receiver.received();
    let kinds: Vec<String> = all
        .iter()
        .map(|r| body(r)["type"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "connection.created",
            "connection.reauthorized",
            "connection.scopes_changed",
            "connection.refresh_failed",
            "connection.recovered",
            "connection.expiring_soon",
            "connection.revoked_by_user",
            "connection.deleted",
        ],
        "each kind once, in order: {all:#?}"
    );
    assert_eq!(got.len(), 8);
    for r in &all {
        assert!(verify(r), "signed: {r:?}");
        assert_eq!(body(r)["data"]["userId"], "ola");
    }
}
