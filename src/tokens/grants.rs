//! Grants: a consent's tokens stored as the user's connection (the scope ledger, the
//! account's mint count, the events it makes), or held for the application's
//! confirmation and confirmed or discarded.

use super::*;
use crate::retry::{Written, until_written};
use crate::series::Label;

/// The events a new grant's row makes, stored with it: `connection.created` (no row
/// before) or `connection.reauthorized` (another account's grant included), then
/// `connection.scopes_changed` when the same account's granted scopes changed.
pub(super) fn grant_events(
    rules: &EventRules,
    before: Option<&Connection>,
    row: &Connection,
) -> Vec<crate::store::Event> {
    let granted = Granted::of(row);
    let Some(before) = before else {
        return vec![rules.make(EventPayload::Created(granted))];
    };
    let account_changed = before.user_info.sub != row.user_info.sub;
    let previous = account_changed.then(|| PreviousAccount {
        previous_sub: before.user_info.sub.clone(),
        previous_email: before.email.clone(),
    });
    let reauthorized = EventPayload::Reauthorized {
        granted,
        account_changed,
        was_active: before.is_active,
        previous,
    };
    let mut events = vec![rules.make(reauthorized)];
    if !account_changed
        && before.is_active
        && let Some(changed) = scopes_change(before, &row.grant)
    {
        events.push(rules.make(changed));
    }
    events
}

/// The result of storing a grant.
pub(crate) struct Stored {
    /// Whether the row existed before (a re-connect).
    pub(crate) replaced: bool,
    /// Whether the provider's answer lacked a refresh token and an earlier one was kept.
    pub(crate) kept_refresh_token: bool,
    pub(crate) has_refresh_token: bool,
    /// Set when the grant is another account's than the row's before (another `sub`).
    pub(crate) account_changed: Option<ReplacedAccount>,
    /// The connection's scope ledger as stored.
    pub(crate) grant: GrantLedger,
    /// Whether the granted scopes differ from the connection's before.
    pub(crate) scopes_changed: bool,
    /// Refresh tokens minted for this account and client as far as this service knows
    /// (the newest up to Google's limit), when this grant minted one and the count was
    /// stored.
    pub(crate) account_grants: Option<usize>,
    /// Whether the account is near Google's limit of live refresh tokens.
    pub(crate) grant_limit_warning: bool,
}

/// A grant held for confirmation: until when, and the code that confirms it (for the
/// flow's return redirect only: never logged, never stored in clear).
pub(crate) struct Held {
    pub(crate) deadline: DateTime<Utc>,
    pub(crate) code: SecretString,
}

/// Random bytes in a confirmation code (192 bits).
pub(super) const CONFIRMATION_CODE_BYTES: usize = 24;

/// Why a held grant was discarded at a confirm: the `reason` label of
/// [`HELD_GRANTS_DISCARDED_TOTAL`](crate::series::HELD_GRANTS_DISCARDED_TOTAL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum Discard {
    /// The confirm named another user than the one the flow was started for.
    OtherUser,
    /// The confirm's code was not the flow's.
    WrongCode,
    /// The grant waited longer than the confirmation window.
    Expired,
}

/// A confirmed pending grant, and what storing it did.
pub(crate) struct Confirmed {
    pub(crate) grant: PendingGrant,
    pub(crate) stored: Stored,
}

impl TokenService {
    /// Stores the tokens of a completed grant. The previous row, if any, is replaced
    /// in one conditional write; its refresh token is kept when the provider sent none
    /// and the grant is the same account's. A grant of a different account (another
    /// `sub`) is recorded on the row as `replacedAccount`.
    ///
    /// `requested` are the scopes the flow asked for: added to what the connection asked
    /// for before (same account), as Google's incremental authorization adds them to the
    /// grant.
    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
    pub(crate) async fn store_grant(
        &self,
        user_id: &str,
        provider: &str,
        fresh: &TokenSet,
        user_info: UserInfo,
        requested: &[String],
    ) -> Result<Stored, TokenError> {
        until_written::<_, TokenError, _>(WRITE_ATTEMPTS, || async {
            let now = Utc::now();
            let existing = self.store.get(user_id, provider).await?;
            // An old refresh token is carried over only from a live grant of the same
            // account: never to a different Google account connected under the same
            // user id, and never from an inactive row (its refresh token is known dead).
            let previous = match &existing {
                // A row we cannot open (another master key, corruption) is replaced by
                // the fresh grant rather than blocking the user from reconnecting.
                Some(row) if row.is_active && row.user_info.sub == user_info.sub => {
                    TokenSet::open(&self.cipher, row).await.ok()
                }
                _ => None,
            };
            // A refresh token that records no client may be another client's once the
            // provider has several: it is not carried over to this client's grant.
            let previous = previous.filter(|p| {
                p.client_id.is_some()
                    || fresh.client_id.is_none()
                    || !self
                        .providers
                        .get(provider)
                        .is_some_and(|p| p.has_other_clients())
            });
            let mut set = fresh.clone();
            set.inherit(previous.as_ref());
            let kept_refresh_token = fresh.refresh_token.is_none() && set.refresh_token.is_some();
            let has_refresh_token = set.refresh_token.is_some();
            let account_changed = existing
                .as_ref()
                .filter(|row| row.user_info.sub != user_info.sub)
                .map(|row| ReplacedAccount {
                    sub: row.user_info.sub.clone(),
                    email: row.email.clone(),
                    replaced_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                });
            set.requested_scopes.clear();
            let same_account = existing
                .as_ref()
                .filter(|row| row.is_active && row.user_info.sub == user_info.sub);
            let grant = ledger_after_consent(
                same_account.map(|row| &row.grant),
                requested,
                &set,
                fresh.refresh_token.is_some(),
                now,
            );
            let scopes_changed = same_account
                .is_some_and(|row| row.grant.scopes_changed_at != grant.scopes_changed_at);
            let envelope = set.seal(&self.cipher, user_id, provider).await?;
            let row = Connection {
                user_id: user_id.to_string(),
                provider: provider.to_string(),
                email: user_info.email.clone(),
                encrypted_tokens: envelope,
                user_info: user_info.clone(),
                created_at: existing.as_ref().map_or(now, |r| r.created_at),
                updated_at: now,
                last_used: now,
                access_token_expires_at: set.expires_at,
                expires_at: self.policy.purge_time(now, true),
                // Without a refresh token the row still serves its access token until
                // it expires; the token API then asks for reauthorization.
                is_active: true,
                version: existing.as_ref().map_or(1, |r| r.version + 1),
                // A new grant ends any refresh in flight for the old one: that
                // attempt's write then fails its lease condition.
                refresh: RefreshState::default(),
                replaced_account: account_changed
                    .clone()
                    .or_else(|| existing.as_ref().and_then(|r| r.replaced_account.clone())),
                grant: grant.clone(),
            };
            let events = grant_events(&self.policy.events, existing.as_ref(), &row);
            match self
                .store
                .put(&row, existing.as_ref().map(|r| r.version), &events)
                .await
            {
                Ok(()) => {
                    self.refresher.cache.invalidate(user_id, provider);
                    let account_grants = match fresh.refresh_token {
                        Some(_) if self.grant_rules(provider).counts_grants() => {
                            self.record_mint(provider, &user_info.sub, now).await
                        }
                        _ => None,
                    };
                    let grant_limit_warning =
                        account_grants.is_some_and(|n| n >= self.policy.grant_rules.warn_at());
                    if grant_limit_warning {
                        metrics::counter!(crate::series::ACCOUNT_GRANT_LIMIT_WARNINGS_TOTAL, "provider" => provider.to_string())
                            .increment(1);
                        tracing::warn!(
                            user_id,
                            provider,
                            sub = %user_info.sub,
                            minted = account_grants,
                            limit = self.policy.grant_rules.grant_limit,
                            "this Google account nears the limit of live refresh tokens for this client; the oldest will be ended"
                        );
                    }
                    if let Some(replaced) = &account_changed {
                        tracing::warn!(
                            user_id,
                            provider,
                            previous_sub = %replaced.sub,
                            sub = %user_info.sub,
                            "a grant of another account replaced the connection"
                        );
                    }
                    Ok(Written::Done(Stored {
                        replaced: existing.is_some(),
                        kept_refresh_token,
                        has_refresh_token,
                        account_changed,
                        grant,
                        scopes_changed,
                        account_grants,
                        grant_limit_warning,
                    }))
                }
                Err(StoreError::Conflict) => Ok(Written::Lost),
                Err(e) => Err(e.into()),
            }
        })
        .await?
        .ok_or(TokenError::Conflict)
    }
    /// Records that the provider minted a refresh token for `sub` at `now`; returns how
    /// many this service knows of for the account (the newest, up to the limit), or
    /// `None` when the record could not be written (logged; a grant is never refused
    /// for it).
    pub(super) async fn record_mint(
        &self,
        provider: &str,
        sub: &str,
        now: DateTime<Utc>,
    ) -> Option<usize> {
        let keep = self.policy.grant_rules.grant_limit as usize;
        // An error is logged where it happens and ends the count (`Err(())`).
        let counted = until_written::<_, (), _>(WRITE_ATTEMPTS, || async {
            let current = match self.store.account_grants(provider, sub).await {
                Ok(current) => current,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the account's grant count failed");
                    return Err(());
                }
            };
            let expected = current.as_ref().map(|c| c.version);
            let mut record = current.unwrap_or_else(|| crate::store::AccountGrants {
                provider: provider.to_string(),
                sub: sub.to_string(),
                ..Default::default()
            });
            record.mints.push(now.timestamp_millis());
            let excess = record.mints.len().saturating_sub(keep);
            record.mints.drain(..excess);
            record.version += 1;
            match self.store.put_account_grants(&record, expected).await {
                Ok(()) => Ok(Written::Done(record.mints.len())),
                Err(StoreError::Conflict) => Ok(Written::Lost),
                Err(e) => {
                    tracing::warn!(error = %e, "counting the account's grants failed");
                    Err(())
                }
            }
        })
        .await;
        counted.ok().flatten()
    }
    /// Holds a completed grant until the application confirms its flow (confirmation
    /// mode): sealed as the flow's pending grant together with a new one-time
    /// confirmation code, never handed out, refused after `within`. The connection's
    /// row, if any, stays as it is. Returns the deadline and the code, which only the
    /// flow's return redirect may carry.
    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider, flow_id = %flow_id))]
    pub(crate) async fn hold_grant(
        &self,
        flow_id: &FlowId,
        user_id: &UserId,
        provider: &str,
        fresh: &TokenSet,
        user_info: UserInfo,
        within: Duration,
    ) -> Result<Held, TokenError> {
        let now = Utc::now();
        let deadline = chrono::TimeDelta::from_std(within)
            .ok()
            .and_then(|ttl| now.checked_add_signed(ttl))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let code = crate::crypto::random_token(CONFIRMATION_CODE_BYTES);
        let mut sealed = fresh.clone();
        sealed.confirmation_code = Some(code.clone());
        let grant = PendingGrant {
            flow_id: flow_id.to_string(),
            user_id: user_id.to_string(),
            provider: provider.to_string(),
            encrypted_tokens: sealed
                .seal_pending(&self.cipher, user_id, provider, flow_id)
                .await?,
            user_info,
            created_at: now,
            expires_at: deadline.timestamp(),
        };
        self.store.put_pending(&grant).await?;
        Ok(Held {
            deadline,
            code: SecretString::from(code),
        })
    }

    /// Turns a flow's pending grant into the connection, for the application's user
    /// `user_id` presenting the flow's confirmation code. The grant is opened before
    /// it is taken, so a key service that fails now leaves it held for a retried
    /// confirm; it is then taken (so it is confirmed at most once) and stored as
    /// [`store_grant`](Self::store_grant) stores any grant, and put back when that fails
    /// for a passing reason. A confirm naming another user or a wrong code discards the
    /// grant (404, counted): the flow was completed by someone the application's user
    /// is not. A caller limited to other providers (`may_use`) is refused, the grant
    /// left as it is.
    #[tracing::instrument(skip_all, fields(flow_id = %flow_id))]
    pub(crate) async fn confirm_grant(
        &self,
        flow_id: &FlowId,
        user_id: Option<&UserId>,
        code: Option<&SecretString>,
        client: &ClientInfo,
        may_use: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Confirmed, TokenError> {
        let grant = self
            .store
            .get_pending(flow_id)
            .await?
            .ok_or(TokenError::ConfirmationNotFound)?;
        if !may_use(&grant.provider) {
            return Err(TokenError::ProviderNotAllowed(grant.provider.clone()));
        }
        if user_id.map(|u| u.as_str()) != Some(grant.user_id.as_str()) {
            // The application says another of its users started this flow: the grant
            // is not theirs to keep.
            return Err(self
                .discard(
                    &grant,
                    Discard::OtherUser,
                    client,
                    TokenError::ConfirmationNotFound,
                )
                .await);
        }
        if grant.expires_at < Utc::now().timestamp() {
            return Err(self
                .discard(
                    &grant,
                    Discard::Expired,
                    client,
                    TokenError::ConfirmationExpired,
                )
                .await);
        }
        // A confirm without the code, or with another one, is refused as one: 404.
        let wrong_code = || {
            self.discard(
                &grant,
                Discard::WrongCode,
                client,
                TokenError::ConfirmationNotFound,
            )
        };
        let Some(code) = code else {
            return Err(wrong_code().await);
        };
        let mut fresh = TokenSet::open_pending(&self.cipher, &grant).await?;
        let expected = fresh.confirmation_code.take();
        let presented = code.expose_secret().as_bytes();
        // Constant time: the comparison must not tell how much of a guess was right.
        let right = expected.as_deref().is_some_and(|expected| {
            expected.len() == presented.len()
                && bool::from(subtle::ConstantTimeEq::ct_eq(
                    expected.as_bytes(),
                    presented,
                ))
        });
        if !right {
            return Err(wrong_code().await);
        }
        // Of two confirms with the right code, one takes it and stores it.
        let grant = self
            .store
            .take_pending(flow_id)
            .await?
            .ok_or(TokenError::ConfirmationNotFound)?;
        match self
            .store_grant(
                &grant.user_id,
                &grant.provider,
                &fresh,
                grant.user_info.clone(),
                &fresh.requested_scopes,
            )
            .await
        {
            Ok(stored) => Ok(Confirmed { grant, stored }),
            Err(e) => {
                if let Err(put_back) = self.store.put_pending(&grant).await {
                    tracing::warn!(flow_id = %flow_id, error = %put_back, "a pending grant could not be put back after a failed confirm");
                }
                Err(e)
            }
        }
    }

    /// Removes a held grant a confirm was refused for, counts and logs why (never the
    /// code), and hands `error` back. A grant another call took meanwhile is gone
    /// already.
    pub(super) async fn discard(
        &self,
        grant: &PendingGrant,
        why: Discard,
        client: &ClientInfo,
        error: TokenError,
    ) -> TokenError {
        if let Err(e) = self.store.take_pending(&grant.flow_id).await {
            tracing::warn!(flow_id = grant.flow_id, error = %e, "a refused pending grant could not be removed; it expires unconfirmed");
        }
        metrics::counter!(crate::series::HELD_GRANTS_DISCARDED_TOTAL, "reason" => why.label())
            .increment(1);
        tracing::warn!(
            flow_id = grant.flow_id,
            reason = why.label(),
            "a confirm was refused; the held grant is discarded"
        );
        self.flow_log
            .flow(&grant.user_id, &grant.flow_id, &grant.provider, client)
            .step_failed(
                FlowStep::Confirmed,
                json!({ "discarded": true, "reason": why.label() }),
                error.code(),
            )
            .await;
        error
    }
}
