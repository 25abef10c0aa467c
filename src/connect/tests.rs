//! The callback against a scripted provider, on a real store (the embedded SQLite
//! file): what is stored or held, what is refused, and the flow log each leaves.

use crate::oauth::provider::IdTokenProblem;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use secrecy::SecretString;

use super::callback::{Callback, Completed, Consent};
use super::*;
use crate::crypto::local::LocalKeyProvider;
use crate::crypto::{EnvelopeCipher, SecretKey};
use crate::ids::{FlowId, UserId};
use crate::oauth::flow::{FlowRules, FlowState};
use crate::oauth::provider::{GrantRefusal, ProviderError, ProviderTokens, Providers};
use crate::store::embedded::EmbeddedStore;
use crate::store::flow_log::ClientInfo;
use crate::store::{FlowStep, TokenStore, UserInfo};

const USER: &str = "u1";
const EMAIL: &str = "jane@example.com";

/// A provider whose token endpoint answers `exchange` once and whose ID tokens are
/// Jane's, counting the codes it was asked to redeem.
struct Scripted {
    exchange: Mutex<Option<Result<ProviderTokens, ProviderError>>>,
    exchanged: AtomicUsize,
}

impl Scripted {
    fn granting(scope: &str) -> Arc<Self> {
        Self::answering(Ok(ProviderTokens {
            access_token: SecretString::from("at-1"),
            refresh_token: Some(SecretString::from("rt-1")),
            id_token: Some(SecretString::from("id-token")),
            expires_in: Some(Duration::from_secs(3600)),
            scope: Some(scope.to_string()),
            token_type: "Bearer".into(),
            refresh_token_expires_in: None,
            client_id: None,
        }))
    }

    fn answering(answer: Result<ProviderTokens, ProviderError>) -> Arc<Self> {
        Arc::new(Self {
            exchange: Mutex::new(Some(answer)),
            exchanged: AtomicUsize::new(0),
        })
    }
}

#[async_trait]
impl Consent for Scripted {
    fn name(&self) -> &str {
        "google"
    }

    fn requested_scopes(&self, extra_scopes: &[String]) -> Vec<String> {
        let mut scopes: Vec<String> = ["openid", "email", "profile"].map(String::from).into();
        scopes.extend(extra_scopes.iter().cloned());
        scopes
    }

    async fn exchange_code(
        &self,
        _code: &str,
        _pkce_verifier: &str,
        _redirect_uri: &str,
        _client: Option<&str>,
    ) -> Result<ProviderTokens, ProviderError> {
        self.exchanged.fetch_add(1, Ordering::SeqCst);
        self.exchange
            .lock()
            .take()
            .unwrap_or_else(|| Err(ProviderError::InvalidGrant(GrantRefusal::ExpiredOrRevoked)))
    }

    fn account_step(&self) -> FlowStep {
        FlowStep::IdTokenVerified
    }

    async fn account(
        &self,
        tokens: &ProviderTokens,
        _nonce: &str,
        _client: Option<&str>,
    ) -> Result<UserInfo, ProviderError> {
        if tokens.id_token.is_none() {
            return Err(ProviderError::IdToken(IdTokenProblem::Missing));
        }
        Ok(UserInfo {
            sub: "sub-jane".into(),
            email: Some(EMAIL.into()),
            email_verified: Some(true),
            ..UserInfo::default()
        })
    }
}

struct World {
    _dir: tempfile::TempDir,
    store: Arc<dyn TokenStore>,
    flow_log: Arc<FlowRecorder>,
    connect: Arc<ConnectService>,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let embedded = Arc::new(EmbeddedStore::open(&dir.path().join("t.db")).expect("store"));
        let store: Arc<dyn TokenStore> = Arc::clone(&embedded) as _;
        let keys = Arc::new(LocalKeyProvider::new(SecretKey::generate()));
        let cipher = Arc::new(EnvelopeCipher::new(keys, "tokens"));
        let flow_log = Arc::new(FlowRecorder::new(embedded, Duration::from_secs(3600)));
        let tokens = Arc::new(TokenService::new(
            Arc::clone(&store),
            cipher,
            Arc::new(Providers::new(Vec::new())),
            Arc::clone(&flow_log),
            crate::tokens::refresh::tests::policy(),
        ));
        let settings = Settings::load(None, Vec::new()).expect("default settings");
        let connect = Arc::new(ConnectService::new(
            tokens,
            Arc::clone(&flow_log),
            Arc::new(StateSealer::new(SecretKey::generate())),
            Arc::new(settings),
        ));
        Self {
            _dir: dir,
            store,
            flow_log,
            connect,
        }
    }

    async fn finish(
        &self,
        provider: &Arc<Scripted>,
        rules: FlowRules,
        callback: Callback,
    ) -> (FlowId, Result<Completed, ConnectError>) {
        let flow_id = FlowId::new();
        let flow = FlowState {
            user_id: UserId::parse(USER).expect("valid"),
            provider: "google".into(),
            pkce_verifier: "verifier".into(),
            nonce: "nonce".into(),
            return_to: None,
            expires_at: chrono::Utc::now().timestamp() + 600,
            flow_id: flow_id.clone(),
            binding_hash: String::new(),
            rules,
        };
        let client = ClientInfo {
            ip_address: None,
            user_agent: None,
            caller: None,
        };
        let provider: Arc<dyn Consent> = Arc::clone(provider) as _;
        let done = self.connect.finish(provider, flow, callback, client).await;
        (flow_id, done)
    }

    /// Whether the user has a connection.
    async fn connected(&self) -> bool {
        self.store.get(USER, "google").await.expect("get").is_some()
    }

    /// The flow's last step is its failure, with `code`.
    async fn ended_in_failure(&self, flow_id: &str, code: &str) {
        let steps = self.steps(flow_id).await;
        assert_eq!(
            steps.last(),
            Some(&(FlowStep::Failed, Some(code.to_string()))),
            "{steps:?}"
        );
    }

    /// The flow's steps, oldest first.
    async fn steps(&self, flow_id: &str) -> Vec<(FlowStep, Option<String>)> {
        let mut entries = self
            .flow_log
            .log()
            .list(USER, 100, None)
            .await
            .expect("flow log");
        entries.retain(|e| e.flow_id == flow_id);
        entries.reverse();
        entries
            .into_iter()
            .map(|e| {
                (
                    e.step,
                    e.data
                        .get("code")
                        .and_then(|c| c.as_str())
                        .map(String::from),
                )
            })
            .collect()
    }
}

fn code() -> Callback {
    Callback {
        code: Some("the-code".into()),
        provider_error: None,
    }
}

#[tokio::test]
async fn a_granted_code_is_stored_and_every_step_logged() {
    let world = World::new();
    let provider = Scripted::granting("openid email profile");
    let (flow_id, done) = world.finish(&provider, FlowRules::default(), code()).await;
    assert!(
        matches!(&done, Ok(Completed::Stored { email }) if email.as_deref() == Some(EMAIL)),
        "{:?}",
        done.as_ref().err()
    );
    let row = world
        .store
        .get(USER, "google")
        .await
        .expect("get")
        .expect("stored");
    assert!(row.is_active);
    assert_eq!(row.user_info.sub, "sub-jane");
    let steps: Vec<FlowStep> = world
        .steps(&flow_id)
        .await
        .into_iter()
        .map(|s| s.0)
        .collect();
    assert_eq!(
        steps,
        [
            FlowStep::CallbackReceived,
            FlowStep::StateVerified,
            FlowStep::CodeExchanged,
            FlowStep::IdTokenVerified,
            FlowStep::TokensStored,
            FlowStep::Completed,
        ]
    );
}

#[tokio::test]
async fn with_confirmation_the_grant_is_held_not_stored() {
    let world = World::new();
    let provider = Scripted::granting("openid email profile");
    let rules = FlowRules {
        require_confirmation: true,
        ..FlowRules::default()
    };
    let (flow_id, done) = world.finish(&provider, rules, code()).await;
    assert!(matches!(done, Ok(Completed::Held { .. })));
    assert!(!world.connected().await, "nothing stored");
    assert!(
        world
            .store
            .get_pending(&flow_id)
            .await
            .expect("get")
            .is_some()
    );
    let steps = world.steps(&flow_id).await;
    assert_eq!(
        steps.last().map(|s| s.0),
        Some(FlowStep::AwaitingConfirmation)
    );
}

#[tokio::test]
async fn another_account_than_the_pinned_one_is_refused_and_nothing_stored() {
    let world = World::new();
    let provider = Scripted::granting("openid email profile");
    let rules = FlowRules {
        expected_email: Some("someone.else@example.com".into()),
        ..FlowRules::default()
    };
    let (flow_id, done) = world.finish(&provider, rules, code()).await;
    assert!(matches!(done, Err(ConnectError::AccountNotAllowed)));
    assert!(!world.connected().await, "nothing stored");
    world
        .ended_in_failure(&flow_id, "account_not_allowed")
        .await;
}

#[tokio::test]
async fn a_partial_grant_refused_by_policy_stores_nothing() {
    let world = World::new();
    let provider = Scripted::granting("openid email profile");
    let rules = FlowRules {
        scopes: vec!["https://www.googleapis.com/auth/drive.readonly".into()],
        partial_grant: Some(crate::config::PartialGrant::Reject),
        ..FlowRules::default()
    };
    let (_, done) = world.finish(&provider, rules, code()).await;
    assert!(
        matches!(&done, Err(ConnectError::ScopesNotGranted { missing }) if missing == &["https://www.googleapis.com/auth/drive.readonly"]),
        "{:?}",
        done.as_ref().err()
    );
    assert!(!world.connected().await, "nothing stored");
}

#[tokio::test]
async fn a_provider_error_ends_the_flow_before_any_code_is_redeemed() {
    let world = World::new();
    let provider = Scripted::granting("openid email profile");
    let callback = Callback {
        code: None,
        provider_error: Some("access_denied".into()),
    };
    let (flow_id, done) = world
        .finish(&provider, FlowRules::default(), callback)
        .await;
    assert!(matches!(done, Err(ConnectError::AuthorizationDenied(ref c)) if c == "access_denied"));
    assert_eq!(provider.exchanged.load(Ordering::SeqCst), 0);
    let steps = world.steps(&flow_id).await;
    assert_eq!(steps.last().map(|s| s.0), Some(FlowStep::Failed));
}

#[tokio::test]
async fn a_code_the_provider_refuses_ends_as_code_rejected() {
    let world = World::new();
    let provider = Scripted::answering(Err(ProviderError::InvalidGrant(
        GrantRefusal::ExpiredOrRevoked,
    )));
    let (flow_id, done) = world.finish(&provider, FlowRules::default(), code()).await;
    assert!(matches!(done, Err(ConnectError::CodeRejected)));
    assert!(!world.connected().await, "nothing stored");
    world.ended_in_failure(&flow_id, "code_rejected").await;
}

/// The failure reasons registered at start-up are the codes a flow can fail with, so
/// a flow's failure is counted under one of them.
#[test]
fn every_registered_failure_reason_is_a_flow_failure_code() {
    use crate::crypto::CryptoError;
    use crate::oauth::provider::IdTokenProblem;
    use crate::store::StoreError;
    use crate::tokens::TokenError;
    let s = String::new;
    let failures = [
        ConnectError::InvalidSession,
        ConnectError::SessionExpired,
        ConnectError::SessionUsed,
        ConnectError::InvalidState,
        ConnectError::StateExpired,
        ConnectError::BrowserMismatch,
        ConnectError::AuthorizationDenied("access_denied".into()),
        ConnectError::AuthorizationDenied("server_error".into()),
        ConnectError::IdTokenInvalid(IdTokenProblem::Expired),
        ConnectError::CodeRejected,
        ConnectError::AccountNotAllowed,
        ConnectError::ScopesNotGranted { missing: vec![] },
        ConnectError::Provider(ProviderError::Unavailable(s())),
        ConnectError::Provider(ProviderError::Rejected { error: s() }),
        ConnectError::Provider(ProviderError::NotConfigured(s())),
        ConnectError::Token(TokenError::Store(StoreError::Unavailable(s()))),
        ConnectError::Token(TokenError::Store(StoreError::Throttled(s()))),
        ConnectError::Token(TokenError::Crypto(CryptoError::Unavailable(s()))),
        ConnectError::Internal(s()),
    ];
    let codes: Vec<&str> = failures.iter().map(ConnectError::code).collect();
    for reason in super::FLOW_FAILURE_REASONS {
        assert!(
            codes.contains(&reason),
            "{reason} is no flow failure's code"
        );
    }
}
