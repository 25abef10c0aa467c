//! The takeover rules: a lease that lapsed without being given back (its holder cut
//! off from the store while it holds new tokens) is held for its holder, and taken
//! over only after the grace, knowing the outcome is unknown. Each instance reaches
//! the one store file through its own [`Link`], which a test cuts as a network would.

use super::faults::{DOWN, Keys, LOSE_ANSWERS, Link, READ_ONLY, UP};
use super::*;
use crate::crypto::CryptoError;
use crate::oauth::grant::Cause;
use crate::oauth::provider::GrantRefusal;
use crate::store::FlowStep;

/// A one-second lease (extended every third of it), and `grace` of hold.
fn short_lease(grace: Duration) -> TokenPolicy {
    TokenPolicy {
        lease_ttl: Duration::from_secs(1),
        takeover_grace: grace,
        refresh_cooldown: Duration::ZERO,
        ..policy()
    }
}

/// Waits (bounded) until `done`.
async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Instance A (through `link`) starts a refresh; its link is cut once the provider has
/// the request, so A redeems and cannot store the result. Returns what A's reader got.
async fn redeemed_then_cut_off(
    a: &Arc<Refresher>,
    link: &Link,
    endpoint: &Arc<Scripted>,
) -> Outcome {
    let reader = tokio::spawn({
        let (a, endpoint) = (Arc::clone(a), Arc::clone(endpoint));
        async move { read(&a, &endpoint).await }
    });
    until("the provider has the request", async || {
        endpoint.calls() >= 1
    })
    .await;
    link.set(DOWN);
    reader.await.expect("reader")
}

/// A rotating provider that answers every refresh 503.
fn failing() -> Arc<Scripted> {
    Scripted::new(
        ROTATING,
        vec![(
            Duration::ZERO,
            Err(ProviderError::Unavailable("HTTP 503".into())),
        )],
    )
}

/// Waits until the lease on the row has lapsed.
async fn until_lapsed(world: &World) {
    until("the lease lapsed", async || {
        let now = Utc::now().timestamp_millis();
        world
            .row()
            .await
            .refresh
            .lease
            .is_some_and(|l| l.until_ms < now && l.lapsed_at_ms.is_none())
    })
    .await;
}

fn pending_for(outcome: Outcome) -> u64 {
    match outcome {
        Err(TokenError::RefreshOutcomePending { retry_after_secs }) => retry_after_secs,
        other => panic!("expected 503 outcome pending, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_lease_is_held_for_its_holder_whose_retried_write_then_lands() {
    let world = World::new().await;
    let endpoint = Scripted::new(ROTATING, vec![(Duration::from_millis(300), Ok(()))]);
    // Longer than the holder's retry interval (at most twice PERSIST_BACKOFF's max).
    let grace = Duration::from_secs(6);
    let link = Link::new(&world);
    let a = world.instance_on(link.clone(), short_lease(grace));
    let b = world.instance(short_lease(grace));
    // A's caller gets the new token although A cannot store it.
    assert_eq!(
        access(&redeemed_then_cut_off(&a, &link, &endpoint).await),
        "at-1"
    );
    until_lapsed(&world).await;
    // B finds the lapsed lease: it holds it for A, answers 503, redeems nothing.
    let wait = pending_for(read(&b, &endpoint).await);
    assert!((1..=6).contains(&wait), "Retry-After {wait}");
    let lease = world.row().await.refresh.lease.expect("lease");
    assert!(lease.lapsed_at_ms.is_some());
    pending_for(read(&b, &endpoint).await);
    assert_eq!(endpoint.calls(), 1, "nothing redeemed during the hold");
    // A reaches the store again: its retried write lands before the hold ends.
    link.set(UP);
    until("A's tokens are stored", async || {
        world.stored_refresh_token().await.as_deref() == Some("rt-1")
    })
    .await;
    assert_eq!(access(&read(&b, &endpoint).await), "at-1");
    assert_eq!(endpoint.presented.lock().clone(), vec!["rt-0".to_string()]);
    assert_eq!(world.row().await.refresh, RefreshState::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_that_ends_without_the_holders_write_is_taken_over_knowing_the_outcome_is_unknown() {
    let world = World::new().await;
    let endpoint = Scripted::new(
        ROTATING,
        vec![
            (Duration::from_millis(300), Ok(())),
            (
                Duration::ZERO,
                Err(ProviderError::InvalidGrant(GrantRefusal::Unspecified)),
            ),
        ],
    );
    let grace = Duration::from_millis(1500);
    let link = Link::new(&world);
    let a = world.instance_on(link.clone(), short_lease(grace));
    let b = world.instance(short_lease(grace));
    access(&redeemed_then_cut_off(&a, &link, &endpoint).await);
    until_lapsed(&world).await;
    pending_for(read(&b, &endpoint).await);
    assert_eq!(endpoint.calls(), 1);
    // A never comes back: after the grace B redeems the stored (spent) token, and the
    // refusal names the unknown outcome rather than a revocation.
    tokio::time::sleep(grace + Duration::from_millis(100)).await;
    match read(&b, &endpoint).await {
        Err(TokenError::ReauthorizationRequired { cause }) => {
            assert_eq!(cause, Cause::RefreshOutcomeUnknown.code())
        }
        other => panic!("expected 409, got {:?}", other.map(|_| ())),
    }
    assert_eq!(endpoint.calls(), 2);
    let row = world.row().await;
    assert!(!row.is_active);
    assert_eq!(
        row.refresh.inactive_cause.as_deref(),
        Some(Cause::RefreshOutcomeUnknown.code())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_starts_only_once_the_lapsed_lease_could_be_held() {
    let world = World::new().await;
    let endpoint = Scripted::new(ROTATING, vec![(Duration::from_millis(300), Ok(()))]);
    let grace = Duration::from_millis(1500);
    let (a_link, b_link) = (Link::new(&world), Link::new(&world));
    let a = world.instance_on(a_link.clone(), short_lease(grace));
    let b = world.instance_on(b_link.clone(), short_lease(grace));
    access(&redeemed_then_cut_off(&a, &a_link, &endpoint).await);
    // B reads the store but cannot write to it (SQLite locked by another writer): it
    // sees the lapsed lease, cannot hold it, answers 503, and never redeems.
    b_link.set(READ_ONLY);
    until_lapsed(&world).await;
    let first_seen = read(&b, &endpoint).await;
    assert!(matches!(first_seen, Err(TokenError::Store(_))), "503 store");
    tokio::time::sleep(grace + Duration::from_millis(200)).await;
    assert!(matches!(
        read(&b, &endpoint).await,
        Err(TokenError::Store(_))
    ));
    // Writes come back: a grace since the first sight has passed, yet the lease is
    // held now (A may reach the store only now too), not taken over.
    b_link.set(UP);
    let held_at = Utc::now().timestamp_millis();
    // (A reader arriving as a flight ends joins it: let the last one go.)
    tokio::time::sleep(Duration::from_millis(100)).await;
    pending_for(read(&b, &endpoint).await);
    let lease = world.row().await.refresh.lease.expect("lease");
    assert!(lease.lapsed_at_ms.is_some_and(|at| at >= held_at));
    assert_eq!(endpoint.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_redeem_is_started_past_the_lease_a_cut_off_holder_could_not_extend() {
    let world = World::new().await;
    let endpoint = failing();
    let policy = TokenPolicy {
        refresh_deadline: Duration::from_secs(10),
        refresh_wait: Duration::from_secs(12),
        ..short_lease(Duration::from_secs(1))
    };
    let link = Link::new(&world);
    let a = world.instance_on(link.clone(), policy);
    let started = tokio::time::Instant::now();
    let outcome = redeemed_then_cut_off(&a, &link, &endpoint).await;
    assert!(matches!(
        outcome,
        Err(TokenError::Provider(ProviderError::Unavailable(_)))
    ));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "retries stop at the lease's end, not the 10-second deadline ({:?})",
        started.elapsed()
    );
    let calls = endpoint.calls();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(endpoint.calls(), calls, "no redeem after the lease's end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_fails_while_the_store_blips_lands_once_it_is_back() {
    let world = World::new().await;
    let endpoint = failing();
    let policy = TokenPolicy {
        refresh_deadline: Duration::from_millis(300),
        refresh_cooldown: Duration::from_secs(30),
        ..short_lease(Duration::from_secs(5))
    };
    let link = Link::new(&world);
    let a = world.instance_on(link.clone(), policy);
    let outcome = redeemed_then_cut_off(&a, &link, &endpoint).await;
    assert!(matches!(
        outcome,
        Err(TokenError::Provider(ProviderError::Unavailable(_)))
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    link.set(UP);
    until("the lease is given back", async || {
        world.row().await.refresh.lease.is_none()
    })
    .await;
    assert!(
        world.row().await.refresh.retry_at_ms.is_some(),
        "the cooldown was recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_key_is_drawn_before_the_redeem() {
    let keys = Arc::new(Keys {
        inner: LocalKeyProvider::new(SecretKey::generate()),
        down: std::sync::atomic::AtomicBool::new(false),
    });
    let world = World::with_keys(keys.clone()).await;
    keys.down.store(true, Ordering::SeqCst);
    let endpoint = Scripted::new(ROTATING, vec![(Duration::from_millis(300), Ok(()))]);
    let a = world.instance(policy());
    // The key service is away: nothing is redeemed that could not be sealed.
    assert!(matches!(
        read(&a, &endpoint).await,
        Err(TokenError::Crypto(CryptoError::Unavailable(_)))
    ));
    assert_eq!(endpoint.calls(), 0);
    assert_eq!(
        world.row().await.refresh.lease,
        None,
        "the lease was given back"
    );
    // It goes away during the redeem: the tokens are sealed with the key drawn before.
    keys.down.store(false, Ordering::SeqCst);
    // (A reader arriving as a flight ends joins it: let the last one go.)
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reader = tokio::spawn({
        let (a, endpoint) = (Arc::clone(&a), Arc::clone(&endpoint));
        async move { read(&a, &endpoint).await }
    });
    until("the provider has the request", async || {
        endpoint.calls() == 1
    })
    .await;
    keys.down.store(true, Ordering::SeqCst);
    assert_eq!(access(&reader.await.expect("reader")), "at-1");
    assert_eq!(world.stored_refresh_token().await.as_deref(), Some("rt-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_was_lost_is_found_stored_when_its_retry_conflicts() {
    let world = World::new().await;
    let endpoint = Scripted::new(ROTATING, vec![(Duration::from_millis(300), Ok(()))]);
    let link = Link::new(&world);
    let a = world.instance_on(link.clone(), policy());
    let reader = tokio::spawn({
        let (a, endpoint) = (Arc::clone(&a), Arc::clone(&endpoint));
        async move { read(&a, &endpoint).await }
    });
    until("the provider has the request", async || {
        endpoint.calls() >= 1
    })
    .await;
    link.set(LOSE_ANSWERS);
    assert_eq!(access(&reader.await.expect("reader")), "at-1");
    link.set(UP);
    let steps = async || {
        world
            .flow_log
            .log()
            .list("user", 50, None)
            .await
            .expect("flow log")
            .into_iter()
            .map(|e| e.step)
            .collect::<Vec<_>>()
    };
    until("the refresh is logged", async || {
        steps().await.contains(&FlowStep::TokenRefreshed)
    })
    .await;
    assert!(
        !steps().await.contains(&FlowStep::RefreshFailed),
        "the retry's conflict was its own write, not a lost lease"
    );
    assert_eq!(world.stored_refresh_token().await.as_deref(), Some("rt-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_probe_stopped_by_the_key_service_lets_the_next_probe_through() {
    let keys = Arc::new(Keys {
        inner: LocalKeyProvider::new(SecretKey::generate()),
        down: std::sync::atomic::AtomicBool::new(false),
    });
    let world = World::with_keys(keys.clone()).await;
    let endpoint = failing();
    let a = world.instance(TokenPolicy {
        refresh_deadline: Duration::from_millis(50),
        refresh_cooldown: Duration::ZERO,
        circuit_failures: 1,
        circuit_open: Duration::from_millis(200),
        ..policy()
    });
    assert!(matches!(
        read(&a, &endpoint).await,
        Err(TokenError::Provider(ProviderError::Unavailable(_)))
    ));
    // The circuit is half-open: this read is its probe, and stops before the provider.
    tokio::time::sleep(Duration::from_millis(300)).await;
    keys.down.store(true, Ordering::SeqCst);
    assert!(matches!(
        read(&a, &endpoint).await,
        Err(TokenError::Crypto(CryptoError::Unavailable(_)))
    ));
    keys.down.store(false, Ordering::SeqCst);
    *endpoint.answers.lock() = vec![(Duration::ZERO, Ok(()))].into();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(access(&read(&a, &endpoint).await), "at-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_lease_is_taken_over_at_once_where_refresh_tokens_do_not_rotate() {
    let world = World::new().await;
    let endpoint = Scripted::new(GOOGLE, vec![(Duration::from_millis(300), Ok(()))]);
    let link = Link::new(&world);
    let a = world.instance_on(link.clone(), short_lease(Duration::from_secs(6)));
    let b = world.instance(short_lease(Duration::from_secs(6)));
    access(&redeemed_then_cut_off(&a, &link, &endpoint).await);
    until_lapsed(&world).await;
    // The stored refresh token still works: no hold, B refreshes with it.
    assert_eq!(access(&read(&b, &endpoint).await), "at-2");
    assert_eq!(endpoint.presented.lock().clone(), vec!["rt-0"; 2]);
}
