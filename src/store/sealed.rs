//! Every item that holds a sealed envelope, for key rotation.

use async_trait::async_trait;

use super::StoreError;
use crate::crypto::Envelope;

/// An item that holds a sealed envelope: a connection's token set, a kept revocation's
/// token, or a grant held for confirmation. Key rotation re-wraps every one of them;
/// as a scan position it also names where a page of [`SealedItems::scan_sealed`] ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sealed {
    Connection {
        user_id: String,
        provider: String,
    },
    /// A [`PendingRevocation`](super::PendingRevocation), by id.
    Revocation {
        id: String,
    },
    /// A [`PendingGrant`](super::PendingGrant), by flow id.
    PendingGrant {
        flow_id: String,
    },
}

/// One sealed item and its envelope as read.
#[derive(Debug, Clone, PartialEq)]
pub struct SealedItem {
    pub item: Sealed,
    pub envelope: Envelope,
}

/// One page of [`SealedItems::scan_sealed`].
#[derive(Debug, Clone, Default)]
pub struct SealedPage {
    pub items: Vec<SealedItem>,
    /// Where the next page starts (a position, not necessarily an item of this page);
    /// `None` after the last page.
    pub next: Option<Sealed>,
}

/// Sealed items, scanned and re-wrapped.
#[async_trait]
pub trait SealedItems: Send + Sync {
    /// Every sealed item (connection rows, kept revocations, held grants) with its
    /// envelope, a page at a time: at most `limit` items read after the position
    /// `after`. A page may hold fewer, even none, while `next` is set; items written
    /// during a scan may or may not be seen. For key rotation.
    async fn scan_sealed(
        &self,
        after: Option<&Sealed>,
        limit: usize,
    ) -> Result<SealedPage, StoreError>;

    /// Replaces the item's envelope by `new` only while the stored one is still `old`
    /// (same `keyId`, wrapped key and ciphertext); nothing else changes, not `version`,
    /// so a concurrent write always wins. A connection under a live refresh lease is
    /// left alone too (its holder writes the whole row from what it read). A changed
    /// or removed item is a [`StoreError::Conflict`], and nothing is written. For key
    /// rotation.
    async fn rewrap(&self, item: &Sealed, old: &Envelope, new: &Envelope)
    -> Result<(), StoreError>;
}
