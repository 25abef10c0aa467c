//! Sealed items for key rotation: the envelopes of connection rows, kept revocations
//! and held grants, read table by table in key order, and each replaced only while it
//! is still the envelope read.

use crate::store::SealedItems;
use async_trait::async_trait;
use rusqlite::types::Value;

use super::{EmbeddedStore, corrupt, sql};
use crate::crypto::Envelope;
use crate::store::{Sealed, SealedItem, SealedPage, StoreError};

impl EmbeddedStore {
    /// A page of one table, in key order after `after`; when that table has no more,
    /// `next` is the start of the next table (an empty key sorts before every key).
    pub(super) async fn read_sealed(
        &self,
        after: Option<&Sealed>,
        limit: usize,
    ) -> Result<SealedPage, StoreError> {
        let after = after.cloned().unwrap_or(Sealed::Connection {
            user_id: String::new(),
            provider: String::new(),
        });
        let limit = limit.max(1);
        let sql_limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let read = after.clone();
        let raws: Vec<(Sealed, String)> = self
            .with_reader(move |db| {
                let (statement, key): (&str, Vec<String>) = match &read {
                    Sealed::Connection { user_id, provider } => (
                        "SELECT user_id, provider, json_extract(doc, '$.encryptedTokens') FROM connections \
                         WHERE (user_id, provider) > (?1, ?2) ORDER BY user_id, provider LIMIT ?3",
                        vec![user_id.clone(), provider.clone()],
                    ),
                    Sealed::PendingGrant { flow_id } => (
                        "SELECT flow_id, '', encrypted_tokens FROM pending_grants \
                         WHERE flow_id > ?1 ORDER BY flow_id LIMIT ?2",
                        vec![flow_id.clone()],
                    ),
                    Sealed::Revocation { id } => (
                        "SELECT id, '', json_extract(record, '$.encryptedToken') \
                         FROM pending_revocations WHERE id > ?1 ORDER BY id LIMIT ?2",
                        vec![id.clone()],
                    ),
                };
                let mut args: Vec<Value> = key.into_iter().map(Value::from).collect();
                args.push(Value::from(sql_limit));
                let mut stmt = db.prepare_cached(statement).map_err(sql)?;
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(args), |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                        ))
                    })
                    .map_err(sql)?;
                let rows = rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql)?;
                Ok(rows
                    .into_iter()
                    .map(|(a, b, envelope)| {
                        let item = match &read {
                            Sealed::Connection { .. } => Sealed::Connection {
                                user_id: a,
                                provider: b,
                            },
                            Sealed::PendingGrant { .. } => Sealed::PendingGrant { flow_id: a },
                            Sealed::Revocation { .. } => Sealed::Revocation { id: a },
                        };
                        (item, envelope)
                    })
                    .collect())
            })
            .await?;
        let full = raws.len() >= limit;
        let items = raws
            .into_iter()
            .map(|(item, envelope)| {
                Ok(SealedItem {
                    item,
                    envelope: serde_json::from_str(&envelope)
                        .map_err(|e| corrupt("encryptedTokens", e))?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let next = match (items.last(), &after) {
            (Some(last), _) if full => Some(last.item.clone()),
            (_, Sealed::Connection { .. }) => Some(Sealed::PendingGrant {
                flow_id: String::new(),
            }),
            (_, Sealed::PendingGrant { .. }) => Some(Sealed::Revocation { id: String::new() }),
            (_, Sealed::Revocation { .. }) => None,
        };
        Ok(SealedPage { items, next })
    }

    /// One statement: compared and replaced under SQLite's write lock, so a write from
    /// any process either lands before (and the condition fails) or after.
    pub(super) async fn rewrap_sealed(
        &self,
        item: &Sealed,
        old: &Envelope,
        new: &Envelope,
    ) -> Result<(), StoreError> {
        let new = serde_json::to_string(new).map_err(|e| corrupt("encryptedTokens", e))?;
        let mut args = vec![
            Value::from(new),
            Value::from(old.key_id.clone()),
            Value::from(old.edk.clone()),
            Value::from(old.ct.clone()),
        ];
        let statement = match item {
            // A live refresh lease refuses it too: the holder writes the whole row from
            // what it read and would put the old envelope back.
            Sealed::Connection { user_id, provider } => {
                args.extend([
                    Value::from(chrono::Utc::now().timestamp_millis()),
                    Value::from(user_id.clone()),
                    Value::from(provider.clone()),
                ]);
                "UPDATE connections SET doc = json_set(doc, '$.encryptedTokens', json(?1)) \
                 WHERE user_id = ?6 AND provider = ?7 \
                 AND json_extract(doc, '$.encryptedTokens.keyId') = ?2 \
                 AND json_extract(doc, '$.encryptedTokens.edk') = ?3 \
                 AND json_extract(doc, '$.encryptedTokens.ct') = ?4 \
                 AND (lease_attempt IS NULL OR lease_until < ?5)"
            }
            Sealed::PendingGrant { flow_id } => {
                args.push(Value::from(flow_id.clone()));
                "UPDATE pending_grants SET encrypted_tokens = ?1 WHERE flow_id = ?5 \
                 AND json_extract(encrypted_tokens, '$.keyId') = ?2 \
                 AND json_extract(encrypted_tokens, '$.edk') = ?3 \
                 AND json_extract(encrypted_tokens, '$.ct') = ?4"
            }
            Sealed::Revocation { id } => {
                args.push(Value::from(id.clone()));
                "UPDATE pending_revocations \
                 SET record = json_set(record, '$.encryptedToken', json(?1)) WHERE id = ?5 \
                 AND json_extract(record, '$.encryptedToken.keyId') = ?2 \
                 AND json_extract(record, '$.encryptedToken.edk') = ?3 \
                 AND json_extract(record, '$.encryptedToken.ct') = ?4"
            }
        };
        self.update_one(statement, args).await
    }

    /// Moves a kept revocation's `attempts` and `next_attempt_at` on, only while it is
    /// at `attempts_before`; the rest of its record stays as stored.
    pub(super) async fn record_revocation_attempt(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_at: i64,
        attempts_before: u32,
    ) -> Result<(), StoreError> {
        let args = vec![
            Value::from(id.to_string()),
            Value::from(i64::from(attempts)),
            Value::from(next_attempt_at),
            Value::from(i64::from(attempts_before)),
        ];
        self.update_one(
            "UPDATE pending_revocations \
             SET record = json_set(record, '$.attempts', ?2, '$.nextAttemptAt', ?3), \
             next_attempt_at = ?3 \
             WHERE id = ?1 AND json_extract(record, '$.attempts') = ?4",
            args,
        )
        .await
    }
}

#[async_trait]
impl SealedItems for EmbeddedStore {
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
    use crate::store::PendingRevocation;
    use crate::store::prelude::*;

    /// The revocation record's JSON names its envelope as the statements above do.
    #[tokio::test]
    async fn a_kept_revocation_record_names_its_envelope_and_attempts_where_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(&dir.path().join("t.db")).expect("open");
        let envelope = Envelope {
            v: 1,
            alg: "AES-256-GCM".into(),
            key_id: "local:old".into(),
            edk: "ZWRr".into(),
            iv: "aXY=".into(),
            ct: "Y3Q=".into(),
        };
        let kept = PendingRevocation {
            id: "r1".into(),
            user_id: "u".into(),
            provider: "google".into(),
            sub: "s".into(),
            encrypted_token: envelope.clone(),
            token_kind: "refresh_token".into(),
            client_id: Some("client-a".into()),
            created_at: chrono::Utc::now(),
            attempts: 1,
            next_attempt_at: 0,
            expires_at: i64::MAX / 2,
        };
        store.put_revocation(&kept).await.expect("put");
        let new = Envelope {
            key_id: "local:new".into(),
            ..envelope.clone()
        };
        store
            .rewrap_sealed(&Sealed::Revocation { id: "r1".into() }, &envelope, &new)
            .await
            .expect("rewrap");
        store
            .record_revocation_attempt("r1", 2, 60, 1)
            .await
            .expect("attempt");
        let back = store.revocations_due(60, 10).await.expect("due");
        assert_eq!(
            back,
            vec![PendingRevocation {
                encrypted_token: new,
                attempts: 2,
                next_attempt_at: 60,
                ..kept
            }]
        );
    }
}
