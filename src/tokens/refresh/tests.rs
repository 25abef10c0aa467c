//! The lease state machine against a scripted token endpoint, on a real store (the
//! embedded SQLite file); two `Refresher`s on one file are two instances.

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;

use secrecy::ExposeSecret;

use super::*;
use crate::crypto::SecretKey;
use crate::crypto::local::LocalKeyProvider;
use crate::store::embedded::EmbeddedStore;
use crate::store::{RefreshState, UserInfo};

/// Answers in order (the last one repeats), counting what was presented.
struct Scripted {
    answers: Mutex<VecDeque<(Duration, Result<(), ProviderError>)>>,
    presented: Mutex<Vec<String>>,
    issued: AtomicUsize,
    reuse: RefreshReuse,
}

impl Scripted {
    fn new(reuse: RefreshReuse, answers: Vec<(Duration, Result<(), ProviderError>)>) -> Arc<Self> {
        Arc::new(Self {
            answers: Mutex::new(answers.into()),
            presented: Mutex::new(Vec::new()),
            issued: AtomicUsize::new(0),
            reuse,
        })
    }

    fn calls(&self) -> usize {
        self.presented.lock().len()
    }
}

#[async_trait]
impl TokenEndpoint for Scripted {
    async fn redeem(
        &self,
        refresh_token: &SecretString,
        _client: Option<&str>,
    ) -> Result<ProviderTokens, ProviderError> {
        self.presented
            .lock()
            .push(refresh_token.expose_secret().to_string());
        let (delay, answer) = {
            let mut answers = self.answers.lock();
            if answers.len() > 1 {
                answers.pop_front()
            } else {
                answers.front().cloned()
            }
        }
        .unwrap_or((Duration::ZERO, Ok(())));
        tokio::time::sleep(delay).await;
        answer?;
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(ProviderTokens {
            access_token: SecretString::from(format!("at-{n}")),
            refresh_token: self
                .reuse
                .rotates
                .then(|| SecretString::from(format!("rt-{n}"))),
            id_token: None,
            expires_in: Some(Duration::from_secs(3600)),
            scope: None,
            token_type: "Bearer".into(),
            refresh_token_expires_in: None,
            client_id: None,
        })
    }

    fn reuse(&self) -> RefreshReuse {
        self.reuse
    }

    fn lifetimes(&self) -> crate::oauth::grant::Lifetimes {
        crate::oauth::grant::Lifetimes::GOOGLE
    }
}

const ROTATING: RefreshReuse = RefreshReuse {
    rotates: true,
    grace: Duration::ZERO,
};
const GOOGLE: RefreshReuse = RefreshReuse {
    rotates: false,
    grace: Duration::ZERO,
};

pub(crate) fn policy() -> TokenPolicy {
    TokenPolicy {
        refresh_margin: Duration::from_secs(300),
        last_used_interval: Duration::from_secs(60),
        connection_ttl: Duration::from_secs(86_400),
        inactive_retention: Duration::from_secs(86_400),
        refresh_deadline: Duration::from_secs(2),
        refresh_wait: Duration::from_secs(3),
        background_refresh: None,
        lease_ttl: Duration::from_secs(3),
        takeover_grace: Duration::from_secs(2),
        refresh_cooldown: Duration::from_secs(30),
        circuit_failures: 0,
        circuit_open: Duration::from_secs(1),
        // These cases are about the flight and the lease: every read goes to the row.
        token_cache: Duration::ZERO,
        grant_rules: crate::oauth::grant::GrantRules::default(),
        events: crate::events::EventRules::default(),
    }
}

struct World {
    _dir: tempfile::TempDir,
    store: Arc<dyn TokenStore>,
    cipher: Arc<EnvelopeCipher>,
    flow_log: Arc<FlowRecorder>,
}

impl World {
    /// A store holding `user`'s expired token with refresh token `rt-0`.
    async fn new() -> Self {
        Self::with_keys(Arc::new(LocalKeyProvider::new(SecretKey::generate()))).await
    }

    /// [`new`](Self::new), its tokens sealed by `keys`.
    async fn with_keys(keys: Arc<dyn crate::crypto::KeyProvider>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("t.db")).expect("store"));
        let cipher = Arc::new(EnvelopeCipher::new(keys, "tokens"));
        let flow_log = Arc::new(FlowRecorder::new(store.clone(), Duration::from_secs(60)));
        let world = Self {
            _dir: dir,
            store,
            cipher,
            flow_log,
        };
        let now = Utc::now();
        let set = TokenSet {
            access_token: "at-0".into(),
            refresh_token: Some("rt-0".into()),
            id_token: None,
            scope: None,
            token_type: "Bearer".into(),
            expires_at: now.timestamp(),
            issued_at: Some(now.timestamp() - 3600),
            refresh_token_expires_at: None,
            requested_scopes: Vec::new(),
            confirmation_code: None,
            client_id: None,
        };
        let row = Connection {
            user_id: "user".into(),
            provider: "p".into(),
            email: None,
            encrypted_tokens: set.seal(&world.cipher, "user", "p").await.expect("seal"),
            user_info: UserInfo::default(),
            created_at: now,
            updated_at: now,
            last_used: now,
            access_token_expires_at: set.expires_at,
            expires_at: now.timestamp() + 86_400,
            is_active: true,
            version: 1,
            refresh: RefreshState::default(),
            replaced_account: None,
            grant: Default::default(),
        };
        world.store.put(&row, None, &[]).await.expect("row");
        world
    }

    fn instance(&self, policy: TokenPolicy) -> Arc<Refresher> {
        self.instance_on(Arc::clone(&self.store), policy)
    }

    /// An instance reaching the store through `store` (e.g. a link a test can cut).
    fn instance_on(&self, store: Arc<dyn TokenStore>, policy: TokenPolicy) -> Arc<Refresher> {
        Arc::new(Refresher::new(
            store,
            Arc::clone(&self.cipher),
            Arc::clone(&self.flow_log),
            policy,
        ))
    }

    async fn row(&self) -> Connection {
        self.store
            .get("user", "p")
            .await
            .expect("get")
            .expect("row")
    }

    async fn stored_refresh_token(&self) -> Option<String> {
        let row = self.row().await;
        TokenSet::open(&self.cipher, &row)
            .await
            .expect("open")
            .refresh_token
            .clone()
    }
}

async fn read(r: &Arc<Refresher>, endpoint: &Arc<Scripted>) -> Outcome {
    let endpoint: Arc<dyn TokenEndpoint> = endpoint.clone();
    r.obtain(
        endpoint,
        "user",
        "p",
        Duration::from_secs(300),
        &ClientInfo::default(),
    )
    .await
}

fn access(outcome: &Outcome) -> String {
    match outcome {
        Ok(t) => t.access_token.expose_secret().to_string(),
        Err(e) => panic!("expected a token, got {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_redeem_once_and_store_the_rotated_token() {
    let world = World::new().await;
    let endpoint = Scripted::new(ROTATING, vec![(Duration::from_millis(300), Ok(()))]);
    let (a, b) = (world.instance(policy()), world.instance(policy()));
    let reads: Vec<_> = (0..20)
        .map(|i| {
            let (r, e) = (if i % 2 == 0 { &a } else { &b }, &endpoint);
            let (r, e) = (Arc::clone(r), Arc::clone(e));
            tokio::spawn(async move { read(&r, &e).await })
        })
        .collect();
    for read in reads {
        assert_eq!(access(&read.await.expect("task")), "at-1");
    }
    assert_eq!(endpoint.presented.lock().clone(), vec!["rt-0".to_string()]);
    assert_eq!(world.stored_refresh_token().await.as_deref(), Some("rt-1"));
    assert_eq!(world.row().await.refresh, RefreshState::default());
}

#[tokio::test]
async fn a_dropped_reader_does_not_stop_the_refresh() {
    let world = World::new().await;
    let endpoint = Scripted::new(ROTATING, vec![(Duration::from_millis(300), Ok(()))]);
    let a = world.instance(policy());
    let gave_up = tokio::time::timeout(Duration::from_millis(50), read(&a, &endpoint)).await;
    assert!(gave_up.is_err());
    assert_eq!(access(&read(&a, &endpoint).await), "at-1");
    assert_eq!(endpoint.calls(), 1);
    assert!(a.drain(Duration::from_secs(2)).await);
    assert_eq!(world.stored_refresh_token().await.as_deref(), Some("rt-1"));
}

#[tokio::test]
async fn a_live_lease_of_another_attempt_is_waited_for() {
    let world = World::new().await;
    let endpoint = Scripted::new(ROTATING, vec![(Duration::ZERO, Ok(()))]);
    let now_ms = Utc::now().timestamp_millis();
    world
        .store
        .acquire_lease(
            "user",
            "p",
            1,
            &RefreshLease::new("elsewhere", now_ms + 60_000),
            now_ms,
        )
        .await
        .expect("lease");
    let impatient = TokenPolicy {
        refresh_wait: Duration::from_millis(300),
        ..policy()
    };
    let a = world.instance(impatient);
    assert!(matches!(
        read(&a, &endpoint).await,
        Err(TokenError::RefreshBusy)
    ));
    assert_eq!(
        endpoint.calls(),
        0,
        "a live lease of another attempt is never redeemed over"
    );
}

#[tokio::test]
async fn only_unsent_or_refused_requests_are_retried_with_the_same_token() {
    let world = World::new().await;
    let endpoint = Scripted::new(
        ROTATING,
        vec![
            (
                Duration::ZERO,
                Err(ProviderError::Unavailable("refused".into())),
            ),
            (
                Duration::ZERO,
                Err(ProviderError::Unavailable("HTTP 503".into())),
            ),
            (Duration::ZERO, Ok(())),
        ],
    );
    let a = world.instance(policy());
    assert_eq!(access(&read(&a, &endpoint).await), "at-1");
    assert_eq!(endpoint.presented.lock().clone(), vec!["rt-0"; 3]);
}

#[tokio::test]
async fn a_lost_answer_is_not_retried_by_a_rotating_provider_and_names_the_death() {
    let world = World::new().await;
    let endpoint = Scripted::new(
        ROTATING,
        vec![
            (
                Duration::ZERO,
                Err(ProviderError::OutcomeUnknown("timed out".into())),
            ),
            (
                Duration::ZERO,
                Err(ProviderError::InvalidGrant(
                    crate::oauth::provider::GrantRefusal::Unspecified,
                )),
            ),
        ],
    );
    let no_cooldown = TokenPolicy {
        refresh_cooldown: Duration::ZERO,
        ..policy()
    };
    let a = world.instance(no_cooldown);
    let lost = read(&a, &endpoint).await;
    assert!(matches!(
        lost,
        Err(TokenError::Provider(ProviderError::OutcomeUnknown(_)))
    ));
    assert_eq!(endpoint.calls(), 1, "not presented again at once");
    assert!(world.row().await.refresh.unknown_since_ms.is_some());
    match read(&a, &endpoint).await {
        Err(TokenError::ReauthorizationRequired { cause }) => {
            assert_eq!(
                cause,
                crate::oauth::grant::Cause::RefreshOutcomeUnknown.code()
            )
        }
        other => panic!("expected 409, got {:?}", other.map(|_| ())),
    }
    let row = world.row().await;
    assert!(!row.is_active);
    assert_eq!(
        row.refresh.inactive_cause.as_deref(),
        Some(crate::oauth::grant::Cause::RefreshOutcomeUnknown.code())
    );
}

#[tokio::test]
async fn a_lost_answer_is_retried_where_the_token_survives_a_redeem() {
    let world = World::new().await;
    let endpoint = Scripted::new(
        GOOGLE,
        vec![
            (
                Duration::ZERO,
                Err(ProviderError::OutcomeUnknown("reset".into())),
            ),
            (Duration::ZERO, Ok(())),
        ],
    );
    let a = world.instance(policy());
    assert_eq!(access(&read(&a, &endpoint).await), "at-1");
    assert_eq!(endpoint.calls(), 2);
    assert_eq!(world.stored_refresh_token().await.as_deref(), Some("rt-0"));
}

#[tokio::test]
async fn a_failure_cools_the_connection_down_on_every_instance() {
    let world = World::new().await;
    let endpoint = Scripted::new(
        ROTATING,
        vec![(
            Duration::ZERO,
            Err(ProviderError::Unavailable("HTTP 500".into())),
        )],
    );
    let (a, b) = (world.instance(policy()), world.instance(policy()));
    assert!(matches!(
        read(&a, &endpoint).await,
        Err(TokenError::Provider(ProviderError::Unavailable(_)))
    ));
    let attempts = endpoint.calls();
    for r in [&a, &b] {
        match read(r, &endpoint).await {
            Err(TokenError::RefreshSuppressed {
                reason,
                retry_after_secs,
            }) => {
                assert_eq!(reason, "cooldown");
                assert!((1..=30).contains(&retry_after_secs));
            }
            other => panic!("expected a cooldown, got {:?}", other.map(|_| ())),
        }
    }
    assert_eq!(endpoint.calls(), attempts);
    assert_eq!(world.row().await.refresh.lease, None);
}

mod faults;
mod takeover;

/// A cold read is shared while it runs and forgotten once answered, or once its last
/// reader went away: nothing stays behind in the registry of reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_read_is_forgotten_when_answered_or_abandoned() {
    let world = World::new().await;
    let link = faults::Link::new(&world);
    let mut fresh = policy();
    fresh.refresh_margin = Duration::ZERO;
    let r = world.instance_on(link.clone(), fresh);
    let endpoint = Scripted::new(
        RefreshReuse {
            rotates: false,
            grace: Duration::ZERO,
        },
        vec![],
    );
    let key: Key = ("user".into(), "p".into());
    // Answered (the row as found: its token is due) and forgotten.
    let first = r.shared_read(&key, Duration::ZERO).await;
    assert!(first.is_ok(), "the row was read");
    assert!(r.reads.lock().is_empty(), "forgotten once answered");

    // Abandoned: two readers wait on a read that never answers, then both go away.
    link.set(faults::READS_HANG);
    let (a, b) = (Arc::clone(&r), Arc::clone(&r));
    let (ka, kb) = (key.clone(), key.clone());
    let first = tokio::spawn(async move { a.shared_read(&ka, Duration::ZERO).await.is_ok() });
    let second = tokio::spawn(async move { b.shared_read(&kb, Duration::ZERO).await.is_ok() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(r.reads.lock().len(), 1, "one read, shared");
    first.abort();
    let _ = first.await;
    assert_eq!(r.reads.lock().len(), 1, "still read for the other reader");
    second.abort();
    let _ = second.await;
    assert!(r.reads.lock().is_empty(), "forgotten with its last reader");
    assert_eq!(endpoint.calls(), 0);
}
