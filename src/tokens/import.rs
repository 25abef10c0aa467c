//! Grants made elsewhere, brought in without asking their users to consent again
//! (`axnt-oauth import`, `POST /v1/users/{userId}/connections/{provider}/import`): one
//! line of the migration format, checked field by field, stored as the connection with
//! a `connection.imported` event; or, when asked to verify, stored first and proven by
//! one redeem of its refresh token through the one refresh path (its single flight and
//! lease, so a rotating provider's new refresh token is stored and the old one never
//! presented twice), then announced.

use serde::Deserialize;

use super::*;
use crate::retry::{Written, until_written};

/// Reads a verify makes at most while a refresh of the grant is still in flight (each
/// waits the refresh deadline and 5 s) or its outcome pending (each waits its
/// `Retry-After`).
const VERIFY_READS: usize = 6;
/// Longest token a line may carry. Google's are a few hundred bytes; Microsoft's
/// access tokens a few kilobytes.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Most scopes a line may name.
const MAX_SCOPES: usize = 200;
/// Longest `sub`, `email`, `client` or scope.
const MAX_TEXT_BYTES: usize = 512;

/// One line of the migration format as written (JSON, camelCase). Unknown fields are
/// refused: a misspelt `refresh_token` must not pass for a line without one.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Line {
    user_id: String,
    provider: String,
    refresh_token: SecretString,
    #[serde(default)]
    access_token: Option<SecretString>,
    #[serde(default)]
    expires_at: Option<Instant>,
    #[serde(default)]
    scopes: Option<Scopes>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    consented_at: Option<Instant>,
}

/// A time: RFC 3339 text, or epoch seconds.
#[derive(Deserialize)]
#[serde(untagged)]
enum Instant {
    Text(String),
    Seconds(i64),
}

/// Scopes: a list, or one space-separated string (as a token response's `scope`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Scopes {
    List(Vec<String>),
    Text(String),
}

/// Why a line was refused: the field (its JSON path) and what is wrong with it, never
/// its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub(crate) struct LineError {
    pub(crate) field: String,
    pub(crate) problem: String,
}

impl LineError {
    fn new(field: &str, problem: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            problem: problem.into(),
        }
    }
}

/// A line that passed its checks: a grant to import. Never printed (no `Debug`).
pub(crate) struct ImportedGrant {
    pub(crate) user_id: UserId,
    pub(crate) provider: String,
    refresh_token: SecretString,
    access_token: Option<SecretString>,
    expires_at: Option<DateTime<Utc>>,
    scopes: Vec<String>,
    sub: Option<String>,
    email: Option<String>,
    client: Option<String>,
    consented_at: Option<DateTime<Utc>>,
}

impl ImportedGrant {
    /// The OAuth client the line names, if any.
    pub(crate) fn client(&self) -> Option<&str> {
        self.client.as_deref()
    }

    /// Parses and checks one line of the migration format.
    pub(crate) fn parse(text: &str) -> Result<Self, LineError> {
        let mut input = serde_json::Deserializer::from_str(text);
        let line: Line = serde_path_to_error::deserialize(&mut input).map_err(shape)?;
        input.end().map_err(|_| {
            LineError::new("line", "more than one JSON value (one object per line)")
        })?;
        Self::check(line)
    }

    /// Parses and checks a JSON value of the migration format (the import API's body,
    /// with the path's `userId` and `provider`).
    pub(crate) fn from_value(value: serde_json::Value) -> Result<Self, LineError> {
        let line: Line = serde_path_to_error::deserialize(value).map_err(shape)?;
        Self::check(line)
    }

    fn check(line: Line) -> Result<Self, LineError> {
        let user_id = UserId::parse(line.user_id).map_err(|_| {
            LineError::new(
                "userId",
                "not a user id (1 to 256 characters, no '/', '\\' or control characters)",
            )
        })?;
        if line.provider.is_empty() || line.provider.len() > MAX_TEXT_BYTES {
            return Err(LineError::new("provider", "empty or too long"));
        }
        check_token("refreshToken", &line.refresh_token)?;
        if let Some(access_token) = &line.access_token {
            check_token("accessToken", access_token)?;
        }
        let expires_at = line.expires_at.map(|t| time("expiresAt", t)).transpose()?;
        let consented_at = line
            .consented_at
            .map(|t| time("consentedAt", t))
            .transpose()?;
        if consented_at.is_some_and(|t| t > Utc::now() + chrono::TimeDelta::minutes(5)) {
            return Err(LineError::new("consentedAt", "in the future"));
        }
        let scopes = match line.scopes {
            None => Vec::new(),
            Some(Scopes::Text(text)) => grant::parse_scopes(&text),
            Some(Scopes::List(list)) => list,
        };
        if scopes.len() > MAX_SCOPES {
            return Err(LineError::new(
                "scopes",
                format!("more than {MAX_SCOPES} scopes"),
            ));
        }
        if let Some(i) = scopes.iter().position(|s| !is_plain(s)) {
            return Err(LineError::new(
                &format!("scopes[{i}]"),
                "empty, too long, or holds spaces or control characters",
            ));
        }
        let mut scopes = scopes;
        scopes.dedup();
        for (field, value) in [
            ("sub", &line.sub),
            ("email", &line.email),
            ("client", &line.client),
        ] {
            if value.as_deref().is_some_and(|v| !is_plain(v)) {
                return Err(LineError::new(
                    field,
                    "empty, too long, or holds spaces or control characters",
                ));
            }
        }
        Ok(Self {
            user_id,
            provider: line.provider,
            refresh_token: line.refresh_token,
            access_token: line.access_token,
            expires_at,
            scopes,
            sub: line.sub,
            email: line.email,
            client: line.client,
            consented_at,
        })
    }
}

/// The field and the kind of problem of a line serde refused, never the value (serde's
/// own message quotes it, and the value may be a token).
fn shape(e: serde_path_to_error::Error<serde_json::Error>) -> LineError {
    let path = e.path().to_string();
    let inner = e.inner();
    let message = inner.to_string();
    let problem = if message.starts_with("unknown field") {
        "not a field of the migration format".to_string()
    } else if message.starts_with("missing field") {
        // serde names the missing field in its message, not in the path.
        let field = message.split('`').nth(1).unwrap_or("a field");
        return LineError::new(field, "missing");
    } else {
        match crate::secrets::shape_error(&e).rsplit_once(": ") {
            Some((_, what)) => what.to_string(),
            None => "not valid".to_string(),
        }
    };
    let field = if path == "." || path == "?" || path.is_empty() {
        "line"
    } else {
        &path
    };
    LineError::new(field, problem)
}

fn check_token(field: &str, token: &SecretString) -> Result<(), LineError> {
    let token = token.expose_secret();
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(LineError::new(field, "empty or too long"));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(LineError::new(field, "holds spaces or control characters"));
    }
    Ok(())
}

fn is_plain(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_TEXT_BYTES
        && !text.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn time(field: &str, value: Instant) -> Result<DateTime<Utc>, LineError> {
    match value {
        Instant::Text(text) => DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| LineError::new(field, "not an RFC 3339 time or epoch seconds")),
        Instant::Seconds(secs) => DateTime::from_timestamp(secs, 0)
            .ok_or_else(|| LineError::new(field, "epoch seconds out of range")),
    }
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
            // The line's own token already stored (an earlier run of the same import)
            // is never stored again: a rotating provider may have spent it.
            let same_token = existing.as_ref().is_some_and(|row| {
                row.grant.refresh_token_hash.as_deref() == Some(token_hash.as_str())
            });
            if let Some(row) = &existing
                && (!options.replace || same_token)
            {
                let unproven = row.grant.unverified || row.grant.verifying;
                return Ok(Written::Done(
                    if options.verify && unproven && row.is_active && !options.dry_run {
                        First::Unverified {
                            row: Box::new(row.clone()),
                        }
                    } else {
                        First::Exists
                    },
                ));
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
                let data = json!({ "outcome": done.label(), "verified": true, "by": by });
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
            granted: Granted {
                about: About::of(row),
                sub: row.user_info.sub.clone(),
                email: row.email.clone(),
                granted_scopes: row.grant.granted_scopes.clone(),
                requested_scopes: row.grant.requested_scopes.clone(),
            },
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
        let refresh_token = grant.refresh_token.expose_secret().to_string();
        let scope = (!grant.scopes.is_empty()).then(|| grant.scopes.join(" "));
        let set = TokenSet {
            access_token: access_token.unwrap_or_default(),
            refresh_token: Some(refresh_token.clone()),
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
                refresh_token_hash: Some(crate::oauth::risc::token_hash(&refresh_token)),
                refresh_token_prefix_hash: Some(crate::oauth::risc::prefix_hash(&refresh_token)),
                imported_at: Some(now),
                unverified: true,
                verifying: verify,
            },
        })
    }

    /// Redeems a stored import's refresh token through the read path, then announces
    /// it: with the account the provider names when the line lacks one, and the scopes
    /// it reports. A dead token is kept inactive when asked; otherwise the connection
    /// is put back as it was before the import (removed when there was none). Any other
    /// failure leaves the grant stored unverified (its first read tries again).
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
        match read {
            Ok(_) => {}
            Err(TokenError::ReauthorizationRequired { cause }) => {
                let kept = match prior {
                    Prior::Announced => true,
                    Prior::Before(previous) => {
                        self.settle_dead_import(
                            user_id,
                            name,
                            previous.as_deref(),
                            options.keep_dead,
                        )
                        .await?;
                        options.keep_dead
                    }
                };
                return Ok(ImportOutcome::Dead { cause, kept });
            }
            Err(e) => return Err(e),
        }
        let account = if grant.sub.is_none() || grant.email.is_none() {
            self.account_of(provider, user_id).await
        } else {
            None
        };
        let replaced = matches!(prior, Prior::Before(Some(_)));
        let row = until_written::<_, TokenError, _>(WRITE_ATTEMPTS, || async {
            let row = self
                .store
                .get(user_id, name)
                .await?
                .ok_or(TokenError::NotConnected)?;
            let mut next = row.clone();
            next.version += 1;
            next.updated_at = now_to_the_milli();
            next.grant.unverified = false;
            next.grant.verifying = false;
            if let Some(account) = &account {
                if grant.sub.is_none() {
                    next.user_info.sub.clone_from(&account.sub);
                }
                if grant.email.is_none() {
                    next.email.clone_from(&account.email);
                }
                next.user_info = UserInfo {
                    sub: next.user_info.sub.clone(),
                    email: next.email.clone(),
                    ..account.clone()
                };
            }
            if next.grant.granted_scopes.is_empty() {
                next.grant.granted_scopes.clone_from(&grant.scopes);
            }
            let events = [self.imported_event(&next, true, replaced)];
            match self.store.put(&next, Some(row.version), &events).await {
                Ok(()) => Ok(Written::Done(next)),
                Err(StoreError::Conflict) => Ok(Written::Lost),
                Err(e) => Err(e.into()),
            }
        })
        .await?
        .ok_or(TokenError::Conflict)?;
        self.refresher.cache.invalidate(user_id, name);
        Ok(ImportOutcome::Stored {
            replaced,
            verified: true,
            connection: Box::new(self.summary(row)),
        })
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
    /// connection and announce it, or put back what was there before the import.
    async fn settle_dead_import(
        &self,
        user_id: &str,
        provider: &str,
        previous: Option<&Connection>,
        keep: bool,
    ) -> Result<(), TokenError> {
        until_written::<_, TokenError, _>(WRITE_ATTEMPTS, || async {
            let Some(row) = self.store.get(user_id, provider).await? else {
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
                let mut restored = previous.clone();
                restored.version = row.version + 1;
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> LineError {
        match ImportedGrant::parse(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_full_line_parses_with_either_time_and_scope_form() {
        let grant = ImportedGrant::parse(
            r#"{"userId":"u-1","provider":"google","refreshToken":"1//rt","accessToken":"ya29.at","expiresAt":"2026-12-05T10:00:00Z","scopes":"openid email","sub":"123","email":"a@example.com","client":"c.apps","consentedAt":1764000000}"#,
        )
        .expect("a good line");
        assert_eq!(grant.user_id.as_str(), "u-1");
        assert_eq!(grant.scopes, ["openid", "email"]);
        assert_eq!(grant.expires_at.map(|t| t.timestamp()), Some(1_796_464_800));
        assert_eq!(
            grant.consented_at.map(|t| t.timestamp()),
            Some(1_764_000_000)
        );
        let listed = ImportedGrant::parse(
            r#"{"userId":"u","provider":"google","refreshToken":"r","scopes":["openid","email"]}"#,
        )
        .expect("scopes as a list");
        assert_eq!(listed.scopes, ["openid", "email"]);
    }

    #[test]
    fn a_refused_line_names_its_field_and_never_its_value() {
        let secret = "1//0gSECRETrefreshTOKEN";
        for (text, field) in [
            (
                r#"{"userId":"u","provider":"google"}"#.to_string(),
                "refreshToken",
            ),
            (
                format!(
                    r#"{{"userId":"u","provider":"google","refreshToken":"{secret}","expiresAt":"{secret}"}}"#
                ),
                "expiresAt",
            ),
            (
                format!(
                    r#"{{"userId":"u","provider":"google","refreshToken":"{secret}","consentedAt":true}}"#
                ),
                "consentedAt",
            ),
            (
                format!(r#"{{"userId":"u","provider":"google","refreshToken":["{secret}"]}}"#),
                "refreshToken",
            ),
            (
                format!(r#"{{"userId":"u","provider":"google","refresh_token":"{secret}"}}"#),
                "refresh_token",
            ),
            (
                format!(r#"{{"userId":"a/b","provider":"google","refreshToken":"{secret}"}}"#),
                "userId",
            ),
            (
                format!(r#"{{"userId":"u","provider":"google","refreshToken":"{secret} x"}}"#),
                "refreshToken",
            ),
            (
                format!(
                    r#"{{"userId":"u","provider":"google","refreshToken":"{secret}","scopes":["openid",""]}}"#
                ),
                "scopes[1]",
            ),
            (
                format!(r#"{{"userId":"u","provider":"google","refreshToken":"{secret}""#),
                "line",
            ),
            (format!(r#"["{secret}"]"#), "line"),
            (
                format!(r#"{{"userId":"u","provider":"google","refreshToken":"{secret}"}} {{}}"#),
                "line",
            ),
        ] {
            let e = refused(&text);
            assert_eq!(e.field, field, "{text}: {e}");
            assert!(!e.to_string().contains("SECRET"), "{text}: {e}");
        }
    }
}
