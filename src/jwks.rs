//! An issuer's published signing keys, found through its discovery document and
//! cached: Google's RISC issuer (security event tokens) and the issuers of OIDC
//! callers' workload tokens read their keys through it. A leaf.
//!
//! Keys are used for an hour, then fetched again; a token naming a key the cache lacks
//! fetches them again (an issuer rotating its keys), at most once per interval the
//! user of the keys chooses, whether the last attempt succeeded or not. While the
//! issuer cannot be reached, keys still within their hour go on being used.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;

/// How long an issuer's keys are used before they are fetched again.
const KEYS_TTL: Duration = Duration::from_secs(3600);

/// The keys as held, and how the last attempt to fetch them went.
pub(crate) struct Keys {
    /// The issuer its discovery document names.
    pub(crate) issuer: String,
    pub(crate) set: Arc<JwkSet>,
    /// The last attempt to fetch them failed: the set may lack a key published since.
    pub(crate) refetch_failed: bool,
}

/// What a discovery document (`openid-configuration`, `risc-configuration`) says of
/// the keys.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

struct Fetched {
    issuer: String,
    set: Arc<JwkSet>,
    at: Instant,
}

/// One issuer's keys, by its discovery document.
pub(crate) struct IssuerKeys {
    discovery_url: String,
    /// The issuer the discovery document must name (`None`: whichever it names).
    expect_issuer: Option<String>,
    http: reqwest::Client,
    /// The least time between two fetches for a `kid` not held.
    refetch_every: Duration,
    /// Read without waiting: a token whose key is held never waits for a fetch.
    held: parking_lot::RwLock<Held>,
    /// One fetch at a time; only tokens whose key is not held wait for it.
    fetching: tokio::sync::Mutex<()>,
}

/// The keys as last fetched, and the last attempt (failed ones included, with why).
#[derive(Default)]
struct Held {
    keys: Option<Fetched>,
    attempt: Option<(Instant, Result<(), String>)>,
}

impl Held {
    /// The keys, when they are within their hour and hold `want_kid` (if named).
    fn serving(&self, want_kid: Option<&str>) -> Option<Keys> {
        self.keys
            .as_ref()
            .filter(|f| f.at.elapsed() < KEYS_TTL)
            .filter(|f| want_kid.is_none_or(|kid| f.set.find(kid).is_some()))
            .map(|f| self.keys_of(f))
    }

    fn keys_of(&self, f: &Fetched) -> Keys {
        Keys {
            issuer: f.issuer.clone(),
            set: Arc::clone(&f.set),
            refetch_failed: matches!(self.attempt, Some((_, Err(_)))),
        }
    }
}

impl IssuerKeys {
    /// The keys of the discovery document at `discovery_url`, fetched with `http`
    /// (which should not follow redirects).
    pub(crate) fn new(
        discovery_url: String,
        expect_issuer: Option<String>,
        http: reqwest::Client,
        refetch_every: Duration,
    ) -> Self {
        Self {
            discovery_url,
            expect_issuer,
            http,
            refetch_every,
            held: parking_lot::RwLock::new(Held::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The keys: as held, or fetched again when stale or when `want_kid` is not among
    /// them (at most once per `refetch_every`). Fails only when none are held within
    /// their hour, naming why the last fetch failed. `refetch_failed` says the last
    /// attempt failed (the keys held may lack one the issuer has since published).
    pub(crate) async fn keys(&self, want_kid: Option<&str>) -> Result<Keys, String> {
        if let Some(keys) = self.held.read().serving(want_kid) {
            return Ok(keys);
        }
        let _one_fetch = self.fetching.lock().await;
        let may_fetch = {
            let held = self.held.read();
            // Fetched meanwhile, by the request this one waited for.
            if let Some(keys) = held.serving(want_kid) {
                return Ok(keys);
            }
            held.attempt
                .as_ref()
                .is_none_or(|(at, _)| at.elapsed() >= self.refetch_every)
        };
        if may_fetch {
            let fetched = self.fetch().await;
            let mut held = self.held.write();
            match fetched {
                Ok(fetched) => {
                    held.keys = Some(fetched);
                    held.attempt = Some((Instant::now(), Ok(())));
                }
                Err(e) => {
                    tracing::warn!(discovery = %self.discovery_url, error = %e, "could not fetch an issuer's keys");
                    held.attempt = Some((Instant::now(), Err(e)));
                }
            }
        }
        let held = self.held.read();
        match held.keys.as_ref().filter(|f| f.at.elapsed() < KEYS_TTL) {
            Some(f) => Ok(held.keys_of(f)),
            None => Err(match &held.attempt {
                Some((_, Err(e))) => e.clone(),
                _ => "no keys held".to_string(),
            }),
        }
    }

    async fn fetch(&self) -> Result<Fetched, String> {
        let discovery: Discovery = self.get(&self.discovery_url).await?;
        if self
            .expect_issuer
            .as_ref()
            .is_some_and(|issuer| *issuer != discovery.issuer)
        {
            return Err(format!("{} names another issuer", self.discovery_url));
        }
        // The keys' address is the issuer's to give, under the issuer's own rule.
        if !crate::guard::https_or_loopback(&discovery.jwks_uri) {
            return Err(format!("{}: jwks_uri is not https", self.discovery_url));
        }
        let set: JwkSet = self.get(&discovery.jwks_uri).await?;
        Ok(Fetched {
            issuer: discovery.issuer,
            set: Arc::new(set),
            at: Instant::now(),
        })
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let answer = self
            .http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("{url}: {e}"))?;
        answer.json().await.map_err(|e| format!("{url}: {e}"))
    }
}
