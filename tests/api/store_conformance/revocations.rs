//! Revocations kept to be tried again.

use super::*;

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

every_backend!(revocations_wait_until_due_and_are_no_connection,);
