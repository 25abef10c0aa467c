//! Embedded mode's store: one SQLite file in WAL mode holding both tables.
//!
//! Rows keep the DynamoDB layout's fields (maps as JSON text). Writes are conditional
//! on `version` inside SQLite's own locking, so several processes sharing the file
//! behave like several instances sharing a DynamoDB table. SQLite calls block, so they
//! run on tokio's blocking pool, never on the async workers.

mod account_grants;
mod connect_flows;
mod connections;
mod events;
mod flow_log;
mod job_leases;
mod refresh_lease;
mod revocations;
mod sealed;
mod webhook_cursors;

use crate::store::Health;
use async_trait::async_trait;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{Connection as Sqlite, OpenFlags, params_from_iter};

use super::{Connection, Event, StoreError};
use crate::jobs::{self, Jobs, Schedule};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS connections (
    user_id         TEXT    NOT NULL,
    provider        TEXT    NOT NULL,
    -- The row: the Connection's serde layout (the DynamoDB item's), as JSON.
    doc             TEXT    NOT NULL,
    -- What conditions and the purge look at, read from the document.
    version         INTEGER GENERATED ALWAYS AS (json_extract(doc, '$.version')) VIRTUAL,
    is_active       INTEGER GENERATED ALWAYS AS (json_extract(doc, '$.isActive')) VIRTUAL,
    expires_at      INTEGER GENERATED ALWAYS AS (json_extract(doc, '$.expiresAt')) VIRTUAL,
    lease_attempt   TEXT    GENERATED ALWAYS AS (json_extract(doc, '$.refreshLeaseAttempt')) VIRTUAL,
    lease_until     INTEGER GENERATED ALWAYS AS (json_extract(doc, '$.refreshLeaseUntil')) VIRTUAL,
    lease_lapsed_at INTEGER GENERATED ALWAYS AS (json_extract(doc, '$.refreshLeaseLapsedAt')) VIRTUAL,
    PRIMARY KEY (user_id, provider)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS connections_expires_at ON connections (expires_at);
CREATE TABLE IF NOT EXISTS started_flows (
    flow_id    TEXT    NOT NULL PRIMARY KEY,
    attempt    TEXT,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending_grants (
    flow_id          TEXT    NOT NULL PRIMARY KEY,
    user_id          TEXT    NOT NULL,
    provider         TEXT    NOT NULL,
    encrypted_tokens TEXT    NOT NULL,
    user_info        TEXT    NOT NULL,
    created_at       TEXT    NOT NULL,
    expires_at       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending_revocations (
    id              TEXT    NOT NULL PRIMARY KEY,
    record          TEXT    NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS job_leases (
    name     TEXT    NOT NULL PRIMARY KEY,
    holder   TEXT    NOT NULL,
    until_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS account_grants (
    provider TEXT    NOT NULL,
    sub      TEXT    NOT NULL,
    mints    TEXT    NOT NULL,
    version  INTEGER NOT NULL,
    PRIMARY KEY (provider, sub)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS flow_logs (
    user_id    TEXT    NOT NULL,
    timestamp  TEXT    NOT NULL,
    flow_id    TEXT    NOT NULL,
    step       TEXT    NOT NULL,
    data       TEXT    NOT NULL,
    error      TEXT,
    ip_address TEXT,
    user_agent TEXT,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, timestamp)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS flow_logs_expires_at ON flow_logs (expires_at);
CREATE TABLE IF NOT EXISTS events (
    id         TEXT    NOT NULL PRIMARY KEY,
    type       TEXT    NOT NULL,
    user_id    TEXT    NOT NULL,
    provider   TEXT    NOT NULL,
    timestamp  TEXT    NOT NULL,
    data       TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_expires_at ON events (expires_at);
CREATE TABLE IF NOT EXISTS webhook_state (
    endpoint TEXT    NOT NULL PRIMARY KEY,
    state    TEXT    NOT NULL,
    version  INTEGER NOT NULL
) WITHOUT ROWID;
";

/// How long a statement waits for another connection's lock (another process writing)
/// before it fails: the longest a write can take.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Read connections kept open for reuse; more are opened while all are busy.
const IDLE_READERS: usize = 4;

/// Both tables in one SQLite file.
#[derive(Clone)]
pub struct EmbeddedStore {
    /// The writer: one connection behind a mutex (SQLite serialises writers anyway, and
    /// a single writer keeps WAL checkpoints simple).
    db: Arc<Mutex<Sqlite>>,
    /// Read-only connections: in WAL mode readers never wait for the writer or each
    /// other, so reads take none of the writer's lock.
    readers: Arc<Readers>,
}

struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Sqlite>>,
}

impl Readers {
    /// An idle read connection, or a new one.
    fn take(&self) -> Result<Sqlite, StoreError> {
        if let Some(db) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            return Ok(db);
        }
        let db = Sqlite::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| unavailable(&self.path, e))?;
        db.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| unavailable(&self.path, e))?;
        Ok(db)
    }

    /// Keeps a connection for the next read, up to [`IDLE_READERS`].
    fn give_back(&self, db: Sqlite) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < IDLE_READERS
        {
            idle.push(db);
        }
    }
}

/// Ciphertexts only, but flow logs name users: the database is private to the service's
/// user, and SQLite gives its `-wal` and `-shm` files the database file's mode, so the
/// file is made 0600 before SQLite first opens it (and an older file is narrowed).
fn create_private(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        for suffix in ["", "-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{suffix}", path.display()));
            if file.exists() {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

impl EmbeddedStore {
    /// Opens (creating when absent) the database file and its schema.
    #[tracing::instrument(skip_all, fields(path = %path.display()))]
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        create_private(path)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        let db = Sqlite::open(path).map_err(|e| unavailable(path, e))?;
        db.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| unavailable(path, e))?;
        db.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| unavailable(path, e))?;
        db.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| unavailable(path, e))?;
        let mut db = db;
        db.execute_batch(SCHEMA).map_err(|e| unavailable(path, e))?;
        migrate(&mut db).map_err(|e| unavailable(path, e))?;
        Ok(Self {
            db: Arc::new(Mutex::new(db)),
            readers: Arc::new(Readers {
                path: path.to_path_buf(),
                idle: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Runs `f` with the connection on the blocking pool (counted as a store write).
    async fn with_db<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Sqlite) -> Result<T, StoreError> + Send + 'static,
    {
        crate::store::count_write("embedded");
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            let mut guard = db
                .lock()
                .map_err(|_| StoreError::Unavailable("database lock poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("database task failed: {e}")))?
    }

    /// Runs a read-only `f` on a read connection, on the blocking pool (counted as a
    /// store read). Never waits for the writer's lock.
    async fn with_reader<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Sqlite) -> Result<T, StoreError> + Send + 'static,
    {
        crate::store::count_read("embedded");
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let mut db = readers.take()?;
            let out = f(&mut db);
            readers.give_back(db);
            out
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("database task failed: {e}")))?
    }

    /// Writes a whole row under `condition`, with `events` (both or neither); a lost
    /// condition is a conflict.
    async fn write_row(
        &self,
        row: &Connection,
        condition: WriteIf,
        events: &[Event],
    ) -> Result<(), StoreError> {
        let mut values = vec![
            Value::from(row.user_id.clone()),
            Value::from(row.provider.clone()),
            Value::from(connections::row_doc(row)?),
        ];
        let statement = match condition {
            WriteIf::Absent => {
                "INSERT INTO connections (user_id, provider, doc) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (user_id, provider) DO NOTHING"
            }
            WriteIf::Version(expected) => {
                values.push(Value::from(expected));
                "UPDATE connections SET doc = ?3 WHERE user_id = ?1 AND provider = ?2 AND version = ?4"
            }
            WriteIf::Holder(attempt) => {
                values.push(Value::from(attempt));
                "UPDATE connections SET doc = ?3 \
                 WHERE user_id = ?1 AND provider = ?2 AND lease_attempt = ?4"
            }
        };
        self.update_one_with(statement.to_string(), values, events)
            .await
    }

    /// Runs a statement that must change exactly one row, storing `events` in the
    /// same transaction; none changed is a conflict, and then no event is stored.
    async fn update_one_with(
        &self,
        statement: String,
        args: Vec<Value>,
        events: &[Event],
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return self.update_one_owned(statement, args).await;
        }
        let events = events.to_vec();
        let changed = self
            .with_db(move |db| {
                let tx = db.transaction().map_err(sql)?;
                let changed = tx
                    .prepare_cached(&statement)
                    .and_then(|mut stmt| stmt.execute(params_from_iter(args)))
                    .map_err(sql)?;
                if changed == 1 {
                    let stamped = events::insert(&tx, &events)?;
                    stamped.in_time()?;
                    tx.commit().map_err(sql)?;
                }
                // Otherwise the transaction rolls back as it is dropped.
                Ok(changed)
            })
            .await?;
        if changed == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict)
        }
    }

    /// Runs a statement that must change exactly one row; none is a conflict.
    async fn update_one(
        &self,
        statement: &'static str,
        args: Vec<Value>,
    ) -> Result<(), StoreError> {
        self.update_one_owned(statement.to_string(), args).await
    }

    async fn update_one_owned(
        &self,
        statement: String,
        args: Vec<Value>,
    ) -> Result<(), StoreError> {
        let changed = self
            .with_db(move |db| {
                db.prepare_cached(&statement)
                    .and_then(|mut stmt| stmt.execute(params_from_iter(args)))
                    .map_err(sql)
            })
            .await?;
        if changed == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict)
        }
    }

    /// Deletes, every `every`, what `purge_expired` deletes; failures are logged and
    /// tried again at the next pass.
    pub(crate) fn schedule_purge(self: &Arc<Self>, jobs: &Jobs, every: Duration) {
        let store = Arc::clone(self);
        jobs.run(
            "purge",
            Schedule::every(every),
            jobs::from_fn(move |_stop| {
                let store = Arc::clone(&store);
                async move {
                    match store.purge_expired(chrono::Utc::now().timestamp()).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(purged = n, "expired rows and flow-log items deleted"),
                        Err(e) => {
                            tracing::warn!(error = %e, "purging expired rows failed; trying again later")
                        }
                    }
                }
            }),
        );
    }

    /// Deletes rows whose `expiresAt` has passed, as DynamoDB's TTL does.
    #[tracing::instrument(skip_all, fields(now = now))]
    pub(crate) async fn purge_expired(&self, now: i64) -> Result<usize, StoreError> {
        self.with_db(move |db| {
            let tokens = db
                .execute("DELETE FROM connections WHERE expires_at < ?1", [now])
                .map_err(sql)?;
            let logs = db
                .execute("DELETE FROM flow_logs WHERE expires_at < ?1", [now])
                .map_err(sql)?;
            let started = db
                .execute("DELETE FROM started_flows WHERE expires_at < ?1", [now])
                .map_err(sql)?;
            let pending = db
                .execute("DELETE FROM pending_grants WHERE expires_at < ?1", [now])
                .map_err(sql)?;
            // A revocation past its deadline is given up by the retry loop, which logs
            // it; this only catches what no instance came back for.
            let revocations = db
                .execute(
                    "DELETE FROM pending_revocations WHERE expires_at < ?1",
                    [now.saturating_sub(86_400)],
                )
                .map_err(sql)?;
            let events = db
                .execute("DELETE FROM events WHERE expires_at < ?1", [now])
                .map_err(sql)?;
            Ok(tokens + logs + started + pending + revocations + events)
        })
        .await
    }
}

/// Brings files made by earlier versions to the current layout, once, in one
/// transaction (another process opening the file meanwhile waits for it).
///
/// Files before 0.6 kept connections in a `tokens` table, a column per attribute: its
/// columns are first brought up to that layout's last form (a lease column named for
/// its old meaning, an instance rather than an attempt, is renamed; its value is then a
/// lease no attempt of this version holds, which lapses by itself), then every row is
/// moved into `connections` as its document (`json_patch` onto `{}` leaves absent
/// attributes out), and the table is dropped.
fn migrate(db: &mut Sqlite) -> rusqlite::Result<()> {
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

/// The condition of a whole-row write.
enum WriteIf {
    /// No row exists yet.
    Absent,
    /// The stored row is at this version.
    Version(i64),
    /// This refresh attempt holds the row's lease.
    Holder(String),
}

fn unavailable(path: &Path, e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("{}: {e}", path.display()))
}

fn sql(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(code, _)
            if matches!(
                code.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            StoreError::Throttled(format!("database busy: {e}"))
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn rfc3339(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn parse_time(what: &str, text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| corrupt(what, e))
}

#[async_trait]
impl Health for EmbeddedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.with_reader(|db| {
            db.query_row(
                "SELECT count(*) FROM connections WHERE user_id = ''",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ConnectFlows, Connections, FlowLog, Health};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_never_wait_for_the_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(&dir.path().join("t.db")).expect("open");
        // The writer's lock is held until the reads are done: a read that took it
        // would never finish.
        let writer = Arc::clone(&store.db);
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let _writer = writer.lock();
            let _ = held_tx.send(());
            let _ = done_rx.recv_timeout(Duration::from_secs(10));
        });
        held_rx.recv().expect("the writer's lock is held");
        let reads = async {
            assert_eq!(
                Connections::get(&store, "u", "google").await.expect("get"),
                None
            );
            assert!(
                Connections::list(&store, "u")
                    .await
                    .expect("list")
                    .is_empty()
            );
            assert!(
                FlowLog::list(&store, "u", 10, None)
                    .await
                    .expect("log")
                    .is_empty()
            );
            Health::ping(&store).await.expect("ping");
        };
        let finished = tokio::time::timeout(Duration::from_secs(5), reads).await;
        let _ = done_tx.send(());
        holder.join().expect("holder");
        assert!(finished.is_ok(), "reads finished while the writer was busy");
    }

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
            let db = store.db.lock().expect("db");
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
