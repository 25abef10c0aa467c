//! Webhook delivery: every lifecycle event, to every endpoint in `AXNT_WEBHOOK_URLS`,
//! signed as Standard Webhooks sign, at least once.
//!
//! One worker per endpoint runs on whichever instance holds the endpoint's job lease
//! (`webhook#<endpoint id>` in the tokens table); an instance that dies leaves a lease
//! that lapses, and another takes the endpoint over from its stored state. The state
//! ([`WebhookState`]) holds the feed cursor and the events owed after failed attempts.
//! Events of one connection go out one at a time, in order: while one is owed, the
//! connection's later events queue behind it; other connections go on. A failed
//! attempt is retried with exponential backoff and jitter until the event is older than
//! `AXNT_WEBHOOK_RETRY_HOURS`, then given up (logged, counted). After
//! `CIRCUIT_FAILURES` failures in a row the endpoint's circuit opens for
//! `AXNT_WEBHOOK_CIRCUIT_OPEN_SECS`: nothing is sent to it meanwhile, and the feed
//! (not memory) holds what waits; then one attempt probes it.

mod rewind;
mod send;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use tokio_util::sync::CancellationToken;

use crate::breaker::{Breaker, Outcome, Trip};
use crate::events::{EventRules, PROBE_KIND};
use crate::jobs::{Job, Jobs, Schedule};
use crate::secrets::SecretsCache;
use crate::series::Label;
use crate::store::{
    Event, EventFeed, JobLease, JobLeases, PendingDelivery, StoreError, TokenStore, WebhookCursors,
    WebhookState, event_bound, event_millis,
};
pub(crate) use rewind::rewind;
use send::Attempt;

pub use crate::crypto::WebhookSecret;

/// Failed attempts in a row that open an endpoint's circuit.
const CIRCUIT_FAILURES: u32 = 5;
/// The longest wait between two attempts at one event.
const MAX_BACKOFF: Duration = Duration::from_secs(3_600);
/// Events read from the feed per pass.
const PAGE: usize = 100;
/// Events owed to one endpoint, at most: past it the feed is not read further (it
/// holds the rest) until some are delivered.
const MAX_PENDING: usize = 500;
/// A worker's lease on an endpoint holds ten polls, and at least two attempts' time
/// limits (renewed every pass and after every attempt): how long an endpoint waits for
/// another instance when its worker died.
fn lease(rules: &DeliveryRules) -> Duration {
    (rules.poll * 10)
        .max(rules.timeout * 2)
        .max(Duration::from_secs(2))
}

/// How deliveries are made.
#[derive(Debug, Clone)]
pub(crate) struct DeliveryRules {
    pub(crate) urls: Vec<url::Url>,
    /// `AXNT_WEBHOOK_SECRET`; else the secret's `webhook_secret`.
    pub(crate) secret: Option<WebhookSecret>,
    pub(crate) allow_private: bool,
    /// An event is given up this long after it was made.
    pub(crate) retry_period: Duration,
    /// The wait after a first failed attempt; doubled per attempt up to an hour.
    pub(crate) first_backoff: Duration,
    /// One attempt's time limit.
    pub(crate) timeout: Duration,
    /// How often a worker looks for new events.
    pub(crate) poll: Duration,
    pub(crate) circuit_open: Duration,
}

/// One endpoint: its URL and the id its state, lease and metrics use (never the URL,
/// which may hold a token of the receiver's).
#[derive(Debug, Clone)]
struct Endpoint {
    id: String,
    url: url::Url,
}

impl Endpoint {
    fn new(url: url::Url) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, url.as_str().as_bytes());
        let hex: String = digest.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self {
            id: format!("wh-{hex}"),
            url,
        }
    }
}

/// The parts of the store delivery uses: each endpoint's cursor, the lease that gives
/// an endpoint to one instance, and the event feed.
#[derive(Clone)]
pub(crate) struct DeliveryStore {
    pub(crate) cursors: Arc<dyn WebhookCursors>,
    pub(crate) leases: Arc<dyn JobLeases>,
    pub(crate) feed: Arc<dyn EventFeed>,
}

impl DeliveryStore {
    /// The delivery parts of the tokens table.
    pub(crate) fn of(store: &Arc<dyn TokenStore>) -> Self {
        Self {
            cursors: Arc::clone(store) as Arc<dyn WebhookCursors>,
            leases: Arc::clone(store) as Arc<dyn JobLeases>,
            feed: Arc::clone(store) as Arc<dyn EventFeed>,
        }
    }
}

/// Delivers events to the configured endpoints.
pub(crate) struct Webhooks {
    store: DeliveryStore,
    secrets: Arc<SecretsCache>,
    rules: DeliveryRules,
    events: EventRules,
    client: reqwest::Client,
}

impl Webhooks {
    pub(crate) fn new(
        store: DeliveryStore,
        secrets: Arc<SecretsCache>,
        rules: DeliveryRules,
        events: EventRules,
    ) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(rules.timeout)
            .user_agent(concat!("axnt-oauth-webhooks/", env!("CARGO_PKG_VERSION")));
        if !rules.allow_private {
            // No proxy either: a proxy would connect to whatever address it is asked.
            builder = builder
                .dns_resolver(Arc::new(crate::guard::PublicOnly))
                .no_proxy();
        }
        let client = builder
            .build()
            .map_err(|e| format!("webhook client: {e}"))?;
        Ok(Self {
            store,
            secrets,
            rules,
            events,
            client,
        })
    }

    /// The secret deliveries are signed with: the setting's, else the secret's.
    fn secret(&self) -> Option<WebhookSecret> {
        self.rules
            .secret
            .clone()
            .or_else(|| self.secrets.current().webhook_secret.clone())
    }

    /// Whether deliveries can be signed (checked at start-up when URLs are set).
    pub(crate) fn has_secret(&self) -> bool {
        self.secret().is_some()
    }

    /// One job per endpoint, passing every half poll.
    pub(crate) fn schedule(self: &Arc<Self>, jobs: &Jobs) {
        for url in &self.rules.urls {
            let endpoint = Endpoint::new(url.clone());
            for &outcome in <Delivery as strum::VariantArray>::VARIANTS {
                count_n(&endpoint, outcome, 0);
            }
            metrics::gauge!(crate::series::WEBHOOK_LAG_SECONDS, "endpoint" => endpoint.id.clone())
                .set(0.0);
            let every = self.rules.poll / 2;
            jobs.run(
                format!("webhooks {}", endpoint.id),
                Schedule::every(every).jittered(),
                Worker {
                    webhooks: Arc::clone(self),
                    lease: JobLease::new(format!("webhook#{}", endpoint.id), lease(&self.rules)),
                    endpoint,
                    // A new endpoint gets the events made from now on (`events replay`
                    // sends older ones).
                    from: event_bound(Utc::now().timestamp_millis()),
                    breaker: Breaker::default(),
                },
            );
        }
    }

    /// One pass over one endpoint, if this instance holds its lease: owed events that
    /// are due, then new events from the feed. The state is stored at the end.
    async fn pass(
        &self,
        endpoint: &Endpoint,
        holder: &JobLease,
        from: &str,
        breaker: &mut Breaker,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        if !holder.hold(self.store.leases.as_ref()).await? {
            return Ok(());
        }
        let stored = self.store.cursors.webhook_state(&endpoint.id).await?;
        let expected = stored.as_ref().map(|s| s.version);
        let mut state = stored.unwrap_or_else(|| WebhookState {
            cursor: from.to_string(),
            ..WebhookState::default()
        });
        let before = state.clone();
        let lost_lease = self
            .deliver_owed(endpoint, holder, &mut state, breaker, stop)
            .await?
            || self
                .deliver_new(endpoint, holder, &mut state, breaker, stop)
                .await?;
        self.report_lag(endpoint, &state);
        if state == before && expected.is_some() {
            return Ok(());
        }
        if lost_lease {
            // Another instance took over meanwhile: its state stands; what this pass
            // sent since it last stored may be sent again (at least once).
            return Ok(());
        }
        state.version = expected.map_or(1, |v| v + 1);
        match self
            .store
            .cursors
            .put_webhook_state(&endpoint.id, &state, expected)
            .await
        {
            Ok(()) | Err(StoreError::Conflict) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Retries the owed events that are due: per connection, its oldest only, and the
    /// next of that connection once it went out. Returns true when the lease was lost.
    async fn deliver_owed(
        &self,
        endpoint: &Endpoint,
        holder: &JobLease,
        state: &mut WebhookState,
        breaker: &mut Breaker,
        stop: &CancellationToken,
    ) -> Result<bool, StoreError> {
        let mut i = 0;
        while i < state.pending.len() && !stop.is_cancelled() {
            let now_ms = Utc::now().timestamp_millis();
            let head = {
                let p = &state.pending[i];
                !state.pending[..i]
                    .iter()
                    .any(|q| q.user_id == p.user_id && q.provider == p.provider)
            };
            let p = state.pending[i].clone();
            if !head || p.next_attempt_ms > now_ms || breaker.is_open() {
                i += 1;
                continue;
            }
            let made_ms = event_millis(&p.event_id).unwrap_or(now_ms);
            let retry_ms = i64::try_from(self.rules.retry_period.as_millis()).unwrap_or(i64::MAX);
            let event = self.event_by_id(&p.event_id).await?;
            let Some(event) = event.filter(|_| now_ms.saturating_sub(made_ms) < retry_ms) else {
                // Past the retry period (or purged): given up.
                tracing::warn!(
                    endpoint = endpoint.id,
                    event_id = p.event_id,
                    attempts = p.attempts,
                    "a webhook event was given up after its retry period"
                );
                count(endpoint, Delivery::GivenUp);
                state.pending.remove(i);
                continue;
            };
            match self.attempt(endpoint, &event).await {
                Attempt::Delivered => {
                    breaker.record(Outcome::Succeeded, self.trip());
                    state.pending.remove(i);
                    // The connection's next owed event, now at `i` or later, is the
                    // head: looked at again from here.
                }
                Attempt::Failed(reason) => {
                    breaker.record(Outcome::Failed, self.trip());
                    tracing::debug!(
                        endpoint = endpoint.id,
                        event_id = p.event_id,
                        reason,
                        "a webhook retry failed"
                    );
                    let entry = &mut state.pending[i];
                    entry.attempts += 1;
                    entry.next_attempt_ms = now_ms + self.backoff(entry.attempts);
                    i += 1;
                }
            }
            if !holder.hold(self.store.leases.as_ref()).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Sends the feed's new events: at once unless their connection has events owed
    /// (then they queue behind them). Returns true when the lease was lost.
    async fn deliver_new(
        &self,
        endpoint: &Endpoint,
        holder: &JobLease,
        state: &mut WebhookState,
        breaker: &mut Breaker,
        stop: &CancellationToken,
    ) -> Result<bool, StoreError> {
        if state.pending.len() >= MAX_PENDING || breaker.is_open() {
            return Ok(false);
        }
        let until = event_bound(
            Utc::now().timestamp_millis()
                - i64::try_from(self.events.feed_delay.as_millis()).unwrap_or(0),
        );
        if state.cursor >= until {
            return Ok(false);
        }
        // Nothing older than retention is left: a cursor from before it (a long quiet
        // spell) starts at the oldest event kept rather than walking empty days.
        let oldest = event_bound(
            Utc::now().timestamp_millis()
                - i64::try_from(self.events.retention.as_millis()).unwrap_or(i64::MAX / 2),
        );
        if state.cursor < oldest {
            state.cursor = oldest;
        }
        let room = PAGE.min(MAX_PENDING - state.pending.len());
        for event in self
            .store
            .feed
            .events_between(&state.cursor, &until, room)
            .await?
        {
            if stop.is_cancelled() {
                break;
            }
            state.cursor = event.id.clone();
            if event.kind == PROBE_KIND {
                continue;
            }
            let owed = state
                .pending
                .iter()
                .any(|p| p.user_id == event.user_id && p.provider == event.provider);
            let mut entry = PendingDelivery {
                event_id: event.id.clone(),
                user_id: event.user_id.clone(),
                provider: event.provider.clone(),
                attempts: 0,
                next_attempt_ms: Utc::now().timestamp_millis(),
            };
            if owed || breaker.is_open() {
                state.pending.push(entry);
                continue;
            }
            match self.attempt(endpoint, &event).await {
                Attempt::Delivered => {
                    breaker.record(Outcome::Succeeded, self.trip());
                }
                Attempt::Failed(reason) => {
                    breaker.record(Outcome::Failed, self.trip());
                    tracing::debug!(
                        endpoint = endpoint.id,
                        event_id = event.id,
                        reason,
                        "a webhook delivery failed; it is retried"
                    );
                    entry.attempts = 1;
                    entry.next_attempt_ms += self.backoff(1);
                    state.pending.push(entry);
                }
            }
            if !holder.hold(self.store.leases.as_ref()).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// When an endpoint's circuit opens: five failed attempts in a row.
    fn trip(&self) -> Trip {
        Trip {
            failures: CIRCUIT_FAILURES,
            open_for: self.rules.circuit_open,
        }
    }

    /// The wait after `attempts` failed attempts: the first backoff doubled per
    /// attempt, up to an hour, with jitter.
    fn backoff(&self, attempts: u32) -> i64 {
        let base = self
            .rules
            .first_backoff
            .saturating_mul(2u32.saturating_pow(attempts.saturating_sub(1).min(20)))
            .min(MAX_BACKOFF);
        i64::try_from(crate::retry::jittered(base).as_millis()).unwrap_or(i64::MAX)
    }

    async fn event_by_id(&self, id: &str) -> Result<Option<Event>, StoreError> {
        let Some(ms) = event_millis(id) else {
            return Ok(None);
        };
        Ok(self
            .store
            .feed
            .events_between(&event_bound(ms), &event_bound(ms + 1), 10_000)
            .await?
            .into_iter()
            .find(|e| e.id == id))
    }

    /// [`WEBHOOK_LAG_SECONDS`](crate::series::WEBHOOK_LAG_SECONDS)`{endpoint}`: how old the oldest event still owed is
    /// (0 when none is).
    fn report_lag(&self, endpoint: &Endpoint, state: &WebhookState) {
        let now_ms = Utc::now().timestamp_millis();
        let oldest = state
            .pending
            .first()
            .and_then(|p| event_millis(&p.event_id))
            .unwrap_or(now_ms);
        metrics::gauge!(crate::series::WEBHOOK_LAG_SECONDS, "endpoint" => endpoint.id.clone())
            .set((now_ms - oldest).max(0) as f64 / 1000.0);
    }
}

/// What a delivery attempt came to: [`WEBHOOK_DELIVERIES_TOTAL`](crate::series::WEBHOOK_DELIVERIES_TOTAL)'s `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
enum Delivery {
    Delivered,
    /// Refused or unanswered (a refused address included: the resolver's).
    Failed,
    /// Dropped after the retries' window.
    GivenUp,
}

/// [`WEBHOOK_DELIVERIES_TOTAL`](crate::series::WEBHOOK_DELIVERIES_TOTAL)`{endpoint, outcome}`.
fn count(endpoint: &Endpoint, outcome: Delivery) {
    count_n(endpoint, outcome, 1);
}

fn count_n(endpoint: &Endpoint, outcome: Delivery, n: u64) {
    metrics::counter!(crate::series::WEBHOOK_DELIVERIES_TOTAL, "endpoint" => endpoint.id.clone(), "outcome" => outcome.label())
        .increment(n);
}

/// One endpoint's deliveries, as a job: its lease, where a new endpoint starts, and its
/// circuit, kept from pass to pass.
struct Worker {
    webhooks: Arc<Webhooks>,
    endpoint: Endpoint,
    lease: JobLease,
    from: String,
    breaker: Breaker,
}

impl Job for Worker {
    async fn pass(&mut self, stop: &CancellationToken) {
        let Self {
            webhooks,
            endpoint,
            lease,
            from,
            breaker,
        } = self;
        if breaker.is_open() {
            // Keep the endpoint while its circuit is open, so no other instance sends
            // to it meanwhile with a closed one.
            if let Err(e) = lease.hold(webhooks.store.leases.as_ref()).await {
                tracing::debug!(endpoint = endpoint.id, error = %e, "renewing a webhook lease failed");
            }
            return;
        }
        if let Err(e) = webhooks.pass(endpoint, lease, from, breaker, stop).await {
            tracing::warn!(endpoint = endpoint.id, error = %e, "webhook pass failed; trying again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_ids_name_no_url() {
        let e =
            Endpoint::new(url::Url::parse("https://hooks.example.com/x?token=abc").expect("url"));
        assert!(e.id.starts_with("wh-") && e.id.len() == 15, "{}", e.id);
        assert!(!e.id.contains("abc"));
    }
}
