//! Client credentials, the state key and the callers the secret names: where they come from and how a
//! rotated value is picked up.
//!
//! A [`SecretSource`] loads them (settings in embedded mode; Secrets Manager in aws
//! mode). [`SecretsCache`] holds the current value, re-reads it periodically and on
//! demand (after the provider answers `invalid_client`, at most once per interval), so a
//! rotation needs no restart.

pub mod secrets_manager;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::RwLock;
use secrecy::SecretString;
use serde::Deserialize;
use tokio::sync::{Mutex, Notify};

use crate::callers::{CallerEntry, CallerList, InvalidCallerEntry};
use crate::crypto::SecretKey;
use crate::jobs::{self, Jobs, Schedule};

/// An OAuth client's id and secret.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: SecretString,
}

/// An OAuth client in a list (`clients` in a secret, `AXNT_<NAME>_CLIENTS`):
/// `{"client_id", "client_secret", "current"}`. One may be `current`: new links use it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    client_id: String,
    client_secret: SecretString,
    #[serde(default)]
    current: bool,
}

/// The current client (from a pair of fields, or the list entry marked `current`)
/// and the others of `listed`; an error names what is wrong, never a secret.
pub(crate) fn client_set(
    pair: Option<ClientCredentials>,
    listed: Vec<ClientEntry>,
) -> Result<(Option<ClientCredentials>, Vec<ClientCredentials>), String> {
    use secrecy::ExposeSecret;
    if listed.iter().filter(|e| e.current).count() > 1 {
        return Err("more than one client is marked current".into());
    }
    let mut all: Vec<(ClientCredentials, bool)> = Vec::with_capacity(listed.len() + 1);
    for entry in listed {
        if entry.client_id.trim().is_empty() || entry.client_secret.expose_secret().is_empty() {
            return Err("a client's client_id or client_secret is empty".into());
        }
        if all.iter().any(|(c, _)| c.client_id == entry.client_id) {
            return Err(format!("client {} is listed twice", entry.client_id));
        }
        all.push((
            ClientCredentials {
                client_id: entry.client_id,
                client_secret: entry.client_secret,
            },
            entry.current,
        ));
    }
    let marked = all.iter().position(|(_, current)| *current);
    let (current, others) = match (pair, marked) {
        (Some(pair), Some(i)) => {
            let current = all.remove(i).0;
            let mut others = vec![pair];
            others.extend(all.into_iter().map(|(c, _)| c));
            (Some(current), others)
        }
        (Some(pair), None) => (Some(pair), all.into_iter().map(|(c, _)| c).collect()),
        (None, Some(i)) => {
            let current = all.remove(i).0;
            (Some(current), all.into_iter().map(|(c, _)| c).collect())
        }
        (None, None) => {
            let mut clients = all.into_iter().map(|(c, _)| c);
            (clients.next(), clients.collect())
        }
    };
    let others: Vec<ClientCredentials> = others
        .into_iter()
        .filter(|c| {
            current
                .as_ref()
                .is_none_or(|cur| cur.client_id != c.client_id)
        })
        .collect();
    Ok((current, others))
}

impl ServiceSecrets {
    /// Every client: the current one first, then the others.
    pub(crate) fn clients(&self) -> impl Iterator<Item = &ClientCredentials> {
        self.client.iter().chain(&self.other_clients)
    }

    /// The client of id `id`, if it is one of these.
    pub(crate) fn client_of(&self, id: &str) -> Option<&ClientCredentials> {
        self.clients().find(|c| c.client_id == id)
    }
}

/// Clients from settings, which win over a source's: the current one (replacing the
/// source's) and others (added to the source's, replacing any of the same id).
#[derive(Debug, Clone, Default)]
pub struct ClientOverride {
    pub current: Option<ClientCredentials>,
    pub others: Vec<ClientCredentials>,
}

/// Everything secret a source can provide.
#[derive(Debug, Clone, Default)]
pub struct ServiceSecrets {
    /// The current OAuth client: new links use it.
    pub client: Option<ClientCredentials>,
    /// The provider's other clients: connections made with them refresh and revoke
    /// with them.
    pub other_clients: Vec<ClientCredentials>,
    pub state_key: Option<SecretKey>,
    /// The state key before a rotation: opens, never seals.
    pub previous_state_key: Option<SecretKey>,
    /// The callers the secret names (`api_keys` and `callers`), with those of the
    /// settings once installed.
    pub(crate) callers: CallerList,
    /// `webhook_secret`: signs webhook deliveries (`AXNT_WEBHOOK_SECRET` overrides it).
    pub webhook_secret: Option<crate::crypto::WebhookSecret>,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The secret is readable but not what we expect; names the field.
    #[error("secret {secret} is malformed: {reason}")]
    Malformed { secret: String, reason: String },
    /// The secret does not exist.
    #[error("secret {0} not found")]
    NotFound(String),
    /// We may not read it.
    #[error("access denied reading secret {secret}: {reason}")]
    AccessDenied { secret: String, reason: String },
    /// The secret service failed, could not be reached, or asked us to slow down:
    /// passing, worth waiting for.
    #[error("secret service unavailable: {0}")]
    Unavailable(String),
    /// The request was refused for a reason waiting cannot mend (the secret's KMS key
    /// disabled, an invalid request, no region or credentials to sign with).
    #[error("secret service refused the request: {0}")]
    Rejected(String),
}

/// Loads the secrets.
#[async_trait]
pub trait SecretSource: Send + Sync {
    async fn load(&self) -> Result<ServiceSecrets, SecretError>;
    /// Names the source for messages (`settings`, `Secrets Manager secret axnt/google-oauth`).
    fn name(&self) -> String;
}

/// Secrets given directly (settings, files): they never change while we run.
pub(crate) struct StaticSecrets {
    secrets: ServiceSecrets,
    name: String,
}

impl StaticSecrets {
    pub(crate) fn new(secrets: ServiceSecrets, name: impl Into<String>) -> Self {
        Self {
            secrets,
            name: name.into(),
        }
    }
}

#[async_trait]
impl SecretSource for StaticSecrets {
    async fn load(&self) -> Result<ServiceSecrets, SecretError> {
        Ok(self.secrets.clone())
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

/// The JSON held by the secret: our own shape or the file Google's console downloads
/// (`{"web": {...}}` or `{"installed": {...}}`), with optional `state_key` and
/// `api_keys` beside the credentials.
#[derive(Deserialize)]
struct SecretDocument {
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    web: Option<ConsoleClient>,
    #[serde(default)]
    installed: Option<ConsoleClient>,
    #[serde(default)]
    state_key: Option<String>,
    #[serde(default)]
    previous_state_key: Option<String>,
    #[serde(default)]
    api_keys: Option<KeyList>,
    /// Named callers, as `AXNT_CALLERS` gives them.
    #[serde(default)]
    callers: Option<KeyList>,
    #[serde(default)]
    webhook_secret: Option<String>,
    #[serde(default)]
    clients: Vec<ClientEntry>,
}

/// `api_keys` as a JSON list, or as one comma-separated string (the form
/// `AXNT_API_KEYS` takes, which operators copy into the secret).
#[derive(Deserialize)]
#[serde(untagged)]
enum KeyList {
    List(Vec<CallerEntry>),
    Csv(String),
}

impl KeyList {
    /// Each entry: `key`, `name:key`, or `{"name", "apiKey" | "iamArn" | "oidc",
    /// "operations", "providers", "clients", "userIds"}`.
    fn into_callers(self) -> Result<CallerList, InvalidCallerEntry> {
        match self {
            Self::List(entries) => CallerList::from_entries(entries),
            Self::Csv(csv) => {
                CallerList::from_entries(csv.split(',').map(|k| CallerEntry::Text(k.to_string())))
            }
        }
    }
}

/// Why a secret's JSON did not parse, naming the field and what was expected but never
/// what was found: serde's own message quotes the value ("invalid type: string
/// \"k1,k2\"…"), which here is a key.
pub(crate) fn shape_error(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    let what = match e.inner().classify() {
        serde_json::error::Category::Data => {
            let message = e.inner().to_string();
            // serde says "invalid type: <what was found>, expected <what the type
            // wants>": the part after the last ", expected " comes from the type being
            // read. What was found may quote the value, ", expected " and all.
            match message.rsplit_once(", expected ") {
                Some((_, expected)) => {
                    let expected = expected.split(" at line ").next().unwrap_or_default();
                    format!("wrong type (expected {expected})")
                }
                None => "wrong type".to_string(),
            }
        }
        serde_json::error::Category::Eof => "the JSON ends early".to_string(),
        serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
            "not valid JSON".to_string()
        }
    };
    if path == "." || path.is_empty() {
        format!("not the expected JSON object: {what}")
    } else {
        format!("{path}: {what}")
    }
}

#[derive(Deserialize)]
struct ConsoleClient {
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// Parses a secret's `SecretString`. Errors name the field and never echo a value.
pub(crate) fn parse_secret_document(
    secret: &str,
    text: &str,
) -> Result<ServiceSecrets, SecretError> {
    let malformed = |reason: String| SecretError::Malformed {
        secret: secret.to_string(),
        reason,
    };
    let doc: SecretDocument =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text))
            .map_err(|e| malformed(shape_error(&e)))?;
    let console = doc.web.or(doc.installed);
    let client_id = doc
        .client_id
        .or_else(|| console.as_ref().and_then(|c| c.client_id.clone()));
    let client_secret = doc
        .client_secret
        .or_else(|| console.as_ref().and_then(|c| c.client_secret.clone()));
    let client = match (client_id, client_secret) {
        (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => {
            Some(ClientCredentials {
                client_id: id,
                client_secret: SecretString::from(secret),
            })
        }
        (None, None) => None,
        (Some(id), _) if id.is_empty() => return Err(malformed("client_id is empty".into())),
        (Some(_), _) => return Err(malformed("client_secret is missing or empty".into())),
        (None, Some(_)) => return Err(malformed("client_id is missing".into())),
    };
    let (client, other_clients) =
        client_set(client, doc.clients).map_err(|e| malformed(format!("clients: {e}")))?;
    let state_key = doc
        .state_key
        .map(|k| SecretKey::from_base64(&k).map_err(|e| malformed(format!("state_key: {e}"))))
        .transpose()?;
    let previous_state_key = doc
        .previous_state_key
        .map(|k| {
            SecretKey::from_base64(&k).map_err(|e| malformed(format!("previous_state_key: {e}")))
        })
        .transpose()?;
    let mut callers = doc
        .api_keys
        .map(KeyList::into_callers)
        .transpose()
        .map_err(|e| malformed(format!("api_keys: {e}")))?
        .unwrap_or_default();
    callers.extend(
        doc.callers
            .map(KeyList::into_callers)
            .transpose()
            .map_err(|e| malformed(format!("callers: {e}")))?
            .unwrap_or_default(),
    );
    crate::callers::check_names(&callers).map_err(|e| malformed(format!("callers: {e}")))?;
    let webhook_secret = doc
        .webhook_secret
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            crate::crypto::WebhookSecret::parse(&s)
                .map_err(|e| malformed(format!("webhook_secret: {e}")))
        })
        .transpose()?;
    Ok(ServiceSecrets {
        client,
        other_clients,
        state_key,
        previous_state_key,
        callers,
        webhook_secret,
    })
}

/// The current secrets, refreshed in the background.
pub struct SecretsCache {
    source: Arc<dyn SecretSource>,
    /// Settings that win over the source (`AXNT_GOOGLE_CLIENT_ID` and `_SECRET`,
    /// `AXNT_GOOGLE_CLIENTS`).
    client_override: ClientOverride,
    /// Callers from settings or the data directory, always accepted.
    extra_callers: CallerList,
    current: RwLock<Arc<ServiceSecrets>>,
    reload: Arc<Notify>,
    /// When the source was last re-read (attempted), behind the one lock every re-read
    /// takes: concurrent callers of [`Self::reload_throttled`] wait for the re-read in
    /// progress instead of starting their own.
    reloaded_at: Mutex<Option<Instant>>,
}

impl SecretsCache {
    /// Loads once; a failure here stops start-up.
    #[tracing::instrument(skip_all, fields(source = %source.name()))]
    pub async fn load(
        source: Arc<dyn SecretSource>,
        client_override: ClientOverride,
        extra_callers: CallerList,
    ) -> Result<Arc<Self>, SecretError> {
        let loaded = source.load().await?;
        let cache = Self {
            source,
            client_override,
            extra_callers,
            current: RwLock::new(Arc::new(ServiceSecrets::default())),
            reload: Arc::new(Notify::new()),
            reloaded_at: Mutex::new(None),
        };
        cache.install(loaded);
        Ok(Arc::new(cache))
    }

    fn install(&self, mut loaded: ServiceSecrets) {
        let over = &self.client_override;
        if let Some(c) = &over.current {
            // The source's current client, replaced here, keeps serving the
            // connections made with it.
            if let Some(replaced) = loaded.client.replace(c.clone())
                && replaced.client_id != c.client_id
            {
                loaded.other_clients.push(replaced);
            }
        }
        loaded
            .other_clients
            .retain(|c| !over.others.iter().any(|o| o.client_id == c.client_id));
        loaded.other_clients.extend(over.others.iter().cloned());
        let current_id = loaded.client.as_ref().map(|c| c.client_id.clone());
        loaded
            .other_clients
            .retain(|c| current_id.as_deref() != Some(c.client_id.as_str()));
        loaded.callers.extend(self.extra_callers.clone());
        *self.current.write() = Arc::new(loaded);
    }

    pub fn current(&self) -> Arc<ServiceSecrets> {
        Arc::clone(&self.current.read())
    }

    pub(crate) fn source_name(&self) -> String {
        self.source.name()
    }

    /// Re-reads the source now. On failure the previous value stays in use.
    #[tracing::instrument(skip_all, fields(source = %self.source.name()))]
    pub async fn reload(&self) -> Result<(), SecretError> {
        let mut reloaded_at = self.reloaded_at.lock().await;
        self.reload_locked(&mut reloaded_at).await
    }

    /// Re-reads the source unless a re-read (of any kind, failed or not) began less than
    /// `min_interval` ago; returns whether it re-read. A caller that waited for another's
    /// re-read gets `false` and finds that re-read's result in [`Self::current`].
    #[tracing::instrument(skip_all, fields(source = %self.source.name()))]
    pub(crate) async fn reload_throttled(
        &self,
        min_interval: Duration,
    ) -> Result<bool, SecretError> {
        let mut reloaded_at = self.reloaded_at.lock().await;
        if reloaded_at.is_some_and(|at| at.elapsed() < min_interval) {
            return Ok(false);
        }
        self.reload_locked(&mut reloaded_at).await.map(|()| true)
    }

    async fn reload_locked(&self, reloaded_at: &mut Option<Instant>) -> Result<(), SecretError> {
        // A failed re-read counts too: an outage of the secret store must not turn
        // every invalid_client into another call to it.
        *reloaded_at = Some(Instant::now());
        let loaded = self.source.load().await?;
        self.install(loaded);
        Ok(())
    }

    /// Asks the background refresher to re-read soon (after `invalid_client`).
    pub(crate) fn reload_soon(&self) {
        self.reload.notify_one();
    }

    /// Whether `presented` is one of the accepted API keys, compared in constant time.
    pub fn accepts_api_key(&self, presented: &crate::callers::ApiKey) -> bool {
        presented.is_one_of(&self.current().callers.keys)
    }

    /// Re-reads every `every`, and promptly (at most once per 10 s) when asked to.
    pub(crate) fn schedule_refresh(self: &Arc<Self>, jobs: &Jobs, every: Duration) {
        let cache = Arc::clone(self);
        jobs.run(
            "secret re-read",
            Schedule::every(every).woken_by(Arc::clone(&self.reload), Duration::from_secs(10)),
            jobs::from_fn(move |_stop| {
                let cache = Arc::clone(&cache);
                async move {
                    match cache.reload().await {
                        Ok(()) => tracing::debug!(source = %cache.source_name(), "secrets re-read"),
                        Err(e) => {
                            tracing::warn!(error = %e, "re-reading secrets failed; keeping the previous value")
                        }
                    }
                }
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A source that counts its loads and takes a while to answer.
    struct Counting(AtomicUsize);

    #[async_trait]
    impl SecretSource for Counting {
        async fn load(&self) -> Result<ServiceSecrets, SecretError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(ServiceSecrets::default())
        }

        fn name(&self) -> String {
            "counting".into()
        }
    }

    #[tokio::test]
    async fn concurrent_throttled_reloads_share_one_read_per_interval() {
        let source = Arc::new(Counting(AtomicUsize::new(0)));
        let cache = SecretsCache::load(
            source.clone(),
            ClientOverride::default(),
            CallerList::default(),
        )
        .await
        .expect("load");
        let interval = Duration::from_millis(300);
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let cache = Arc::clone(&cache);
                tokio::spawn(async move { cache.reload_throttled(interval).await })
            })
            .collect();
        let mut reloaded = 0;
        for caller in callers {
            if caller.await.expect("task").expect("reload") {
                reloaded += 1;
            }
        }
        assert_eq!(reloaded, 1, "one caller re-read, the others waited for it");
        assert_eq!(
            source.0.load(Ordering::SeqCst),
            2,
            "start-up load + one re-read"
        );
        tokio::time::sleep(interval).await;
        assert!(cache.reload_throttled(interval).await.expect("reload"));
        assert_eq!(
            source.0.load(Ordering::SeqCst),
            3,
            "again after the interval"
        );
    }

    #[test]
    fn a_secret_may_list_clients_one_of_them_current() {
        let doc = r#"{"client_id": "a", "client_secret": "sa",
            "clients": [{"client_id": "b", "client_secret": "sb", "current": true},
                        {"client_id": "c", "client_secret": "sc"}]}"#;
        let parsed = parse_secret_document("s", doc).expect("parses");
        assert_eq!(parsed.client.map(|c| c.client_id), Some("b".into()));
        let others: Vec<String> = parsed
            .other_clients
            .into_iter()
            .map(|c| c.client_id)
            .collect();
        assert_eq!(others, ["a", "c"]);

        let listed_only = r#"{"clients": [{"client_id": "b", "client_secret": "sb"},
                                          {"client_id": "c", "client_secret": "sc"}]}"#;
        let parsed = parse_secret_document("s", listed_only).expect("parses");
        assert_eq!(
            parsed.client.map(|c| c.client_id),
            Some("b".into()),
            "the first"
        );

        for bad in [
            r#"{"clients": [{"client_id": "b", "client_secret": "sb", "current": true},
                            {"client_id": "c", "client_secret": "sc", "current": true}]}"#,
            r#"{"clients": [{"client_id": "b", "client_secret": "top-secret-1"},
                            {"client_id": "b", "client_secret": "top-secret-2"}]}"#,
            r#"{"clients": [{"client_id": "b", "client_secret": "top-secret-1", "extra": 1}]}"#,
        ] {
            let e = parse_secret_document("s", bad)
                .expect_err("refused")
                .to_string();
            assert!(e.contains("clients"), "{e}");
            assert!(!e.contains("top-secret"), "never quoted: {e}");
        }
    }

    #[test]
    fn both_json_shapes_are_accepted() {
        let ours =
            parse_secret_document("s", r#"{"client_id":"a","client_secret":"b"}"#).expect("ours");
        assert_eq!(ours.client.map(|c| c.client_id), Some("a".into()));
        let console = parse_secret_document(
            "s",
            r#"{"web":{"client_id":"c","client_secret":"d","auth_uri":"https://x","redirect_uris":[]}}"#,
        )
        .expect("console");
        assert_eq!(console.client.map(|c| c.client_id), Some("c".into()));
    }

    #[test]
    fn malformed_secrets_name_the_field_without_its_value() {
        let e = parse_secret_document("s", r#"{"client_id":"a"}"#).expect_err("no secret");
        assert!(e.to_string().contains("client_secret"));
        let e = parse_secret_document(
            "s",
            r#"{"client_id":"a","client_secret":"b","state_key":"planted-state"}"#,
        )
        .expect_err("bad key");
        assert!(e.to_string().contains("state_key"));
        assert!(!e.to_string().contains("planted-state"));
        let e = parse_secret_document("s", "not json planted-value").expect_err("not json");
        assert!(!e.to_string().contains("planted-value"));
    }

    #[test]
    fn api_keys_may_be_a_list_or_a_comma_separated_string() {
        for text in [
            r#"{"api_keys":"planted-key-0000001, planted-key-0000002"}"#,
            r#"{"api_keys":["planted-key-0000001","planted-key-0000002"]}"#,
        ] {
            let keys = parse_secret_document("s", text)
                .expect("parses")
                .callers
                .keys;
            assert_eq!(keys.len(), 2, "{text}");
            for want in ["planted-key-0000001", "planted-key-0000002"] {
                let want = crate::callers::ApiKey::parse(want).expect("a well-formed key");
                assert!(want.is_one_of(&keys), "{text}");
            }
        }
    }

    #[test]
    fn a_secret_of_the_wrong_shape_is_never_quoted() {
        for text in [
            r#"{"api_keys":{"k":"planted-value-1"}}"#,
            r#"{"api_keys":["planted-value-1", 7]}"#,
            r#"{"client_id":"a","client_secret":["planted-value-1"]}"#,
            r#"{"client_id":"a","client_secret":"planted-value-1","state_key":5}"#,
            r#"{"web":"planted-value-1"}"#,
            r#"["planted-value-1"]"#,
            r#"{"client_id":"planted-value-1""#,
            // serde's message is cut at ", expected ": a value holding those words
            // must not lend its tail to the message (found by the property tests).
            r#"{"web":"planted-value-0, expected planted-value-1"}"#,
            r#""planted-value-0, expected planted-value-1""#,
            r#"{"api_keys":["a", {"x":"planted-value-0, expected planted-value-1"}]}"#,
        ] {
            let e = parse_secret_document("s", text)
                .expect_err(text)
                .to_string();
            assert!(!e.contains("planted-value-1"), "{e}");
            assert!(e.starts_with("secret s is malformed: "), "{e}");
        }
        let e = parse_secret_document(
            "s",
            r#"{"client_id":"a","client_secret":["planted-value-1"]}"#,
        )
        .expect_err("wrong type")
        .to_string();
        assert!(
            e.contains("client_secret: wrong type (expected a string)"),
            "{e}"
        );
    }
}
