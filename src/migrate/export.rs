//! `axnt-oauth export`: the connections as JSON lines on standard output, a page of the
//! tokens table at a time.
//!
//! By default a line is a connection's metadata and never a token of any kind. With
//! `--include-refresh-tokens` each live connection is a line of the migration format
//! (`userId`, `provider`, `refreshToken`, `scopes`, `sub`, `email`, `client`,
//! `consentedAt`: what `axnt-oauth import` and the peers' importers read), and the whole
//! output is encrypted to an age recipient, so the receiver decrypts it with `age -d`
//! and no token ever crosses a pipe or a disk in clear. A connection whose grant is dead
//! has no refresh token worth carrying and is counted, not written. Every connection
//! written is recorded in its user's flow log (step `exported`) and in the audit trail
//! (`exported` or `exported_with_token`, caller `cli`).

use std::io::{BufWriter, IsTerminal, StdoutLock, Write};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::json;
use zeroize::Zeroizing;

use super::{CLI_CALLER, CLOSE_WITHIN};
use crate::app::Offline;
use crate::store::flow_log::ClientInfo;
use crate::store::{Connection, FlowStep, ScanCursor};
use crate::tokens::TokenSet;

/// Rows read per page of the scan.
const PAGE: usize = 500;

/// Which connections an export writes, and how.
#[derive(Debug, Default)]
pub(crate) struct ExportRun {
    /// Only these providers' (all when empty).
    pub(crate) providers: Vec<String>,
    /// Only these users' (all when empty).
    pub(crate) users: Vec<String>,
    /// Only connections made with this OAuth client (its client id).
    pub(crate) client: Option<String>,
    /// Encrypt the output to this age recipient and include refresh tokens.
    pub(crate) recipient: Option<age::x25519::Recipient>,
}

impl ExportRun {
    fn wants(&self, row: &Connection) -> bool {
        (self.providers.is_empty() || self.providers.contains(&row.provider))
            && (self.users.is_empty() || self.users.contains(&row.user_id))
            && self
                .client
                .as_deref()
                .is_none_or(|c| row.grant.client_id.as_deref() == Some(c))
    }
}

/// A connection's metadata: never a token.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Metadata<'a> {
    user_id: &'a str,
    provider: &'a str,
    /// `None` for an imported connection whose account is not known yet.
    sub: Option<&'a str>,
    email: Option<&'a str>,
    scopes: &'a [String],
    requested_scopes: &'a [String],
    client: Option<&'a str>,
    consented_at: Option<String>,
    is_active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cause: Option<&'a str>,
    unverified: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    imported_at: Option<String>,
    created_at: String,
    last_used: String,
    last_refreshed_at: Option<String>,
}

/// A connection as a line of the migration format, with its refresh token.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Portable<'a> {
    user_id: &'a str,
    provider: &'a str,
    refresh_token: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    scopes: &'a [String],
    #[serde(skip_serializing_if = "str::is_empty")]
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consented_at: Option<String>,
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// What an export came to.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Counts {
    written: u64,
    /// Dead grants (with `--include-refresh-tokens`): nothing to carry.
    inactive: u64,
    /// Rows whose tokens could not be opened (logged).
    failed: u64,
}

/// Runs an export; returns the process exit code: 0, 1 when a row could not be written
/// or the audit and flow log not closed, 130 when interrupted (Ctrl-C stops after the
/// page in progress; the output is then cut short, and an encrypted one does not open).
/// The audit and flow log are closed on every way out, so each connection written is
/// recorded.
pub(crate) async fn export(
    settings: crate::config::Settings,
    run: ExportRun,
) -> anyhow::Result<i32> {
    if run.recipient.is_some() && std::io::stdout().is_terminal() {
        anyhow::bail!(
            "the encrypted export is binary: redirect standard output to a file (> connections.age)"
        );
    }
    let services = Offline::open(settings).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let interrupt = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.cancel();
            }
        })
    };
    let mut counts = Counts::default();
    let written = write_rows(&services, &run, &stop, &mut counts).await;
    interrupt.abort();
    let closed = services.close(CLOSE_WITHIN).await;
    written?;
    eprintln!(
        "{} connections written{}{}{}",
        counts.written,
        if run.recipient.is_some() {
            format!(
                " with their refresh tokens (encrypted); {} dead grants not written",
                counts.inactive
            )
        } else {
            " (metadata only, no token)".to_string()
        },
        if counts.failed > 0 {
            format!("; {} could not be opened (see the log)", counts.failed)
        } else {
            String::new()
        },
        if stop.is_cancelled() {
            "; interrupted: the output is incomplete"
        } else {
            ""
        }
    );
    Ok(if stop.is_cancelled() {
        130
    } else if counts.failed > 0 || !closed {
        1
    } else {
        0
    })
}

/// Writes the connections `run` wants to standard output, a page at a time, each
/// recorded in the audit and its user's flow log; the output is finished (the age
/// stream's last chunk and tag) only when every page was written.
async fn write_rows(
    services: &Offline,
    run: &ExportRun,
    stop: &tokio_util::sync::CancellationToken,
    counts: &mut Counts,
) -> anyhow::Result<()> {
    let with_tokens = run.recipient.is_some();
    let stdout = BufWriter::new(std::io::stdout().lock());
    let mut out = match &run.recipient {
        Some(recipient) => Output::Sealed(
            age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
                .map_err(|e| anyhow::anyhow!("the age recipient: {e}"))?
                .wrap_output(stdout)?,
        ),
        None => Output::Plain(stdout),
    };
    let mut after: Option<ScanCursor> = None;
    let client = ClientInfo {
        caller: Some(super::CLI_CALLER.into()),
        ..ClientInfo::default()
    };
    // One flow id for the whole export, so a user's flow log ties its entry to it.
    let flow_id = format!("export-{}", uuid::Uuid::new_v4());
    let outcome = if with_tokens {
        crate::audit::ReadOutcome::ExportedWithToken
    } else {
        crate::audit::ReadOutcome::Exported
    };
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        let page = services.store.scan(after.as_ref(), PAGE).await?;
        for row in page.rows.iter().filter(|row| run.wants(row)) {
            let line = if with_tokens {
                if !row.is_active {
                    counts.inactive += 1;
                    continue;
                }
                match portable_line(services, row).await {
                    Some(line) => line,
                    None => {
                        counts.failed += 1;
                        continue;
                    }
                }
            } else {
                Zeroizing::new(metadata_line(row)?)
            };
            // Recorded before it is written: the audit never misses a line out.
            services.audit.record_action(crate::audit::Read {
                caller: CLI_CALLER,
                user_id: &row.user_id,
                provider: &row.provider,
                outcome,
                reason: None,
                scopes: None,
                request_id: None,
            });
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")?;
            counts.written += 1;
            services
                .flow_log
                .flow(&row.user_id, &flow_id, &row.provider, &client)
                .step(
                    FlowStep::Exported,
                    json!({ "includesRefreshToken": with_tokens, "by": CLI_CALLER }),
                )
                .await;
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    out.finish()?;
    Ok(())
}

/// Standard output, in clear or through the age stream.
enum Output<'a> {
    Plain(BufWriter<StdoutLock<'a>>),
    Sealed(age::stream::StreamWriter<BufWriter<StdoutLock<'a>>>),
}

impl Output<'_> {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Plain(out) => out.write_all(bytes),
            Self::Sealed(out) => out.write_all(bytes),
        }
    }

    /// Ends the output: the age stream's last chunk and its tag (without which the
    /// receiver refuses the file as cut short), then a flush.
    fn finish(self) -> std::io::Result<()> {
        match self {
            Self::Plain(mut out) => out.flush(),
            Self::Sealed(out) => out.finish()?.flush(),
        }
    }
}

fn metadata_line(row: &Connection) -> anyhow::Result<String> {
    let cause = (!row.is_active)
        .then_some(row.refresh.inactive_cause.as_deref())
        .flatten();
    Ok(serde_json::to_string(&Metadata {
        user_id: &row.user_id,
        provider: &row.provider,
        sub: Some(row.user_info.sub.as_str()).filter(|s| !s.is_empty()),
        email: row.email.as_deref(),
        scopes: &row.grant.granted_scopes,
        requested_scopes: &row.grant.requested_scopes,
        client: row.grant.client_id.as_deref(),
        consented_at: row.grant.consented_at.map(time),
        is_active: row.is_active,
        cause,
        unverified: row.grant.unverified,
        imported_at: row.grant.imported_at.map(time),
        created_at: time(row.created_at),
        last_used: time(row.last_used),
        last_refreshed_at: row.grant.last_refreshed_at.map(time),
    })?)
}

/// The row as a migration line with its refresh token, or `None` (logged) when its
/// tokens cannot be opened or it holds no refresh token.
async fn portable_line(services: &Offline, row: &Connection) -> Option<Zeroizing<String>> {
    let tokens = match TokenSet::open(&services.cipher, row).await {
        Ok(tokens) => tokens,
        Err(e) => {
            tracing::error!(user_id = %row.user_id, provider = %row.provider, error = %e, "a connection's tokens could not be opened for the export");
            return None;
        }
    };
    let Some(refresh_token) = tokens.refresh_token.as_deref() else {
        tracing::warn!(user_id = %row.user_id, provider = %row.provider, "a connection holds no refresh token: not exported");
        return None;
    };
    let line = serde_json::to_string(&Portable {
        user_id: &row.user_id,
        provider: &row.provider,
        refresh_token,
        scopes: &row.grant.granted_scopes,
        sub: &row.user_info.sub,
        email: row.email.as_deref(),
        client: row
            .grant
            .client_id
            .as_deref()
            .or(tokens.client_id.as_deref()),
        consented_at: row.grant.consented_at.map(time),
    });
    line.ok().map(Zeroizing::new)
}
