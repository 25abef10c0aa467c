//! The token cache: opened access tokens kept in memory for `AXNT_TOKEN_CACHE_SECS`, so
//! a warm read costs no store call and no decryption.
//!
//! What it promises:
//! - it never serves a token inside the margin the reader asks for (the same rule as a
//!   stored token: `token_set::is_fresh`);
//! - every write to a row by this process (a new grant, a refresh, a deactivation, a
//!   delete) replaces or drops the row's entry before anyone is answered;
//! - an entry is held at most the configured time, so a row deleted or deactivated by
//!   *another* instance can be served by this one for at most that long (its access
//!   token is still valid at the provider in that window anyway);
//! - entries hold the access token as a `SecretString`, wiped when evicted;
//! - `lastUsed` still moves once per interval: a hit past the interval writes it.
//!
//! A fill that raced an invalidation is undone: every invalidation bumps a generation,
//! a fill records the generation before it read the row and drops its own entry when
//! the generation moved meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{IssuedToken, TokenPolicy};
use crate::series::{CacheOutcome, Label};

/// Entries kept at most; the least recently used go first.
const MAX_ENTRIES: u64 = 100_000;

type Key = (String, String);

/// One connection's opened token.
pub(crate) struct Cached {
    pub(crate) issued: IssuedToken,
    /// Epoch seconds when the provider issued the token, when known.
    issued_at: Option<i64>,
    /// Epoch seconds when `lastUsed` was last written (or read) for this row.
    last_used: AtomicI64,
}

impl Cached {
    pub(crate) fn new(
        issued: IssuedToken,
        issued_at: Option<i64>,
        last_used: DateTime<Utc>,
    ) -> Self {
        Self {
            issued,
            issued_at,
            last_used: AtomicI64::new(last_used.timestamp()),
        }
    }

    /// Whether the token stays valid beyond the margin at `now`, by the rule stored
    /// tokens follow (at most half the lifetime it was issued with).
    fn is_fresh(&self, margin: Duration, now: i64) -> bool {
        super::token_set::is_fresh(
            self.issued.expires_at.timestamp(),
            self.issued_at,
            margin,
            now,
        )
    }

    /// Claims the `lastUsed` write when the policy says it is due: true for exactly one
    /// of several concurrent hits.
    pub(crate) fn claim_last_used(&self, now: i64, policy: &TokenPolicy) -> bool {
        let last = self.last_used.load(Ordering::Relaxed);
        policy.last_used_due(last, now)
            && self
                .last_used
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// The cache of one process; a no-op when the TTL is 0.
pub(crate) struct TokenCache {
    entries: Option<moka::sync::Cache<Key, Arc<Cached>>>,
    generation: AtomicU64,
}

impl TokenCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        let entries = (!ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .time_to_live(ttl)
                .build()
        });
        Self {
            entries,
            generation: AtomicU64::new(0),
        }
    }

    /// The entry for a connection when its token is fresh beyond `margin` now.
    pub(crate) fn get(
        &self,
        user_id: &str,
        provider: &str,
        margin: Duration,
    ) -> Option<Arc<Cached>> {
        let entries = self.entries.as_ref()?;
        let hit = entries
            .get(&(user_id.to_string(), provider.to_string()))
            .filter(|c| c.is_fresh(margin, Utc::now().timestamp()));
        let outcome = if hit.is_some() {
            CacheOutcome::Hit
        } else {
            CacheOutcome::Miss
        };
        metrics::counter!(crate::series::TOKEN_CACHE_TOTAL, "outcome" => outcome.label())
            .increment(1);
        hit
    }

    /// The generation a fill must record before it reads the row.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Fills an entry from a row read at `generation`; undone when an invalidation
    /// came in between.
    pub(crate) fn fill(&self, generation: u64, user_id: &str, provider: &str, cached: Cached) {
        let Some(entries) = &self.entries else { return };
        let key = (user_id.to_string(), provider.to_string());
        entries.insert(key.clone(), Arc::new(cached));
        if self.generation.load(Ordering::Acquire) != generation {
            entries.invalidate(&key);
        }
    }

    /// Replaces a connection's entry with what this process just wrote.
    pub(crate) fn put(&self, user_id: &str, provider: &str, cached: Cached) {
        if let Some(entries) = &self.entries {
            entries.insert(
                (user_id.to_string(), provider.to_string()),
                Arc::new(cached),
            );
        }
    }

    /// Drops a connection's entry: the row changed under this process's hand.
    pub(crate) fn invalidate(&self, user_id: &str, provider: &str) {
        if let Some(entries) = &self.entries {
            self.generation.fetch_add(1, Ordering::AcqRel);
            entries.invalidate(&(user_id.to_string(), provider.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn cached(expires_in: i64, lifetime: i64) -> Cached {
        let now = Utc::now().timestamp();
        Cached::new(
            IssuedToken {
                source: crate::tokens::token_set::TokenSource::Store,
                access_token: SecretString::from("at"),
                token_type: "Bearer".into(),
                expires_at: DateTime::from_timestamp(now + expires_in, 0).unwrap_or_default(),
                scope: None,
                email: None,
                sub: "sub".into(),
                client_id: None,
            },
            Some(now + expires_in - lifetime),
            Utc::now(),
        )
    }

    #[test]
    fn a_token_inside_the_margin_is_never_served() {
        let cache = TokenCache::new(Duration::from_secs(60));
        let margin = Duration::from_secs(300);
        cache.fill(cache.generation(), "u", "google", cached(301, 3600));
        assert!(cache.get("u", "google", margin).is_some());
        assert!(cache.get("u", "google", Duration::from_secs(301)).is_none());
        cache.put("u", "google", cached(299, 3600));
        assert!(cache.get("u", "google", margin).is_none());
        // A 120-second token is held to half its life, as stored tokens are.
        cache.put("u", "google", cached(61, 120));
        assert!(cache.get("u", "google", margin).is_some());
        cache.put("u", "google", cached(60, 120));
        assert!(cache.get("u", "google", margin).is_none());
    }

    #[test]
    fn an_invalidation_drops_the_entry_and_undoes_a_racing_fill() {
        let cache = TokenCache::new(Duration::from_secs(60));
        let margin = Duration::from_secs(300);
        cache.put("u", "google", cached(3600, 3600));
        cache.invalidate("u", "google");
        assert!(cache.get("u", "google", margin).is_none());

        let before = cache.generation();
        cache.invalidate("u", "google"); // a write lands while the fill reads the row
        cache.fill(before, "u", "google", cached(3600, 3600));
        assert!(
            cache.get("u", "google", margin).is_none(),
            "the stale fill is undone"
        );
        cache.fill(cache.generation(), "u", "google", cached(3600, 3600));
        assert!(cache.get("u", "google", margin).is_some());
    }

    #[test]
    fn off_caches_nothing() {
        let cache = TokenCache::new(Duration::ZERO);
        cache.put("u", "google", cached(3600, 3600));
        cache.fill(cache.generation(), "u", "google", cached(3600, 3600));
        assert!(cache.get("u", "google", Duration::ZERO).is_none());
    }

    #[test]
    fn one_of_concurrent_hits_claims_the_last_used_write() {
        let entry = cached(3600, 3600);
        let now = Utc::now().timestamp();
        let policy = crate::tokens::refresh::tests::policy();
        assert!(!entry.claim_last_used(now, &policy), "just used");
        assert!(entry.claim_last_used(now + 60, &policy));
        assert!(!entry.claim_last_used(now + 60, &policy), "claimed once");
    }
}
