//! Webhook endpoints' delivery state.

use super::*;

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

every_backend!(webhook_state_is_written_conditionally,);
