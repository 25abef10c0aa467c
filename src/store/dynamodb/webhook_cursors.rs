//! Webhook endpoints' delivery state.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;

use super::item::{n, s};
use super::{DynamoStore, call};
use crate::store::{StoreError, WebhookCursors, WebhookState};

/// The delivery state of a webhook endpoint: `#webhook#<endpoint id>` / `#state`.
const WEBHOOK_PREFIX: &str = "#webhook#";
const WEBHOOK_STATE: &str = "#state";

#[async_trait]
impl WebhookCursors for DynamoStore {
    async fn webhook_state(&self, endpoint: &str) -> Result<Option<WebhookState>, StoreError> {
        let table = &self.tokens_table;
        let out = call(
            "GetItem",
            self.client
                .get_item()
                .table_name(table)
                .key("userId", s(format!("{WEBHOOK_PREFIX}{endpoint}")))
                .key("provider", s(WEBHOOK_STATE))
                .consistent_read(true)
                .send()
                .await,
        )
        .map_err(|f| self.error("GetItem", table, f))?;
        let Some(item) = out.item() else {
            return Ok(None);
        };
        let text = match item.get("state") {
            Some(AttributeValue::S(text)) => text,
            _ => return Err(StoreError::Corrupt("state: expected string".into())),
        };
        let mut state: WebhookState = serde_json::from_str(text)
            .map_err(|_| StoreError::Corrupt("state: not a delivery state".into()))?;
        state.version = match item.get("version") {
            Some(AttributeValue::N(v)) => v
                .parse()
                .map_err(|_| StoreError::Corrupt("version: expected num".into()))?,
            _ => return Err(StoreError::Corrupt("version: missing".into())),
        };
        Ok(Some(state))
    }

    async fn put_webhook_state(
        &self,
        endpoint: &str,
        state: &WebhookState,
        expected: Option<u64>,
    ) -> Result<(), StoreError> {
        let table = &self.tokens_table;
        let text = serde_json::to_string(state)
            .map_err(|e| StoreError::Corrupt(format!("webhook state: {e}")))?;
        let request = self
            .client
            .put_item()
            .table_name(table)
            .item("userId", s(format!("{WEBHOOK_PREFIX}{endpoint}")))
            .item("provider", s(WEBHOOK_STATE))
            .item("state", s(text))
            .item("version", n(state.version));
        self.put_versioned(request, expected).await
    }
}
