//! The refresh tokens minted per account and OAuth client.

use async_trait::async_trait;

use super::StoreError;

/// The refresh tokens this service had the provider mint for one account (`sub`) and
/// the OAuth client, across user ids: Google keeps the newest 100 per account and
/// client alive and ends older ones without a word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountGrants {
    pub provider: String,
    pub sub: String,
    /// Epoch milliseconds of each mint, oldest first (the newest, up to the limit).
    pub mints: Vec<i64>,
    /// Optimistic-concurrency counter (0: not stored yet).
    pub version: u64,
}

/// Mint records per account.
#[async_trait]
pub trait AccountGrantLog: Send + Sync {
    /// The mint record of one account and provider, if any.
    async fn account_grants(
        &self,
        provider: &str,
        sub: &str,
    ) -> Result<Option<AccountGrants>, StoreError>;

    /// Writes the record only if the stored one is at `expected` (`None`: only if there
    /// is none); `record.version` must be one more. A lost condition is a conflict.
    async fn put_account_grants(
        &self,
        record: &AccountGrants,
        expected: Option<u64>,
    ) -> Result<(), StoreError>;
}
