//! One conformance suite for `TokenStore` + `FlowLog`, run against every backend:
//! the embedded SQLite store, the same behind the buffered flow-log writer, and
//! DynamoDB (on moto) as aws mode assembles it. Each case is a function over
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

async fn create_then_read(tokens: Arc<dyn TokenStore>, _log: Arc<dyn FlowLog>) {
    let u = user();
    assert_eq!(tokens.get(&u, "google").await.expect("get"), None);
    let r = row(&u, "google", 1, "a");
    tokens.put(&r, None, &[]).await.expect("create");
    assert_eq!(tokens.get(&u, "google").await.expect("get"), Some(r));
    assert_eq!(tokens.get(&u, "github").await.expect("get"), None);
}

async fn conditional_update_wins_and_loses(tokens: Arc<dyn TokenStore>, _log: Arc<dyn FlowLog>) {
    let u = user();
    tokens
        .put(&row(&u, "google", 1, "a"), None, &[])
        .await
        .expect("create");
    let v2 = row(&u, "google", 2, "b");
    tokens
        .put(&v2, Some(1), &[])
        .await
        .expect("update at the read version wins");
    let stale = Connection {
        is_active: false,
        ..row(&u, "google", 2, "c")
    };
    let lost = tokens.put(&stale, Some(1), &[]).await;
    assert!(
        matches!(lost, Err(StoreError::Conflict)),
        "stale write loses: {lost:?}"
    );
    assert_eq!(
        tokens.get(&u, "google").await.expect("get"),
        Some(v2),
        "a lost write leaves the row as it was"
    );
    let missing = tokens.put(&row(&u, "github", 2, "d"), Some(1), &[]).await;
    assert!(
        matches!(missing, Err(StoreError::Conflict)),
        "an update of a missing row loses: {missing:?}"
    );
    assert_eq!(tokens.get(&u, "github").await.expect("get"), None);
}

async fn create_when_exists_loses(tokens: Arc<dyn TokenStore>, _log: Arc<dyn FlowLog>) {
    let u = user();
    let first = row(&u, "google", 1, "a");
    tokens.put(&first, None, &[]).await.expect("create");
    let second = tokens.put(&row(&u, "google", 1, "b"), None, &[]).await;
    assert!(matches!(second, Err(StoreError::Conflict)), "{second:?}");
    assert_eq!(tokens.get(&u, "google").await.expect("get"), Some(first));
}

async fn delete_is_conditional(tokens: Arc<dyn TokenStore>, _log: Arc<dyn FlowLog>) {
    let u = user();
    tokens
        .put(&row(&u, "google", 1, "a"), None, &[])
        .await
        .expect("create");
    tokens
        .put(&row(&u, "google", 2, "b"), Some(1), &[])
        .await
        .expect("update");
    let wrong = tokens.delete(&u, "google", 1, &[]).await;
    assert!(matches!(wrong, Err(StoreError::Conflict)), "{wrong:?}");
    assert!(
        tokens.get(&u, "google").await.expect("get").is_some(),
        "still there"
    );
    assert!(
        tokens.delete(&u, "google", 2, &[]).await.expect("delete"),
        "removed"
    );
    assert_eq!(tokens.get(&u, "google").await.expect("get"), None);
    assert!(
        !tokens
            .delete(&u, "google", 2, &[])
            .await
            .expect("delete missing"),
        "nothing to remove"
    );
}

async fn list_by_user(tokens: Arc<dyn TokenStore>, _log: Arc<dyn FlowLog>) {
    let (alice, bob) = (user(), user());
    let a_google = row(&alice, "google", 1, "a");
    let a_github = row(&alice, "github", 1, "b");
    tokens.put(&a_google, None, &[]).await.expect("put");
    tokens.put(&a_github, None, &[]).await.expect("put");
    tokens
        .put(&row(&bob, "google", 1, "c"), None, &[])
        .await
        .expect("put");
    let listed = tokens.list(&alice).await.expect("list");
    assert_eq!(
        listed,
        vec![a_github, a_google],
        "only alice's rows, by provider"
    );
    assert!(tokens.list(&user()).await.expect("list").is_empty());
}

fn lease(attempt: &str, until_ms: i64) -> RefreshLease {
    RefreshLease::new(attempt, until_ms)
}

/// A lease is taken only at the read version and only when no live lease stands; it
/// changes nothing else, and a lapsed lease can be taken over.
async fn the_refresh_lease_is_exclusive(tokens: Arc<dyn TokenStore>, _log: Arc<dyn FlowLog>) {
    let u = user();
    let r = row(&u, "google", 1, "a");
    tokens.put(&r, None, &[]).await.expect("create");
    let now = 1_800_000_000_000;
    let stale = tokens
        .acquire_lease(&u, "google", 2, &lease("x", now + 10_000), now)
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict)),
        "wrong version: {stale:?}"
    );
    tokens
        .acquire_lease(&u, "google", 1, &lease("a1", now + 10_000), now)
        .await
        .expect("free row: taken");
    let stored = tokens.get(&u, "google").await.expect("get").expect("row");
    assert_eq!(
        stored.version, 1,
        "taking a lease does not bump the version"
    );
    assert_eq!(stored.refresh.lease, Some(lease("a1", now + 10_000)));
    assert_eq!(stored.encrypted_tokens, r.encrypted_tokens);
    let second = tokens
        .acquire_lease(&u, "google", 1, &lease("a2", now + 20_000), now + 5_000)
        .await;
    assert!(
        matches!(second, Err(StoreError::Conflict)),
        "live lease: {second:?}"
    );
    tokens
        .acquire_lease(&u, "google", 1, &lease("a2", now + 30_000), now + 10_001)
        .await
        .expect("a lapsed lease is taken over");
    let missing = tokens
        .acquire_lease(&user(), "google", 1, &lease("a3", now), now)
        .await;
    assert!(
        matches!(missing, Err(StoreError::Conflict)),
        "no row: {missing:?}"
    );
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

/// A lapsed lease is held for its attempt only once, only while it has lapsed and its
/// attempt still holds it; the attempt keeps writing as the holder, and taking,
/// extending or releasing the lease clears the hold's mark.
async fn a_lapsed_lease_is_held_for_its_attempt(
    tokens: Arc<dyn TokenStore>,
    _log: Arc<dyn FlowLog>,
) {
    let u = user();
    let now = 1_800_000_000_000;
    leased_row(tokens.as_ref(), &u, now).await;
    let live = tokens
        .hold_lapsed_lease(&u, "google", "a1", now + 9_000, now + 500)
        .await;
    assert!(matches!(live, Err(StoreError::Conflict)), "live: {live:?}");
    let other = tokens
        .hold_lapsed_lease(&u, "google", "a2", now + 9_000, now + 2_000)
        .await;
    assert!(
        matches!(other, Err(StoreError::Conflict)),
        "not a2's: {other:?}"
    );
    tokens
        .hold_lapsed_lease(&u, "google", "a1", now + 9_000, now + 2_000)
        .await
        .expect("lapsed: held");
    let held = tokens.get(&u, "google").await.expect("get").expect("row");
    assert_eq!(
        held.refresh.lease,
        Some(RefreshLease {
            attempt: "a1".into(),
            until_ms: now + 9_000,
            lapsed_at_ms: Some(now + 2_000),
        })
    );
    assert_eq!(held.version, 1, "holding does not bump the version");
    let twice = tokens
        .hold_lapsed_lease(&u, "google", "a1", now + 20_000, now + 10_000)
        .await;
    assert!(
        matches!(twice, Err(StoreError::Conflict)),
        "held once: {twice:?}"
    );
    let early = tokens
        .acquire_lease(&u, "google", 1, &lease("b1", now + 20_000), now + 8_000)
        .await;
    assert!(
        matches!(early, Err(StoreError::Conflict)),
        "during the hold: {early:?}"
    );
    // The holder is alive: its extension ends the hold.
    tokens
        .extend_lease(&u, "google", &lease("a1", now + 12_000))
        .await
        .expect("extend");
    let extended = tokens.get(&u, "google").await.expect("get").expect("row");
    assert_eq!(extended.refresh.lease, Some(lease("a1", now + 12_000)));
    // Held again after it lapses again; taken over once the hold has passed.
    tokens
        .hold_lapsed_lease(&u, "google", "a1", now + 20_000, now + 13_000)
        .await
        .expect("held again");
    tokens
        .acquire_lease(&u, "google", 1, &lease("b1", now + 40_000), now + 20_001)
        .await
        .expect("taken over after the hold");
    let taken = tokens.get(&u, "google").await.expect("get").expect("row");
    assert_eq!(taken.refresh.lease, Some(lease("b1", now + 40_000)));
    // A hold leaves the attempt the holder: its write lands, and clears the lease.
    tokens
        .hold_lapsed_lease(&u, "google", "b1", now + 50_000, now + 41_000)
        .await
        .expect("held");
    let refreshed = row(&u, "google", 2, "b");
    tokens
        .put_as_holder(&refreshed, "b1", &[])
        .await
        .expect("the held attempt still writes");
    assert_eq!(
        tokens.get(&u, "google").await.expect("get").as_ref(),
        Some(&refreshed)
    );
    // Released while held: lease and mark gone.
    tokens
        .acquire_lease(&u, "google", 2, &lease("c1", now + 1_000), now)
        .await
        .expect("lease");
    tokens
        .hold_lapsed_lease(&u, "google", "c1", now + 9_000, now + 2_000)
        .await
        .expect("held");
    tokens
        .release_lease(&u, "google", "c1", LeaseRelease::default(), &[])
        .await
        .expect("released by its attempt");
    let released = tokens.get(&u, "google").await.expect("get").expect("row");
    assert_eq!(released.refresh.lease, None);
    let gone = tokens
        .hold_lapsed_lease(&user(), "google", "c1", now + 9_000, now + 2_000)
        .await;
    assert!(
        matches!(gone, Err(StoreError::Conflict)),
        "no row: {gone:?}"
    );
}

/// Only the attempt holding the lease extends it, releases it, or writes the row.
async fn only_the_holder_writes(tokens: Arc<dyn TokenStore>, _log: Arc<dyn FlowLog>) {
    let u = user();
    let r = row(&u, "google", 1, "a");
    tokens.put(&r, None, &[]).await.expect("create");
    let now = 1_800_000_000_000;
    tokens
        .acquire_lease(&u, "google", 1, &lease("mine", now + 1_000), now)
        .await
        .expect("lease");
    let other = tokens
        .extend_lease(&u, "google", &lease("theirs", now + 9_000))
        .await;
    assert!(matches!(other, Err(StoreError::Conflict)), "{other:?}");
    tokens
        .extend_lease(&u, "google", &lease("mine", now + 9_000))
        .await
        .expect("the holder extends");
    let refreshed = Connection {
        access_token_expires_at: 42,
        ..row(&u, "google", 2, "b")
    };
    let intruder = tokens.put_as_holder(&refreshed, "theirs", &[]).await;
    assert!(
        matches!(intruder, Err(StoreError::Conflict)),
        "{intruder:?}"
    );
    assert_eq!(
        tokens
            .get(&u, "google")
            .await
            .expect("get")
            .map(|r| r.version),
        Some(1)
    );
    tokens
        .put_as_holder(&refreshed, "mine", &[])
        .await
        .expect("the holder writes");
    let stored = tokens.get(&u, "google").await.expect("get").expect("row");
    assert_eq!(stored, refreshed, "whole row written, lease cleared");
    let again = tokens.put_as_holder(&refreshed, "mine", &[]).await;
    assert!(
        matches!(again, Err(StoreError::Conflict)),
        "a written lease is gone: {again:?}"
    );
    let gone = tokens
        .put_as_holder(&row(&user(), "google", 2, "c"), "mine", &[])
        .await;
    assert!(
        matches!(gone, Err(StoreError::Conflict)),
        "no row is created: {gone:?}"
    );
}

/// Giving a lease back records the cooldown and an unknown outcome, which a token
/// write clears; only the holder can give it back.
async fn a_released_lease_leaves_its_cooldown(tokens: Arc<dyn TokenStore>, _log: Arc<dyn FlowLog>) {
    let u = user();
    let now = 1_800_000_000_000;
    leased_row(tokens.as_ref(), &u, now).await;
    let after = LeaseRelease {
        retry_at_ms: Some(now + 30_000),
        unknown_since_ms: Some(now),
    };
    let wrong = tokens.release_lease(&u, "google", "a2", after, &[]).await;
    assert!(matches!(wrong, Err(StoreError::Conflict)), "{wrong:?}");
    tokens
        .release_lease(&u, "google", "a1", after, &[])
        .await
        .expect("release");
    let stored = tokens.get(&u, "google").await.expect("get").expect("row");
    assert_eq!(
        stored.refresh,
        RefreshState {
            lease: None,
            retry_at_ms: Some(now + 30_000),
            unknown_since_ms: Some(now),
            inactive_cause: None,
        }
    );
    assert_eq!(stored.version, 1);
    // A second failure keeps the first unknown outcome's time.
    tokens
        .acquire_lease(&u, "google", 1, &lease("a3", now + 50_000), now + 40_000)
        .await
        .expect("lease again");
    tokens
        .release_lease(&u, "google", "a3", LeaseRelease::default(), &[])
        .await
        .expect("release");
    let stored = tokens.get(&u, "google").await.expect("get").expect("row");
    assert_eq!(stored.refresh.retry_at_ms, None);
    assert_eq!(stored.refresh.unknown_since_ms, Some(now));
    let dead = Connection {
        is_active: false,
        refresh: RefreshState {
            inactive_cause: Some("refresh_outcome_unknown".into()),
            ..RefreshState::default()
        },
        ..row(&u, "google", 2, "b")
    };
    tokens.put(&dead, Some(1), &[]).await.expect("token write");
    assert_eq!(tokens.get(&u, "google").await.expect("get"), Some(dead));
}

/// `lastUsed` moves without touching the tokens, the version or a lease, and never
/// revives an inactive row's purge time or creates a row.
async fn touch_is_a_partial_update(tokens: Arc<dyn TokenStore>, _log: Arc<dyn FlowLog>) {
    let u = user();
    let r = row(&u, "google", 1, "a");
    tokens.put(&r, None, &[]).await.expect("create");
    let now = 1_800_000_000_000;
    tokens
        .acquire_lease(&u, "google", 1, &lease("a1", now + 1_000), now)
        .await
        .expect("lease");
    let used = r.last_used + chrono::Duration::minutes(5);
    tokens
        .touch(&u, "google", used, r.expires_at + 300)
        .await
        .expect("touch");
    let stored = tokens.get(&u, "google").await.expect("get").expect("row");
    assert_eq!(stored.last_used, used);
    assert_eq!(stored.expires_at, r.expires_at + 300);
    assert_eq!(stored.version, 1, "no version bump");
    assert_eq!(
        stored.refresh.lease,
        Some(lease("a1", now + 1_000)),
        "lease kept"
    );
    assert_eq!(stored.encrypted_tokens, r.encrypted_tokens);
    tokens
        .put_as_holder(&row(&u, "google", 2, "b"), "a1", &[])
        .await
        .expect("the holder's write still lands after a touch");

    let inactive = Connection {
        is_active: false,
        ..row(&user(), "google", 1, "c")
    };
    tokens.put(&inactive, None, &[]).await.expect("create");
    tokens
        .touch(&inactive.user_id, "google", used, inactive.expires_at + 999)
        .await
        .expect("touch of an inactive row is a no-op");
    assert_eq!(
        tokens.get(&inactive.user_id, "google").await.expect("get"),
        Some(inactive)
    );
    let nobody = user();
    tokens
        .touch(&nobody, "google", used, 1)
        .await
        .expect("touch of no row is a no-op");
    assert_eq!(tokens.get(&nobody, "google").await.expect("get"), None);
}

async fn flow_log_orders_steps_of_one_instant(_tokens: Arc<dyn TokenStore>, log: Arc<dyn FlowLog>) {
    let u = user();
    let clock = SortKeyClock::default();
    let at = Utc::now();
    let entries: Vec<FlowLogEntry> = (0..40).map(|i| entry(&clock, &u, at, i)).collect();
    for e in &entries {
        log.append(e).await.expect("append");
    }
    log.append(&entry(&clock, &user(), at, 0))
        .await
        .expect("another user");
    log.flush().await.expect("flush");
    let listed = log.list(&u, 100, None).await.expect("list");
    let mut newest_first = entries.clone();
    newest_first.reverse();
    assert_eq!(
        listed, newest_first,
        "every step, newest first, none overwritten"
    );
}

async fn flow_log_pages_with_before(_tokens: Arc<dyn TokenStore>, log: Arc<dyn FlowLog>) {
    let u = user();
    let clock = SortKeyClock::default();
    let entries: Vec<FlowLogEntry> = (0..25).map(|i| entry(&clock, &u, Utc::now(), i)).collect();
    for e in &entries {
        log.append(e).await.expect("append");
    }
    let mut pages = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = log.list(&u, 10, before.as_deref()).await.expect("page");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        before = page.last().map(|e| e.timestamp.clone());
        pages.push(page);
    }
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![10, 10, 5]
    );
    let mut newest_first = entries;
    newest_first.reverse();
    assert_eq!(pages.concat(), newest_first);
    assert!(log.list(&u, 0, None).await.expect("limit 0").is_empty());
}

async fn flush_writes_everything_queued(_tokens: Arc<dyn TokenStore>, log: Arc<dyn FlowLog>) {
    let u = user();
    let clock = SortKeyClock::default();
    let entries: Vec<FlowLogEntry> = (0..12).map(|i| entry(&clock, &u, Utc::now(), i)).collect();
    for e in &entries {
        log.append(e).await.expect("append");
    }
    log.flush().await.expect("flush");
    assert_eq!(
        log.list(&u, 100, None).await.expect("list").len(),
        entries.len()
    );
    // Reading right after a write sees it, flush or not.
    let last = entry(&clock, &u, Utc::now(), 99);
    log.append(&last).await.expect("append");
    let listed = log.list(&u, 1, None).await.expect("list");
    assert_eq!(listed, vec![last]);
}

async fn a_mark_is_made_once(tokens: Arc<dyn TokenStore>, _log: Arc<dyn FlowLog>) {
    let key = aws::unique("flow");
    let until = now().timestamp() + 600;
    assert!(tokens.mark_once(&key, "a1", until).await.expect("mark"));
    assert!(
        !tokens
            .mark_once(&key, "a2", until)
            .await
            .expect("mark again"),
        "another attempt finds the mark: used"
    );
    // The same attempt again (a write retried after its answer was lost) finds its own
    // mark: still its.
    assert!(
        tokens
            .mark_once(&key, "a1", until)
            .await
            .expect("the same attempt again"),
        "a retried write finds its own mark"
    );
    assert!(!tokens.mark_once(&key, "a3", until).await.expect("a third"));
    // A mark past its expiry is gone, purged or not: another attempt takes it, and the
    // first attempt's no longer holds.
    let expired = aws::unique("flow");
    let past = now().timestamp() - 1;
    assert!(tokens.mark_once(&expired, "old", past).await.expect("mark"));
    assert!(
        tokens
            .mark_once(&expired, "new", until)
            .await
            .expect("take an expired mark"),
        "an expired mark counts as gone"
    );
    assert!(
        !tokens
            .mark_once(&expired, "old", until)
            .await
            .expect("the old attempt again"),
        "the mark is the new attempt's now"
    );
    let other = aws::unique("flow");
    assert!(
        tokens
            .mark_once(&other, "a2", until)
            .await
            .expect("another key")
    );

    // Of concurrent attempts on one key, exactly one wins.
    let raced = aws::unique("flow");
    let attempts = (0..8).map(|i| {
        let tokens = Arc::clone(&tokens);
        let raced = raced.clone();
        tokio::spawn(async move {
            let attempt = format!("racer-{i}");
            let won = tokens.mark_once(&raced, &attempt, until).await;
            won.map(|won| won.then_some(attempt))
        })
    });
    let mut winners = Vec::new();
    for attempt in attempts {
        if let Some(winner) = attempt.await.expect("task").expect("mark") {
            winners.push(winner);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one attempt wins: {winners:?}");
    // Only the mark's own attempt removes it; then the next try marks afresh.
    tokens
        .unmark(&raced, "not-the-winner")
        .await
        .expect("another attempt's unmark");
    assert!(
        !tokens
            .mark_once(&raced, "late", until)
            .await
            .expect("still marked")
    );
    tokens.unmark(&raced, &winners[0]).await.expect("unmark");
    assert!(
        tokens
            .mark_once(&raced, "late", until)
            .await
            .expect("mark again")
    );
    tokens
        .unmark("never-marked", "a1")
        .await
        .expect("absent is fine");
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

async fn a_pending_grant_is_read_in_place_taken_once_and_is_no_connection(
    tokens: Arc<dyn TokenStore>,
    _log: Arc<dyn FlowLog>,
) {
    let u = user();
    let flow = aws::unique("flow");
    assert_eq!(tokens.take_pending(&flow).await.expect("take"), None);
    assert_eq!(tokens.get_pending(&flow).await.expect("read"), None);
    let grant = pending(&flow, &u, "p");
    tokens.put_pending(&grant).await.expect("put");
    // Read without taking: it stays for the taker.
    for _ in 0..2 {
        assert_eq!(
            tokens.get_pending(&flow).await.expect("read"),
            Some(grant.clone())
        );
    }
    // Held grants are never connections: not read, not listed.
    assert_eq!(tokens.get(&u, "google").await.expect("get"), None);
    assert!(tokens.list(&u).await.expect("list").is_empty());
    // Nor listed under any user id, even one that looks like the flow's key.
    for odd in [
        format!("#flow#{flow}"),
        format!("flow#{flow}"),
        flow.clone(),
    ] {
        assert!(
            tokens.list(&odd).await.expect("list odd").is_empty(),
            "{odd}"
        );
    }
    tokens
        .mark_once(&flow, "a1", now().timestamp() + 600)
        .await
        .expect("mark");
    assert!(
        tokens
            .list(&format!("#flow#{flow}"))
            .await
            .expect("list")
            .is_empty()
    );

    assert_eq!(
        tokens.take_pending(&flow).await.expect("take"),
        Some(grant.clone())
    );
    assert_eq!(tokens.take_pending(&flow).await.expect("take again"), None);
    assert_eq!(
        tokens.get_pending(&flow).await.expect("read a taken one"),
        None
    );

    // Of concurrent takers, exactly one gets it.
    tokens.put_pending(&grant).await.expect("put again");
    let takers = (0..6).map(|_| {
        let tokens = Arc::clone(&tokens);
        let flow = flow.clone();
        tokio::spawn(async move { tokens.take_pending(&flow).await })
    });
    let mut got = 0;
    for taker in takers {
        if taker.await.expect("task").expect("take").is_some() {
            got += 1;
        }
    }
    assert_eq!(got, 1, "a pending grant is taken once");
}

async fn a_replaced_account_is_kept_on_the_row(
    tokens: Arc<dyn TokenStore>,
    _log: Arc<dyn FlowLog>,
) {
    let u = user();
    let r = Connection {
        replaced_account: Some(ReplacedAccount {
            sub: "before".into(),
            email: Some("before@example.com".into()),
            replaced_at: "2026-01-02T03:04:05.678Z".into(),
        }),
        ..row(&u, "google", 1, "r")
    };
    tokens.put(&r, None, &[]).await.expect("create");
    assert_eq!(
        tokens.get(&u, "google").await.expect("get"),
        Some(r.clone())
    );
    assert_eq!(tokens.list(&u).await.expect("list"), vec![r]);
}

/// The scope ledger and grant clocks survive every whole-row write (create, versioned
/// update, the lease holder's write) and every read (get, list, scan), and a partial
/// update (`touch`) leaves them as they were.
async fn the_grant_ledger_is_kept_on_the_row(tokens: Arc<dyn TokenStore>, _log: Arc<dyn FlowLog>) {
    let u = user();
    let at = |text: &str| {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .with_timezone(&Utc)
    };
    let ledger = GrantLedger {
        requested_scopes: vec![
            "openid".into(),
            "email".into(),
            "https://x.test/drive".into(),
        ],
        granted_scopes: vec!["openid".into(), "email".into()],
        requested_changed_at: Some(at("2026-01-02T03:04:05.678Z")),
        scopes_changed_at: Some(at("2026-01-02T03:04:06.001Z")),
        consented_at: Some(at("2026-01-02T03:04:05.678Z")),
        last_refreshed_at: Some(at("2026-01-03T00:00:00Z")),
        refresh_token_expires_at: Some(1_800_000_000),
        expiry_notice_for: Some(1_800_000_100),
        refresh_token_hash: Some("aGFzaA==".into()),
        refresh_token_prefix_hash: Some("cHJlZml4".into()),
    };
    let first = Connection {
        grant: ledger.clone(),
        ..row(&u, "google", 1, "r")
    };
    tokens.put(&first, None, &[]).await.expect("create");
    assert_eq!(
        tokens.get(&u, "google").await.expect("get"),
        Some(first.clone())
    );
    assert_eq!(tokens.list(&u).await.expect("list"), vec![first.clone()]);
    let (scanned, _) = scan_all(tokens.as_ref(), 1000).await;
    assert!(scanned.contains(&first), "a scan reads the ledger too");

    let later = at("2026-02-01T00:00:00Z");
    tokens
        .touch(&u, "google", later, 2_000_000_000)
        .await
        .expect("touch");
    let touched = tokens.get(&u, "google").await.expect("get").expect("row");
    assert_eq!(touched.grant, ledger, "touch leaves the ledger alone");

    let second = Connection {
        grant: GrantLedger {
            granted_scopes: ledger.requested_scopes.clone(),
            scopes_changed_at: Some(later),
            ..ledger.clone()
        },
        version: touched.version + 1,
        ..touched.clone()
    };
    tokens
        .put(&second, Some(touched.version), &[])
        .await
        .expect("update");
    assert_eq!(
        tokens.get(&u, "google").await.expect("get"),
        Some(second.clone())
    );

    let attempt = lease("ledger", Utc::now().timestamp_millis() + 60_000);
    tokens
        .acquire_lease(
            &u,
            "google",
            second.version,
            &attempt,
            Utc::now().timestamp_millis(),
        )
        .await
        .expect("lease");
    let third = Connection {
        grant: GrantLedger {
            last_refreshed_at: Some(later),
            ..GrantLedger::default()
        },
        version: second.version + 1,
        refresh: RefreshState::default(),
        ..second.clone()
    };
    tokens
        .put_as_holder(&third, &attempt.attempt, &[])
        .await
        .expect("holder write");
    assert_eq!(
        tokens
            .get(&u, "google")
            .await
            .expect("get")
            .map(|r| r.grant),
        Some(third.grant),
        "emptied fields read back empty"
    );
}

fn revocation(id: &str, user_id: &str, next_attempt_at: i64) -> PendingRevocation {
    PendingRevocation {
        id: id.into(),
        user_id: user_id.into(),
        provider: "google".into(),
        sub: "sub-1".into(),
        encrypted_token: row(user_id, "google", 1, id).encrypted_tokens,
        token_kind: "refresh_token".into(),
        created_at: now(),
        attempts: 1,
        next_attempt_at,
        expires_at: next_attempt_at + 86_400,
    }
}

/// Revocations to retry come back once due, are replaced by id, are removed, and are
/// never a connection (not listed, not scanned).
async fn revocations_wait_until_due_and_are_no_connection(
    tokens: Arc<dyn TokenStore>,
    _log: Arc<dyn FlowLog>,
) {
    let u = user();
    let t = now().timestamp();
    let (a, b) = (format!("a-{u}"), format!("b-{u}"));
    let first = revocation(&a, &u, t - 10);
    tokens.put_revocation(&first).await.expect("put a");
    tokens
        .put_revocation(&revocation(&b, &u, t + 3_600))
        .await
        .expect("put b");
    let ids = |list: Vec<PendingRevocation>| -> Vec<String> {
        list.into_iter()
            .map(|r| r.id)
            .filter(|id| id.ends_with(&u))
            .collect()
    };
    let due = tokens.revocations_due(t, 1000).await.expect("due");
    assert_eq!(
        due.iter().find(|r| r.id == a),
        Some(&first),
        "read back as written"
    );
    assert_eq!(ids(due), vec![a.clone()], "only what is due");
    assert!(tokens.list(&u).await.expect("list").is_empty());
    let (scanned, _) = scan_all(tokens.as_ref(), 1000).await;
    assert!(scanned.iter().all(|r| r.user_id != u), "a scan skips them");

    let later = PendingRevocation {
        attempts: 2,
        ..revocation(&a, &u, t + 60)
    };
    tokens.put_revocation(&later).await.expect("replace");
    assert!(ids(tokens.revocations_due(t, 1000).await.expect("due")).is_empty());
    let due = tokens.revocations_due(t + 3_600, 1000).await.expect("due");
    assert_eq!(ids(due.clone()).len(), 2);
    assert_eq!(due.iter().find(|r| r.id == a).map(|r| r.attempts), Some(2));

    // A reschedule holds only while the record is still at the attempts it read.
    let third = PendingRevocation {
        attempts: 3,
        ..later.clone()
    };
    assert!(matches!(
        tokens.reschedule_revocation(&third, 1).await,
        Err(StoreError::Conflict)
    ));
    tokens
        .reschedule_revocation(&third, 2)
        .await
        .expect("at 2 attempts: rescheduled");
    tokens.remove_revocation(&a).await.expect("remove");
    tokens
        .remove_revocation(&a)
        .await
        .expect("removing twice is fine");
    assert!(
        matches!(
            tokens.reschedule_revocation(&third, 3).await,
            Err(StoreError::Conflict)
        ),
        "a removed revocation does not come back"
    );
    assert_eq!(
        ids(tokens.revocations_due(t + 3_600, 1000).await.expect("due")),
        vec![b]
    );
}

/// An account's mint record is created once, then written only at the version read,
/// and is no connection.
async fn account_grants_are_written_conditionally(
    tokens: Arc<dyn TokenStore>,
    _log: Arc<dyn FlowLog>,
) {
    let sub = format!("sub-{}", user());
    assert_eq!(
        tokens.account_grants("google", &sub).await.expect("get"),
        None
    );
    let first = AccountGrants {
        provider: "google".into(),
        sub: sub.clone(),
        mints: vec![1_800_000_000],
        version: 1,
    };
    tokens
        .put_account_grants(&first, None)
        .await
        .expect("create");
    assert!(matches!(
        tokens.put_account_grants(&first, None).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        tokens.account_grants("google", &sub).await.expect("get"),
        Some(first.clone())
    );
    let second = AccountGrants {
        mints: vec![1_800_000_000, 1_800_000_005],
        version: 2,
        ..first.clone()
    };
    tokens
        .put_account_grants(&second, Some(1))
        .await
        .expect("update");
    assert!(matches!(
        tokens.put_account_grants(&second, Some(1)).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        tokens.account_grants("google", &sub).await.expect("get"),
        Some(second)
    );
    assert_eq!(
        tokens.account_grants("other", &sub).await.expect("get"),
        None
    );
    let (scanned, _) = scan_all(tokens.as_ref(), 1000).await;
    assert!(
        scanned.iter().all(|r| !r.user_id.contains(&sub)),
        "no connection"
    );
}

/// A job lease is held by one holder at a time, renewed by it, taken over only once
/// it lapsed, and given back only by its holder.
async fn a_job_lease_has_one_holder(tokens: Arc<dyn TokenStore>, _log: Arc<dyn FlowLog>) {
    let job = format!("job-{}", user());
    let t = now().timestamp_millis();
    assert!(
        tokens
            .take_job_lease(&job, "a", t + 1_000, t)
            .await
            .expect("a takes")
    );
    assert!(
        !tokens
            .take_job_lease(&job, "b", t + 1_000, t)
            .await
            .expect("b waits")
    );
    assert!(
        tokens
            .take_job_lease(&job, "a", t + 5_000, t + 500)
            .await
            .expect("a renews")
    );
    assert!(
        !tokens
            .take_job_lease(&job, "b", t + 9_000, t + 2_000)
            .await
            .expect("still a's"),
        "renewed past b's now"
    );
    assert!(
        tokens
            .take_job_lease(&job, "b", t + 9_000, t + 6_000)
            .await
            .expect("lapsed"),
        "a lapsed lease is taken over"
    );
    tokens.drop_job_lease(&job, "a").await.expect("a's drop");
    assert!(
        !tokens
            .take_job_lease(&job, "a", t + 9_000, t + 6_000)
            .await
            .expect("b's")
    );
    tokens.drop_job_lease(&job, "b").await.expect("b's drop");
    assert!(
        tokens
            .take_job_lease(&job, "a", t + 9_000, t + 6_000)
            .await
            .expect("free")
    );
    let (scanned, _) = scan_all(tokens.as_ref(), 1000).await;
    assert!(
        scanned.iter().all(|r| !r.user_id.contains(&job)),
        "no connection"
    );
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

async fn a_scan_pages_through_every_row_once_and_no_flow_item(
    tokens: Arc<dyn TokenStore>,
    _log: Arc<dyn FlowLog>,
) {
    let mut written = Vec::new();
    for i in 0..7 {
        let r = row(
            &user(),
            if i % 2 == 0 { "google" } else { "github" },
            1,
            "s",
        );
        tokens.put(&r, None, &[]).await.expect("create");
        written.push(r);
    }
    let flow = aws::unique("flow");
    tokens
        .mark_once(&flow, "a1", now().timestamp() + 600)
        .await
        .expect("mark");
    tokens
        .put_pending(&pending(&flow, &user(), "p"))
        .await
        .expect("pending");
    let (rows, pages) = scan_all(tokens.as_ref(), 3).await;
    assert!(pages >= 3, "7 rows at 3 a page: {pages} pages");
    let mut seen: Vec<_> = rows
        .iter()
        .map(|r| (r.user_id.clone(), r.provider.clone()))
        .collect();
    seen.sort();
    let total = seen.len();
    seen.dedup();
    assert_eq!(seen.len(), total, "no row twice");
    assert!(
        rows.iter()
            .all(|r| !r.provider.starts_with('#') && !r.user_id.starts_with('#')),
        "no flow item"
    );
    for r in &written {
        assert!(rows.contains(r), "{} is scanned whole", r.user_id);
    }
    assert_eq!(rows.len(), written.len(), "only the rows written");
}

/// The sealed item of `user_id`'s Google row.
fn sealed_row(user_id: &str) -> Sealed {
    Sealed::Connection {
        user_id: user_id.into(),
        provider: "google".into(),
    }
}

async fn a_rewrap_replaces_only_an_unchanged_envelope(
    tokens: Arc<dyn TokenStore>,
    _log: Arc<dyn FlowLog>,
) {
    let u = user();
    let r = row(&u, "google", 4, "w");
    tokens.put(&r, None, &[]).await.expect("create");
    let rewrapped = Envelope {
        key_id: "arn:aws:kms:us-east-1:123456789012:key/new".into(),
        edk: "bmV3LWVkaw==".into(),
        ..r.encrypted_tokens.clone()
    };
    tokens
        .rewrap(&sealed_row(&u), &r.encrypted_tokens, &rewrapped)
        .await
        .expect("rewrap of the envelope read");
    let stored = tokens.get(&u, "google").await.expect("get").expect("row");
    assert_eq!(
        stored,
        Connection {
            encrypted_tokens: rewrapped.clone(),
            ..r.clone()
        },
        "only the envelope changed: not version"
    );
    // Under a live refresh lease the holder will write the whole row from what it read
    // (a refresh or a deactivation): a re-wrap now would be undone, so it is refused.
    tokens
        .acquire_lease(&u, "google", 4, &lease("holder", 9_999_999_999_999), 0)
        .await
        .expect("lease");
    let leased = tokens.get(&u, "google").await.expect("get").expect("row");
    let under_lease = Envelope {
        edk: "bGVhc2Vk".into(),
        ..rewrapped.clone()
    };
    assert!(matches!(
        tokens
            .rewrap(&sealed_row(&u), &rewrapped, &under_lease)
            .await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        tokens.get(&u, "google").await.expect("get"),
        Some(leased),
        "a leased row is left as it was"
    );
    // Again from the old envelope: the row is no longer what was read.
    assert!(matches!(
        tokens
            .rewrap(&sealed_row(&u), &r.encrypted_tokens, &rewrapped)
            .await,
        Err(StoreError::Conflict)
    ));
    // A token write meanwhile wins: the re-wrap of what was read before it is refused.
    let written = row(&u, "google", 5, "x");
    tokens
        .put_as_holder(&written, "holder", &[])
        .await
        .expect("the holder writes new tokens");
    let stale = Envelope {
        edk: "c3RhbGU=".into(),
        ..rewrapped.clone()
    };
    assert!(matches!(
        tokens.rewrap(&sealed_row(&u), &rewrapped, &stale).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        tokens.get(&u, "google").await.expect("get"),
        Some(written.clone())
    );
    // A removed row is not brought back.
    tokens.delete(&u, "google", 5, &[]).await.expect("delete");
    assert!(matches!(
        tokens
            .rewrap(&sealed_row(&u), &written.encrypted_tokens, &stale)
            .await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(tokens.get(&u, "google").await.expect("get"), None);
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

async fn events_are_stored_with_their_change_or_not_at_all(
    tokens: Arc<dyn TokenStore>,
    _log: Arc<dyn FlowLog>,
) {
    let u = user();
    let from = Utc::now().timestamp_millis() - 1;
    let mut seq = 0;
    let mut ev = |kind: &str| {
        seq += 1;
        event_at(Utc::now().timestamp_millis(), seq, &u, kind)
    };
    let v1 = row(&u, "google", 1, "a");
    tokens
        .put(&v1, None, &[ev("created")])
        .await
        .expect("create");
    // Lost conditions: the row stays, and no event is stored.
    let lost = tokens.put(&v1, None, &[ev("lost.create")]).await;
    assert!(matches!(lost, Err(StoreError::Conflict)), "{lost:?}");
    let v2 = row(&u, "google", 2, "b");
    let lost = tokens.put(&v2, Some(7), &[ev("lost.put")]).await;
    assert!(matches!(lost, Err(StoreError::Conflict)), "{lost:?}");
    tokens
        .put(&v2, Some(1), &[ev("put.1"), ev("put.2")])
        .await
        .expect("update with two events");
    tokens
        .acquire_lease(
            &u,
            "google",
            2,
            &lease("mine", Utc::now().timestamp_millis() + 60_000),
            Utc::now().timestamp_millis(),
        )
        .await
        .expect("lease");
    let v3 = row(&u, "google", 3, "c");
    let lost = tokens
        .put_as_holder(&v3, "theirs", &[ev("lost.holder")])
        .await;
    assert!(matches!(lost, Err(StoreError::Conflict)), "{lost:?}");
    let after = LeaseRelease {
        retry_at_ms: Some(Utc::now().timestamp_millis() + 30_000),
        unknown_since_ms: None,
    };
    let lost = tokens
        .release_lease(&u, "google", "theirs", after, &[ev("lost.release")])
        .await;
    assert!(matches!(lost, Err(StoreError::Conflict)), "{lost:?}");
    tokens
        .release_lease(&u, "google", "mine", after, &[ev("released")])
        .await
        .expect("release with an event");
    let back = tokens.get(&u, "google").await.expect("get").expect("row");
    assert_eq!(back.version, 2);
    assert_eq!(back.refresh.retry_at_ms, after.retry_at_ms);
    tokens
        .acquire_lease(
            &u,
            "google",
            2,
            &lease("mine2", Utc::now().timestamp_millis() + 60_000),
            Utc::now().timestamp_millis(),
        )
        .await
        .expect("lease again");
    let mut v3 = row(&u, "google", 3, "c");
    v3.refresh = RefreshState::default();
    tokens
        .put_as_holder(&v3, "mine2", &[ev("refreshed")])
        .await
        .expect("holder write with an event");
    let lost = tokens.delete(&u, "google", 2, &[ev("lost.delete")]).await;
    assert!(matches!(lost, Err(StoreError::Conflict)), "{lost:?}");
    assert_eq!(
        tokens
            .get(&u, "google")
            .await
            .expect("get")
            .map(|r| r.version),
        Some(3),
        "a lost delete leaves the row"
    );
    assert!(
        tokens
            .delete(&u, "google", 3, &[ev("deleted")])
            .await
            .expect("delete with an event"),
        "the row was removed"
    );
    assert!(
        !tokens
            .delete(&u, "google", 3, &[ev("lost.missing")])
            .await
            .expect("delete of no row"),
        "no row: nothing removed"
    );
    let to = Utc::now().timestamp_millis() + 1;
    assert_eq!(
        kinds_between(tokens.as_ref(), &u, from, to).await,
        [
            "created",
            "put.1",
            "put.2",
            "released",
            "refreshed",
            "deleted"
        ],
        "every stored change's events, in order, and none of a lost one"
    );
}

async fn webhook_state_is_written_conditionally(
    tokens: Arc<dyn TokenStore>,
    _log: Arc<dyn FlowLog>,
) {
    let endpoint = aws::unique("wh");
    assert_eq!(tokens.webhook_state(&endpoint).await.expect("read"), None);
    let first = WebhookState {
        cursor: "019ac1a2-7b3c-7d4e-8f50-6a7b8c9d0e1f".into(),
        pending: vec![PendingDelivery {
            event_id: "019ac1a2-7b3c-7d4e-8f50-6a7b8c9d0e20".into(),
            user_id: "u/ü".into(),
            provider: "google".into(),
            attempts: 3,
            next_attempt_ms: 1_800_000_000_123,
        }],
        version: 1,
    };
    tokens
        .put_webhook_state(&endpoint, &first, None)
        .await
        .expect("create");
    assert_eq!(
        tokens
            .webhook_state(&endpoint)
            .await
            .expect("read")
            .as_ref(),
        Some(&first)
    );
    let again = tokens.put_webhook_state(&endpoint, &first, None).await;
    assert!(matches!(again, Err(StoreError::Conflict)), "{again:?}");
    let second = WebhookState {
        pending: Vec::new(),
        version: 2,
        ..first.clone()
    };
    let stale = tokens.put_webhook_state(&endpoint, &second, Some(7)).await;
    assert!(matches!(stale, Err(StoreError::Conflict)), "{stale:?}");
    tokens
        .put_webhook_state(&endpoint, &second, Some(1))
        .await
        .expect("update");
    assert_eq!(
        tokens.webhook_state(&endpoint).await.expect("read"),
        Some(second)
    );
    // A service item: no user's connection, and no scan's row.
    let (rows, _) = scan_all(tokens.as_ref(), 100).await;
    assert!(rows.iter().all(|r| !r.user_id.contains(&endpoint)));
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

every_backend!(
    create_then_read,
    conditional_update_wins_and_loses,
    create_when_exists_loses,
    delete_is_conditional,
    list_by_user,
    flow_log_orders_steps_of_one_instant,
    flow_log_pages_with_before,
    flush_writes_everything_queued,
    pings_answer,
    the_refresh_lease_is_exclusive,
    a_lapsed_lease_is_held_for_its_attempt,
    only_the_holder_writes,
    a_released_lease_leaves_its_cooldown,
    touch_is_a_partial_update,
    a_mark_is_made_once,
    a_pending_grant_is_read_in_place_taken_once_and_is_no_connection,
    a_replaced_account_is_kept_on_the_row,
    the_grant_ledger_is_kept_on_the_row,
    revocations_wait_until_due_and_are_no_connection,
    a_job_lease_has_one_holder,
    account_grants_are_written_conditionally,
    a_scan_pages_through_every_row_once_and_no_flow_item,
    a_rewrap_replaces_only_an_unchanged_envelope,
    events_are_stored_with_their_change_or_not_at_all,
    webhook_state_is_written_conditionally,
);

mod sealed;
mod stamping;
