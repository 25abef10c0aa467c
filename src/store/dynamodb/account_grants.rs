//! Mint records per account and OAuth client.

use async_trait::async_trait;

use super::item::{ACCOUNT_GRANTS, account_grants_from, account_grants_item, account_key, s};
use super::{DynamoStore, call};
use crate::store::{AccountGrantLog, AccountGrants, StoreError};

#[async_trait]
impl AccountGrantLog for DynamoStore {
    async fn account_grants(
        &self,
        provider: &str,
        sub: &str,
    ) -> Result<Option<AccountGrants>, StoreError> {
        let table = &self.tokens_table;
        let out = call(
            "GetItem",
            self.client
                .get_item()
                .table_name(table)
                .key("userId", s(account_key(provider, sub)))
                .key("provider", s(ACCOUNT_GRANTS))
                .consistent_read(true)
                .send()
                .await,
        )
        .map_err(|f| self.error("GetItem", table, f))?;
        out.item()
            .map(|item| account_grants_from(item, provider, sub))
            .transpose()
    }

    async fn put_account_grants(
        &self,
        record: &AccountGrants,
        expected: Option<u64>,
    ) -> Result<(), StoreError> {
        let table = &self.tokens_table;
        let request = self
            .client
            .put_item()
            .table_name(table)
            .set_item(Some(account_grants_item(record)));
        self.put_versioned(request, expected).await
    }
}
