//! Files made by earlier versions, brought to the current layout at start-up.

use rusqlite::Connection as Sqlite;

/// Brings files made by earlier versions to the current layout, once, in one
/// transaction (another process opening the file meanwhile waits for it).
///
/// Files before 0.6 kept connections in a `tokens` table, a column per attribute: its
/// columns are first brought up to that layout's last form (a lease column named for
/// its old meaning, an instance rather than an attempt, is renamed; its value is then a
/// lease no attempt of this version holds, which lapses by itself), then every row is
/// moved into `connections` as its document (`json_patch` onto `{}` leaves absent
/// attributes out), and the table is dropped.
pub(super) fn migrate(db: &mut Sqlite) -> rusqlite::Result<()> {
    let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if !column_names(&tx, "tokens")?.is_empty() {
        if column_names(&tx, "tokens")?
            .iter()
            .any(|c| c == "refresh_lease_owner")
        {
            tx.execute_batch(
                "ALTER TABLE tokens RENAME COLUMN refresh_lease_owner TO refresh_lease_attempt",
            )?;
        }
        let columns = column_names(&tx, "tokens")?;
        for (column, kind) in [
            ("refresh_lease_attempt", "TEXT"),
            ("refresh_lease_until", "INTEGER"),
            ("refresh_retry_at", "INTEGER"),
            ("refresh_unknown_since", "INTEGER"),
            ("inactive_cause", "TEXT"),
            ("replaced_account", "TEXT"),
            ("requested_scopes", "TEXT"),
            ("granted_scopes", "TEXT"),
            ("requested_scopes_changed_at", "TEXT"),
            ("scopes_changed_at", "TEXT"),
            ("consented_at", "TEXT"),
            ("last_refreshed_at", "TEXT"),
            ("refresh_token_expires_at", "INTEGER"),
            ("expiry_notice_for", "INTEGER"),
            ("refresh_token_hash", "TEXT"),
            ("refresh_token_prefix_hash", "TEXT"),
            ("refresh_lease_lapsed_at", "INTEGER"),
        ] {
            if !columns.iter().any(|c| c == column) {
                tx.execute_batch(&format!("ALTER TABLE tokens ADD COLUMN {column} {kind}"))?;
            }
        }
        tx.execute_batch(MOVE_TOKEN_ROWS)?;
    }
    // Single-use marks name the attempt that made them; older marks name none.
    if !column_names(&tx, "started_flows")?
        .iter()
        .any(|c| c == "attempt")
    {
        tx.execute_batch("ALTER TABLE started_flows ADD COLUMN attempt TEXT")?;
    }
    tx.commit()
}

/// Moves the rows of the column-per-attribute `tokens` table into `connections`.
const MOVE_TOKEN_ROWS: &str = "
INSERT OR IGNORE INTO connections (user_id, provider, doc)
SELECT user_id, provider, json_patch('{}', json_object(
    'userId', user_id,
    'provider', provider,
    'email', email,
    'encryptedTokens', json(encrypted_tokens),
    'userInfo', json(user_info),
    'createdAt', created_at,
    'updatedAt', updated_at,
    'lastUsed', last_used,
    'accessTokenExpiresAt', access_token_expires_at,
    'expiresAt', expires_at,
    'isActive', json(CASE WHEN is_active THEN 'true' ELSE 'false' END),
    'version', version,
    'refreshLeaseAttempt', CASE WHEN refresh_lease_until IS NOT NULL THEN refresh_lease_attempt END,
    'refreshLeaseUntil', CASE WHEN refresh_lease_attempt IS NOT NULL THEN refresh_lease_until END,
    'refreshLeaseLapsedAt', CASE WHEN refresh_lease_attempt IS NOT NULL THEN refresh_lease_lapsed_at END,
    'refreshRetryAt', refresh_retry_at,
    'refreshUnknownSince', refresh_unknown_since,
    'inactiveCause', inactive_cause,
    'replacedAccount', json(replaced_account),
    'requestedScopes', json(requested_scopes),
    'grantedScopes', json(granted_scopes),
    'requestedScopesChangedAt', requested_scopes_changed_at,
    'scopesChangedAt', scopes_changed_at,
    'consentedAt', consented_at,
    'lastRefreshedAt', last_refreshed_at,
    'refreshTokenExpiresAt', refresh_token_expires_at,
    'expiryNoticeFor', expiry_notice_for,
    'refreshTokenHash', refresh_token_hash,
    'refreshTokenPrefixHash', refresh_token_prefix_hash
))
FROM tokens;
DROP TABLE tokens;
";

/// A table's column names (none when it does not exist).
fn column_names(db: &Sqlite, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = db.prepare("SELECT name FROM pragma_table_info(?1)")?;
    let names = stmt
        .query_map([table], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(names)
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{ConnectFlows, Connections};

    #[tokio::test]
    async fn a_mark_made_before_marks_named_their_attempt_stays_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        let old = Sqlite::open(&path).expect("open");
        old.execute_batch(
            "CREATE TABLE started_flows (flow_id TEXT NOT NULL PRIMARY KEY, \
             expires_at INTEGER NOT NULL) WITHOUT ROWID; \
             INSERT INTO started_flows VALUES ('old-flow', 4102444800);",
        )
        .expect("a file of the earlier layout");
        drop(old);
        let store = EmbeddedStore::open(&path).expect("open and migrate");
        let until = 4_102_444_800;
        assert!(
            !store
                .mark_once("old-flow", "a1", until)
                .await
                .expect("mark")
        );
        assert!(
            store
                .mark_once("new-flow", "a1", until)
                .await
                .expect("mark")
        );
        assert!(
            store
                .mark_once("new-flow", "a1", until)
                .await
                .expect("again")
        );
    }

    /// A file of the column-per-attribute layout (as 0.5 wrote it, before its last
    /// column was added) is moved to documents once: every attribute reads back as it
    /// was stored, absent ones stay absent, the old table is gone, and the file opens
    /// and takes writes as any other.
    #[tokio::test]
    async fn a_file_of_the_column_layout_is_moved_to_documents_once() {
        use crate::crypto::Envelope;
        use crate::store::{
            Connection, GrantLedger, RefreshLease, RefreshState, ReplacedAccount, UserInfo,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        let old = Sqlite::open(&path).expect("open");
        old.execute_batch(
            "CREATE TABLE IF NOT EXISTS tokens (
             user_id                 TEXT    NOT NULL,
             provider                TEXT    NOT NULL,
             email                   TEXT,
             encrypted_tokens        TEXT    NOT NULL,
             user_info               TEXT    NOT NULL,
             created_at              TEXT    NOT NULL,
             updated_at              TEXT    NOT NULL,
             last_used               TEXT    NOT NULL,
             access_token_expires_at INTEGER NOT NULL,
             expires_at              INTEGER NOT NULL,
             is_active               INTEGER NOT NULL,
             version                 INTEGER NOT NULL,
             refresh_lease_attempt   TEXT,
             refresh_lease_until     INTEGER,
             refresh_retry_at        INTEGER,
             refresh_unknown_since   INTEGER,
             inactive_cause          TEXT,
             replaced_account        TEXT,
             requested_scopes        TEXT,
             granted_scopes          TEXT,
             requested_scopes_changed_at TEXT,
             scopes_changed_at       TEXT,
             consented_at            TEXT,
             last_refreshed_at       TEXT,
             refresh_token_expires_at INTEGER,
             expiry_notice_for       INTEGER,
             refresh_token_hash      TEXT,
             refresh_token_prefix_hash TEXT,
             PRIMARY KEY (user_id, provider)
             ) WITHOUT ROWID;
             INSERT INTO tokens VALUES ('u', 'google', 'u@example.com', \
             '{\"v\":1,\"alg\":\"AES-256-GCM\",\"keyId\":\"k1\",\"edk\":\"ZWRr\",\"iv\":\"aXY=\",\"ct\":\"Y3Q=\"}', \
             '{\"sub\":\"1\",\"emailVerified\":true}', '2025-01-02T03:04:05.678Z', \
             '2025-01-02T03:04:06.000Z', '2025-01-02T03:04:07.009Z', 10, 4102444800, 1, 3, \
             'attempt-1', 1790000000123, 1790000000456, 1790000000789, 'invalid_grant', \
             '{\"sub\":\"sub-before\",\"email\":\"before@example.com\",\"replacedAt\":\"2025-01-02T03:04:05.000Z\"}', \
             '[\"openid\",\"email\",\"drive\"]', '[\"openid\",\"email\"]', \
             '2025-01-02T03:04:05.678Z', '2025-01-02T03:04:06.000Z', '2025-01-02T03:04:05.678Z', \
             '2025-01-02T04:04:05.001Z', 1790000000, 1790000100, 'aGFzaA==', 'cHJlZml4'); \
             INSERT INTO tokens (user_id, provider, encrypted_tokens, user_info, created_at, \
             updated_at, last_used, access_token_expires_at, expires_at, is_active, version) \
             VALUES ('v', 'google', \
             '{\"v\":1,\"alg\":\"AES-256-GCM\",\"keyId\":\"k1\",\"edk\":\"ZQ==\",\"iv\":\"aQ==\",\"ct\":\"Yw==\"}', \
             '{\"sub\":\"2\"}', '2025-01-02T03:04:05.000Z', '2025-01-02T03:04:05.000Z', \
             '2025-01-02T03:04:05.000Z', 11, 4102444801, 0, 1);",
        )
        .expect("a file of the column layout");
        drop(old);
        let at = |text| {
            DateTime::parse_from_rfc3339(text)
                .expect("time")
                .with_timezone(&Utc)
        };
        let full = Connection {
            user_id: "u".into(),
            provider: "google".into(),
            email: Some("u@example.com".into()),
            encrypted_tokens: Envelope {
                v: 1,
                alg: "AES-256-GCM".into(),
                key_id: "k1".into(),
                edk: "ZWRr".into(),
                iv: "aXY=".into(),
                ct: "Y3Q=".into(),
            },
            user_info: UserInfo {
                sub: "1".into(),
                email_verified: Some(true),
                ..UserInfo::default()
            },
            created_at: at("2025-01-02T03:04:05.678Z"),
            updated_at: at("2025-01-02T03:04:06Z"),
            last_used: at("2025-01-02T03:04:07.009Z"),
            access_token_expires_at: 10,
            expires_at: 4_102_444_800,
            is_active: true,
            version: 3,
            refresh: RefreshState {
                lease: Some(RefreshLease::new("attempt-1", 1_790_000_000_123)),
                retry_at_ms: Some(1_790_000_000_456),
                unknown_since_ms: Some(1_790_000_000_789),
                inactive_cause: Some("invalid_grant".into()),
            },
            replaced_account: Some(ReplacedAccount {
                sub: "sub-before".into(),
                email: Some("before@example.com".into()),
                replaced_at: "2025-01-02T03:04:05.000Z".into(),
            }),
            grant: GrantLedger {
                requested_scopes: vec!["openid".into(), "email".into(), "drive".into()],
                granted_scopes: vec!["openid".into(), "email".into()],
                requested_changed_at: Some(at("2025-01-02T03:04:05.678Z")),
                scopes_changed_at: Some(at("2025-01-02T03:04:06Z")),
                consented_at: Some(at("2025-01-02T03:04:05.678Z")),
                last_refreshed_at: Some(at("2025-01-02T04:04:05.001Z")),
                refresh_token_expires_at: Some(1_790_000_000),
                expiry_notice_for: Some(1_790_000_100),
                refresh_token_hash: Some("aGFzaA==".into()),
                refresh_token_prefix_hash: Some("cHJlZml4".into()),
                client_id: None,
                imported_at: None,
                unverified: false,
                verifying: false,
            },
        };
        let bare = Connection {
            user_id: "v".into(),
            provider: "google".into(),
            email: None,
            encrypted_tokens: Envelope {
                v: 1,
                alg: "AES-256-GCM".into(),
                key_id: "k1".into(),
                edk: "ZQ==".into(),
                iv: "aQ==".into(),
                ct: "Yw==".into(),
            },
            user_info: UserInfo {
                sub: "2".into(),
                ..UserInfo::default()
            },
            created_at: at("2025-01-02T03:04:05Z"),
            updated_at: at("2025-01-02T03:04:05Z"),
            last_used: at("2025-01-02T03:04:05Z"),
            access_token_expires_at: 11,
            expires_at: 4_102_444_801,
            is_active: false,
            version: 1,
            refresh: RefreshState::default(),
            replaced_account: None,
            grant: GrantLedger::default(),
        };

        let store = EmbeddedStore::open(&path).expect("open and migrate");
        assert_eq!(
            store.get("u", "google").await.expect("get"),
            Some(full.clone())
        );
        assert_eq!(
            store.get("v", "google").await.expect("get"),
            Some(bare.clone())
        );
        {
            let db = store.db.lock();
            assert!(
                column_names(&db, "tokens").expect("columns").is_empty(),
                "the column table is gone"
            );
            let doc: String = db
                .query_row("SELECT doc FROM connections WHERE user_id = 'v'", [], |r| {
                    r.get(0)
                })
                .expect("document");
            assert!(
                !doc.contains("null"),
                "absent attributes are left out: {doc}"
            );
        }
        drop(store);

        let store = EmbeddedStore::open(&path).expect("open again");
        assert_eq!(
            Connections::list(&store, "u").await.expect("list"),
            vec![full.clone()]
        );
        let next = Connection {
            email: Some("new@example.com".into()),
            ..bare.successor()
        };
        store
            .put(&next, Some(1), &[])
            .await
            .expect("a versioned write");
        assert_eq!(store.get("v", "google").await.expect("get"), Some(next));
    }
}
