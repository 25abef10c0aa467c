//! `axnt-oauth events replay`: every endpoint's cursor moved back.

use chrono::Utc;

use super::Endpoint;
use crate::retry::{Written, until_written};
use crate::store::{StoreError, WebhookCursors, event_bound};

/// Moves every endpoint's cursor back to `since`, so the service delivers every event
/// made since then again (`axnt-oauth events replay`). Events still owed stay owed.
/// Returns each endpoint's id and whether its state was written.
pub(crate) async fn rewind(
    store: &dyn WebhookCursors,
    urls: &[url::Url],
    since: chrono::DateTime<Utc>,
) -> Vec<(String, Result<(), StoreError>)> {
    let cursor = event_bound(since.timestamp_millis());
    let mut out = Vec::new();
    for url in urls {
        let endpoint = Endpoint::new(url.clone());
        // A running worker may store its state meanwhile: read again and retry.
        let result = until_written(5, || async {
            let stored = store.webhook_state(&endpoint.id).await?;
            let expected = stored.as_ref().map(|s| s.version);
            let mut state = stored.unwrap_or_default();
            // Back only: an endpoint behind `since` keeps what it still owes.
            if state.cursor.is_empty() || state.cursor > cursor {
                state.cursor = cursor.clone();
            }
            state.version = expected.map_or(1, |v| v + 1);
            match store
                .put_webhook_state(&endpoint.id, &state, expected)
                .await
            {
                Ok(()) => Ok(Written::Done(())),
                Err(StoreError::Conflict) => Ok(Written::Lost),
                Err(e) => Err(e),
            }
        })
        .await
        .and_then(|done| done.ok_or(StoreError::Conflict));
        out.push((endpoint.id, result));
    }
    out
}
