//! Backend assembly for both modes, in one place: which store, key provider and secret
//! source the settings ask for, opened (and, in embedded mode, created) here.
//!
//! - embedded: everything under `AXNT_DATA_DIR` — the SQLite file, the master key, the
//!   state key and, when none is configured, a generated API key;
//! - aws: the DynamoDB tables (flow-log writes buffered off the request path), KMS data
//!   keys behind a bounded cache, and the Secrets Manager secret.

use std::path::Path;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::StartupError;
use crate::aws::sdk_config;
use crate::callers::{ApiKey, CallerList};
use crate::config::{Backend, DataKeySettings, Settings};
use crate::crypto::cache::{CacheLimits, CachingKeyProvider};
use crate::crypto::kms::KmsKeyProvider;
use crate::crypto::local::{LocalKeyProvider, load_or_create_key_file, write_private_file};
use crate::crypto::{KeyProvider, SecretKey, random_token};
use crate::secrets::secrets_manager::SecretsManagerSource;
use crate::secrets::{
    ClientCredentials, ClientOverride, SecretSource, ServiceSecrets, StaticSecrets,
};
use crate::store::buffered::BufferedFlowLog;
use crate::store::dynamodb::{DynamoStore, Settler};
use crate::store::embedded::EmbeddedStore;
use crate::store::{FlowLog, TokenStore};

/// The storage, key and secret layers for one backend.
pub struct Backends {
    pub tokens: Arc<dyn TokenStore>,
    pub flow_log: Arc<dyn FlowLog>,
    /// The flow-log store itself, for the audit trail, which has a queue of its own
    /// that never drops (aws mode's `flow_log` drops when its queue is full).
    pub(crate) audit_log: Arc<dyn FlowLog>,
    pub keys: Arc<dyn KeyProvider>,
    pub secrets: Arc<dyn SecretSource>,
    /// The OAuth client of each provider whose client is not the service secret's
    /// (`google`'s is): its settings, or its own Secrets Manager secret.
    pub(crate) client_sources: Vec<ClientSource>,
    /// Seals flow state; every instance must share it.
    pub(crate) state_key: Option<SecretKey>,
    /// The state key before a rotation: still opens what it sealed.
    pub(crate) previous_state_key: Option<SecretKey>,
    /// Callers accepted besides the secret's (settings, the data directory's key).
    pub(crate) callers: CallerList,
    /// What `setup` created, for its report.
    pub(crate) created: Vec<String>,
    /// Embedded mode's store, whose expired rows and flow-log items the service
    /// deletes itself (in aws mode DynamoDB's TTL does it).
    pub(crate) expiring: Option<Arc<EmbeddedStore>>,
    /// aws mode's event writes still to settle, closed at shutdown (see
    /// `store::dynamodb`).
    pub(crate) settler: Option<Arc<Settler>>,
}

impl Backends {
    /// Opens (creating what is missing) the backends the settings name.
    pub async fn open(settings: &Settings) -> Result<Self, StartupError> {
        match settings.backend {
            Backend::Embedded => embedded(settings),
            Backend::Aws => aws(settings).await,
        }
    }
}

fn data_dir_error(path: &Path, e: impl std::fmt::Display) -> StartupError {
    StartupError::DataDir {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Embedded mode: everything lives under `AXNT_DATA_DIR`, created on first use.
fn embedded(settings: &Settings) -> Result<Backends, StartupError> {
    let dir = &settings.data_dir;
    let mut created = Vec::new();
    if !dir.exists() {
        created.push(format!("data directory {}", dir.display()));
    }
    create_private_dir(dir).map_err(|e| data_dir_error(dir, e))?;
    let db_path = dir.join("axnt-oauth.db");
    if !db_path.exists() {
        created.push(format!("database {}", db_path.display()));
    }
    let store = Arc::new(EmbeddedStore::open(&db_path)?);

    let master_path = dir.join(crate::crypto::MASTER_KEY_FILE);
    let (keys, new_master) = LocalKeyProvider::load_or_create(&master_path)?;
    if new_master {
        created.push(format!("master key {} (mode 0600)", master_path.display()));
    }

    let state_key = match settings.secrets.state_key.clone() {
        Some(key) => key,
        None => {
            let path = dir.join("state.key");
            let (key, new) = load_or_create_key_file(&path)?;
            if new {
                created.push(format!("state key {} (mode 0600)", path.display()));
            }
            key
        }
    };

    let mut callers = settings.secrets.api_keys.clone();
    if callers.is_empty() {
        let path = dir.join("api-key");
        let (key, new) = load_or_create_api_key(&path)?;
        if new {
            created.push(format!("API key {} (mode 0600)", path.display()));
            tracing::info!(path = %path.display(), "no AXNT_API_KEYS configured: generated an API key into this file");
        } else {
            tracing::info!(path = %path.display(), "no AXNT_API_KEYS configured: using the API key in this file");
        }
        callers.keys.push(key);
    }

    let clients = client_override(settings);
    let secrets = StaticSecrets::new(
        ServiceSecrets {
            client: clients.current,
            other_clients: clients.others,
            ..ServiceSecrets::default()
        },
        "the settings",
    );
    Ok(Backends {
        tokens: store.clone(),
        flow_log: store.clone(),
        audit_log: store.clone(),
        expiring: Some(store),
        settler: None,
        // The same data-key cache as KMS's: a read unwraps no data key it unwrapped
        // recently, and a burst of writes shares one data key.
        keys: Arc::new(CachingKeyProvider::new(
            Arc::new(keys),
            cache_limits(&settings.data_key),
        )),
        secrets: Arc::new(secrets),
        client_sources: client_sources(settings, None),
        state_key: Some(state_key),
        previous_state_key: settings.secrets.previous_state_key.clone(),
        callers,
        created,
    })
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// The data directory's API key (generated when missing), and whether it was created.
/// Held to the same rule as configured keys.
fn load_or_create_api_key(path: &Path) -> Result<(ApiKey, bool), StartupError> {
    let (text, created) = match std::fs::read_to_string(path) {
        Ok(text) => (Zeroizing::new(text), false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Zeroizing::new(random_token(32));
            write_private_file(path, key.as_bytes()).map_err(|e| data_dir_error(path, e))?;
            (key, true)
        }
        Err(e) => return Err(data_dir_error(path, e)),
    };
    let key = ApiKey::parse(text.trim()).map_err(|e| data_dir_error(path, e))?;
    Ok((key, created))
}

/// The data-key cache's bounds from `AXNT_DATA_KEY_*` (mapped here, where backends
/// are wired, so that `crypto` needs nothing of the settings).
fn cache_limits(settings: &DataKeySettings) -> CacheLimits {
    CacheLimits {
        max_uses: settings.max_uses,
        max_age: settings.max_age,
        decrypted_entries: settings.cache_entries,
        decrypted_ttl: settings.cache_ttl,
    }
}

/// `google`'s clients from settings (`AXNT_GOOGLE_CLIENT_ID`/`_SECRET`,
/// `AXNT_GOOGLE_CLIENTS`), which win over the service secret's.
pub(super) fn client_override(settings: &Settings) -> ClientOverride {
    settings
        .providers
        .iter()
        .find(|entry| entry.name == "google")
        .and_then(|entry| entry.client_override().ok())
        .unwrap_or_else(|| ClientOverride {
            current: match (&settings.secrets.client_id, &settings.secrets.client_secret) {
                (Some(id), Some(secret)) => Some(ClientCredentials {
                    client_id: id.clone(),
                    client_secret: secret.clone(),
                }),
                _ => None,
            },
            others: Vec::new(),
        })
}

/// Where each provider but `google` finds its OAuth clients: its `SECRET_ID` secret
/// (aws mode) with its settings' clients over it, as `google`'s settings are over the
/// service secret; else its settings alone. A provider with neither has no client:
/// its flows answer `provider_not_configured`.
fn client_sources(settings: &Settings, aws: Option<&aws_config::SdkConfig>) -> Vec<ClientSource> {
    settings
        .providers
        .iter()
        .filter(|entry| entry.name != "google")
        .map(|entry| {
            // Checked when the settings were loaded.
            let over = entry.client_override().unwrap_or_default();
            let source: Arc<dyn SecretSource> = match (aws, &entry.secret_id) {
                (Some(config), Some(secret_id)) => {
                    Arc::new(SecretsManagerSource::new(config, secret_id))
                }
                _ => Arc::new(StaticSecrets::new(
                    ServiceSecrets::default(),
                    format!(
                        "the settings {}, {} and {}",
                        entry.setting("client_id"),
                        entry.setting("client_secret"),
                        entry.setting("clients")
                    ),
                )),
            };
            ClientSource {
                provider: entry.name.clone(),
                source,
                over,
            }
        })
        .collect()
}

/// Where one provider's OAuth clients are.
pub(crate) struct ClientSource {
    pub(crate) provider: String,
    pub(crate) source: Arc<dyn SecretSource>,
    /// Its settings' clients, which win over the source's.
    pub(crate) over: ClientOverride,
}

/// KMS without the data-key cache, for `check`'s round trip (which must reach KMS).
pub async fn uncached_key_provider(settings: &Settings) -> Arc<dyn KeyProvider> {
    let config = sdk_config(settings).await;
    Arc::new(KmsKeyProvider::new(&config, &settings.aws.kms_key_id))
}

/// aws mode's backends: DynamoDB tables (flow-log writes buffered off the request
/// path), KMS data keys behind a bounded cache, and the Secrets Manager secret.
///
/// Nothing is called here: a wrong table, key or secret shows in `/readyz`, `check`,
/// and (for the secret, read once at start-up) as a start-up error naming it.
async fn aws(settings: &Settings) -> Result<Backends, StartupError> {
    let config = sdk_config(settings).await;
    if config.region().is_none() {
        return Err(StartupError::Aws(
            "no AWS region: set AWS_REGION (or a profile's region)".into(),
        ));
    }
    let store = Arc::new(DynamoStore::new(
        &config,
        &settings.aws.tokens_table,
        &settings.aws.logs_table,
        &settings.aws.events_table,
    ));
    let flow_log = BufferedFlowLog::spawn(
        store.clone(),
        settings.flow_log.buffer,
        settings.flow_log.write_concurrency,
    );
    let kms = Arc::new(KmsKeyProvider::new(&config, &settings.aws.kms_key_id));
    let keys = CachingKeyProvider::new(kms, cache_limits(&settings.data_key));
    let secrets = SecretsManagerSource::new(&config, &settings.aws.secret_id);
    let state_key = settings.secrets.state_key.clone();
    Ok(Backends {
        audit_log: store.clone(),
        settler: Some(store.settler()),
        tokens: store,
        flow_log: Arc::new(flow_log),
        keys: Arc::new(keys),
        secrets: Arc::new(secrets),
        client_sources: client_sources(settings, Some(&config)),
        state_key,
        previous_state_key: settings.secrets.previous_state_key.clone(),
        callers: settings.secrets.api_keys.clone(),
        created: Vec::new(),
        expiring: None,
    })
}
