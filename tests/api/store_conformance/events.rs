//! Events stored with their change.

use super::*;

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

every_backend!(events_are_stored_with_their_change_or_not_at_all,);
