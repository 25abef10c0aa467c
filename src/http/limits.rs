//! Rate limits per client: the browser routes (a flood of starts or callbacks from one
//! client), and failed authentication on the internal API (a brake on guessing API
//! keys). The client is [`super::client`]'s, the one rule for it, counted by
//! [`ClientKey`] (an IPv6 client by its /64).
//!
//! Failed authentications are counted per client; once a client has used its burst and
//! rate, its calls with a missing or wrong key are answered 429 until the wait ends. A
//! call with a valid key is never braked: the key is checked first, so a flood of bad
//! keys from one client (or from others behind the same address) cannot lock a service
//! that holds a right one out of the API. What a guesser past the limit learns from a
//! 200 it could not have guessed: keys are at least 16 random characters, and its
//! wrong guesses cost it the wait.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;

use super::AppState;
use super::browser::BrowserError;
use super::client::ClientKey;
use crate::config::RateLimitSettings;
use crate::error::Error;
use crate::jobs::{self, Jobs, Schedule};

/// How often idle entries are dropped from the limiters' maps.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The limiters of one process.
pub(crate) struct RateLimits {
    browser: Option<DefaultKeyedRateLimiter<ClientKey>>,
    auth_failures: Option<DefaultKeyedRateLimiter<ClientKey>>,
    /// Clients past the failed-authentication limit, and until when.
    braked: Mutex<HashMap<ClientKey, Instant>>,
}

fn limiter(per_minute: u32, burst: u32) -> Option<DefaultKeyedRateLimiter<ClientKey>> {
    let per_minute = NonZeroU32::new(per_minute)?;
    let burst = NonZeroU32::new(burst).unwrap_or(per_minute);
    Some(RateLimiter::keyed(
        Quota::per_minute(per_minute).allow_burst(burst),
    ))
}

impl RateLimits {
    pub(crate) fn new(settings: &RateLimitSettings) -> Self {
        Self {
            browser: limiter(settings.browser_per_minute, settings.browser_burst),
            auth_failures: limiter(
                settings.auth_failures_per_minute,
                settings.auth_failures_burst,
            ),
            braked: Mutex::new(HashMap::new()),
        }
    }

    /// A browser request from `client`: `Err` with the seconds to wait when over the
    /// limit.
    fn browser(&self, client: ClientKey) -> Result<(), u64> {
        match &self.browser {
            Some(limiter) => limiter.check_key(&client).map_err(|not_until| {
                wait_secs(not_until.wait_time_from(DefaultClock::default().now()))
            }),
            None => Ok(()),
        }
    }

    /// Whether `client` is braked now: the seconds left.
    pub(crate) fn braked(&self, client: ClientKey) -> Option<u64> {
        let braked = self.braked.lock();
        let until = braked.get(&client)?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then(|| wait_secs(left))
    }

    /// Counts a failed authentication from `client`: `Some` seconds to wait when it
    /// put the client past the limit (it is then braked for that long).
    pub(crate) fn auth_failed(&self, client: ClientKey) -> Option<u64> {
        let limiter = self.auth_failures.as_ref()?;
        let not_until = limiter.check_key(&client).err()?;
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        self.braked.lock().insert(client, Instant::now() + wait);
        Some(wait_secs(wait))
    }

    /// Drops what no longer limits anyone, so many distinct addresses cannot grow memory
    /// without bound.
    fn sweep(&self) {
        for limiter in [&self.browser, &self.auth_failures].into_iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        let mut braked = self.braked.lock();
        let now = Instant::now();
        braked.retain(|_, until| *until > now);
        braked.shrink_to_fit();
    }

    /// Sweeps every minute.
    pub(crate) fn schedule_sweep(self: &Arc<Self>, jobs: &Jobs) {
        let limits = Arc::clone(self);
        jobs.run(
            "rate-limit sweep",
            Schedule::every(SWEEP_EVERY),
            jobs::from_fn(move |_stop| {
                limits.sweep();
                std::future::ready(())
            }),
        );
    }
}

/// Whole seconds to wait, rounded up and at least 1 (`Retry-After` has no fractions).
fn wait_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// The browser routes' limit: past it, a short 429 page with `Retry-After`.
pub(crate) async fn limit_browser(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let client = super::client_ip(&parts, &state.trusted_proxies);
    let request = Request::from_parts(parts, body);
    if let Some(client) = client
        && let Err(retry_after_secs) = state.rate_limits.browser(ClientKey::from(client))
    {
        // Outside the browser routes' own header layers, so they are set here too.
        let mut page = BrowserError::from(Error::RateLimited { retry_after_secs }).into_response();
        for (name, value) in super::oauth::BROWSER_HEADERS {
            page.headers_mut()
                .insert(name, axum::http::HeaderValue::from_static(value));
        }
        return page;
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn key(ip: IpAddr) -> ClientKey {
        ClientKey::from(ip)
    }

    #[test]
    fn a_client_past_its_failures_is_braked_and_others_are_not() {
        let limits = RateLimits::new(&RateLimitSettings {
            browser_per_minute: 0,
            browser_burst: 0,
            auth_failures_per_minute: 1,
            auth_failures_burst: 2,
        });
        let guesser = key([192, 0, 2, 1].into());
        let other = key([192, 0, 2, 2].into());
        assert_eq!(limits.auth_failed(guesser), None);
        assert_eq!(limits.auth_failed(guesser), None);
        assert!(limits.braked(guesser).is_none());
        let wait = limits
            .auth_failed(guesser)
            .expect("third failure is over the burst");
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(limits.braked(guesser).is_some());
        assert!(limits.braked(other).is_none());
        assert_eq!(limits.browser(guesser), Ok(()), "browser limit off");
    }

    #[test]
    fn the_sweep_forgets_clients_that_no_longer_limit_anyone() {
        // 60 a minute, burst 1: each request's cost is paid back within a second.
        let limits = RateLimits::new(&RateLimitSettings {
            browser_per_minute: 60,
            browser_burst: 1,
            auth_failures_per_minute: 60,
            auth_failures_burst: 1,
        });
        let clients: Vec<ClientKey> = (0..1_000u32)
            .map(|i| key(IpAddr::from((0xc633_6400_u32 + i).to_be_bytes())))
            .collect();
        for ip in &clients {
            assert_eq!(limits.browser(*ip), Ok(()));
            assert_eq!(limits.auth_failed(*ip), None);
            assert!(limits.auth_failed(*ip).is_some(), "braked at once");
        }
        let size =
            |l: &Option<DefaultKeyedRateLimiter<ClientKey>>| l.as_ref().map_or(0, |l| l.len());
        assert_eq!(size(&limits.browser), 1_000);
        assert_eq!(size(&limits.auth_failures), 1_000);
        assert_eq!(limits.braked.lock().len(), 1_000);

        // A sweep right away keeps what still limits someone.
        limits.sweep();
        assert_eq!(limits.braked.lock().len(), 1_000);

        std::thread::sleep(Duration::from_millis(2_200));
        limits.sweep();
        assert_eq!(size(&limits.browser), 0, "idle browser clients forgotten");
        assert_eq!(size(&limits.auth_failures), 0, "idle guessers forgotten");
        assert_eq!(limits.braked.lock().len(), 0);
    }
}
