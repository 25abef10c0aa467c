//! Mint records per account and OAuth client.

use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{OptionalExtension, params};

use super::{EmbeddedStore, corrupt, sql};
use crate::store::{AccountGrantLog, AccountGrants, StoreError};

#[async_trait]
impl AccountGrantLog for EmbeddedStore {
    async fn account_grants(
        &self,
        provider: &str,
        sub: &str,
    ) -> Result<Option<AccountGrants>, StoreError> {
        let (p, sb) = (provider.to_string(), sub.to_string());
        let found: Option<(String, i64)> = self
            .with_reader(move |db| {
                db.prepare_cached(
                    "SELECT mints, version FROM account_grants WHERE provider = ?1 AND sub = ?2",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(params![p, sb], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(sql)
            })
            .await?;
        found
            .map(|(mints, version)| {
                Ok(AccountGrants {
                    provider: provider.to_string(),
                    sub: sub.to_string(),
                    mints: serde_json::from_str(&mints).map_err(|e| corrupt("mints", e))?,
                    version: u64::try_from(version).map_err(|e| corrupt("version", e))?,
                })
            })
            .transpose()
    }

    async fn put_account_grants(
        &self,
        record: &AccountGrants,
        expected: Option<u64>,
    ) -> Result<(), StoreError> {
        let mints = serde_json::to_string(&record.mints).map_err(|e| corrupt("mints", e))?;
        let version = i64::try_from(record.version).map_err(|e| corrupt("version", e))?;
        let mut args = vec![
            Value::from(record.provider.clone()),
            Value::from(record.sub.clone()),
            Value::from(mints),
            Value::from(version),
        ];
        let statement = match expected {
            None => {
                "INSERT INTO account_grants (provider, sub, mints, version) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (provider, sub) DO NOTHING"
            }
            Some(expected) => {
                args.push(Value::from(
                    i64::try_from(expected).map_err(|e| corrupt("version", e))?,
                ));
                "UPDATE account_grants SET mints = ?3, version = ?4 \
                 WHERE provider = ?1 AND sub = ?2 AND version = ?5"
            }
        };
        self.update_one(statement, args).await
    }
}
