//! Start-up's wait for a dependency that is unavailable for now.
//!
//! An instance restarted while Secrets Manager is unreachable for a few seconds should
//! come up when it is back, not exit and leave the orchestrator to guess. So a failure
//! that waiting may mend ([`StartupError::is_transient`]: unreachable, throttled,
//! failing, or no answer in time) is retried with backoff and jitter for up to
//! `AXNT_STARTUP_TIMEOUT_SECS`, one log line per attempt (the error names the secret
//! and what AWS said, never a value), while the listener serves `/healthz` (200) and
//! `/readyz` (503 `{"status":"starting","checks":{…},"waitingFor":"…"}`). When the
//! dependency answers, the full service replaces the probes on the same listener. A
//! dependency that answers "wrong" (malformed, missing, denied) stops start-up at once:
//! no wait mends it.
//!
//! Start-up calls one dependency: the secret (Secrets Manager in aws mode). Tables and
//! the KMS key are not called at start-up; `/readyz` and `axnt-oauth check` test them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use tokio::sync::watch;

use super::{Backends, Running, StartupError, assemble, load_secrets};
use crate::config::Settings;
use crate::http::{Starting, starting_router};
use crate::retry::Backoff;
use crate::secrets::SecretError;

/// How long the first attempt may take before the listener serves probes meanwhile: an
/// endpoint that does not answer can hold a call for the SDK's whole operation timeout.
const FIRST_ATTEMPT: Duration = Duration::from_secs(2);
/// The first pause between attempts; doubled each time (with jitter) up to the cap.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What start-up waits for, as `/readyz` and the log name it.
const SECRETS: Starting = Starting {
    part: "secrets",
    code: "unavailable",
    what: "secrets manager",
};

/// The first load of the secrets: at most [`FIRST_ATTEMPT`] when waiting is allowed.
pub(super) async fn first_attempt(
    settings: &Settings,
    backends: &Backends,
) -> Result<super::assembly::LoadedSecrets, StartupError> {
    if settings.server.startup_timeout.is_zero() {
        return load_secrets(settings, backends).await;
    }
    tokio::time::timeout(FIRST_ATTEMPT, load_secrets(settings, backends))
        .await
        .unwrap_or_else(|_| Err(no_answer(FIRST_ATTEMPT)))
}

fn no_answer(within: Duration) -> StartupError {
    StartupError::Secret(SecretError::Unavailable(format!(
        "no answer within {} ms",
        within.as_millis()
    )))
}

/// An app waiting for its dependency.
pub(super) struct Pending {
    settings: Arc<Settings>,
    backends: Backends,
    since: Instant,
    last: StartupError,
    /// The routes served: the start-up probes, then the full service.
    current: watch::Sender<Router>,
}

impl Pending {
    /// Waiting after the first attempt failed with `first`.
    pub(super) fn new(settings: Arc<Settings>, backends: Backends, first: StartupError) -> Self {
        Self {
            settings,
            backends,
            since: Instant::now(),
            last: first,
            current: watch::Sender::new(starting_router(SECRETS)),
        }
    }

    /// The routes to serve now (a receiver that sees the switch).
    pub(super) fn current(&self) -> watch::Receiver<Router> {
        self.current.subscribe()
    }

    /// Retries until the dependency answers (then the full service is served), it
    /// answers "wrong", or the budget is spent.
    pub(super) async fn wait(self) -> Result<Running, StartupError> {
        let Self {
            settings,
            backends,
            since,
            mut last,
            current,
        } = self;
        let budget = settings.server.startup_timeout;
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        let mut attempt: u32 = 1;
        loop {
            let pause = backoff.next_wait();
            let left = budget.saturating_sub(since.elapsed());
            if left <= pause {
                return Err(StartupError::GaveUp {
                    waited_secs: since.elapsed().as_secs(),
                    waiting_for: SECRETS.what.to_string(),
                    last: Box::new(last),
                });
            }
            tracing::warn!(
                attempt,
                waiting_for = SECRETS.what,
                error = %last,
                retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                "start-up is waiting for a dependency that is unavailable for now"
            );
            tokio::time::sleep(pause).await;
            attempt += 1;
            let left = budget.saturating_sub(since.elapsed());
            match tokio::time::timeout(left, load_secrets(&settings, &backends)).await {
                Ok(Ok(secrets)) => {
                    let running = assemble(Arc::clone(&settings), backends, secrets)?;
                    // The probes' router is dropped once its requests are answered.
                    let _probes = current.send_replace(running.router.clone());
                    tracing::info!(
                        attempt,
                        waited_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
                        "{} answered: serving",
                        SECRETS.what
                    );
                    return Ok(running);
                }
                Ok(Err(e)) if e.is_transient() => last = e,
                Ok(Err(e)) => return Err(e),
                Err(_) => last = no_answer(left),
            }
        }
    }
}
