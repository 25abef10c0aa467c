//! `axnt-oauth rotate-keys`: moves every sealed item's data key under the current
//! wrapping key (a new local master key, or the key the configured KMS key id or alias
//! names now) without decrypting anything, while the service keeps serving. Sealed
//! items are the connections' token sets, the tokens of revocations kept to be tried
//! again, and grants held for confirmation ([`Sealed`]): an old key may be retired
//! only once none of them needs it.
//!
//! - Only the envelope's `keyId` and `edk` change (a KMS `ReEncrypt`, or an unwrap and
//!   wrap under the local master keys); the nonce and ciphertext stay, since the
//!   associated data binds the item, not the key. Readers open either form: the
//!   envelope names its key.
//! - Each item is replaced only while its envelope is still the one read
//!   ([`SealedItems::rewrap`](crate::store::SealedItems::rewrap)): a refresh, a new grant or a confirm meanwhile wins (it
//!   sealed under the current key already, or removed the item) and is counted as
//!   "changed meanwhile".
//! - Idempotent, and so resumable: an item already under the current key costs a read
//!   and nothing else; an interrupted run is simply run again.
//! - Passes repeat (at most [`MAX_PASSES`]) until one finds every item current: one
//!   written under the old key by an instance whose cached data key predates the
//!   rotation is picked up by the next pass. The report's `not_current` is the final
//!   verification count, and the command succeeds only when it is 0.

use std::collections::HashMap;
use std::sync::Arc;

use crate::app::{Backends, StartupError};
use crate::config::{Backend, Settings};
use crate::crypto::kms::same_key;
use crate::crypto::{CryptoError, Envelope, EnvelopeCipher, rotate_master_key};
use crate::store::{Sealed, SealedItems, StoreError};

/// Re-wrap passes at most; each after the first only meets rows written under an old
/// key while the previous one ran.
pub const MAX_PASSES: u32 = 3;

/// What the command was asked to do.
#[derive(Debug, Clone)]
pub struct RotateOptions {
    /// Count only: no key is made, no item written.
    pub dry_run: bool,
    /// Embedded mode: retire the current master key (kept readable) and make a new one
    /// first.
    pub new_local_key: bool,
    /// Items read per page.
    pub page_size: usize,
}

impl Default for RotateOptions {
    fn default() -> Self {
        Self {
            dry_run: false,
            new_local_key: false,
            page_size: 100,
        }
    }
}

/// Counts of one pass over the sealed items.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassCounts {
    pub seen: u64,
    pub rewrapped: u64,
    pub already_current: u64,
    /// The item changed (a token write) or went away between read and re-wrap.
    pub changed_meanwhile: u64,
    /// The key service refused or could not re-wrap the item's data key.
    pub failed: u64,
}

/// Sealed items by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SealedCounts {
    /// Connection rows.
    pub rows: u64,
    /// Revocations kept to be tried again.
    pub revocations: u64,
    /// Grants held for confirmation.
    pub pending_grants: u64,
}

impl SealedCounts {
    fn add(&mut self, item: &Sealed) {
        match item {
            Sealed::Connection { .. } => self.rows += 1,
            Sealed::Revocation { .. } => self.revocations += 1,
            Sealed::PendingGrant { .. } => self.pending_grants += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.rows + self.revocations + self.pending_grants
    }
}

/// The command's outcome.
#[derive(Debug, Clone, Default)]
pub struct RotationReport {
    /// The key every sealed item should now name.
    pub current_key: String,
    /// The master key retired by `--new-local-key`.
    pub retired_key: Option<String>,
    /// One entry per re-wrap pass (none in a dry run).
    pub passes: Vec<PassCounts>,
    /// The final verification: sealed items not under `current_key`.
    pub not_current: u64,
    /// Sealed items seen by the verification pass.
    pub verified: SealedCounts,
}

impl RotationReport {
    /// Exit status: 0 only when every sealed item is under the current key.
    pub fn success(&self) -> bool {
        self.not_current == 0
    }
}

/// Why the command stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error("keys: {0}")]
    Crypto(#[from] CryptoError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error(
        "--new-local-key is for the embedded backend; in aws mode point AXNT_KMS_KEY_ID (or its alias) at the new KMS key"
    )]
    NotEmbedded,
}

/// What the command reports as it goes.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A new local master key is current; the old one is retired, still readable.
    LocalKeyRotated { old: String, new: String },
    /// The key sealed items are moved under.
    CurrentKey(String),
    /// Running totals of pass `pass` (1-based), after each page.
    Page { pass: u32, counts: PassCounts },
    /// Verification so far: items seen, items not under the current key.
    Verify { seen: u64, not_current: u64 },
}

/// Runs the rotation. `progress` hears of each step.
pub async fn rotate_keys(
    settings: &Settings,
    options: &RotateOptions,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<RotationReport, RotateError> {
    let mut report = RotationReport::default();
    if options.new_local_key {
        if settings.backend != Backend::Embedded {
            return Err(RotateError::NotEmbedded);
        }
        if !options.dry_run {
            let (old, new) =
                rotate_master_key(&settings.data_dir.join(crate::crypto::MASTER_KEY_FILE))?;
            progress(&Progress::LocalKeyRotated {
                old: old.clone(),
                new,
            });
            report.retired_key = Some(old);
        }
    }
    let backends = Backends::open(settings).await?;
    let cipher = EnvelopeCipher::new(
        Arc::clone(&backends.keys),
        settings.aws.tokens_table.clone(),
    );
    let current = cipher.current_key_id().await?;
    progress(&Progress::CurrentKey(current.clone()));
    report.current_key = current.clone();
    let store = backends.tokens.as_ref();
    let page_size = options.page_size.max(1);
    if !options.dry_run {
        for pass in 1..=MAX_PASSES {
            let counts = rewrap_pass(store, &cipher, &current, page_size, pass, progress).await?;
            report.passes.push(counts);
            if counts.rewrapped == 0 && counts.changed_meanwhile == 0 {
                break;
            }
        }
    }
    let (verified, not_current) = verify(store, &current, page_size, progress).await?;
    report.verified = verified;
    report.not_current = not_current;
    Ok(report)
}

/// One pass: every sealed item not under `current` is re-wrapped, conditionally.
async fn rewrap_pass(
    store: &dyn SealedItems,
    cipher: &EnvelopeCipher,
    current: &str,
    page_size: usize,
    pass: u32,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<PassCounts, RotateError> {
    let mut counts = PassCounts::default();
    let mut cursor: Option<Sealed> = None;
    // (old key id, old wrapped key) → (new key id, new wrapped key), for this pass.
    let mut rewrapped_keys: HashMap<(String, String), (String, String)> = HashMap::new();
    loop {
        let page = store.scan_sealed(cursor.as_ref(), page_size).await?;
        for sealed in &page.items {
            counts.seen += 1;
            let old = &sealed.envelope;
            if same_key(&old.key_id, current) {
                counts.already_current += 1;
                continue;
            }
            // Items sealed with one data key share its wrapped form; re-wrapped once,
            // they share the new one too, so the data-key cache still serves them
            // together (a re-wrap per item would give each its own, and each cold read
            // a KMS call).
            let wrapped_before = (old.key_id.clone(), old.edk.clone());
            let known = rewrapped_keys
                .get(&wrapped_before)
                .map(|(key_id, edk)| Envelope {
                    key_id: key_id.clone(),
                    edk: edk.clone(),
                    ..old.clone()
                });
            let fresh = match known {
                Some(new) => Ok(new),
                None => cipher.rewrap(old).await,
            };
            let new = match fresh {
                Ok(new) => {
                    rewrapped_keys
                        .entry(wrapped_before)
                        .or_insert_with(|| (new.key_id.clone(), new.edk.clone()));
                    new
                }
                // KMS unreachable, denied or throttled past its retries: every item
                // would fail alike. Stop; a rerun resumes where this one left off.
                Err(e @ CryptoError::Unavailable(_)) => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(
                        item = ?sealed.item,
                        key_id = %old.key_id,
                        error = %e,
                        "cannot re-wrap this item's data key"
                    );
                    counts.failed += 1;
                    continue;
                }
            };
            match store.rewrap(&sealed.item, old, &new).await {
                Ok(()) => counts.rewrapped += 1,
                Err(StoreError::Conflict) => counts.changed_meanwhile += 1,
                Err(e) => return Err(e.into()),
            }
        }
        progress(&Progress::Page { pass, counts });
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(counts),
        }
    }
}

/// Counts sealed items, and those not under `current`.
async fn verify(
    store: &dyn SealedItems,
    current: &str,
    page_size: usize,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<(SealedCounts, u64), RotateError> {
    let (mut seen, mut not_current) = (SealedCounts::default(), 0);
    let mut cursor: Option<Sealed> = None;
    loop {
        let page = store.scan_sealed(cursor.as_ref(), page_size).await?;
        for sealed in &page.items {
            seen.add(&sealed.item);
            if !same_key(&sealed.envelope.key_id, current) {
                not_current += 1;
            }
        }
        progress(&Progress::Verify {
            seen: seen.total(),
            not_current,
        });
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok((seen, not_current)),
        }
    }
}
