//! Every sealed item (connection rows, kept revocations, held grants) is found by a
//! sealed scan, page by page and once, with its envelope; and is re-wrapped only while
//! its envelope is still the one read, so a concurrent change wins.

use std::sync::Arc;

use axnt_oauth::crypto::Envelope;
use axnt_oauth::store::{
    FlowLog, PendingGrant, PendingRevocation, Sealed, SealedItem, StoreError, TokenStore,
    WebhookState,
};

use super::{lease, now, pending, revocation, row, sealed_row, user};
use crate::support::aws;
use axnt_oauth::store::Connection;

/// Every item of a sealed scan, `limit` a page.
async fn scan_sealed_all(tokens: &dyn TokenStore, limit: usize) -> Vec<SealedItem> {
    let mut items = Vec::new();
    let mut cursor: Option<Sealed> = None;
    for _ in 0..10_000 {
        let page = tokens
            .scan_sealed(cursor.as_ref(), limit)
            .await
            .expect("scan");
        assert!(page.items.len() <= limit, "a page holds at most its limit");
        items.extend(page.items);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return items,
        }
    }
    panic!("the sealed scan never ended");
}

/// The same envelope under another wrapping key.
fn rewrapped(old: &Envelope, key: &str) -> Envelope {
    Envelope {
        key_id: format!("arn:aws:kms:us-east-1:123456789012:key/{key}"),
        edk: format!("ZWRr{key}"),
        ..old.clone()
    }
}

async fn every_sealed_item_is_scanned_once_with_its_envelope(
    tokens: Arc<dyn TokenStore>,
    _log: Arc<dyn FlowLog>,
) {
    let u = user();
    let connection = row(&u, "google", 1, "row");
    tokens.put(&connection, None, &[]).await.expect("row");
    let kept = revocation(&format!("kept-{u}"), &u, now().timestamp() + 3_600);
    tokens.put_revocation(&kept).await.expect("revocation");
    let flow = aws::unique("flow");
    let held = pending(&flow, &u, "held");
    tokens.put_pending(&held).await.expect("held grant");
    // Items that seal nothing are not among them.
    let t = now().timestamp_millis();
    tokens
        .mark_once(&flow, "attempt", now().timestamp() + 600)
        .await
        .expect("mark");
    assert!(
        tokens
            .take_job_lease(&format!("job-{u}"), "a", t + 60_000, t)
            .await
            .expect("lease")
    );
    tokens
        .put_webhook_state(
            &format!("wh-{u}"),
            &WebhookState {
                version: 1,
                ..WebhookState::default()
            },
            None,
        )
        .await
        .expect("webhook state");

    let items = scan_sealed_all(tokens.as_ref(), 2).await;
    let mut keys: Vec<String> = items.iter().map(|i| format!("{:?}", i.item)).collect();
    keys.sort();
    let total = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), total, "no item twice");
    let ours: Vec<&SealedItem> = items
        .iter()
        .filter(|i| {
            let key = format!("{:?}", i.item);
            key.contains(&u) || key.contains(&flow)
        })
        .collect();
    let expected = [
        SealedItem {
            item: Sealed::Connection {
                user_id: u.clone(),
                provider: "google".into(),
            },
            envelope: connection.encrypted_tokens.clone(),
        },
        SealedItem {
            item: Sealed::Revocation {
                id: kept.id.clone(),
            },
            envelope: kept.encrypted_token.clone(),
        },
        SealedItem {
            item: Sealed::PendingGrant {
                flow_id: flow.clone(),
            },
            envelope: held.encrypted_tokens.clone(),
        },
    ];
    assert_eq!(ours.len(), expected.len(), "{ours:#?}");
    for item in &expected {
        assert!(ours.contains(&item), "{item:?} in {ours:#?}");
    }
}

async fn a_kept_revocation_is_rewrapped_only_unchanged_and_a_retry_keeps_it(
    tokens: Arc<dyn TokenStore>,
    _log: Arc<dyn FlowLog>,
) {
    let u = user();
    let t = now().timestamp();
    let kept = revocation(&format!("kept-{u}"), &u, t - 10);
    tokens.put_revocation(&kept).await.expect("put");
    let item = Sealed::Revocation {
        id: kept.id.clone(),
    };
    let new = rewrapped(&kept.encrypted_token, "new");
    tokens
        .rewrap(&item, &kept.encrypted_token, &new)
        .await
        .expect("rewrap of the envelope read");
    assert!(matches!(
        tokens.rewrap(&item, &kept.encrypted_token, &new).await,
        Err(StoreError::Conflict)
    ));
    let due = |at: i64| {
        let tokens = Arc::clone(&tokens);
        let id = kept.id.clone();
        async move {
            tokens
                .revocations_due(at, 1000)
                .await
                .expect("due")
                .into_iter()
                .find(|r| r.id == id)
        }
    };
    assert_eq!(
        due(t).await,
        Some(PendingRevocation {
            encrypted_token: new.clone(),
            ..kept.clone()
        }),
        "only the envelope changed"
    );
    // A retry that read the record before the re-wrap records its attempt: the
    // re-wrapped token stays.
    let retried = PendingRevocation {
        attempts: 2,
        next_attempt_at: t + 60,
        ..kept.clone()
    };
    tokens
        .reschedule_revocation(&retried, 1)
        .await
        .expect("reschedule");
    assert_eq!(
        due(t + 60).await,
        Some(PendingRevocation {
            encrypted_token: new.clone(),
            ..retried
        })
    );
    // A removed revocation is not brought back.
    tokens.remove_revocation(&kept.id).await.expect("remove");
    assert!(matches!(
        tokens.rewrap(&item, &new, &rewrapped(&new, "newer")).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(due(t + 60).await, None);
}

async fn a_held_grant_is_rewrapped_only_unchanged(
    tokens: Arc<dyn TokenStore>,
    _log: Arc<dyn FlowLog>,
) {
    let flow = aws::unique("flow");
    let held = pending(&flow, &user(), "held");
    tokens.put_pending(&held).await.expect("put");
    let item = Sealed::PendingGrant {
        flow_id: flow.clone(),
    };
    let new = rewrapped(&held.encrypted_tokens, "new");
    tokens
        .rewrap(&item, &held.encrypted_tokens, &new)
        .await
        .expect("rewrap of the envelope read");
    assert!(matches!(
        tokens.rewrap(&item, &held.encrypted_tokens, &new).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        tokens.take_pending(&flow).await.expect("take"),
        Some(PendingGrant {
            encrypted_tokens: new.clone(),
            ..held
        }),
        "only the envelope changed"
    );
    // Taken (confirmed) meanwhile: nothing comes back.
    assert!(matches!(
        tokens.rewrap(&item, &new, &rewrapped(&new, "newer")).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(tokens.take_pending(&flow).await.expect("take"), None);
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

every_backend!(
    a_rewrap_replaces_only_an_unchanged_envelope,
    every_sealed_item_is_scanned_once_with_its_envelope,
    a_kept_revocation_is_rewrapped_only_unchanged_and_a_retry_keeps_it,
    a_held_grant_is_rewrapped_only_unchanged,
);
