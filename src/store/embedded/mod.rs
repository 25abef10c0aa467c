//! Embedded mode's store: one SQLite file in WAL mode holding both tables.
//!
//! Rows keep the DynamoDB layout's fields (maps as JSON text). Writes are conditional
//! on `version` inside SQLite's own locking, so several processes sharing the file
//! behave like several instances sharing a DynamoDB table. SQLite calls block, so they
//! run on tokio's blocking pool, never on the async workers, with one exception: a
//! connection's point read (the token read's) runs on the calling thread when it can
//! answer without waiting for any lock ([`Readers::read_now`]). In WAL mode a reader
//! never waits for the writer, so that read costs tens of microseconds of the caller's
//! time and no thread switch; one that would wait goes to the blocking pool instead.

mod account_grants;
mod connect_flows;
mod connections;
mod events;
mod flow_log;
mod job_leases;
mod migrate;
mod refresh_lease;
mod revocations;
mod sealed;
mod webhook_cursors;

#[cfg(feature = "bench")]
pub(crate) use connections::{parse_row, row_doc};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use rusqlite::types::Value;
use rusqlite::{Connection as Sqlite, OpenFlags, params_from_iter};

use super::{Connection, Event, Health, StoreError};
use crate::jobs::{self, Jobs, Schedule};

const SCHEMA: &str = "
-- A rowid table: a document this size would spill to an overflow page in a WITHOUT ROWID
-- one, which costs every read a fifth more.
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
);
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
/// Connections for reads on the calling thread kept open: one per async worker is
/// all that can be in use at once (the read holds its thread until it is done).
const IDLE_NOW_READERS: usize = 16;

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
    /// Connections for [`Readers::read_now`]: they never wait for a lock.
    now: Mutex<Vec<Sqlite>>,
}

impl Readers {
    /// An idle read connection, or a new one.
    fn take(&self) -> Result<Sqlite, StoreError> {
        if let Some(db) = self.idle.lock().pop() {
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
        let mut idle = self.idle.lock();
        if idle.len() < IDLE_READERS {
            idle.push(db);
        }
    }

    /// Runs the read `f` on the calling thread, on a connection whose busy timeout is 0:
    /// `None` when it could not answer at once (a lock held by a writer's checkpoint or
    /// another process's recovery, or no connection could be opened), for the caller
    /// to run it on the blocking pool, which waits.
    fn read_now<T>(
        &self,
        f: impl FnOnce(&Sqlite) -> rusqlite::Result<T>,
    ) -> Option<Result<T, StoreError>> {
        let popped = self.now.lock().pop();
        let db = match popped {
            Some(db) => db,
            None => {
                let db = Sqlite::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .ok()?;
                // rusqlite opens with a 5 s busy timeout: this connection must not wait.
                db.busy_timeout(Duration::ZERO).ok()?;
                db
            }
        };
        let out = f(&db);
        {
            let mut idle = self.now.lock();
            if idle.len() < IDLE_NOW_READERS {
                idle.push(db);
            }
        }
        match out {
            Err(e) if is_busy(&e) => None,
            out => Some(out.map_err(sql)),
        }
    }
}

/// Whether SQLite refused for a lock another connection holds.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(code, _)
            if matches!(
                code.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            )
    )
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
        migrate::migrate(&mut db).map_err(|e| unavailable(path, e))?;
        Ok(Self {
            db: Arc::new(Mutex::new(db)),
            readers: Arc::new(Readers {
                path: path.to_path_buf(),
                idle: Mutex::new(Vec::new()),
                now: Mutex::new(Vec::new()),
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
        tokio::task::spawn_blocking(move || f(&mut db.lock()))
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
        self.on_blocking_pool(f).await
    }

    /// Runs a read-only `f` on a read connection, on the blocking pool (not counted).
    async fn on_blocking_pool<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Sqlite) -> Result<T, StoreError> + Send + 'static,
    {
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
    if is_busy(&e) {
        StoreError::Throttled(format!("database busy: {e}"))
    } else {
        StoreError::Unavailable(e.to_string())
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
    use crate::store::{Connections, FlowLog, Health};

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

    /// A point read runs on the calling thread only while it need not wait: a read that
    /// meets a lock is handed back (for the blocking pool, which waits), any other
    /// failure is the read's answer.
    #[test]
    fn a_read_that_meets_a_lock_is_handed_to_the_blocking_pool() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(&dir.path().join("t.db")).expect("open");
        let failure = |code| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        let busy = store
            .readers
            .read_now(|_| -> rusqlite::Result<()> { Err(failure(rusqlite::ffi::SQLITE_BUSY)) });
        assert!(busy.is_none(), "busy: handed back");
        let locked = store
            .readers
            .read_now(|_| -> rusqlite::Result<()> { Err(failure(rusqlite::ffi::SQLITE_LOCKED)) });
        assert!(locked.is_none(), "locked: handed back");
        let broken = store
            .readers
            .read_now(|_| -> rusqlite::Result<()> { Err(failure(rusqlite::ffi::SQLITE_CORRUPT)) });
        assert!(matches!(broken, Some(Err(StoreError::Unavailable(_)))));
        let read = store.readers.read_now(|db| {
            db.query_row("SELECT count(*) FROM connections", [], |r| {
                r.get::<_, i64>(0)
            })
        });
        assert!(matches!(read, Some(Ok(0))), "answered on this thread");
        // Its connection does not wait for a lock (SQLite's busy timeout is 0).
        let timeout = store
            .readers
            .read_now(|db| db.pragma_query_value(None, "busy_timeout", |r| r.get::<_, i64>(0)));
        assert!(matches!(timeout, Some(Ok(0))), "{timeout:?}");
    }
}
