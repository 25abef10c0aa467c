//! The refresh lease: exclusive, held for a lapsed attempt, and the holder's writes.

use super::*;

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

every_backend!(
    the_refresh_lease_is_exclusive,
    a_lapsed_lease_is_held_for_its_attempt,
    only_the_holder_writes,
    a_released_lease_leaves_its_cooldown,
);
