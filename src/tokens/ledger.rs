//! The scope ledger: what a grant asked for and holds, after a consent or a refresh,
//! and what changed between two ledgers.

use super::*;

/// What changed between two ledgers' granted scopes, if anything: the
/// `connection.scopes_changed` details.
pub(super) fn scopes_change(row: &Connection, after: &GrantLedger) -> Option<EventPayload> {
    let before = &row.grant;
    // A row from before the ledger existed knows no scopes: nothing to compare.
    if before.granted_scopes.is_empty() {
        return None;
    }
    let added = grant::missing(&after.granted_scopes, &before.granted_scopes);
    let removed = grant::missing(&before.granted_scopes, &after.granted_scopes);
    if added.is_empty() && removed.is_empty() {
        return None;
    }
    Some(EventPayload::ScopesChanged {
        about: About::of(row),
        granted_scopes: after.granted_scopes.clone(),
        previous_granted_scopes: before.granted_scopes.clone(),
        added_scopes: added,
        removed_scopes: removed,
    })
}

/// The ledger after a consent at `now`: the flow's `requested` scopes added to those
/// asked for before (`previous`, the same account's ledger), the granted scopes from the
/// answer, each change dated, and the grant's clocks restarted.
pub(super) fn ledger_after_consent(
    previous: Option<&GrantLedger>,
    requested: &[String],
    set: &TokenSet,
    minted: bool,
    now: DateTime<Utc>,
) -> GrantLedger {
    let requested_scopes = grant::merge(
        previous.map_or(&[][..], |p| p.requested_scopes.as_slice()),
        requested,
    );
    let granted_scopes = set.granted_scopes();
    let requested_changed_at = match previous {
        Some(p) if p.requested_scopes == requested_scopes => p.requested_changed_at,
        _ => Some(now),
    };
    let scopes_changed_at = match previous {
        Some(p) if same_scopes(&p.granted_scopes, &granted_scopes) => p.scopes_changed_at,
        _ => Some(now),
    };
    // A grant that minted no refresh token (a step-up without forced consent) goes on
    // with the stored one: its clocks (Google's Testing days, the idle limit, the
    // count of newer mints) still start at that token's consent.
    let (consented_at, last_refreshed_at) = match previous {
        Some(p) if !minted => (p.consented_at.or(Some(now)), p.last_refreshed_at),
        _ => (Some(now), None),
    };
    GrantLedger {
        requested_scopes,
        granted_scopes,
        requested_changed_at,
        scopes_changed_at,
        consented_at,
        last_refreshed_at,
        refresh_token_expires_at: set.refresh_token_expires_at,
        client_id: set.client_id.clone(),
        // A minted grant's clocks start again; a step-up keeps the stored token's.
        expiry_notice_for: previous
            .filter(|_| !minted)
            .and_then(|p| p.expiry_notice_for),
        refresh_token_hash: set
            .refresh_token
            .as_deref()
            .map(crate::oauth::risc::token_hash),
        refresh_token_prefix_hash: set
            .refresh_token
            .as_deref()
            .map(crate::oauth::risc::prefix_hash),
        // A consent here makes the grant this service's own.
        imported_at: None,
        unverified: false,
        verifying: false,
    }
}

/// The ledger after a refresh at `now` that answered `set`.
pub(crate) fn ledger_after_refresh(
    previous: &GrantLedger,
    set: &TokenSet,
    now: DateTime<Utc>,
) -> GrantLedger {
    let granted_scopes = set.granted_scopes();
    let changed =
        !granted_scopes.is_empty() && !same_scopes(&previous.granted_scopes, &granted_scopes);
    GrantLedger {
        scopes_changed_at: if changed {
            Some(now)
        } else {
            previous.scopes_changed_at
        },
        granted_scopes: if granted_scopes.is_empty() {
            previous.granted_scopes.clone()
        } else {
            granted_scopes
        },
        last_refreshed_at: Some(now),
        refresh_token_expires_at: set.refresh_token_expires_at,
        // Rows made before the client was recorded learn it at their first refresh.
        client_id: set.client_id.clone().or_else(|| previous.client_id.clone()),
        // A rotated refresh token has identifiers of its own.
        refresh_token_hash: set
            .refresh_token
            .as_deref()
            .map(crate::oauth::risc::token_hash)
            .or_else(|| previous.refresh_token_hash.clone()),
        refresh_token_prefix_hash: set
            .refresh_token
            .as_deref()
            .map(crate::oauth::risc::prefix_hash)
            .or_else(|| previous.refresh_token_prefix_hash.clone()),
        // The provider took the refresh token: an imported grant is proven, and its
        // later failures are the refresh path's to announce.
        unverified: false,
        verifying: false,
        ..previous.clone()
    }
}

/// Whether two scope lists hold the same scopes, in any order.
pub(super) fn same_scopes(a: &[String], b: &[String]) -> bool {
    grant::missing(a, b).is_empty() && grant::missing(b, a).is_empty()
}
