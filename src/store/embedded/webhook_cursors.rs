//! Webhook endpoints' delivery state.

use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{OptionalExtension, params};

use super::{EmbeddedStore, corrupt, sql};
use crate::store::{StoreError, WebhookCursors, WebhookState};

#[async_trait]
impl WebhookCursors for EmbeddedStore {
    async fn webhook_state(&self, endpoint: &str) -> Result<Option<WebhookState>, StoreError> {
        let endpoint = endpoint.to_string();
        let found: Option<(String, i64)> = self
            .with_reader(move |db| {
                db.prepare_cached("SELECT state, version FROM webhook_state WHERE endpoint = ?1")
                    .and_then(|mut stmt| {
                        stmt.query_row(params![endpoint], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()
                    })
                    .map_err(sql)
            })
            .await?;
        found
            .map(|(state, version)| {
                let mut state: WebhookState =
                    serde_json::from_str(&state).map_err(|e| corrupt("webhook state", e))?;
                state.version = u64::try_from(version).map_err(|e| corrupt("version", e))?;
                Ok(state)
            })
            .transpose()
    }

    async fn put_webhook_state(
        &self,
        endpoint: &str,
        state: &WebhookState,
        expected: Option<u64>,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(state).map_err(|e| corrupt("webhook state", e))?;
        let version = i64::try_from(state.version).map_err(|e| corrupt("version", e))?;
        let mut args = vec![
            Value::from(endpoint.to_string()),
            Value::from(text),
            Value::from(version),
        ];
        let statement = match expected {
            None => {
                "INSERT INTO webhook_state (endpoint, state, version) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (endpoint) DO NOTHING"
            }
            Some(expected) => {
                args.push(Value::from(
                    i64::try_from(expected).map_err(|e| corrupt("version", e))?,
                ));
                "UPDATE webhook_state SET state = ?2, version = ?3 WHERE endpoint = ?1 AND version = ?4"
            }
        };
        self.update_one(statement, args).await
    }
}
