//! The token cache: opened access tokens kept in memory for `AXNT_TOKEN_CACHE_SECS`, so
//! a warm read costs no store call and no decryption.
//!
//! What it promises:
//! - it never serves a token inside the margin the reader asks for (the same rule as a
//!   stored token: `token_set::is_fresh`);
//! - every write to a row by this process (a new grant, a refresh, a deactivation, a
//!   delete) replaces or drops the row's entry before anyone is answered;
//! - an entry is served at most the configured time after it was filled, so a row
//!   deleted or deactivated by *another* instance can be served by this one for at most
//!   that long (its access token is still valid at the provider in that window anyway);
//! - entries hold at most [`MAX_BYTES`] (by their texts' sizes), the least used
//!   dropped first, so the cache's memory is the same at any number of connections;
//! - entries hold the access token as a `SecretString`, wiped when dropped: an entry
//!   found past its time is dropped by that lookup, and [`TokenCache::sweep`] (run every
//!   cache period) drops those nobody looked up;
//! - `lastUsed` still moves once per interval: a hit past the interval writes it.
//!
//! A lookup allocates nothing: entries are found by borrowed user id and provider, and
//! the hit and miss counters are handles resolved once. The map is `quick_cache`'s
//! (S3-FIFO eviction, bounded by weight), whose lookup is a hash and a short read lock.
//!
//! A fill that raced an invalidation is undone: every invalidation bumps a generation,
//! a fill records the generation before it read the row and drops its own entry when
//! the generation moved meanwhile.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::{IssuedToken, TokenPolicy};
use crate::series::{CacheOutcome, CounterCells, Label};

/// Memory the entries may hold, by [`EntryBytes`]' estimate; the least used go first.
/// About 15,000 Google tokens: every connection read in the default 5 s cache period
/// at up to 3,000 distinct connections a second. Bounded by bytes, not entries, so the
/// service's peak memory stays the same however many connections it serves.
const MAX_BYTES: u64 = 12 * 1024 * 1024;
/// What an entry weighs beyond its texts: the key, the entry, the shared token and
/// their allocations' headers, and the map's own slot.
const ENTRY_OVERHEAD: u64 = 400;

/// A connection, as the cache keeps it.
#[derive(Clone, PartialEq, Eq)]
struct Key {
    user_id: Box<str>,
    provider: Box<str>,
}

/// A connection, as a lookup names it (hashed as [`Key`] is).
struct KeyRef<'a> {
    user_id: &'a str,
    provider: &'a str,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        KeyRef::from(self).hash(state);
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.user_id.hash(state);
        self.provider.hash(state);
    }
}

impl<'a> From<&'a Key> for KeyRef<'a> {
    fn from(key: &'a Key) -> Self {
        Self {
            user_id: &key.user_id,
            provider: &key.provider,
        }
    }
}

impl quick_cache::Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        *self.user_id == *key.user_id && *self.provider == *key.provider
    }
}

/// One connection's opened token.
pub(crate) struct Cached {
    pub(crate) issued: IssuedToken,
    /// Epoch seconds when the provider issued the token, when known.
    issued_at: Option<i64>,
    /// Epoch seconds when `lastUsed` was last written (or read) for this row.
    last_used: AtomicI64,
    /// When the entry was filled: it is served for the cache period from then.
    filled: Instant,
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
            filled: Instant::now(),
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

/// An entry's weight: about the bytes it holds.
#[derive(Clone)]
struct EntryBytes;

impl quick_cache::Weighter<Key, Arc<Cached>> for EntryBytes {
    fn weight(&self, key: &Key, entry: &Arc<Cached>) -> u64 {
        use secrecy::ExposeSecret;
        let token = &entry.issued;
        let texts = key.user_id.len()
            + key.provider.len()
            + token.access_token.expose_secret().len()
            + token.token_type.len()
            + token.scope.as_deref().map_or(0, str::len)
            + token.email.as_deref().map_or(0, str::len)
            + token.sub.len()
            + token.client_id.as_deref().map_or(0, str::len);
        ENTRY_OVERHEAD.saturating_add(u64::try_from(texts).unwrap_or(u64::MAX))
    }
}

type Entries = quick_cache::sync::Cache<Key, Arc<Cached>, EntryBytes>;

/// The cache of one process; a no-op when the TTL is 0.
pub(crate) struct TokenCache {
    entries: Option<Entries>,
    ttl: Duration,
    generation: AtomicU64,
    /// [`TOKEN_CACHE_TOTAL`](crate::series::TOKEN_CACHE_TOTAL) by outcome.
    outcomes: CounterCells,
}

impl TokenCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        let entries = (!ttl.is_zero()).then(|| {
            let typical = ENTRY_OVERHEAD + 400;
            Entries::with_weighter(
                usize::try_from(MAX_BYTES / typical).unwrap_or(usize::MAX),
                MAX_BYTES,
                EntryBytes,
            )
        });
        Self {
            entries,
            ttl,
            generation: AtomicU64::new(0),
            outcomes: CounterCells::new(<CacheOutcome as strum::VariantArray>::VARIANTS.len()),
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
        let key = KeyRef { user_id, provider };
        let found = entries.get(&key);
        let hit = match found {
            Some(entry) if entry.filled.elapsed() >= self.ttl => {
                // Past its time: dropped now, its token wiped.
                entries.remove(&key);
                None
            }
            found => found.filter(|c| c.is_fresh(margin, Utc::now().timestamp())),
        };
        let outcome = if hit.is_some() {
            CacheOutcome::Hit
        } else {
            CacheOutcome::Miss
        };
        if let Some(counter) = self.outcomes.at(
            outcome as usize,
            || metrics::counter!(crate::series::TOKEN_CACHE_TOTAL, "outcome" => outcome.label()),
        ) {
            counter.increment(1);
        }
        hit
    }

    /// Drops the entries past their time that no lookup has dropped, wiping their
    /// tokens; run every cache period.
    pub(crate) fn sweep(&self) {
        if let Some(entries) = &self.entries {
            entries.retain(|_, entry| entry.filled.elapsed() < self.ttl);
        }
    }

    /// The cache period (zero: no cache).
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The generation a fill must record before it reads the row.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Fills an entry from a row read at `generation`; undone when an invalidation
    /// came in between.
    pub(crate) fn fill(&self, generation: u64, user_id: &str, provider: &str, cached: Cached) {
        let Some(entries) = &self.entries else { return };
        entries.insert(key(user_id, provider), Arc::new(cached));
        if self.generation.load(Ordering::Acquire) != generation {
            entries.remove(&KeyRef { user_id, provider });
        }
    }

    /// Replaces a connection's entry with what this process just wrote.
    pub(crate) fn put(&self, user_id: &str, provider: &str, cached: Cached) {
        if let Some(entries) = &self.entries {
            entries.insert(key(user_id, provider), Arc::new(cached));
        }
    }

    /// Drops a connection's entry: the row changed under this process's hand.
    pub(crate) fn invalidate(&self, user_id: &str, provider: &str) {
        if let Some(entries) = &self.entries {
            self.generation.fetch_add(1, Ordering::AcqRel);
            entries.remove(&KeyRef { user_id, provider });
        }
    }
}

fn key(user_id: &str, provider: &str) -> Key {
    Key {
        user_id: user_id.into(),
        provider: provider.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn cached(expires_in: i64, lifetime: i64) -> Cached {
        let now = Utc::now().timestamp();
        Cached::new(
            IssuedToken::new(
                crate::tokens::token_set::TokenSource::Store,
                crate::tokens::token_set::Issued {
                    access_token: SecretString::from("at"),
                    token_type: "Bearer".into(),
                    expires_at: DateTime::from_timestamp(now + expires_in, 0).unwrap_or_default(),
                    scope: None,
                    email: None,
                    sub: "sub".into(),
                    client_id: None,
                },
            ),
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
    fn an_entry_is_served_for_the_cache_period_only() {
        let cache = TokenCache::new(Duration::from_millis(50));
        let margin = Duration::from_secs(300);
        cache.put("u", "google", cached(3600, 3600));
        cache.put("v", "google", cached(3600, 3600));
        assert!(cache.get("u", "google", margin).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.get("u", "google", margin).is_none(), "past its time");
        cache.sweep();
        let entries = cache.entries.as_ref().expect("on");
        assert_eq!(
            entries.len(),
            0,
            "both dropped: one by the lookup, one by the sweep"
        );
    }

    #[test]
    fn the_entries_memory_is_bounded() {
        let cache = TokenCache::new(Duration::from_secs(60));
        let margin = Duration::from_secs(300);
        let users = 100_000;
        for i in 0..users {
            cache.put(&format!("user-{i}"), "google", cached(3600, 3600));
        }
        let entries = cache.entries.as_ref().expect("on");
        assert!(entries.weight() <= MAX_BYTES, "{}", entries.weight());
        let kept = entries.len();
        assert!(
            kept > 10_000 && kept < users,
            "{kept} of {users} entries kept within {MAX_BYTES} bytes"
        );
        assert!(
            cache
                .get(&format!("user-{}", users - 1), "google", margin)
                .is_some()
        );
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
