//! The tokens table's connection rows: read and written whole, conditional on `version`,
//! touched, listed and scanned.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{Connection as Sqlite, OptionalExtension, params};
use serde_json::json;

use super::events::insert as insert_events;
use super::{EmbeddedStore, WriteIf, corrupt, rfc3339, sql};
use crate::store::{
    Connection, Connections, Event, GrantLedger, RefreshState, ScanCursor, ScanPage, StoreError,
};

/// A row's document as stored (the [`Connection`]'s serde layout, as JSON), read
/// back. A malformed one names the attribute, never its value.
pub(crate) fn parse_row(doc: &str) -> Result<Connection, StoreError> {
    // An error in a flattened part carries no path: that part is read again alone, so
    // the message names its attribute.
    parse::<Connection>(doc).map_err(|e| match &e {
        StoreError::Corrupt(m) if m.starts_with(".:") => parse::<RefreshState>(doc)
            .and_then(|_| parse::<GrantLedger>(doc))
            .err()
            .unwrap_or(e),
        _ => e,
    })
}

/// Reads `doc`; only a malformed one is read again, tracking the path, for its message
/// (tracking the path nearly doubles the cost of a read that succeeds).
fn parse<T: serde::de::DeserializeOwned>(doc: &str) -> Result<T, StoreError> {
    serde_json::from_str(doc).map_err(|_| {
        let mut reader = serde_json::Deserializer::from_str(doc);
        match serde_path_to_error::deserialize::<_, T>(&mut reader) {
            Err(e) => StoreError::Corrupt(format!("{}: not a valid value", e.path())),
            Ok(_) => StoreError::Corrupt("not a valid value".into()),
        }
    })
}

/// A row's document, read by its key.
fn select_doc(db: &Sqlite, user_id: &str, provider: &str) -> rusqlite::Result<Option<String>> {
    db.prepare_cached("SELECT doc FROM connections WHERE user_id = ?1 AND provider = ?2")?
        .query_row(params![user_id, provider], |r| r.get(0))
        .optional()
}

/// A row's document, to store.
pub(crate) fn row_doc(row: &Connection) -> Result<String, StoreError> {
    serde_json::to_string(row).map_err(|e| corrupt("connection", e))
}

#[async_trait]
impl Connections for EmbeddedStore {
    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
    async fn get(&self, user_id: &str, provider: &str) -> Result<Option<Connection>, StoreError> {
        crate::store::count_read("embedded");
        let doc = match self
            .readers
            .read_now(|db| select_doc(db, user_id, provider))
        {
            Some(doc) => doc?,
            None => {
                let (user_id, provider) = (user_id.to_string(), provider.to_string());
                self.on_blocking_pool(move |db| select_doc(db, &user_id, &provider).map_err(sql))
                    .await?
            }
        };
        doc.as_deref().map(parse_row).transpose()
    }

    #[tracing::instrument(skip_all, fields(user_id = %row.user_id, provider = %row.provider))]
    async fn put(
        &self,
        row: &Connection,
        expected: Option<u64>,
        events: &[Event],
    ) -> Result<(), StoreError> {
        let condition = match expected {
            None => WriteIf::Absent,
            Some(v) => WriteIf::Version(i64::try_from(v).map_err(|e| corrupt("version", e))?),
        };
        self.write_row(row, condition, events).await
    }

    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
    async fn touch(
        &self,
        user_id: &str,
        provider: &str,
        last_used: DateTime<Utc>,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let patch = json!({"lastUsed": rfc3339(&last_used), "expiresAt": expires_at});
        let args = vec![
            Value::from(user_id.to_string()),
            Value::from(provider.to_string()),
            Value::from(patch.to_string()),
        ];
        match self
            .update_one(
                "UPDATE connections SET doc = json_patch(doc, ?3) \
                 WHERE user_id = ?1 AND provider = ?2 AND is_active = 1",
                args,
            )
            .await
        {
            Ok(()) | Err(StoreError::Conflict) => Ok(()),
            Err(e) => Err(e),
        }
    }

    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
    async fn delete(
        &self,
        user_id: &str,
        provider: &str,
        expected: u64,
        events: &[Event],
    ) -> Result<bool, StoreError> {
        let (user_id, provider) = (user_id.to_string(), provider.to_string());
        let expected = i64::try_from(expected).map_err(|e| corrupt("version", e))?;
        let events = events.to_vec();
        self.with_db(move |db| {
            // Immediate: the write lock is taken (waiting out another writer, up to the
            // busy timeout) before the read. A read transaction that later wants to
            // write while another connection writes gets SQLITE_BUSY at once.
            let tx = db
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(sql)?;
            let current: Option<i64> = tx
                .query_row(
                    "SELECT version FROM connections WHERE user_id = ?1 AND provider = ?2",
                    params![user_id, provider],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql)?;
            let outcome = match current {
                None => Ok(false),
                Some(v) if v != expected => Err(StoreError::Conflict),
                Some(_) => {
                    tx.execute(
                        "DELETE FROM connections WHERE user_id = ?1 AND provider = ?2",
                        params![user_id, provider],
                    )
                    .map_err(sql)?;
                    insert_events(&tx, &events)?.in_time()?;
                    Ok(true)
                }
            };
            tx.commit().map_err(sql)?;
            outcome
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    async fn list(&self, user_id: &str) -> Result<Vec<Connection>, StoreError> {
        let user_id = user_id.to_string();
        let docs: Vec<String> = self
            .with_reader(move |db| {
                let mut stmt = db
                    .prepare_cached(
                        "SELECT doc FROM connections WHERE user_id = ?1 ORDER BY provider",
                    )
                    .map_err(sql)?;
                let rows = stmt.query_map([user_id], |r| r.get(0)).map_err(sql)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql)
            })
            .await?;
        docs.iter().map(|doc| parse_row(doc)).collect()
    }

    #[tracing::instrument(skip_all, fields(limit = limit))]
    async fn scan(&self, after: Option<&ScanCursor>, limit: usize) -> Result<ScanPage, StoreError> {
        // Every key is greater than ('', ''): no row has an empty user id.
        let (user_id, provider) = after
            .map(|c| (c.user_id.clone(), c.provider.clone()))
            .unwrap_or_default();
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let docs: Vec<String> = self
            .with_reader(move |db| {
                // Keyset paging in primary-key order, so a page costs the same wherever
                // it starts and rows written meanwhile cannot shift it.
                let mut stmt = db
                    .prepare_cached(
                        "SELECT doc FROM connections WHERE (user_id, provider) > (?1, ?2) \
                         ORDER BY user_id, provider LIMIT ?3",
                    )
                    .map_err(sql)?;
                let rows = stmt
                    .query_map(params![user_id, provider, limit], |r| r.get(0))
                    .map_err(sql)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql)
            })
            .await?;
        let full = i64::try_from(docs.len()).unwrap_or(i64::MAX) >= limit;
        let rows = docs
            .iter()
            .map(|doc| parse_row(doc))
            .collect::<Result<Vec<_>, _>>()?;
        let next = match rows.last() {
            Some(last) if full => Some(ScanCursor {
                user_id: last.user_id.clone(),
                provider: last.provider.clone(),
            }),
            _ => None,
        };
        Ok(ScanPage { rows, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_document_names_the_attribute_and_not_its_value() {
        let doc = |extra: &str| {
            format!(
                r#"{{"userId":"u","provider":"google","encryptedTokens":{{"v":1,"alg":"A","keyId":"k","edk":"e","iv":"i","ct":"c"}},"userInfo":{{"sub":"1"}},"createdAt":"2025-01-02T03:04:05.000Z","updatedAt":"2025-01-02T03:04:05.000Z","lastUsed":"2025-01-02T03:04:05.000Z","accessTokenExpiresAt":1,"expiresAt":2,"isActive":true{extra}}}"#
            )
        };
        assert!(parse_row(&doc(r#","version":1"#)).is_ok());
        for (extra, expected) in [
            (r#","version":"hunter2""#, "version: not a valid value"),
            (
                r#","refreshRetryAt":"hunter2""#,
                "refreshRetryAt: not a valid value",
            ),
            (
                r#","consentedAt":"hunter2""#,
                "consentedAt: not a valid value",
            ),
            (
                r#","refreshLeaseAttempt":"hunter2""#,
                ".: not a valid value",
            ),
        ] {
            match parse_row(&doc(extra)) {
                Err(StoreError::Corrupt(message)) => {
                    assert_eq!(message, expected);
                    assert!(!message.contains("hunter2"));
                }
                other => panic!("{extra}: {other:?}"),
            }
        }
    }
}
