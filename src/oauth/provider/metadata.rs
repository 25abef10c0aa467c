//! The provider's metadata (its discovery document and the JWKS it points to), cached so
//! that an outage of those endpoints does not become an outage of every flow and refresh.
//!
//! - Fresh for `ttl` after a fetch: served as is.
//! - Stale for up to `max_stale` beyond that: still served at once, while one background
//!   task fetches a new copy (stale-while-revalidate). A failed background fetch keeps
//!   the old copy, logs a warning and is not tried again for [`RETRY_INTERVAL`].
//! - Older still, or nothing cached: the caller fetches inline and its failure is the
//!   error. Callers that arrive meanwhile wait for that one fetch and share its outcome.
//!
//! An ID token signed by an unknown `kid` refetches the JWKS alone, at most once per
//! [`JWKS_REFETCH_MIN_INTERVAL`] and under its own single flight: a slow JWKS endpoint
//! holds up only the ID tokens that need new keys, never a caller that just needs the
//! endpoints. No lock here is held across an `.await` except those two single flights'.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openidconnect::core::CoreJsonWebKeySet;
use openidconnect::{IssuerUrl, JsonWebKeySet};
use parking_lot::{Mutex, RwLock};

use super::http::{ProviderHttp, error_chain};
use super::{Metadata, ProviderError};

/// A failed background refetch is not tried again sooner than this, so a provider in
/// trouble is not hammered by every request that finds the copy stale.
const RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// A JWKS refetch for an unknown `kid` happens at most this often, so a stream of
/// forged tokens cannot make us hammer the provider.
const JWKS_REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// One fetched copy of the metadata.
#[derive(Clone)]
pub(super) struct Discovered {
    pub(super) metadata: Arc<Metadata>,
    fetched_at: Instant,
    jwks_fetched_at: Instant,
}

impl Discovered {
    /// Metadata that is not fetched: an OAuth 2 provider's, from its settings.
    pub(super) fn fixed(metadata: Metadata) -> Self {
        let now = Instant::now();
        Self {
            metadata: Arc::new(metadata),
            fetched_at: now,
            jwks_fetched_at: now,
        }
    }
}

pub(super) struct MetadataCache {
    issuer: IssuerUrl,
    /// The discovery document may give the issuer as a tenant template (see
    /// [`tenant_issuer_matches`]).
    tenant_issuer: bool,
    http: ProviderHttp,
    ttl: Duration,
    max_stale: Duration,
    current: RwLock<Option<Discovered>>,
    /// Single flight of inline fetches. Holds when the last one failed and why, so that
    /// callers who waited for it get its failure instead of fetching once more each.
    inline: tokio::sync::Mutex<Option<(Instant, String)>>,
    background: Mutex<Background>,
    /// Single flight of JWKS refetches, holding the last attempt.
    jwks: tokio::sync::Mutex<JwksAttempt>,
}

#[derive(Default)]
struct Background {
    running: bool,
    failed_at: Option<Instant>,
}

#[derive(Default)]
struct JwksAttempt {
    at: Option<Instant>,
    failure: Option<String>,
}

impl MetadataCache {
    pub(super) fn new(
        issuer: &str,
        tenant_issuer: bool,
        http: ProviderHttp,
        ttl: Duration,
        max_stale: Duration,
    ) -> Result<Self, ProviderError> {
        let issuer = IssuerUrl::new(issuer.to_string())
            .map_err(|e| ProviderError::Malformed(format!("issuer URL {issuer:?}: {e}")))?;
        Ok(Self {
            issuer,
            tenant_issuer,
            http,
            ttl,
            max_stale,
            current: RwLock::new(None),
            inline: tokio::sync::Mutex::new(None),
            background: Mutex::new(Background::default()),
            jwks: tokio::sync::Mutex::new(JwksAttempt::default()),
        })
    }

    /// The metadata: the cached copy while it may be served, else a fetch.
    pub(super) async fn get(self: &Arc<Self>) -> Result<Discovered, ProviderError> {
        if let Some(d) = self.servable() {
            return Ok(d);
        }
        let waiting_since = Instant::now();
        let mut last_failure = self.inline.lock().await;
        if let Some(d) = self.servable() {
            return Ok(d);
        }
        if let Some((at, reason)) = last_failure.as_ref()
            && *at >= waiting_since
        {
            return Err(ProviderError::Unavailable(reason.clone()));
        }
        match self.fetch().await {
            Ok(d) => {
                *last_failure = None;
                self.install(d.clone());
                Ok(d)
            }
            Err(reason) => {
                *last_failure = Some((Instant::now(), reason.clone()));
                Err(ProviderError::Unavailable(reason))
            }
        }
    }

    /// The cached copy if it may be served now. A stale one also starts a background
    /// refetch (when none is running or recently failed).
    fn servable(self: &Arc<Self>) -> Option<Discovered> {
        let d = self.snapshot()?;
        let age = d.fetched_at.elapsed();
        if age < self.ttl {
            return Some(d);
        }
        if age < self.ttl.saturating_add(self.max_stale) {
            self.revalidate_in_background();
            return Some(d);
        }
        None
    }

    fn revalidate_in_background(self: &Arc<Self>) {
        {
            let mut background = self.background.lock();
            if background.running
                || background
                    .failed_at
                    .is_some_and(|at| at.elapsed() < RETRY_INTERVAL)
            {
                return;
            }
            background.running = true;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.background.lock().running = false;
            return;
        };
        let cache = Arc::clone(self);
        runtime.spawn(async move {
            // Counts as failed unless it gets to the end, so a task that dies cannot
            // leave `running` set or start a new task on every request.
            let mut done = Finished {
                background: &cache.background,
                failed_at: Some(Instant::now()),
            };
            match cache.fetch().await {
                Ok(d) => {
                    cache.install(d);
                    done.failed_at = None;
                    tracing::debug!(issuer = %cache.issuer.as_str(), "provider metadata refetched");
                }
                Err(reason) => {
                    let age_secs = cache
                        .snapshot()
                        .map(|d| d.fetched_at.elapsed().as_secs())
                        .unwrap_or_default();
                    tracing::warn!(
                        issuer = %cache.issuer.as_str(),
                        error = %reason,
                        age_secs,
                        "refetching the provider's metadata failed; serving the cached copy"
                    );
                    done.failed_at = Some(Instant::now());
                }
            }
        });
    }

    /// Fetches discovery and the JWKS. The error says what failed; it holds URLs and
    /// statuses of public endpoints, never a credential (none is sent).
    #[tracing::instrument(skip_all, fields(issuer = %self.issuer.as_str()))]
    async fn fetch(&self) -> Result<Discovered, String> {
        let metadata = if self.tenant_issuer {
            self.discover_tenant_template().await?
        } else {
            Metadata::discover_async(self.issuer.clone(), &self.http)
                .await
                .map_err(|e| {
                    format!(
                        "discovery of {} failed: {}",
                        self.issuer.as_str(),
                        error_chain(&e)
                    )
                })?
        };
        let now = Instant::now();
        Ok(Discovered {
            metadata: Arc::new(metadata),
            fetched_at: now,
            jwks_fetched_at: now,
        })
    }

    /// Discovery where the document's issuer may be a template with `{tenantid}` (or,
    /// for a tenant alias such as Microsoft's `consumers`, the tenant it stands for):
    /// `openidconnect`'s discovery requires the two to be equal, so the document is
    /// read here, held to [`tenant_issuer_matches`], and its JWKS fetched after it.
    async fn discover_tenant_template(&self) -> Result<Metadata, String> {
        let failed = |e: &dyn std::error::Error| {
            format!(
                "discovery of {} failed: {}",
                self.issuer.as_str(),
                error_chain(e)
            )
        };
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.as_str().trim_end_matches('/')
        );
        let response = self
            .http
            .0
            .get(&url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| failed(&e))?;
        if !response.status().is_success() {
            return Err(format!(
                "discovery of {} failed: HTTP {}",
                self.issuer.as_str(),
                response.status().as_u16()
            ));
        }
        let body = response.bytes().await.map_err(|e| failed(&e))?;
        let metadata: Metadata = serde_json::from_slice(&body).map_err(|e| {
            format!(
                "discovery of {} failed: unreadable document (line {}, column {})",
                self.issuer.as_str(),
                e.line(),
                e.column()
            )
        })?;
        if !tenant_issuer_matches(metadata.issuer().as_str(), self.issuer.as_str()) {
            return Err(format!(
                "discovery of {} failed: the document names issuer {}",
                self.issuer.as_str(),
                metadata.issuer().as_str()
            ));
        }
        let jwks: CoreJsonWebKeySet = JsonWebKeySet::fetch_async(metadata.jwks_uri(), &self.http)
            .await
            .map_err(|e| failed(&e))?;
        Ok(metadata.set_jwks(jwks))
    }

    /// Refetches the JWKS for a `kid` that `seen` lacks. `Some`: keys newer than
    /// `seen`'s (fetched now or by another caller meanwhile). `None`: no refetch is due
    /// (keys were fetched within [`JWKS_REFETCH_MIN_INTERVAL`]).
    #[tracing::instrument(skip_all, fields(issuer = %self.issuer.as_str()))]
    pub(super) async fn refetch_jwks(
        &self,
        seen: &Discovered,
    ) -> Result<Option<Discovered>, ProviderError> {
        let mut last = self.jwks.lock().await;
        if let Some(current) = self.snapshot()
            && current.jwks_fetched_at > seen.jwks_fetched_at
        {
            return Ok(Some(current));
        }
        let recent = |at: Instant| at.elapsed() < JWKS_REFETCH_MIN_INTERVAL;
        if let Some(at) = last.at
            && recent(at)
        {
            return match &last.failure {
                Some(reason) => Err(ProviderError::Unavailable(reason.clone())),
                None => Ok(None),
            };
        }
        if recent(seen.jwks_fetched_at) {
            return Ok(None);
        }
        let fetched: Result<CoreJsonWebKeySet, _> =
            JsonWebKeySet::fetch_async(seen.metadata.jwks_uri(), &self.http).await;
        last.at = Some(Instant::now());
        match fetched {
            Ok(jwks) => {
                last.failure = None;
                Ok(Some(self.install_jwks(seen, jwks)))
            }
            Err(e) => {
                let reason = format!("JWKS fetch failed: {}", error_chain(&e));
                last.failure = Some(reason.clone());
                Err(ProviderError::Unavailable(reason))
            }
        }
    }

    fn snapshot(&self) -> Option<Discovered> {
        self.current.read().clone()
    }

    /// Installs `d` unless a newer copy got there first.
    fn install(&self, d: Discovered) {
        let mut current = self.current.write();
        if current
            .as_ref()
            .is_none_or(|c| c.fetched_at <= d.fetched_at)
        {
            *current = Some(d);
        }
    }

    /// Puts `jwks` into the current copy (or `seen`'s, when nothing is cached), keeping
    /// its endpoints and age.
    fn install_jwks(&self, seen: &Discovered, jwks: CoreJsonWebKeySet) -> Discovered {
        let mut current = self.current.write();
        let base = current.as_ref().unwrap_or(seen);
        let d = Discovered {
            metadata: Arc::new((*base.metadata).clone().set_jwks(jwks)),
            fetched_at: base.fetched_at,
            jwks_fetched_at: Instant::now(),
        };
        *current = Some(d.clone());
        d
    }
}

/// Whether a discovery document's `issuer` fits the configured one: equal, or equal
/// but for the tenant segment, which the document gives as `{tenantid}` (Microsoft's
/// `common` and `organizations`) or as the tenant an alias stands for (`consumers`).
pub(super) fn tenant_issuer_matches(discovered: &str, configured: &str) -> bool {
    let trim = |s: &str| s.trim_end_matches('/').to_string();
    let (discovered, configured) = (trim(discovered), trim(configured));
    if discovered == configured {
        return true;
    }
    let d: Vec<&str> = discovered.split('/').collect();
    let c: Vec<&str> = configured.split('/').collect();
    d.len() == c.len()
        && d.iter().zip(&c).filter(|(a, b)| a != b).count() == 1
        && d.iter().zip(&c).enumerate().all(|(i, (a, b))| {
            a == b || (i >= 3 && (*a == "{tenantid}" || is_tenant_id(a)) && !b.is_empty())
        })
}

/// A tenant id: a GUID.
pub(super) fn is_tenant_id(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok_and(|_| s.len() == 36)
}

/// Marks the background refetch as finished when its task ends, however it ends.
struct Finished<'a> {
    background: &'a Mutex<Background>,
    failed_at: Option<Instant>,
}

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        let mut background = self.background.lock();
        background.running = false;
        background.failed_at = self.failed_at;
    }
}

#[cfg(test)]
mod tests {
    use super::tenant_issuer_matches;

    const TENANT: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";

    #[test]
    fn a_tenant_template_or_alias_fits_the_configured_issuer_only_in_its_tenant_segment() {
        let common = "https://login.microsoftonline.com/common/v2.0";
        let template = "https://login.microsoftonline.com/{tenantid}/v2.0";
        assert!(tenant_issuer_matches(template, common));
        assert!(tenant_issuer_matches(common, common));
        assert!(tenant_issuer_matches(
            &format!("https://login.microsoftonline.com/{TENANT}/v2.0"),
            "https://login.microsoftonline.com/consumers/v2.0"
        ));
        for wrong in [
            "https://evil.example.com/{tenantid}/v2.0",
            "https://login.microsoftonline.com/{tenantid}/v1.0",
            "https://login.microsoftonline.com/not-a-tenant/v2.0",
            "https://login.microsoftonline.com/{tenantid}/v2.0/extra",
        ] {
            assert!(!tenant_issuer_matches(wrong, common), "{wrong}");
        }
    }
}
