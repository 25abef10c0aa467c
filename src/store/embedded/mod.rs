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
CREATE TABLE IF NOT EXISTS tokens (
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
    refresh_lease_lapsed_at INTEGER,
    PRIMARY KEY (user_id, provider)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tokens_expires_at ON tokens (expires_at);
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

const TOKEN_COLUMNS: &str = "user_id, provider, email, encrypted_tokens, user_info, created_at, updated_at, \
     last_used, access_token_expires_at, expires_at, is_active, version, refresh_lease_attempt, refresh_lease_until, \
     refresh_retry_at, refresh_unknown_since, inactive_cause, replaced_account, requested_scopes, \
     granted_scopes, requested_scopes_changed_at, scopes_changed_at, consented_at, last_refreshed_at, \
     refresh_token_expires_at, expiry_notice_for, refresh_token_hash, refresh_token_prefix_hash, \
     refresh_lease_lapsed_at";

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
        db.execute_batch(SCHEMA).map_err(|e| unavailable(path, e))?;
        migrate(&db).map_err(|e| unavailable(path, e))?;
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
        let encrypted = serde_json::to_string(&row.encrypted_tokens)
            .map_err(|e| corrupt("encryptedTokens", e))?;
        let user_info =
            serde_json::to_string(&row.user_info).map_err(|e| corrupt("userInfo", e))?;
        let version = i64::try_from(row.version).map_err(|e| corrupt("version", e))?;
        let replaced = row
            .replaced_account
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| corrupt("replacedAccount", e))?;
        let scopes = |list: &Vec<String>| {
            if list.is_empty() {
                Ok(Value::Null)
            } else {
                serde_json::to_string(list).map(Value::from)
            }
        };
        let time = |at: &Option<DateTime<Utc>>| {
            at.as_ref()
                .map_or(Value::Null, |at| Value::from(rfc3339(at)))
        };
        let grant = &row.grant;
        let lease = row.refresh.lease.as_ref();
        let mut values = vec![
            Value::from(row.user_id.clone()),
            Value::from(row.provider.clone()),
            row.email.clone().map_or(Value::Null, Value::from),
            Value::from(encrypted),
            Value::from(user_info),
            Value::from(rfc3339(&row.created_at)),
            Value::from(rfc3339(&row.updated_at)),
            Value::from(rfc3339(&row.last_used)),
            Value::from(row.access_token_expires_at),
            Value::from(row.expires_at),
            Value::from(row.is_active),
            Value::from(version),
            lease.map_or(Value::Null, |l| Value::from(l.attempt.clone())),
            lease.map_or(Value::Null, |l| Value::from(l.until_ms)),
            row.refresh.retry_at_ms.map_or(Value::Null, Value::from),
            row.refresh
                .unknown_since_ms
                .map_or(Value::Null, Value::from),
            row.refresh
                .inactive_cause
                .clone()
                .map_or(Value::Null, Value::from),
            replaced.map_or(Value::Null, Value::from),
            scopes(&grant.requested_scopes).map_err(|e| corrupt("requestedScopes", e))?,
            scopes(&grant.granted_scopes).map_err(|e| corrupt("grantedScopes", e))?,
            time(&grant.requested_changed_at),
            time(&grant.scopes_changed_at),
            time(&grant.consented_at),
            time(&grant.last_refreshed_at),
            grant
                .refresh_token_expires_at
                .map_or(Value::Null, Value::from),
            grant.expiry_notice_for.map_or(Value::Null, Value::from),
            grant
                .refresh_token_hash
                .clone()
                .map_or(Value::Null, Value::from),
            grant
                .refresh_token_prefix_hash
                .clone()
                .map_or(Value::Null, Value::from),
            lease
                .and_then(|l| l.lapsed_at_ms)
                .map_or(Value::Null, Value::from),
        ];
        const SET: &str = "email = ?3, encrypted_tokens = ?4, user_info = ?5, created_at = ?6, \
             updated_at = ?7, last_used = ?8, access_token_expires_at = ?9, expires_at = ?10, \
             is_active = ?11, version = ?12, refresh_lease_attempt = ?13, refresh_lease_until = ?14, \
             refresh_retry_at = ?15, refresh_unknown_since = ?16, inactive_cause = ?17, \
             replaced_account = ?18, requested_scopes = ?19, granted_scopes = ?20, \
             requested_scopes_changed_at = ?21, scopes_changed_at = ?22, consented_at = ?23, \
             last_refreshed_at = ?24, refresh_token_expires_at = ?25, expiry_notice_for = ?26, \
             refresh_token_hash = ?27, refresh_token_prefix_hash = ?28, refresh_lease_lapsed_at = ?29";
        let statement = match condition {
            WriteIf::Absent => format!(
                "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
                 ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29) \
                 ON CONFLICT (user_id, provider) DO NOTHING"
            ),
            WriteIf::Version(expected) => {
                values.push(Value::from(expected));
                format!(
                    "UPDATE tokens SET {SET} WHERE user_id = ?1 AND provider = ?2 AND version = ?30"
                )
            }
            WriteIf::Holder(attempt) => {
                values.push(Value::from(attempt));
                format!(
                    "UPDATE tokens SET {SET} WHERE user_id = ?1 AND provider = ?2 AND refresh_lease_attempt = ?30"
                )
            }
        };
        self.update_one_with(statement, values, events).await
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
                .execute("DELETE FROM tokens WHERE expires_at < ?1", [now])
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

/// Brings files made by earlier versions to the current columns. A lease column named
/// for its old meaning (an instance, not an attempt) is renamed; its value is then a
/// lease no attempt of this version holds, which lapses by itself.
fn migrate(db: &Sqlite) -> rusqlite::Result<()> {
    let mut stmt = db.prepare("SELECT name FROM pragma_table_info('tokens')")?;
    let columns: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let has = |name: &str| columns.iter().any(|c| c == name);
    if has("refresh_lease_owner") && !has("refresh_lease_attempt") {
        db.execute_batch(
            "ALTER TABLE tokens RENAME COLUMN refresh_lease_owner TO refresh_lease_attempt",
        )?;
    }
    let mut stmt = db.prepare("SELECT name FROM pragma_table_info('tokens')")?;
    let columns: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
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
            db.execute_batch(&format!("ALTER TABLE tokens ADD COLUMN {column} {kind}"))?;
        }
    }
    // Single-use marks name the attempt that made them; older marks name none.
    let mut stmt = db.prepare("SELECT name FROM pragma_table_info('started_flows')")?;
    let columns: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if !columns.iter().any(|c| c == "attempt") {
        db.execute_batch("ALTER TABLE started_flows ADD COLUMN attempt TEXT")?;
    }
    Ok(())
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
            db.query_row("SELECT count(*) FROM tokens WHERE user_id = ''", [], |r| {
                r.get::<_, i64>(0)
            })
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
}
