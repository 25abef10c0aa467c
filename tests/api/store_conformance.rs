//! One conformance suite for the store's traits, a module per aggregate (connections,
//! the refresh lease, connect flows, revocations, account grants, job leases, webhook
//! cursors, events, sealed items, the flow log), run against every backend: the
//! embedded SQLite store, the same behind the buffered flow-log writer, and DynamoDB
//! (on moto) as aws mode assembles it. Each case is a function over
//! `(Arc<dyn TokenStore>, Arc<dyn FlowLog>)`; a backend that behaves differently from
//! another fails the same case.

use std::any::Any;
use std::sync::Arc;

use axnt_oauth::app::Backends;
use axnt_oauth::crypto::Envelope;
use axnt_oauth::store::buffered::BufferedFlowLog;
use axnt_oauth::store::embedded::EmbeddedStore;
use axnt_oauth::store::flow_log::SortKeyClock;
use axnt_oauth::store::{
    AccountGrants, Connection, Event, FlowLog, FlowLogEntry, FlowStep, GrantLedger, LeaseRelease,
    PendingDelivery, PendingGrant, PendingRevocation, RefreshLease, RefreshState, ReplacedAccount,
    ScanCursor, Sealed, StoreError, TokenStore, UserInfo, WebhookState,
};
use chrono::{DateTime, SubsecRound, Utc};
use serde_json::json;

use crate::support::aws;

type Stores = (Arc<dyn TokenStore>, Arc<dyn FlowLog>, Box<dyn Any + Send>);

async fn embedded() -> Stores {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("t.db")).expect("open sqlite"));
    (store.clone(), store, Box::new(dir))
}

async fn embedded_buffered() -> Stores {
    let (tokens, log, guard) = embedded().await;
    // Room for every case's burst: a full queue drops items by design (unit-tested in
    // store::buffered), which is not what these cases are about.
    let buffered = BufferedFlowLog::spawn(log, 64, 3);
    (tokens, Arc::new(buffered), guard)
}

async fn dynamodb() -> Stores {
    let fixture = aws::fixture(
        "conformance-client",
        "conformance-secret",
        "conformance-api-key-0123",
    )
    .await;
    let backends = Backends::open(&fixture.settings())
        .await
        .expect("aws backends open on moto");
    (backends.tokens, backends.flow_log, Box::new(fixture))
}

fn now() -> DateTime<Utc> {
    // Both backends keep milliseconds.
    Utc::now().trunc_subsecs(3)
}

fn user() -> String {
    aws::unique("user")
}

fn row(user_id: &str, provider: &str, version: u64, marker: &str) -> Connection {
    let at = now();
    Connection {
        user_id: user_id.into(),
        provider: provider.into(),
        email: Some(format!("{user_id}@example.com")),
        encrypted_tokens: Envelope {
            v: 1,
            alg: "AES-256-GCM".into(),
            key_id: "arn:aws:kms:us-east-1:123456789012:key/test".into(),
            edk: "ZWRr".into(),
            iv: "aXZpdml2aXZpdml2".into(),
            ct: format!("Y3Q{marker}"),
        },
        user_info: UserInfo {
            sub: "1234".into(),
            email: Some(format!("{user_id}@example.com")),
            email_verified: Some(true),
            name: Some("Ada".into()),
            picture: None,
            hd: Some("example.com".into()),
        },
        created_at: at,
        updated_at: at,
        last_used: at,
        access_token_expires_at: at.timestamp() + 3600,
        expires_at: at.timestamp() + 180 * 86_400,
        is_active: true,
        version,
        refresh: Default::default(),
        replaced_account: None,
        grant: Default::default(),
    }
}

fn entry(clock: &SortKeyClock, user_id: &str, at: DateTime<Utc>, i: usize) -> FlowLogEntry {
    let steps = [
        FlowStep::SessionCreated,
        FlowStep::AuthorizeRedirect,
        FlowStep::CallbackReceived,
        FlowStep::Completed,
    ];
    let data = json!({"i": i, "scopes": ["openid", "email"], "nested": {"ok": true}});
    FlowLogEntry {
        user_id: user_id.into(),
        timestamp: clock.next_key(at),
        flow_id: format!("flow-{}", i / 4),
        step: steps[i % steps.len()],
        data: data.as_object().cloned().unwrap_or_default(),
        error: i.is_multiple_of(3).then(|| "access_denied".to_string()),
        ip_address: Some("203.0.113.7".into()),
        user_agent: Some("conformance/1.0".into()),
        expires_at: at.timestamp() + 90 * 86_400,
    }
}

fn lease(attempt: &str, until_ms: i64) -> RefreshLease {
    RefreshLease::new(attempt, until_ms)
}

/// `u`'s Google row at version 1, its refresh lease taken at `now` by attempt `a1`
/// for one second.
async fn leased_row(tokens: &dyn TokenStore, u: &str, now: i64) {
    tokens
        .put(&row(u, "google", 1, "a"), None, &[])
        .await
        .expect("create");
    tokens
        .acquire_lease(u, "google", 1, &lease("a1", now + 1_000), now)
        .await
        .expect("lease");
}

fn pending(flow_id: &str, user_id: &str, marker: &str) -> PendingGrant {
    let r = row(user_id, "google", 1, marker);
    PendingGrant {
        flow_id: flow_id.into(),
        user_id: user_id.into(),
        provider: "google".into(),
        encrypted_tokens: r.encrypted_tokens,
        user_info: r.user_info,
        created_at: now(),
        expires_at: now().timestamp() + 600,
    }
}

fn revocation(id: &str, user_id: &str, next_attempt_at: i64) -> PendingRevocation {
    PendingRevocation {
        id: id.into(),
        user_id: user_id.into(),
        provider: "google".into(),
        sub: "sub-1".into(),
        encrypted_token: row(user_id, "google", 1, id).encrypted_tokens,
        token_kind: "refresh_token".into(),
        client_id: Some("client-1.apps.example".into()),
        created_at: now(),
        attempts: 1,
        next_attempt_at,
        expires_at: next_attempt_at + 86_400,
    }
}

/// Every row of a scan, page by page, with the number of pages read.
async fn scan_all(tokens: &dyn TokenStore, limit: usize) -> (Vec<Connection>, usize) {
    let (mut rows, mut pages) = (Vec::new(), 0);
    let mut cursor: Option<ScanCursor> = None;
    loop {
        let page = tokens.scan(cursor.as_ref(), limit).await.expect("scan");
        pages += 1;
        assert!(page.rows.len() <= limit, "a page holds at most its limit");
        rows.extend(page.rows);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return (rows, pages),
        }
    }
}

/// The sealed item of `user_id`'s Google row.
fn sealed_row(user_id: &str) -> Sealed {
    Sealed::Connection {
        user_id: user_id.into(),
        provider: "google".into(),
    }
}

/// An event made at `ms` (epoch milliseconds), its id a UUIDv7 of that instant with
/// `seq` in its counter bits, so ids of one instant sort by `seq`.
fn event_at(ms: i64, seq: u16, user_id: &str, kind: &str) -> Event {
    let random = uuid::Uuid::new_v4().as_u128() & 0xffff_ffff_ffff;
    Event {
        id: format!(
            "{:08x}-{:04x}-7{:03x}-8000-{random:012x}",
            ms >> 16,
            ms & 0xffff,
            seq & 0xfff
        ),
        kind: kind.into(),
        user_id: user_id.into(),
        provider: "google".into(),
        timestamp: DateTime::from_timestamp_millis(ms).expect("time"),
        data: json!({"userId": user_id, "provider": "google", "seq": seq})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        expires_at: Utc::now().timestamp() + 3600,
    }
}

/// The bound before every event of millisecond `ms` (as the feed makes them).
fn bound(ms: i64) -> String {
    format!(
        "{:08x}-{:04x}-0000-0000-000000000000",
        ms >> 16,
        ms & 0xffff
    )
}

/// The kinds of `user_id`'s events stored between `from_ms` and `to_ms`, in order.
async fn kinds_between(
    tokens: &dyn TokenStore,
    user_id: &str,
    from_ms: i64,
    to_ms: i64,
) -> Vec<String> {
    tokens
        .events_between(&bound(from_ms), &bound(to_ms), 1000)
        .await
        .expect("events")
        .into_iter()
        .filter(|e| e.user_id == user_id)
        .map(|e| e.kind)
        .collect()
}

async fn pings_answer(tokens: Arc<dyn TokenStore>, log: Arc<dyn FlowLog>) {
    tokens.ping().await.expect("tokens ping");
    log.ping().await.expect("flow log ping");
}

macro_rules! conformance {
    ($backend:ident: $($case:ident),+ $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (tokens, log, _guard) = crate::store_conformance::$backend().await;
                    super::$case(tokens, log).await;
                }
            )+
        }
    };
}

macro_rules! every_backend {
    ($($case:ident),+ $(,)?) => {
        conformance!(embedded: $($case),+);
        conformance!(embedded_buffered: $($case),+);
        conformance!(dynamodb: $($case),+);
    };
}

every_backend!(pings_answer,);

mod account_grants;
mod connect_flows;
mod connections;
mod events;
mod flow_log;
mod job_leases;
mod refresh_lease;
mod revocations;
mod sealed;
mod stamping;
mod webhook_cursors;
