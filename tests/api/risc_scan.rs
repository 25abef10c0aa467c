//! A security event finds the grants it ends by scanning the tokens table (there is no
//! index by Google account): one scan at a time per process, paced, and counted in
//! `axnt_security_event_rows_scanned_total`.

on_every_backend!(
    two_events_at_once_scan_the_table_one_after_the_other,
    a_scan_cut_off_by_a_shutdown_is_acted_on_when_the_event_comes_again,
);

use std::time::{Duration, Instant};

use axnt_oauth::store::{Connection, UserInfo};
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::json;

use crate::support::fake_provider::Profile;
use crate::support::{Backend, FakeProvider, TestApp};

// The event type as Google's Cross-Account Protection page prints it
// (https://developers.google.com/identity/protocols/risc, "Supported event types").
const TOKENS_REVOKED: &str = "https://schemas.openid.net/secevent/oauth/event-type/tokens-revoked";

/// Rows stored besides the connected one: more than two of the scan's pages.
const ROWS: usize = 440;

/// `axnt_security_event_rows_scanned_total{provider="google"}` in the process's scrape.
async fn rows_scanned(app: &TestApp) -> u64 {
    app.metrics()
        .await
        .lines()
        .find(|l| l.starts_with("axnt_security_event_rows_scanned_total{provider=\"google\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("the rows-scanned series is registered")
}

/// When each of `users`' grants was ended (its row written inactive).
async fn ended_at(app: &TestApp, users: &[String]) -> Vec<DateTime<Utc>> {
    let mut at = Vec::new();
    for user in users {
        let row = app.stored_row(user).await.expect("row");
        assert!(!row.is_active, "{user}'s grant was ended");
        at.push(row.updated_at);
    }
    at.sort();
    at
}

async fn two_events_at_once_scan_the_table_one_after_the_other(backend: Backend) {
    let provider = FakeProvider::start().await;
    let issuer = provider.issuer();
    let app = TestApp::on(
        backend,
        &provider,
        &[("AXNT_GOOGLE_RISC_ISSUER", issuer.as_str())],
    )
    .await;
    provider.set_profile(Profile::for_prefix("f0"));
    assert!(app.connect("seed").await.status().is_success());
    let template = app.stored_row("seed").await.expect("seed row");

    // Two accounts' grants spread through the table among others: both scans find
    // theirs on every page.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..ROWS {
        let user_id = format!("u{i:04}");
        let sub = match i % 20 {
            0 => {
                a.push(user_id.clone());
                "account-a".to_string()
            }
            10 => {
                b.push(user_id.clone());
                "account-b".to_string()
            }
            _ => format!("other-{i}"),
        };
        let row = Connection {
            user_id,
            user_info: UserInfo {
                sub,
                ..template.user_info.clone()
            },
            version: 1,
            ..template.clone()
        };
        app.store.put(&row, None, &[]).await.expect("store a row");
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let event = |jti: &str, sub: &str| {
        provider.security_event_token(
            &json!({
                "iss": provider.issuer(),
                "aud": provider.client_id(),
                "iat": Utc::now().timestamp(),
                "jti": jti,
                "events": { TOKENS_REVOKED: {
                    "subject": {"subject_type": "iss-sub", "iss": provider.issuer(), "sub": sub}
                } },
            }),
            false,
        )
    };
    let (for_a, for_b) = (event("jti-a", "account-a"), event("jti-b", "account-b"));
    let scanned_before = rows_scanned(&app).await;
    let started = Instant::now();
    let (posted_a, posted_b) = tokio::join!(
        crate::risc::post(&app, &for_a),
        crate::risc::post(&app, &for_b)
    );
    let took = started.elapsed();
    assert_eq!(posted_a.status(), StatusCode::ACCEPTED);
    assert_eq!(posted_b.status(), StatusCode::ACCEPTED);

    // One scan ended all of its account's grants before the other ended any.
    let (ended_a, ended_b) = (ended_at(&app, &a).await, ended_at(&app, &b).await);
    let (first, second) = if ended_a[0] <= ended_b[0] {
        (&ended_a, &ended_b)
    } else {
        (&ended_b, &ended_a)
    };
    assert!(
        first[first.len() - 1] <= second[0],
        "the scans overlapped: one ended grants from {} to {}, the other from {} to {}",
        first[0],
        first[first.len() - 1],
        second[0],
        second[second.len() - 1]
    );
    // Paced: each scan read at least three pages, a page at most every 200 ms, and the
    // second began when the first was done.
    assert!(
        took >= Duration::from_millis(800),
        "two paced scans took {took:?}"
    );
    assert_eq!(
        app.token("seed").await.status(),
        StatusCode::OK,
        "other accounts' grants stay"
    );
    // Counted: each scan read every row (other tests in this process add their own).
    let scanned = rows_scanned(&app).await - scanned_before;
    assert!(
        scanned >= 2 * (ROWS as u64 + 1),
        "{scanned} rows counted for two scans of {} rows",
        ROWS + 1
    );
}

/// A shutdown that cuts a security event's scan off (its drain ran out) forgets the
/// event's `jti`, so Google's redelivery, to another instance, is acted on rather than
/// taken for a duplicate; the grants the first scan never reached are ended then.
async fn a_scan_cut_off_by_a_shutdown_is_acted_on_when_the_event_comes_again(backend: Backend) {
    let provider = FakeProvider::start().await;
    let issuer = provider.issuer();
    let app = TestApp::on(
        backend,
        &provider,
        &[
            ("AXNT_GOOGLE_RISC_ISSUER", issuer.as_str()),
            ("AXNT_DRAIN_TIMEOUT_SECS", "1"),
        ],
    )
    .await;
    let sibling = app.sibling().await;
    provider.set_profile(Profile::for_prefix("f1"));
    assert!(app.connect("seed").await.status().is_success());
    let template = app.stored_row("seed").await.expect("seed row");
    // The account's grant sorts last: the scan reaches it after about two seconds.
    for i in 0..ROWS * 4 {
        let row = Connection {
            user_id: format!("c{i:04}"),
            user_info: UserInfo {
                sub: format!("other-{i}"),
                ..template.user_info.clone()
            },
            version: 1,
            ..template.clone()
        };
        app.store.put(&row, None, &[]).await.expect("store a row");
    }
    let last = Connection {
        user_id: "zz-last".into(),
        user_info: UserInfo {
            sub: "account-c".into(),
            ..template.user_info.clone()
        },
        version: 1,
        ..template.clone()
    };
    app.store
        .put(&last, None, &[])
        .await
        .expect("store the account's row");
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let event = provider.security_event_token(
        &json!({
            "iss": provider.issuer(),
            "aud": provider.client_id(),
            "iat": Utc::now().timestamp(),
            "jti": "jti-cut",
            "events": { TOKENS_REVOKED: {
                "subject": {"subject_type": "iss-sub", "iss": provider.issuer(), "sub": "account-c"}
            } },
        }),
        false,
    );
    let posting = {
        let (http, url, body) = (app.http.clone(), app.url("/risc/google"), event.clone());
        tokio::spawn(async move { http.post(url).body(body).send().await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.stop().await;
    let _ = posting.await;
    assert!(
        sibling.stored_row("zz-last").await.expect("row").is_active,
        "the cut-off scan had not reached the account's grant"
    );

    let again = crate::risc::post(&sibling, &event).await;
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert!(
        !sibling.stored_row("zz-last").await.expect("row").is_active,
        "the redelivery was acted on, not taken for a duplicate"
    );
}
