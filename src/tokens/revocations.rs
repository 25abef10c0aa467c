//! Revocations at the provider: tried a few times at a disconnect, then kept (sealed)
//! and retried by a job until they succeed, are superseded or are given up.

use super::*;

impl TokenService {
    /// Revokes `row`'s grant (its refresh token, which ends its access tokens too; else
    /// its access token), trying a failing provider a few times; when it keeps failing,
    /// keeps the revocation (sealed) to retry, under `id`.
    pub(super) async fn revoke_or_keep(
        &self,
        provider: &OidcProvider,
        row: &Connection,
        id: &str,
    ) -> Result<Disconnected, TokenError> {
        if !provider.can_revoke() {
            return Ok(Disconnected {
                revocation: Revocation::NotPossible,
                token_kind: None,
            });
        }
        let Ok(tokens) = TokenSet::open(&self.cipher, row).await else {
            return Ok(Disconnected {
                revocation: Revocation::NotPossible,
                token_kind: None,
            });
        };
        let (token, kind) = match tokens.refresh_token.clone() {
            Some(refresh) if !provider.revokes_with_access_token() => (refresh, "refresh_token"),
            _ => (tokens.access_token.clone(), "access_token"),
        };
        let token = SecretString::from(token);
        let mut backoff =
            crate::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
        let mut attempts = 0;
        // A budget well inside the request timeout: a hanging provider must leave time
        // to keep the revocation, or the DELETE would time out having done nothing.
        let deadline = tokio::time::Instant::now() + REVOKE_NOW_BUDGET;
        let passing = loop {
            attempts += 1;
            let answer = tokio::time::timeout_at(
                deadline,
                provider.revoke(&token, row.grant.client_id.as_deref()),
            )
            .await
            .unwrap_or_else(|_| {
                Err(ProviderError::OutcomeUnknown(
                    "no answer within the revocation's budget".into(),
                ))
            });
            match answer {
                Ok(sent) => {
                    let revocation = if sent {
                        Revocation::Revoked
                    } else {
                        Revocation::NotPossible
                    };
                    return Ok(Disconnected {
                        revocation,
                        token_kind: Some(kind),
                    });
                }
                Err(ProviderError::Rejected { error }) => {
                    tracing::warn!(
                        error,
                        "the provider refused the revocation; removing the row anyway"
                    );
                    return Ok(Disconnected {
                        revocation: Revocation::NotPossible,
                        token_kind: Some(kind),
                    });
                }
                Err(e) => {
                    let wait = backoff.next_wait();
                    if attempts >= REVOKE_ATTEMPTS_NOW
                        || tokio::time::Instant::now() + wait >= deadline
                    {
                        break e;
                    }
                    tracing::debug!(error = %e, "revocation failed; trying again");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        tracing::warn!(error = %passing, "revocation at the provider failed; it is kept and retried");
        let now = Utc::now();
        let envelope = self
            .cipher
            .seal(
                &row.user_id,
                &revocation_context(&row.provider, id),
                token.expose_secret().as_bytes(),
            )
            .await?;
        self.store
            .put_revocation(&PendingRevocation {
                id: id.to_string(),
                user_id: row.user_id.clone(),
                provider: row.provider.clone(),
                sub: row.user_info.sub.clone(),
                encrypted_token: envelope,
                token_kind: kind.to_string(),
                client_id: row.grant.client_id.clone(),
                created_at: now,
                attempts,
                next_attempt_at: now.timestamp() + REVOKE_RETRY_FIRST.as_secs() as i64,
                expires_at: now.timestamp() + REVOKE_GIVE_UP.as_secs() as i64,
            })
            .await?;
        Ok(Disconnected {
            revocation: Revocation::Pending,
            token_kind: Some(kind),
        })
    }

    /// Tries kept revocations again every `every`, on every instance (a revocation
    /// sent twice is harmless), until each succeeds, is superseded (the same account
    /// connected again for that user: Google's revocation would end the new grant too)
    /// or is given up after three days. Each outcome is logged in the user's flow log
    /// under the deletion's flow id.
    pub(crate) fn schedule_revocation_retries(self: &Arc<Self>, jobs: &Jobs, every: Duration) {
        let service = Arc::clone(self);
        jobs.run(
            "revocation retries",
            Schedule::every(every).first_after(Duration::ZERO),
            jobs::from_fn(move |stop| {
                let service = Arc::clone(&service);
                async move {
                    if let Err(e) = service.retry_revocations(&stop).await {
                        tracing::warn!(error = %e, "retrying kept revocations failed; trying again later");
                    }
                }
            }),
        );
    }

    /// One pass of [`schedule_revocation_retries`](Self::schedule_revocation_retries).
    pub(crate) async fn retry_revocations(
        &self,
        stop: &CancellationToken,
    ) -> Result<(), TokenError> {
        let now = Utc::now();
        let client = ClientInfo {
            ip_address: None,
            user_agent: Some("axnt-oauth revocation retry".into()),
            caller: None,
        };
        for mut pending in self.store.revocations_due(now.timestamp(), 25).await? {
            if stop.is_cancelled() {
                return Ok(());
            }
            let flow_log =
                self.flow_log
                    .flow(&pending.user_id, &pending.id, &pending.provider, &client);
            let data = json!({ "tokenKind": pending.token_kind, "attempts": pending.attempts + 1, "retried": true });
            // The flow log names a revocation that cannot be made by its problem code.
            let end = |outcome: RevocationOutcome| {
                let code = match outcome {
                    RevocationOutcome::NotPossible => "revocation_not_possible",
                    other => other.label(),
                };
                let mut data = data.clone();
                data["outcome"] = json!(code);
                (outcome, code, data)
            };
            let ended = if pending.expires_at < now.timestamp() {
                Some(end(RevocationOutcome::RevocationGivenUp))
            } else if self
                .store
                .get(&pending.user_id, &pending.provider)
                .await?
                .is_some_and(|row| row.is_active && row.user_info.sub == pending.sub)
            {
                Some(end(RevocationOutcome::RevocationSuperseded))
            } else {
                None
            };
            if let Some((outcome, code, data)) = ended {
                self.store.remove_revocation(&pending.id).await?;
                count_revocation(&pending.provider, outcome);
                flow_log.step_failed(FlowStep::Revoked, data, code).await;
                continue;
            }
            let outcome = match (
                self.provider(&pending.provider),
                self.cipher
                    .open(
                        &pending.user_id,
                        &revocation_context(&pending.provider, &pending.id),
                        &pending.encrypted_token,
                    )
                    .await,
            ) {
                (Ok(provider), Ok(token)) => {
                    let token = SecretString::from(String::from_utf8_lossy(&token).into_owned());
                    provider.revoke(&token, pending.client_id.as_deref()).await
                }
                (Err(e), _) => Err(ProviderError::NotConfigured(e.to_string())),
                // The key service failing is passing: try again later.
                (_, Err(crate::crypto::CryptoError::Unavailable(e))) => {
                    Err(ProviderError::Unavailable(format!("key service: {e}")))
                }
                (_, Err(e)) => {
                    tracing::warn!(error = %e, "a kept revocation cannot be opened; giving it up");
                    Ok(false)
                }
            };
            match outcome {
                Ok(true) => {
                    self.store.remove_revocation(&pending.id).await?;
                    count_revocation(&pending.provider, RevocationOutcome::RevokedOnRetry);
                    let (_, _, data) = end(RevocationOutcome::RevokedOnRetry);
                    flow_log.step(FlowStep::Revoked, data).await;
                }
                Ok(false) | Err(ProviderError::Rejected { .. }) => {
                    self.store.remove_revocation(&pending.id).await?;
                    count_revocation(&pending.provider, RevocationOutcome::NotPossible);
                    let (_, code, data) = end(RevocationOutcome::NotPossible);
                    flow_log.step_failed(FlowStep::Revoked, data, code).await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "a kept revocation failed again");
                    let before = pending.attempts;
                    pending.attempts += 1;
                    let wait = REVOKE_RETRY_FIRST
                        .saturating_mul(1 << pending.attempts.min(10))
                        .min(REVOKE_RETRY_MAX);
                    pending.next_attempt_at = now.timestamp() + wait.as_secs() as i64;
                    match self.store.reschedule_revocation(&pending, before).await {
                        // Another instance finished (or moved on with) it meanwhile.
                        Ok(()) | Err(StoreError::Conflict) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(())
    }
}

/// What a deletion did at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum Revocation {
    /// The provider accepted the revocation.
    Revoked,
    /// The provider kept failing; the revocation is kept and retried.
    Pending,
    /// `revoke=false`: only forgotten here.
    Skipped,
    /// No revocation can be made (no revocation endpoint, the provider refused it, or
    /// the stored tokens do not open).
    NotPossible,
}

/// What [`TokenService::disconnect`] did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Disconnected {
    pub(crate) revocation: Revocation,
    /// Which token was (or will be) revoked: `refresh_token` or `access_token`.
    pub(crate) token_kind: Option<&'static str>,
}

/// Revocation attempts made while the DELETE waits.
pub(super) const REVOKE_ATTEMPTS_NOW: u32 = 3;
/// ...within this long (the request timeout is 30 s by default; sealing and storing the
/// kept revocation must still fit).
pub(super) const REVOKE_NOW_BUDGET: Duration = Duration::from_secs(5);
/// A kept revocation is first retried this long after the deletion, then at doubling
/// intervals up to [`REVOKE_RETRY_MAX`], for [`REVOKE_GIVE_UP`].
pub(crate) const REVOKE_RETRY_FIRST: Duration = Duration::from_secs(5);
pub(super) const REVOKE_RETRY_MAX: Duration = Duration::from_secs(3_600);
pub(super) const REVOKE_GIVE_UP: Duration = Duration::from_secs(3 * 86_400);

/// Where a kept revocation's token is bound: the provider and the revocation.
pub(super) fn revocation_context(provider: &str, id: &str) -> String {
    format!("{provider}#revoke#{id}")
}

/// What became of a revocation: [`REVOCATIONS_TOTAL`](crate::series::REVOCATIONS_TOTAL)'s `outcome`. A DELETE's
/// [`Revocation`] first, then a kept revocation's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum RevocationOutcome {
    Revoked,
    Pending,
    Skipped,
    NotPossible,
    /// A kept revocation the provider accepted on a retry.
    RevokedOnRetry,
    /// A kept revocation dropped: the same account connected again since.
    RevocationSuperseded,
    /// A kept revocation dropped after its retries' window.
    RevocationGivenUp,
}

impl From<Revocation> for RevocationOutcome {
    fn from(revocation: Revocation) -> Self {
        match revocation {
            Revocation::Revoked => Self::Revoked,
            Revocation::Pending => Self::Pending,
            Revocation::Skipped => Self::Skipped,
            Revocation::NotPossible => Self::NotPossible,
        }
    }
}

pub(super) fn count_revocation(provider: &str, outcome: RevocationOutcome) {
    metrics::counter!(crate::series::REVOCATIONS_TOTAL, "provider" => provider.to_string(), "outcome" => outcome.label())
        .increment(1);
}
