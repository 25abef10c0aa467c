//! The token cache (`AXNT_TOKEN_CACHE_SECS`): warm reads need no store, local writes
//! are seen at once, another instance's within the bound, a token inside the margin is
//! never served from it, and `lastUsed` still moves.

on_every_backend!(
    a_new_grant_and_a_delete_here_are_seen_at_once,
    a_delete_on_another_instance_is_seen_within_the_bound,
    a_cached_token_inside_the_margin_is_refreshed_not_served,
    last_used_still_moves_on_cached_reads,
);

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{self, Backend, FakeProvider, TestApp, assert_problem};

async fn access_token(app: &TestApp, user_id: &str) -> String {
    let response = app.token(user_id).await;
    assert_eq!(response.status(), StatusCode::OK, "token read");
    let body: Value = response.json().await.expect("json");
    body["accessToken"]
        .as_str()
        .expect("accessToken")
        .to_string()
}

async fn a_new_grant_and_a_delete_here_are_seen_at_once(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[("AXNT_TOKEN_CACHE_SECS", "300")]).await;
    assert!(app.connect("gina").await.status().is_success());
    let first = access_token(&app, "gina").await;
    assert_eq!(access_token(&app, "gina").await, first, "served again");

    assert!(app.connect("gina").await.status().is_success());
    let second = access_token(&app, "gina").await;
    assert_ne!(second, first, "the new grant's token, not the cached one");
    assert_eq!(Some(second), provider.latest_access_token());

    let deleted = app.api_delete("/v1/users/gina/connections/google").await;
    assert_eq!(deleted.status(), StatusCode::OK);
    assert_problem(app.token("gina").await, 404, "not_connected").await;
}

async fn a_delete_on_another_instance_is_seen_within_the_bound(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[("AXNT_TOKEN_CACHE_SECS", "1")]).await;
    let other = app.sibling().await;
    assert!(app.connect("hank").await.status().is_success());
    access_token(&app, "hank").await; // cached here

    let deleted = other.api_delete("/v1/users/hank/connections/google").await;
    assert_eq!(deleted.status(), StatusCode::OK);
    // This instance may still serve its entry, for at most the cache's lifetime.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_problem(app.token("hank").await, 404, "not_connected").await;
}

async fn a_cached_token_inside_the_margin_is_refreshed_not_served(backend: Backend) {
    let provider = FakeProvider::start().await;
    // Four-second tokens are held to half their life: fresh for two seconds.
    provider.set_access_token_ttl(4);
    let app = TestApp::on(backend, &provider, &[("AXNT_TOKEN_CACHE_SECS", "300")]).await;
    assert!(app.connect("ivy").await.status().is_success());
    let first = access_token(&app, "ivy").await;
    assert_eq!(access_token(&app, "ivy").await, first);
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let second = access_token(&app, "ivy").await;
    assert_ne!(second, first, "a token inside the margin is refreshed");
    // The refresh here replaced the cached entry at once: the next read serves it.
    assert_eq!(access_token(&app, "ivy").await, second);
    assert_eq!(provider.refresh_count(), 1);
}

async fn last_used_still_moves_on_cached_reads(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(
        backend,
        &provider,
        &[
            ("AXNT_TOKEN_CACHE_SECS", "300"),
            ("AXNT_LAST_USED_INTERVAL_SECS", "1"),
        ],
    )
    .await;
    assert!(app.connect("jack").await.status().is_success());
    access_token(&app, "jack").await;
    let before = app.stored_row("jack").await.expect("row").last_used;
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    access_token(&app, "jack").await; // a cache hit, past the interval
    let after = app.stored_row("jack").await.expect("row");
    assert!(after.last_used > before, "lastUsed moved on a cached read");
    let version = after.version;
    for _ in 0..5 {
        access_token(&app, "jack").await;
    }
    assert_eq!(
        app.stored_row("jack").await.expect("row").version,
        version,
        "reads never write the tokens"
    );
}

/// aws mode with DynamoDB behind a proxy that can be cut: once a token is cached, reads
/// need no store; with the cache off the same reads need it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_reads_need_no_store_call() {
    for (cache_secs, expect_ok) in [("300", true), ("0", false)] {
        let provider = FakeProvider::start().await;
        let proxy = support::CuttableProxy::start(&support::aws::moto_endpoint()).await;
        let app =
            TestApp::aws_behind(&proxy, &provider, &[("AXNT_TOKEN_CACHE_SECS", cache_secs)]).await;
        assert!(app.connect("kate").await.status().is_success());
        let token = access_token(&app, "kate").await;

        proxy.cut();
        for _ in 0..20 {
            let response = app.token("kate").await;
            if expect_ok {
                assert_eq!(response.status(), StatusCode::OK, "served from the cache");
                let body: Value = response.json().await.expect("json");
                assert_eq!(body["accessToken"], token.as_str());
            } else {
                assert_eq!(
                    response.status(),
                    StatusCode::SERVICE_UNAVAILABLE,
                    "without the cache a read needs the store"
                );
                // The SDK tried the cut GetItem again before giving up, and said so.
                let metrics = app.metrics().await;
                let retried = metrics.lines().any(|l| {
                    l.starts_with("axnt_aws_retries_total{")
                        && l.contains("service=\"dynamodb\"")
                        && l.contains("operation=\"GetItem\"")
                        && !l.ends_with(" 0")
                });
                assert!(retried, "GetItem retries counted: {metrics}");
                break;
            }
        }
        proxy.restore();
    }
}
