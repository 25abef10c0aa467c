//! Connections as the application sees them: a user's list, pages across users, and
//! a disconnect (the row removed, its grant revoked or the revocation kept).

use super::*;
use crate::retry::{Written, until_written};
use crate::series::Label;

/// A connection as listed: never a token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConnectionSummary {
    pub(crate) provider: String,
    pub(crate) email: Option<String>,
    pub(crate) user_info: UserInfo,
    pub(crate) is_active: bool,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) last_used: DateTime<Utc>,
    pub(crate) access_token_expires_at: DateTime<Utc>,
    /// The account this connection held before another account's grant replaced it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) previous_account: Option<ReplacedAccount>,
    /// Scopes the connect sessions asked for (the provider's defaults included).
    pub(crate) requested_scopes: Vec<String>,
    /// Scopes the provider says the grant holds (from its last token response).
    pub(crate) granted_scopes: Vec<String>,
    /// Requested scopes the grant does not hold (the user unticked them at consent).
    pub(crate) missing_scopes: Vec<String>,
    /// Whether the grant holds fewer scopes than were requested.
    pub(crate) partial_grant: bool,
    /// When `grantedScopes` last changed.
    pub(crate) scopes_changed_at: Option<DateTime<Utc>>,
    /// When the user last consented (connected).
    pub(crate) consented_at: Option<DateTime<Utc>>,
    /// When a refresh last succeeded.
    pub(crate) last_refreshed_at: Option<DateTime<Utc>>,
    /// `ok`, `at_risk` (predicted to end within two days, or refreshes failing) or
    /// `dead` (the user must connect again).
    pub(crate) health: grant::Health,
    /// When the grant is predicted to end, while it is alive.
    pub(crate) predicted_expiry: Option<DateTime<Utc>>,
    /// Which clock `predictedExpiry` is.
    pub(crate) predicted_expiry_reason: Option<grant::ExpiryReason>,
    /// Refresh tokens this service had Google mint for this Google account and OAuth
    /// client, across user ids (the newest, up to Google's limit of live ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) account_grants: Option<usize>,
    /// The account nears Google's limit of live refresh tokens per client (from 90 %):
    /// each new connection of it ends the oldest grant.
    pub(crate) grant_limit_warning: bool,
    /// The OAuth client (its client id) the grant was made with, which refreshes and
    /// revokes it; absent for a connection made before clients were recorded, until
    /// its next refresh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) client: Option<String>,
    /// When the grant was imported rather than made by a consent here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) imported_at: Option<DateTime<Utc>>,
    /// An imported grant whose refresh token this service has not redeemed yet: its
    /// account and scopes are as the import gave them, until its first refresh.
    pub(crate) unverified: bool,
    /// Why the grant is dead (see docs/grants.md, "How Google grants end").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cause: Option<&'static str>,
    /// What the application and its user should do about `cause`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) remedy: Option<&'static str>,
}

impl ConnectionSummary {
    /// The summary of `row` at `now`: never a token.
    pub(crate) fn of(row: Connection, rules: GrantRules, now: DateTime<Utc>) -> Self {
        let forecast = grant::forecast(&row, rules, now);
        let cause = (!row.is_active).then(|| {
            row.refresh
                .inactive_cause
                .as_deref()
                .and_then(Cause::from_code)
                .unwrap_or(Cause::UnknownInvalidGrant)
        });
        let missing_scopes = grant::missing(&row.grant.requested_scopes, &row.grant.granted_scopes);
        // Rows from before the ledger name no scopes: nothing is known to be missing.
        let partial_grant = !row.grant.granted_scopes.is_empty() && !missing_scopes.is_empty();
        Self {
            access_token_expires_at: DateTime::from_timestamp(row.access_token_expires_at, 0)
                .unwrap_or_default(),
            provider: row.provider,
            email: row.email,
            user_info: row.user_info,
            is_active: row.is_active,
            created_at: row.created_at,
            updated_at: row.updated_at,
            last_used: row.last_used,
            previous_account: row.replaced_account,
            missing_scopes: if partial_grant {
                missing_scopes
            } else {
                Vec::new()
            },
            partial_grant,
            requested_scopes: row.grant.requested_scopes,
            granted_scopes: row.grant.granted_scopes,
            scopes_changed_at: row.grant.scopes_changed_at,
            consented_at: row.grant.consented_at,
            last_refreshed_at: row.grant.last_refreshed_at,
            health: forecast.health,
            predicted_expiry: forecast.predicted_expiry,
            predicted_expiry_reason: forecast.reason,
            account_grants: None,
            grant_limit_warning: false,
            client: row.grant.client_id,
            imported_at: row.grant.imported_at,
            unverified: row.grant.unverified,
            cause: cause.map(Cause::code),
            remedy: cause.map(Cause::remedy),
        }
    }
}

/// How long an access token must still be valid to revoke a grant with it.
const REVOCATION_MARGIN: Duration = Duration::from_secs(60);

/// Which connections [`TokenService::connections_across`] lists.
#[derive(Debug, Default)]
pub(crate) struct AcrossFilter<'a> {
    /// Only of this health.
    pub(crate) health: Option<grant::Health>,
    /// Only those made with this OAuth client (its client id).
    pub(crate) client: Option<&'a str>,
}

impl TokenService {
    /// A provider that revokes a grant by its access token (GitHub) takes only a valid
    /// one: the token is read as a reader would, through the one read path, which
    /// refreshes a due token of a live grant (a rotated refresh token is stored as any
    /// refresh's). A read that fails leaves the revocation to find out.
    async fn freshen_for_revocation(
        &self,
        provider: &Arc<OidcProvider>,
        user_id: &UserId,
        client: &ClientInfo,
    ) {
        match self
            .token_valid_for(provider, user_id, client, REVOCATION_MARGIN)
            .await
        {
            Ok(_) | Err(TokenError::NotConnected | TokenError::ReauthorizationRequired { .. }) => {}
            Err(e) => tracing::info!(error = %e, "refreshing before the revocation failed"),
        }
    }

    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub(crate) async fn connections(
        &self,
        user_id: &UserId,
    ) -> Result<Vec<ConnectionSummary>, TokenError> {
        let now = Utc::now();
        let mut out = Vec::new();
        for row in self.store.list(user_id).await? {
            let rules = self.grant_rules(&row.provider);
            let minted = if rules.counts_grants() {
                match self
                    .store
                    .account_grants(&row.provider, &row.user_info.sub)
                    .await
                {
                    Ok(found) => found.map(|a| a.mints.len()),
                    Err(e) => {
                        tracing::warn!(error = %e, "reading an account's grant count failed");
                        None
                    }
                }
            } else {
                None
            };
            let mut summary = ConnectionSummary::of(row, rules, now);
            summary.account_grants = minted;
            summary.grant_limit_warning = minted.is_some_and(|n| n >= rules.warn_at());
            out.push(summary);
        }
        Ok(out)
    }

    /// Connections across users, in key order after `after`, that `filter` admits: at
    /// most `limit`, reading at most [`MAX_SCANNED_PER_PAGE`] rows per call. Returns
    /// where the next page starts (`None` once the table is done); a page may hold
    /// fewer than `limit` while there is more.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn connections_across(
        &self,
        filter: &AcrossFilter<'_>,
        after: Option<ScanCursor>,
        limit: usize,
    ) -> Result<AcrossPage, TokenError> {
        let now = Utc::now();
        let mut found = Vec::new();
        let mut cursor = after;
        let mut scanned = 0;
        loop {
            let page = self.store.scan(cursor.as_ref(), limit.max(200)).await?;
            scanned += limit.max(200);
            for row in page.rows {
                let key = ScanCursor {
                    user_id: row.user_id.clone(),
                    provider: row.provider.clone(),
                };
                let rules = self.grant_rules(&row.provider);
                let summary = ConnectionSummary::of(row, rules, now);
                if filter.health.is_none_or(|h| summary.health == h)
                    && filter
                        .client
                        .is_none_or(|c| summary.client.as_deref() == Some(c))
                {
                    found.push((key.user_id.clone(), summary));
                }
                cursor = Some(key);
                if found.len() == limit {
                    // More may follow this row, or not: the next page finds out.
                    return Ok((found, cursor));
                }
            }
            cursor = match page.next {
                Some(next) => Some(next),
                None => return Ok((found, None)),
            };
            if scanned >= MAX_SCANNED_PER_PAGE {
                return Ok((found, cursor));
            }
        }
    }

    /// Removes the connection, first revoking its grant at the provider unless
    /// `revoke` is false. A revocation that fails for a passing reason is kept and
    /// retried (see [`schedule_revocation_retries`](Self::schedule_revocation_retries)); if it
    /// cannot even be kept, nothing is removed and the error is answered. `None` when
    /// there was no row.
    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider_name))]
    pub(crate) async fn disconnect(
        &self,
        user_id: &UserId,
        provider_name: &str,
        client: &ClientInfo,
        revoke: bool,
    ) -> Result<Option<Disconnected>, TokenError> {
        let provider = self.provider(provider_name)?;
        if revoke && provider.revokes_with_access_token() {
            self.freshen_for_revocation(provider, user_id, client).await;
        }
        let flow_id = uuid::Uuid::new_v4().to_string();
        let flow_log = self.flow_log.flow(user_id, &flow_id, provider_name, client);
        until_written::<_, TokenError, _>(WRITE_ATTEMPTS, || async {
            let Some(row) = self.store.get(user_id, provider_name).await? else {
                return Ok(Written::Done(None));
            };
            let outcome = if revoke {
                // A pass before this one may have kept a revocation, then lost the
                // delete: this pass decides again, so that record goes.
                self.store.remove_revocation(&flow_id).await?;
                self.revoke_or_keep(provider, &row, &flow_id).await?
            } else {
                Disconnected {
                    revocation: Revocation::Skipped,
                    token_kind: None,
                }
            };
            let deleted = [self.policy.events.make(EventPayload::Deleted {
                about: About::of(&row),
                sub: row.user_info.sub.clone(),
                email: row.email.clone(),
                revocation: outcome.revocation.label().to_string(),
                revoked_token: outcome.token_kind.map(str::to_string),
            })];
            match self
                .store
                .delete(user_id, provider_name, row.version, &deleted)
                .await
            {
                Ok(_) => {
                    self.refresher.cache.invalidate(user_id, provider_name);
                    count_revocation(provider_name, outcome.revocation.into());
                    if outcome.revocation == Revocation::Revoked {
                        flow_log
                            .step(
                                FlowStep::Revoked,
                                json!({ "tokenKind": outcome.token_kind }),
                            )
                            .await;
                    }
                    flow_log
                        .step(
                            FlowStep::Deleted,
                            json!({
                                "revokedAtProvider": outcome.revocation == Revocation::Revoked,
                                "revocation": outcome.revocation.label(),
                                "tokenKind": outcome.token_kind,
                            }),
                        )
                        .await;
                    Ok(Written::Done(Some(outcome)))
                }
                Err(StoreError::Conflict) => Ok(Written::Lost),
                Err(e) => Err(e.into()),
            }
        })
        .await?
        .ok_or(TokenError::Conflict)
    }
}
