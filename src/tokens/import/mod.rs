//! Grants made elsewhere, brought in without asking their users to consent again
//! (`axnt-oauth import`, `POST /v1/users/{userId}/connections/{provider}/import`): one
//! line of the migration format, checked field by field, stored as the connection with
//! a `connection.imported` event; or, when asked to verify, stored first and proven by
//! one redeem of its refresh token through the one refresh path (its single flight and
//! lease, so a rotating provider's new refresh token is stored and the old one never
//! presented twice), then announced.

use super::*;
use crate::retry::{Written, until_written};

/// Reads a verify makes at most while a refresh of the grant is still in flight (each
/// waits the refresh deadline and 5 s) or its outcome pending (each waits its
/// `Retry-After`).
const VERIFY_READS: usize = 6;

mod line;

pub(crate) use line::ImportedGrant;

/// Whether `row` is still the one an import stored as `stored` (refreshes since
/// included): a consent clears `importedAt`, another import sets its own.
fn is_this_import(row: &Connection, stored: &Connection) -> bool {
    row.grant.imported_at.is_some() && row.grant.imported_at == stored.grant.imported_at
}

/// Now, to the millisecond: as rows store times, so an answer built from a row just
/// written shows what the lists will.
fn now_to_the_milli() -> DateTime<Utc> {
    use chrono::SubsecRound as _;
    Utc::now().trunc_subsecs(3)
}

/// How a grant is imported.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ImportOptions {
    /// Replace an existing connection (otherwise it is left as it is).
    pub(crate) replace: bool,
    /// Redeem the refresh token once before the connection is announced.
    pub(crate) verify: bool,
    /// With `verify`: keep a grant found dead, inactive, rather than remove it.
    pub(crate) keep_dead: bool,
    /// Check and report; store nothing.
    pub(crate) dry_run: bool,
}

/// What importing one grant came to.
#[derive(Debug)]
pub(crate) enum ImportOutcome {
    /// Stored as the connection (`replaced`: over an existing one), proven by a redeem
    /// or not.
    Stored {
        replaced: bool,
        verified: bool,
        connection: Box<ConnectionSummary>,
    },
    /// A connection exists, and the import was not asked to replace it.
    Exists,
    /// The line's own refresh token is the connection's already (an earlier run of
    /// the same import): nothing to do.
    Unchanged { connection: Box<ConnectionSummary> },
    /// `verify` found the refresh token dead: `cause` says why. Kept inactive when
    /// asked; otherwise the connection is as it was before the import.
    Dead { cause: String, kept: bool },
    /// A dry run: what would be done (`replaced`: over an existing connection).
    WouldStore { replaced: bool },
}

impl ImportOutcome {
    /// The outcome's name in reports and flow-log items.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Stored {
                replaced: false, ..
            } => "stored",
            Self::Stored { replaced: true, .. } => "replaced",
            Self::Exists => "exists",
            Self::Unchanged { .. } => "unchanged",
            Self::Dead { kept: true, .. } => "dead_kept",
            Self::Dead { kept: false, .. } => "dead",
            Self::WouldStore { replaced: false } => "would_store",
            Self::WouldStore { replaced: true } => "would_replace",
        }
    }
}

/// What a verify that finds the grant dead leaves.
enum Prior {
    /// The connection before the import (none: no connection): put back unless the
    /// dead grant is to be kept.
    Before(Option<Box<Connection>>),
    /// An earlier import announced this connection: it stays, inactive (its refresh
    /// said so with `connection.refresh_failed`).
    Announced,
}

/// The first write's result.
enum First {
    Exists,
    Unchanged {
        row: Box<Connection>,
    },
    /// An earlier run of this import stored the grant to verify it, and its redeem
    /// found it dead before the import could settle it: settle it now.
    DeadUnsettled {
        row: Box<Connection>,
    },
    WouldStore {
        replaced: bool,
    },
    /// Stored; `previous` is the row it replaced.
    Stored {
        row: Box<Connection>,
        previous: Option<Box<Connection>>,
    },
    /// An earlier import of this grant stored it unverified (or could not finish its
    /// verify): verify that one.
    Unverified {
        row: Box<Connection>,
    },
}

impl TokenService {
    /// Imports one grant as the connection of its user at its provider. `by` names who
    /// imported it (a caller's id, or `cli`) in the flow log.
    ///
    /// Without `verify` the line's claims are stored as given, marked `unverified`
    /// until the first refresh, with `connection.imported`. With `verify` the grant is
    /// stored unannounced with its access token due, then read through the one read
    /// path (one redeem, rotation stored), then announced with the account the
    /// provider names when the line lacks one. A connection an earlier import left
    /// unverified (an interrupted run) is verified, not skipped.
    #[tracing::instrument(skip_all, fields(user_id = %grant.user_id, provider = %grant.provider))]
    pub(crate) async fn import_grant(
        &self,
        grant: &ImportedGrant,
        options: ImportOptions,
        by: &str,
        client: &ClientInfo,
    ) -> Result<ImportOutcome, TokenError> {
        let provider = Arc::clone(self.provider(&grant.provider)?);
        let client_id = match grant.client.as_deref() {
            Some(named) => Some(provider.client_id(Some(named)).ok_or_else(|| {
                TokenError::InvalidInput(format!(
                    "client: not one of the OAuth clients configured for {}",
                    provider.name()
                ))
            })?),
            None => provider.client_id(None),
        };
        let user_id = grant.user_id.as_str();
        let name = provider.name();
        let token_hash = crate::oauth::risc::token_hash(grant.refresh_token.expose_secret());
        let first = until_written::<_, TokenError, _>(WRITE_ATTEMPTS, || async {
            let existing = self.store.get(user_id, name).await?;
            if let Some(row) = &existing {
                // The line's own token already stored (an earlier run of the same
                // import) is never stored again: a rotating provider may have spent it.
                // What that run left unproven is verified now, when asked.
                let same_token =
                    row.grant.refresh_token_hash.as_deref() == Some(token_hash.as_str());
                if same_token {
                    let verify = options.verify && !options.dry_run;
                    let row = Box::new(row.clone());
                    return Ok(Written::Done(match () {
                        () if verify && row.grant.verifying && !row.is_active => {
                            First::DeadUnsettled { row }
                        }
                        () if verify && row.grant.unverified && row.is_active => {
                            First::Unverified { row }
                        }
                        () => First::Unchanged { row },
                    }));
                }
                if !options.replace {
                    return Ok(Written::Done(First::Exists));
                }
            }
            if options.dry_run {
                return Ok(Written::Done(First::WouldStore {
                    replaced: existing.is_some(),
                }));
            }
            let row = self
                .imported_row(grant, client_id.clone(), existing.as_ref(), options.verify)
                .await?;
            let events = if options.verify {
                Vec::new()
            } else {
                vec![self.imported_event(&row, false, existing.is_some())]
            };
            match self
                .store
                .put(&row, existing.as_ref().map(|r| r.version), &events)
                .await
            {
                Ok(()) => {
                    self.refresher.cache.invalidate(user_id, name);
                    Ok(Written::Done(First::Stored {
                        row: Box::new(row),
                        previous: existing.map(Box::new),
                    }))
                }
                Err(StoreError::Conflict) => Ok(Written::Lost),
                Err(e) => Err(e.into()),
            }
        })
        .await?
        .ok_or(TokenError::Conflict)?;
        let flow_id = uuid::Uuid::new_v4().to_string();
        let flow = self.flow_log.flow(user_id, &flow_id, name, client);
        let (row, previous) = match first {
            First::Exists => return Ok(ImportOutcome::Exists),
            First::Unchanged { row } => {
                return Ok(ImportOutcome::Unchanged {
                    connection: Box::new(self.summary(*row)),
                });
            }
            First::DeadUnsettled { row } => {
                let cause = row
                    .refresh
                    .inactive_cause
                    .clone()
                    .unwrap_or_else(|| "unknown_invalid_grant".to_string());
                let kept = self
                    .settle_dead_import(&row, None, options.keep_dead)
                    .await?;
                let done = ImportOutcome::Dead { cause, kept };
                flow.step_failed(
                    FlowStep::Imported,
                    json!({ "outcome": done.label(), "verified": true, "by": by }),
                    "reauthorization_required",
                )
                .await;
                return Ok(done);
            }
            First::WouldStore { replaced } => return Ok(ImportOutcome::WouldStore { replaced }),
            First::Stored { row, previous } if !options.verify => {
                let outcome = ImportOutcome::Stored {
                    replaced: previous.is_some(),
                    verified: false,
                    connection: Box::new(self.summary(*row)),
                };
                flow.step(
                    FlowStep::Imported,
                    json!({ "outcome": outcome.label(), "verified": false, "by": by }),
                )
                .await;
                return Ok(outcome);
            }
            First::Stored { row, previous } => (row, Prior::Before(previous)),
            First::Unverified { row } if row.grant.verifying => (row, Prior::Before(None)),
            First::Unverified { row } => (row, Prior::Announced),
        };
        let outcome = self
            .verify_import(&provider, grant, &row, &previous, options, client)
            .await;
        match &outcome {
            Ok(done) => {
                let verified = !matches!(
                    done,
                    ImportOutcome::Stored {
                        verified: false,
                        ..
                    }
                );
                let data = json!({ "outcome": done.label(), "verified": verified, "by": by });
                match done {
                    ImportOutcome::Dead { cause, .. } => {
                        flow.step_failed(FlowStep::Imported, data, cause).await;
                    }
                    _ => flow.step(FlowStep::Imported, data).await,
                }
            }
            Err(e) => {
                flow.step_failed(
                    FlowStep::Imported,
                    json!({ "outcome": "unverified", "verified": false, "by": by }),
                    e.code(),
                )
                .await;
            }
        }
        outcome
    }

    /// The summary the lists would show of `row` now.
    fn summary(&self, row: Connection) -> ConnectionSummary {
        let rules = self.grant_rules(&row.provider);
        ConnectionSummary::of(row, rules, Utc::now())
    }

    /// The event that announces an imported connection.
    fn imported_event(
        &self,
        row: &Connection,
        verified: bool,
        replaced: bool,
    ) -> crate::store::Event {
        self.policy.events.make(EventPayload::Imported {
            granted: Granted::of(row),
            verified,
            replaced,
            is_active: row.is_active,
        })
    }

    /// The row an import stores over `existing`: the line's tokens sealed (with
    /// `verify`, the access token due, so the first read redeems the refresh token),
    /// its claims as given, marked imported and unverified.
    async fn imported_row(
        &self,
        grant: &ImportedGrant,
        client_id: Option<String>,
        existing: Option<&Connection>,
        verify: bool,
    ) -> Result<Connection, TokenError> {
        let now = now_to_the_milli();
        let access_token = grant
            .access_token
            .as_ref()
            .filter(|_| !verify)
            .map(|t| t.expose_secret().to_string());
        // A line without a usable access token is due at once: the first read refreshes.
        let expires_at = match (&access_token, grant.expires_at) {
            (Some(_), Some(at)) => at.timestamp(),
            _ => 0,
        };
        // Borrowed: the only copy made is the set's own, wiped when it is dropped.
        let refresh_token = grant.refresh_token.expose_secret();
        let scope = (!grant.scopes.is_empty()).then(|| grant.scopes.join(" "));
        let set = TokenSet {
            access_token: access_token.unwrap_or_default(),
            refresh_token: Some(refresh_token.to_string()),
            id_token: None,
            scope,
            token_type: "Bearer".to_string(),
            expires_at,
            issued_at: None,
            refresh_token_expires_at: None,
            requested_scopes: Vec::new(),
            confirmation_code: None,
            client_id: client_id.clone(),
        };
        let envelope = set
            .seal(&self.cipher, grant.user_id.as_str(), &grant.provider)
            .await?;
        let sub = grant.sub.clone().unwrap_or_default();
        let replaced_account = existing
            .filter(|row| {
                !row.user_info.sub.is_empty() && !sub.is_empty() && row.user_info.sub != sub
            })
            .map(|row| ReplacedAccount {
                sub: row.user_info.sub.clone(),
                email: row.email.clone(),
                replaced_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            })
            .or_else(|| existing.and_then(|r| r.replaced_account.clone()));
        Ok(Connection {
            user_id: grant.user_id.to_string(),
            provider: grant.provider.clone(),
            email: grant.email.clone(),
            encrypted_tokens: envelope,
            user_info: UserInfo {
                sub,
                email: grant.email.clone(),
                ..UserInfo::default()
            },
            created_at: existing.map_or(now, |r| r.created_at),
            updated_at: now,
            last_used: now,
            access_token_expires_at: expires_at,
            expires_at: self.policy.purge_time(now, true),
            is_active: true,
            version: existing.map_or(1, |r| r.version + 1),
            refresh: RefreshState::default(),
            replaced_account,
            grant: GrantLedger {
                requested_scopes: grant.scopes.clone(),
                // A verified import records what the provider says the grant holds.
                granted_scopes: if verify {
                    Vec::new()
                } else {
                    grant.scopes.clone()
                },
                requested_changed_at: Some(now),
                scopes_changed_at: Some(now),
                consented_at: grant.consented_at,
                last_refreshed_at: None,
                refresh_token_expires_at: None,
                client_id,
                expiry_notice_for: None,
                refresh_token_hash: Some(crate::oauth::risc::token_hash(refresh_token)),
                refresh_token_prefix_hash: Some(crate::oauth::risc::prefix_hash(refresh_token)),
                imported_at: Some(now),
                unverified: true,
                verifying: verify,
            },
        })
    }

    /// Redeems a stored import's refresh token through the read path, then announces
    /// it (unless an earlier import did): with the account the provider names when the
    /// line lacks one, and the scopes it reports. A dead token is kept inactive when
    /// asked; otherwise the connection is put back as it was before the import
    /// (removed when there was none). Any other failure announces the grant as stored,
    /// unverified (its first read tries again), and is returned. Each write first checks
    /// that the row is still this import's: a consent or another import that replaced
    /// it meanwhile is left alone.
    async fn verify_import(
        &self,
        provider: &Arc<OidcProvider>,
        grant: &ImportedGrant,
        stored: &Connection,
        prior: &Prior,
        options: ImportOptions,
        client: &ClientInfo,
    ) -> Result<ImportOutcome, TokenError> {
        let user_id = stored.user_id.as_str();
        let name = provider.name();
        // A flight outlives the reader that gives up on it: reading again joins it (or
        // finds what it stored), so a slow store costs waiting, never a second redeem.
        let mut read = Err(TokenError::RefreshBusy);
        for _ in 0..VERIFY_READS {
            read = self
                .token_valid_for(provider, user_id, client, self.policy.refresh_margin)
                .await;
            match &read {
                Err(TokenError::RefreshBusy) => {}
                // Another attempt's lease lapsed unanswered (its store was slow or away):
                // its outcome is stored, or its hold ends, within the wait.
                Err(TokenError::RefreshOutcomePending { retry_after_secs }) => {
                    tokio::time::sleep(Duration::from_secs((*retry_after_secs).max(1))).await;
                }
                _ => break,
            }
        }
        let replaced = matches!(prior, Prior::Before(Some(_)));
        let announce = matches!(prior, Prior::Before(_));
        match read {
            Ok(_) => {}
            Err(TokenError::ReauthorizationRequired { cause }) => {
                let kept = match prior {
                    // Announced before: its refresh said it died (refresh_failed).
                    Prior::Announced => true,
                    Prior::Before(previous) => {
                        self.settle_dead_import(stored, previous.as_deref(), options.keep_dead)
                            .await?
                    }
                };
                return Ok(ImportOutcome::Dead { cause, kept });
            }
            Err(e) => {
                if announce {
                    self.announce_import(stored, grant, None, replaced).await?;
                }
                return Err(e);
            }
        }
        let account = if grant.sub.is_none() || grant.email.is_none() {
            self.account_of(provider, user_id).await
        } else {
            None
        };
        let row = if announce {
            self.announce_import(stored, grant, account.as_ref(), replaced)
                .await?
        } else {
            self.store
                .get(user_id, name)
                .await?
                .ok_or(TokenError::NotConnected)?
        };
        Ok(ImportOutcome::Stored {
            replaced,
            // Proven when a refresh took its token: a connection an earlier import
            // stored with a valid access token may not have needed one yet.
            verified: !row.grant.unverified,
            connection: Box::new(self.summary(row)),
        })
    }

    /// Announces `stored` (`connection.imported`) once it is settled: with the
    /// provider's `account` (where the line named none), and the line's scopes when
    /// the provider reported none. Verified when a refresh took its token since.
    /// Refused as a conflict when the row is no longer this import's.
    async fn announce_import(
        &self,
        stored: &Connection,
        grant: &ImportedGrant,
        account: Option<&UserInfo>,
        replaced: bool,
    ) -> Result<Connection, TokenError> {
        let row = until_written::<_, TokenError, _>(WRITE_ATTEMPTS, || async {
            let row = self
                .store
                .get(&stored.user_id, &stored.provider)
                .await?
                .filter(|row| is_this_import(row, stored))
                .ok_or(TokenError::Conflict)?;
            let mut next = row.clone();
            next.version += 1;
            next.updated_at = now_to_the_milli();
            next.grant.verifying = false;
            if let Some(account) = account {
                let sub = grant.sub.clone().unwrap_or_else(|| account.sub.clone());
                let email = grant.email.clone().or_else(|| account.email.clone());
                next.email.clone_from(&email);
                next.user_info = UserInfo {
                    sub,
                    email,
                    ..account.clone()
                };
            }
            if next.grant.granted_scopes.is_empty() {
                next.grant.granted_scopes.clone_from(&grant.scopes);
            }
            let events = [self.imported_event(&next, !next.grant.unverified, replaced)];
            match self.store.put(&next, Some(row.version), &events).await {
                Ok(()) => Ok(Written::Done(next)),
                Err(StoreError::Conflict) => Ok(Written::Lost),
                Err(e) => Err(e.into()),
            }
        })
        .await?
        .ok_or(TokenError::Conflict)?;
        self.refresher
            .cache
            .invalidate(&stored.user_id, &stored.provider);
        Ok(row)
    }

    /// The account the provider names for a connection just refreshed: from the ID
    /// token its refresh answered with, or the user endpoint. `None` (logged) when it
    /// names none or cannot be asked.
    async fn account_of(&self, provider: &Arc<OidcProvider>, user_id: &str) -> Option<UserInfo> {
        let row = self.store.get(user_id, provider.name()).await.ok()??;
        let tokens = TokenSet::open(&self.cipher, &row).await.ok()?;
        let id_token = tokens.id_token.clone().map(SecretString::from);
        let access_token = SecretString::from(tokens.access_token.clone());
        match provider
            .refreshed_account(
                id_token.as_ref(),
                &access_token,
                tokens.client_id.as_deref(),
            )
            .await
        {
            Ok(account) => account,
            Err(e) => {
                tracing::warn!(error = %e, "the provider did not name the imported grant's account");
                None
            }
        }
    }

    /// After a verify found the imported refresh token dead: keep the (now inactive)
    /// connection and announce it, or put back what was there before the import (a
    /// live connection is always put back: a dead import never replaces one). Returns
    /// whether the dead grant was kept. A row that is no longer this import's (a
    /// consent or another import replaced it) is left alone.
    async fn settle_dead_import(
        &self,
        stored: &Connection,
        previous: Option<&Connection>,
        keep: bool,
    ) -> Result<bool, TokenError> {
        let (user_id, provider) = (stored.user_id.as_str(), stored.provider.as_str());
        let keep = keep && previous.is_none_or(|p| !p.is_active);
        until_written::<_, TokenError, _>(WRITE_ATTEMPTS, || async {
            let Some(row) = self
                .store
                .get(user_id, provider)
                .await?
                .filter(|row| is_this_import(row, stored) && !row.is_active)
            else {
                return Ok(Written::Done(()));
            };
            let written = if keep {
                // Proven dead: no longer a claim, and announced now.
                let mut next = row.clone();
                next.version += 1;
                next.grant.unverified = false;
                next.grant.verifying = false;
                let events = [self.imported_event(&next, true, previous.is_some())];
                self.store.put(&next, Some(row.version), &events).await
            } else if let Some(previous) = previous {
                let restored = Connection {
                    version: row.version + 1,
                    refresh: RefreshState::default(),
                    ..previous.clone()
                };
                self.store.put(&restored, Some(row.version), &[]).await
            } else {
                self.store
                    .delete(user_id, provider, row.version, &[])
                    .await
                    .map(|_| ())
            };
            match written {
                Ok(()) => Ok(Written::Done(())),
                Err(StoreError::Conflict) => Ok(Written::Lost),
                Err(e) => Err(e.into()),
            }
        })
        .await?
        .ok_or(TokenError::Conflict)?;
        self.refresher.cache.invalidate(user_id, provider);
        Ok(keep)
    }
}
