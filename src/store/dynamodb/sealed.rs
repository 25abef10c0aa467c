//! Sealed items for key rotation: connection rows, kept revocations (`#revocations` /
//! `#revoke#<id>`) and held grants (`#flow#<flowId>` / `#pending`) all keep their
//! envelope as `encryptedTokens`, so one `Scan` reads them all, and one conditional
//! `UpdateItem` re-wraps any of them.

use crate::store::SealedItems;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::Deserialize;

use super::DynamoStore;
use super::call;
use super::item::{
    FLOW_PREFIX, LEASE_ATTEMPT, LEASE_UNTIL, PENDING, REVOCATIONS, REVOKE_PREFIX, flow_key,
    from_item, last_key, n, s, start_key,
};
use crate::crypto::Envelope;
use crate::store::{Sealed, SealedItem, SealedPage, StoreError};

/// What a sealed item's page reads of it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SealedProjection {
    user_id: String,
    provider: String,
    encrypted_tokens: Envelope,
}

/// The table key of a sealed item, or of a scan position.
fn key_of(item: &Sealed) -> (String, String) {
    match item {
        Sealed::Connection { user_id, provider } => (user_id.clone(), provider.clone()),
        Sealed::Revocation { id } => (REVOCATIONS.into(), format!("{REVOKE_PREFIX}{id}")),
        Sealed::PendingGrant { flow_id } => (flow_key(flow_id), PENDING.into()),
    }
}

/// The sealed item (or scan position) at a table key: [`key_of`] backwards.
fn at_key(user_id: String, provider: String) -> Sealed {
    if provider == PENDING
        && let Some(flow_id) = user_id.strip_prefix(FLOW_PREFIX)
    {
        return Sealed::PendingGrant {
            flow_id: flow_id.to_string(),
        };
    }
    if user_id == REVOCATIONS
        && let Some(id) = provider.strip_prefix(REVOKE_PREFIX)
    {
        return Sealed::Revocation { id: id.to_string() };
    }
    Sealed::Connection { user_id, provider }
}

impl DynamoStore {
    pub(super) async fn read_sealed(
        &self,
        after: Option<&Sealed>,
        limit: usize,
    ) -> Result<SealedPage, StoreError> {
        let table = &self.tokens_table;
        let start = after.map(|position| {
            let (user_id, provider) = key_of(position);
            start_key(&user_id, &provider)
        });
        // `Limit` counts items read, the service items the filter drops included: a
        // page may come back short, or empty, with more to read.
        let out = call(
            "Scan",
            self.client
                .scan()
                .table_name(table)
                .consistent_read(true)
                .limit(i32::try_from(limit.max(1)).unwrap_or(i32::MAX))
                .filter_expression(
                    "NOT begins_with(provider, :service) OR provider = :pending \
                     OR begins_with(provider, :revoke)",
                )
                .projection_expression("userId, provider, encryptedTokens")
                .expression_attribute_values(":service", s("#"))
                .expression_attribute_values(":pending", s(PENDING))
                .expression_attribute_values(":revoke", s(REVOKE_PREFIX))
                .set_exclusive_start_key(start)
                .send()
                .await,
        )
        .map_err(|f| self.error("Scan", table, f))?;
        let items = out
            .items()
            .iter()
            .map(|item| {
                let read: SealedProjection = from_item(item)?;
                Ok(SealedItem {
                    item: at_key(read.user_id, read.provider),
                    envelope: read.encrypted_tokens,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let next = last_key(out.last_evaluated_key())?
            .map(|(user_id, provider)| at_key(user_id, provider));
        Ok(SealedPage { items, next })
    }

    /// The envelope's own attributes, compared where they are stored: a write meanwhile
    /// (new ciphertext, new key) or a removed item fails the condition. So does a live
    /// refresh lease on a connection: its holder writes the whole row from what it read
    /// and would put the old envelope back.
    pub(super) async fn rewrap_sealed(
        &self,
        item: &Sealed,
        old: &Envelope,
        new: &Envelope,
    ) -> Result<(), StoreError> {
        let envelope: AttributeValue = serde_dynamo::to_attribute_value(new)
            .map_err(|e| StoreError::Corrupt(format!("encryptedTokens: {e}")))?;
        let (user_id, provider) = key_of(item);
        let mut condition =
            "#env.#key = :oldKey AND #env.#edk = :oldEdk AND #env.#ct = :ct".to_string();
        let mut request = self
            .update(&user_id, &provider)
            .update_expression("SET #env = :env")
            .expression_attribute_names("#env", "encryptedTokens")
            .expression_attribute_names("#key", "keyId")
            .expression_attribute_names("#edk", "edk")
            .expression_attribute_names("#ct", "ct")
            .expression_attribute_values(":env", envelope)
            .expression_attribute_values(":oldKey", s(&old.key_id))
            .expression_attribute_values(":oldEdk", s(&old.edk))
            .expression_attribute_values(":ct", s(&old.ct));
        if let Sealed::Connection { .. } = item {
            condition.push_str(" AND (attribute_not_exists(#attempt) OR #until < :now)");
            request = request
                .expression_attribute_names("#attempt", LEASE_ATTEMPT)
                .expression_attribute_names("#until", LEASE_UNTIL)
                .expression_attribute_values(":now", n(chrono::Utc::now().timestamp_millis()));
        }
        self.send_update(request.condition_expression(condition))
            .await
    }

    /// Moves a kept revocation's `attempts` and `nextAttemptAt` on, only while it is at
    /// `attempts_before`; the rest of the item stays as stored.
    pub(super) async fn record_revocation_attempt(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_at: i64,
        attempts_before: u32,
    ) -> Result<(), StoreError> {
        let (user_id, provider) = key_of(&Sealed::Revocation { id: id.to_string() });
        let request = self
            .update(&user_id, &provider)
            .update_expression("SET attempts = :attempts, nextAttemptAt = :next")
            .condition_expression("attempts = :before")
            .expression_attribute_values(":attempts", n(attempts))
            .expression_attribute_values(":next", n(next_attempt_at))
            .expression_attribute_values(":before", n(attempts_before));
        self.send_update(request).await
    }
}

#[async_trait]
impl SealedItems for DynamoStore {
    async fn scan_sealed(
        &self,
        after: Option<&Sealed>,
        limit: usize,
    ) -> Result<SealedPage, StoreError> {
        self.read_sealed(after, limit).await
    }

    async fn rewrap(
        &self,
        item: &Sealed,
        old: &Envelope,
        new: &Envelope,
    ) -> Result<(), StoreError> {
        self.rewrap_sealed(item, old, new).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_keys_and_sealed_items_map_both_ways() {
        for item in [
            Sealed::Connection {
                user_id: "u".into(),
                provider: "google".into(),
            },
            Sealed::Revocation { id: "r-1".into() },
            Sealed::PendingGrant {
                flow_id: "f-1".into(),
            },
            // A service item's key, as a scan position.
            Sealed::Connection {
                user_id: "#job#keepalive".into(),
                provider: "#lease".into(),
            },
        ] {
            let (user_id, provider) = key_of(&item);
            assert_eq!(at_key(user_id, provider), item);
        }
    }
}
