//! Single-use marks and grants held for confirmation.

use super::*;

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

every_backend!(
    a_mark_is_made_once,
    a_pending_grant_is_read_in_place_taken_once_and_is_no_connection,
);
