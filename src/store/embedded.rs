//! Embedded mode's store: one SQLite file in WAL mode holding both tables.
//!
//! Rows keep the DynamoDB layout's fields (maps as JSON text). Writes are conditional
//! on `version` inside SQLite's own locking, so several processes sharing the file
//! behave like several instances sharing a DynamoDB table. SQLite calls block, so they
//! run on tokio's blocking pool, never on the async workers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{Connection as Sqlite, OptionalExtension, Row, params, params_from_iter};

use super::{
    Connection, FlowLog, FlowLogEntry, FlowStep, LeaseRelease, RefreshLease, RefreshState,
    StoreError, TokenStore,
};

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
    PRIMARY KEY (user_id, provider)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tokens_expires_at ON tokens (expires_at);
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
";

const TOKEN_COLUMNS: &str = "user_id, provider, email, encrypted_tokens, user_info, created_at, updated_at, \
     last_used, access_token_expires_at, expires_at, is_active, version, refresh_lease_attempt, refresh_lease_until, \
     refresh_retry_at, refresh_unknown_since, inactive_cause";

/// Both tables in one SQLite file.
#[derive(Clone)]
pub struct EmbeddedStore {
    /// One connection behind a mutex: SQLite serialises writers anyway, and a single
    /// connection keeps WAL checkpoints simple. Reads are short.
    db: Arc<Mutex<Sqlite>>,
    path: PathBuf,
}

impl EmbeddedStore {
    /// Opens (creating when absent) the database file and its schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Sqlite::open(path).map_err(|e| unavailable(path, e))?;
        db.busy_timeout(Duration::from_secs(5))
            .map_err(|e| unavailable(path, e))?;
        db.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| unavailable(path, e))?;
        db.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| unavailable(path, e))?;
        db.execute_batch(SCHEMA).map_err(|e| unavailable(path, e))?;
        migrate(&db).map_err(|e| unavailable(path, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // Ciphertexts only, but flow logs name users: keep the file private.
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(Self {
            db: Arc::new(Mutex::new(db)),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with_db<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Sqlite) -> Result<T, StoreError> + Send + 'static,
    {
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

    /// Writes a whole row under `condition`; a lost condition is a conflict.
    async fn write_row(&self, row: &Connection, condition: WriteIf) -> Result<(), StoreError> {
        let encrypted = serde_json::to_string(&row.encrypted_tokens)
            .map_err(|e| corrupt("encryptedTokens", e))?;
        let user_info =
            serde_json::to_string(&row.user_info).map_err(|e| corrupt("userInfo", e))?;
        let version = i64::try_from(row.version).map_err(|e| corrupt("version", e))?;
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
        ];
        const SET: &str = "email = ?3, encrypted_tokens = ?4, user_info = ?5, created_at = ?6, \
             updated_at = ?7, last_used = ?8, access_token_expires_at = ?9, expires_at = ?10, \
             is_active = ?11, version = ?12, refresh_lease_attempt = ?13, refresh_lease_until = ?14, \
             refresh_retry_at = ?15, refresh_unknown_since = ?16, inactive_cause = ?17";
        let statement = match condition {
            WriteIf::Absent => format!(
                "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
                 ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17) ON CONFLICT (user_id, provider) DO NOTHING"
            ),
            WriteIf::Version(expected) => {
                values.push(Value::from(expected));
                format!(
                    "UPDATE tokens SET {SET} WHERE user_id = ?1 AND provider = ?2 AND version = ?18"
                )
            }
            WriteIf::Holder(attempt) => {
                values.push(Value::from(attempt));
                format!(
                    "UPDATE tokens SET {SET} WHERE user_id = ?1 AND provider = ?2 AND refresh_lease_attempt = ?18"
                )
            }
        };
        self.update_one_owned(statement, values).await
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
    pub fn spawn_purger(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let store = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match store.purge_expired(chrono::Utc::now().timestamp()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(purged = n, "expired rows and flow-log items deleted"),
                    Err(e) => {
                        tracing::warn!(error = %e, "purging expired rows failed; trying again later")
                    }
                }
            }
        })
    }

    /// Deletes rows whose `expiresAt` has passed, as DynamoDB's TTL does.
    pub async fn purge_expired(&self, now: i64) -> Result<usize, StoreError> {
        self.with_db(move |db| {
            let tokens = db
                .execute("DELETE FROM tokens WHERE expires_at < ?1", [now])
                .map_err(sql)?;
            let logs = db
                .execute("DELETE FROM flow_logs WHERE expires_at < ?1", [now])
                .map_err(sql)?;
            Ok(tokens + logs)
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
    ] {
        if !columns.iter().any(|c| c == column) {
            db.execute_batch(&format!("ALTER TABLE tokens ADD COLUMN {column} {kind}"))?;
        }
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

/// The raw columns of a tokens row, read inside the SQLite callback and parsed after.
struct RawConnection {
    user_id: String,
    provider: String,
    email: Option<String>,
    encrypted_tokens: String,
    user_info: String,
    created_at: String,
    updated_at: String,
    last_used: String,
    access_token_expires_at: i64,
    expires_at: i64,
    is_active: bool,
    version: i64,
    refresh_lease_attempt: Option<String>,
    refresh_lease_until: Option<i64>,
    refresh_retry_at: Option<i64>,
    refresh_unknown_since: Option<i64>,
    inactive_cause: Option<String>,
}

impl RawConnection {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            user_id: row.get(0)?,
            provider: row.get(1)?,
            email: row.get(2)?,
            encrypted_tokens: row.get(3)?,
            user_info: row.get(4)?,
            created_at: row.get(5)?,
            updated_at: row.get(6)?,
            last_used: row.get(7)?,
            access_token_expires_at: row.get(8)?,
            expires_at: row.get(9)?,
            is_active: row.get(10)?,
            version: row.get(11)?,
            refresh_lease_attempt: row.get(12)?,
            refresh_lease_until: row.get(13)?,
            refresh_retry_at: row.get(14)?,
            refresh_unknown_since: row.get(15)?,
            inactive_cause: row.get(16)?,
        })
    }

    fn parse(self) -> Result<Connection, StoreError> {
        Ok(Connection {
            encrypted_tokens: serde_json::from_str(&self.encrypted_tokens)
                .map_err(|e| corrupt("encryptedTokens", e))?,
            user_info: serde_json::from_str(&self.user_info).map_err(|e| corrupt("userInfo", e))?,
            created_at: parse_time("createdAt", &self.created_at)?,
            updated_at: parse_time("updatedAt", &self.updated_at)?,
            last_used: parse_time("lastUsed", &self.last_used)?,
            user_id: self.user_id,
            provider: self.provider,
            email: self.email,
            access_token_expires_at: self.access_token_expires_at,
            expires_at: self.expires_at,
            is_active: self.is_active,
            version: u64::try_from(self.version).map_err(|e| corrupt("version", e))?,
            refresh: RefreshState {
                lease: match (self.refresh_lease_attempt, self.refresh_lease_until) {
                    (Some(attempt), Some(until_ms)) => Some(RefreshLease { attempt, until_ms }),
                    _ => None,
                },
                retry_at_ms: self.refresh_retry_at,
                unknown_since_ms: self.refresh_unknown_since,
                inactive_cause: self.inactive_cause,
            },
        })
    }
}

#[async_trait]
impl TokenStore for EmbeddedStore {
    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
    async fn get(&self, user_id: &str, provider: &str) -> Result<Option<Connection>, StoreError> {
        let (user_id, provider) = (user_id.to_string(), provider.to_string());
        let raw = self
            .with_db(move |db| {
                db.query_row(
                    &format!(
                        "SELECT {TOKEN_COLUMNS} FROM tokens WHERE user_id = ?1 AND provider = ?2"
                    ),
                    params![user_id, provider],
                    RawConnection::from_row,
                )
                .optional()
                .map_err(sql)
            })
            .await?;
        raw.map(RawConnection::parse).transpose()
    }

    #[tracing::instrument(skip_all, fields(user_id = %row.user_id, provider = %row.provider))]
    async fn put(&self, row: &Connection, expected: Option<u64>) -> Result<(), StoreError> {
        let condition = match expected {
            None => WriteIf::Absent,
            Some(v) => WriteIf::Version(i64::try_from(v).map_err(|e| corrupt("version", e))?),
        };
        self.write_row(row, condition).await
    }

    #[tracing::instrument(skip_all, fields(user_id = %row.user_id, provider = %row.provider))]
    async fn put_as_holder(&self, row: &Connection, attempt: &str) -> Result<(), StoreError> {
        self.write_row(row, WriteIf::Holder(attempt.to_string()))
            .await
    }

    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
    async fn acquire_lease(
        &self,
        user_id: &str,
        provider: &str,
        version: u64,
        lease: &RefreshLease,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let version = i64::try_from(version).map_err(|e| corrupt("version", e))?;
        let args = vec![
            Value::from(user_id.to_string()),
            Value::from(provider.to_string()),
            Value::from(lease.attempt.clone()),
            Value::from(lease.until_ms),
            Value::from(version),
            Value::from(now_ms),
        ];
        self.update_one(
            "UPDATE tokens SET refresh_lease_attempt = ?3, refresh_lease_until = ?4 \
             WHERE user_id = ?1 AND provider = ?2 AND version = ?5 \
             AND (refresh_lease_attempt IS NULL OR refresh_lease_until IS NULL OR refresh_lease_until < ?6)",
            args,
        )
        .await
    }

    async fn extend_lease(
        &self,
        user_id: &str,
        provider: &str,
        lease: &RefreshLease,
    ) -> Result<(), StoreError> {
        let args = vec![
            Value::from(user_id.to_string()),
            Value::from(provider.to_string()),
            Value::from(lease.attempt.clone()),
            Value::from(lease.until_ms),
        ];
        self.update_one(
            "UPDATE tokens SET refresh_lease_until = ?4 \
             WHERE user_id = ?1 AND provider = ?2 AND refresh_lease_attempt = ?3",
            args,
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
    async fn release_lease(
        &self,
        user_id: &str,
        provider: &str,
        attempt: &str,
        after: LeaseRelease,
    ) -> Result<(), StoreError> {
        let args = vec![
            Value::from(user_id.to_string()),
            Value::from(provider.to_string()),
            Value::from(attempt.to_string()),
            after.retry_at_ms.map_or(Value::Null, Value::from),
            after.unknown_since_ms.map_or(Value::Null, Value::from),
        ];
        // An unknown outcome is remembered until a token write clears it.
        self.update_one(
            "UPDATE tokens SET refresh_lease_attempt = NULL, refresh_lease_until = NULL, \
             refresh_retry_at = ?4, refresh_unknown_since = COALESCE(?5, refresh_unknown_since) \
             WHERE user_id = ?1 AND provider = ?2 AND refresh_lease_attempt = ?3",
            args,
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
    async fn touch(
        &self,
        user_id: &str,
        provider: &str,
        last_used: DateTime<Utc>,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let args = vec![
            Value::from(user_id.to_string()),
            Value::from(provider.to_string()),
            Value::from(rfc3339(&last_used)),
            Value::from(expires_at),
        ];
        match self
            .update_one(
                "UPDATE tokens SET last_used = ?3, expires_at = ?4 \
                 WHERE user_id = ?1 AND provider = ?2 AND is_active = 1",
                args,
            )
            .await
        {
            Ok(()) | Err(StoreError::Conflict) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn delete(
        &self,
        user_id: &str,
        provider: &str,
        expected: u64,
    ) -> Result<bool, StoreError> {
        let (user_id, provider) = (user_id.to_string(), provider.to_string());
        let expected = i64::try_from(expected).map_err(|e| corrupt("version", e))?;
        self.with_db(move |db| {
            let tx = db.transaction().map_err(sql)?;
            let current: Option<i64> = tx
                .query_row(
                    "SELECT version FROM tokens WHERE user_id = ?1 AND provider = ?2",
                    params![user_id, provider],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql)?;
            let outcome = match current {
                None => Ok(false),
                Some(v) if v != expected => Err(StoreError::Conflict),
                Some(_) => {
                    tx.execute(
                        "DELETE FROM tokens WHERE user_id = ?1 AND provider = ?2",
                        params![user_id, provider],
                    )
                    .map_err(sql)?;
                    Ok(true)
                }
            };
            tx.commit().map_err(sql)?;
            outcome
        })
        .await
    }

    async fn list(&self, user_id: &str) -> Result<Vec<Connection>, StoreError> {
        let user_id = user_id.to_string();
        let raws = self
            .with_db(move |db| {
                let mut stmt = db
                    .prepare_cached(&format!(
                        "SELECT {TOKEN_COLUMNS} FROM tokens WHERE user_id = ?1 ORDER BY provider"
                    ))
                    .map_err(sql)?;
                let rows = stmt
                    .query_map([user_id], RawConnection::from_row)
                    .map_err(sql)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql)
            })
            .await?;
        raws.into_iter().map(RawConnection::parse).collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with_db(|db| {
            db.query_row("SELECT count(*) FROM tokens WHERE user_id = ''", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(sql)?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl FlowLog for EmbeddedStore {
    async fn append(&self, entry: &FlowLogEntry) -> Result<(), StoreError> {
        let data = serde_json::to_string(&entry.data).map_err(|e| corrupt("data", e))?;
        let e = entry.clone();
        self.with_db(move |db| {
            db.execute(
                "INSERT INTO flow_logs (user_id, timestamp, flow_id, step, data, error, ip_address, user_agent, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    e.user_id,
                    e.timestamp,
                    e.flow_id,
                    e.step.as_str(),
                    data,
                    e.error,
                    e.ip_address,
                    e.user_agent,
                    e.expires_at
                ],
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn list(
        &self,
        user_id: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<FlowLogEntry>, StoreError> {
        let user_id = user_id.to_string();
        // '~' sorts after every character a timestamp key holds: "no upper bound".
        let before = before.unwrap_or("~").to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .with_db(move |db| {
                let mut stmt = db
                    .prepare_cached(
                        "SELECT user_id, timestamp, flow_id, step, data, error, ip_address, user_agent, expires_at \
                         FROM flow_logs WHERE user_id = ?1 AND timestamp < ?2 ORDER BY timestamp DESC LIMIT ?3",
                    )
                    .map_err(sql)?;
                let rows = stmt
                    .query_map(params![user_id, before, limit], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, Option<String>>(5)?,
                            r.get::<_, Option<String>>(6)?,
                            r.get::<_, Option<String>>(7)?,
                            r.get::<_, i64>(8)?,
                        ))
                    })
                    .map_err(sql)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql)
            })
            .await?;
        rows.into_iter()
            .map(
                |(
                    user_id,
                    timestamp,
                    flow_id,
                    step,
                    data,
                    error,
                    ip_address,
                    user_agent,
                    expires_at,
                )| {
                    Ok(FlowLogEntry {
                        step: FlowStep::parse(&step).ok_or_else(|| corrupt("step", &step))?,
                        data: serde_json::from_str(&data).map_err(|e| corrupt("data", e))?,
                        user_id,
                        timestamp,
                        flow_id,
                        error,
                        ip_address,
                        user_agent,
                        expires_at,
                    })
                },
            )
            .collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with_db(|db| {
            db.query_row(
                "SELECT count(*) FROM flow_logs WHERE user_id = ''",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
    }
}
