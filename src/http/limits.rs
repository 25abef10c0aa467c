//! Rate limits per client address: the browser routes (a flood of starts or callbacks
//! from one client), and failed authentication on the internal API (a brake on guessing
//! API keys). The client address is [`super::client_ip`]'s, the one rule for it.
//!
//! Failed authentications are counted per client; once a client has used its burst and
//! rate, every API call from it is answered 429 until the wait ends, a right key too:
//! were a right key still let through, a guesser past the limit would learn which guess
//! was right from the answer, at full speed. A service that shares its address with a
//! guesser is braked with it; behind a proxy, `AXNT_TRUSTED_PROXIES` tells them apart.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::AppState;
use super::browser::BrowserError;
use crate::config::RateLimitSettings;
use crate::error::Error;

/// How often idle entries are dropped from the limiters' maps.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The limiters of one process.
pub(crate) struct RateLimits {
    browser: Option<DefaultKeyedRateLimiter<IpAddr>>,
    auth_failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Clients past the failed-authentication limit, and until when.
    braked: Mutex<HashMap<IpAddr, Instant>>,
}

fn limiter(per_minute: u32, burst: u32) -> Option<DefaultKeyedRateLimiter<IpAddr>> {
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

    /// A browser request from `ip`: `Err` with the seconds to wait when over the limit.
    fn browser(&self, ip: IpAddr) -> Result<(), u64> {
        match &self.browser {
            Some(limiter) => limiter.check_key(&ip).map_err(|not_until| {
                wait_secs(not_until.wait_time_from(DefaultClock::default().now()))
            }),
            None => Ok(()),
        }
    }

    /// Whether `ip` is braked now: the seconds left.
    pub(crate) fn braked(&self, ip: IpAddr) -> Option<u64> {
        let braked = self.braked.lock().ok()?;
        let until = braked.get(&ip)?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then(|| wait_secs(left))
    }

    /// Counts a failed authentication from `ip`: `Some` seconds to wait when it put
    /// the client past the limit (it is then braked for that long).
    pub(crate) fn auth_failed(&self, ip: IpAddr) -> Option<u64> {
        let limiter = self.auth_failures.as_ref()?;
        let not_until = limiter.check_key(&ip).err()?;
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        if let Ok(mut braked) = self.braked.lock() {
            braked.insert(ip, Instant::now() + wait);
        }
        Some(wait_secs(wait))
    }

    /// Drops what no longer limits anyone, so many distinct addresses cannot grow memory
    /// without bound.
    fn sweep(&self) {
        for limiter in [&self.browser, &self.auth_failures].into_iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Ok(mut braked) = self.braked.lock() {
            let now = Instant::now();
            braked.retain(|_, until| *until > now);
            braked.shrink_to_fit();
        }
    }

    /// Sweeps every minute until aborted.
    pub(crate) fn spawn_sweeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let limits = Arc::clone(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            loop {
                every.tick().await;
                limits.sweep();
            }
        })
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
    let ip = super::client_ip(&parts, &state.trusted_proxies);
    let request = Request::from_parts(parts, body);
    if let Some(ip) = ip
        && let Err(retry_after_secs) = state.rate_limits.browser(ip)
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
    use super::*;

    #[test]
    fn a_client_past_its_failures_is_braked_and_others_are_not() {
        let limits = RateLimits::new(&RateLimitSettings {
            browser_per_minute: 0,
            browser_burst: 0,
            auth_failures_per_minute: 1,
            auth_failures_burst: 2,
        });
        let guesser: IpAddr = [192, 0, 2, 1].into();
        let other: IpAddr = [192, 0, 2, 2].into();
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
        let clients: Vec<IpAddr> = (0..1_000u32)
            .map(|i| IpAddr::from((0xc633_6400_u32 + i).to_be_bytes()))
            .collect();
        for ip in &clients {
            assert_eq!(limits.browser(*ip), Ok(()));
            assert_eq!(limits.auth_failed(*ip), None);
            assert!(limits.auth_failed(*ip).is_some(), "braked at once");
        }
        let size = |l: &Option<DefaultKeyedRateLimiter<IpAddr>>| l.as_ref().map_or(0, |l| l.len());
        assert_eq!(size(&limits.browser), 1_000);
        assert_eq!(size(&limits.auth_failures), 1_000);
        assert_eq!(limits.braked.lock().map(|b| b.len()).unwrap_or(0), 1_000);

        // A sweep right away keeps what still limits someone.
        limits.sweep();
        assert_eq!(limits.braked.lock().map(|b| b.len()).unwrap_or(0), 1_000);

        std::thread::sleep(Duration::from_millis(2_200));
        limits.sweep();
        assert_eq!(size(&limits.browser), 0, "idle browser clients forgotten");
        assert_eq!(size(&limits.auth_failures), 0, "idle guessers forgotten");
        assert_eq!(limits.braked.lock().map(|b| b.len()).unwrap_or(1), 0);
    }
}
