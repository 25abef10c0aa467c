//! The provider's state: grants, codes and tokens issued, the scripted behaviour, and
//! what was recorded. Behind a `std::sync::Mutex`, never held across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use url::Url;

use super::controls::{IdTokenTamper, RefreshBehaviour};
use super::records::{Authorization, TokenRequest};
use super::routes::RefreshChaos;
use super::signing::{IdTokenPlan, KeyMaterial, Keys};
use super::{Profile, ProviderConfig};

/// Lifetime of the ID tokens it signs, unless tampered with.
const ID_TOKEN_TTL_SECS: i64 = 3600;

pub(super) struct Shared {
    pub(super) issuer: String,
    /// Microsoft-like: the accounts' tenant.
    pub(super) tenant: Option<String>,
    pub(super) inner: Mutex<Inner>,
}

impl Shared {
    /// The `iss` of the ID tokens: the tenant's own issuer when Microsoft-like.
    pub(super) fn id_token_issuer(&self) -> String {
        match &self.tenant {
            Some(tenant) => format!("{}/{tenant}/v2.0", self.issuer),
            None => self.issuer.clone(),
        }
    }

    /// A panicking test thread must not turn every later request into a second panic.
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(super) struct Grant {
    pub(super) client_id: String,
    pub(super) scope: String,
    pub(super) profile: Profile,
    pub(super) revoked: bool,
    /// When the user consented, on the provider's clock.
    pub(super) granted_at: DateTime<Utc>,
    /// Time-limited access: when the refresh token stops working.
    pub(super) refresh_expires_at: Option<DateTime<Utc>>,
}

pub(super) struct AccessRecord {
    pub(super) grant: usize,
    pub(super) expires_at: DateTime<Utc>,
}

pub(super) struct RefreshRecord {
    pub(super) grant: usize,
    pub(super) valid: bool,
}

pub(super) struct Inner {
    pub(super) prefix: String,
    pub(super) counter: u64,
    pub(super) client_id: String,
    pub(super) client_secret: String,
    pub(super) past_client_secrets: Vec<String>,
    /// More registered clients (id, secret), beside the primary one.
    pub(super) extra_clients: Vec<(String, String)>,
    /// The client each revocation authenticated as, in order.
    pub(super) revocation_clients: Vec<Option<String>>,
    pub(super) redirect_uri: Option<String>,
    pub(super) profile: Profile,
    pub(super) keys: Keys,

    pub(super) access_token_ttl: i64,
    pub(super) omit_refresh_token_on_code: bool,
    pub(super) omit_refresh_token_on_refresh: bool,
    pub(super) rotate_refresh_tokens: bool,
    /// The refresh grant answers with an ID token too (as Google does for `openid`).
    pub(super) id_token_on_refresh: bool,
    pub(super) refresh_script: VecDeque<RefreshBehaviour>,
    pub(super) chaos: Option<RefreshChaos>,
    pub(super) spent_refresh_tokens_presented: usize,
    pub(super) token_failures: VecDeque<u16>,
    pub(super) tamper: IdTokenTamper,
    pub(super) deny: bool,
    pub(super) discovery_unavailable: bool,
    pub(super) unticked: Vec<String>,
    pub(super) refresh_token_lifetime: Option<i64>,
    pub(super) testing_mode: bool,
    pub(super) clock_offset: chrono::Duration,
    pub(super) revocation_unavailable: bool,
    pub(super) revocation_delay: std::time::Duration,
    /// The code grant is decided at once (the code is spent), then answered this late.
    pub(super) code_exchange_hold: std::time::Duration,
    pub(super) grant_limit: usize,

    pub(super) codes: HashMap<String, Authorization>,
    /// Grant made from each code exchanged, so a replayed code revokes it.
    pub(super) code_grants: HashMap<String, usize>,
    pub(super) grants: Vec<Grant>,
    pub(super) access_tokens: HashMap<String, AccessRecord>,
    pub(super) refresh_tokens: HashMap<String, RefreshRecord>,

    pub(super) token_requests: Vec<TokenRequest>,
    pub(super) refresh_count: usize,
    pub(super) code_exchange_count: usize,
    pub(super) jwks_fetches: usize,
    pub(super) discovery_fetches: usize,
    pub(super) revoked: Vec<String>,
    pub(super) issued_codes: Vec<String>,
    pub(super) issued_access_tokens: Vec<String>,
    pub(super) issued_refresh_tokens: Vec<String>,
    pub(super) issued_id_tokens: Vec<String>,
}

impl Inner {
    pub(super) fn new(prefix: &str, config: ProviderConfig) -> Self {
        let random = uuid::Uuid::new_v4().simple().to_string();
        Self {
            prefix: prefix.to_owned(),
            counter: 0,
            client_id: config
                .client_id
                .unwrap_or_else(|| format!("client-{prefix}.apps.googleusercontent.test")),
            client_secret: config
                .client_secret
                .unwrap_or_else(|| format!("secret-{prefix}-{random}")),
            past_client_secrets: Vec::new(),
            extra_clients: Vec::new(),
            revocation_clients: Vec::new(),
            redirect_uri: config.redirect_uri,
            profile: config
                .profile
                .unwrap_or_else(|| Profile::for_prefix(prefix)),
            keys: Keys {
                current: KeyMaterial::Provider,
                current_kid: format!("kid-{prefix}-0000"),
                previous: None,
            },
            access_token_ttl: 3600,
            omit_refresh_token_on_code: false,
            omit_refresh_token_on_refresh: true,
            rotate_refresh_tokens: false,
            id_token_on_refresh: false,
            refresh_script: VecDeque::new(),
            chaos: None,
            spent_refresh_tokens_presented: 0,
            token_failures: VecDeque::new(),
            tamper: IdTokenTamper::None,
            deny: false,
            discovery_unavailable: false,
            unticked: Vec::new(),
            refresh_token_lifetime: None,
            testing_mode: false,
            clock_offset: chrono::Duration::zero(),
            revocation_unavailable: false,
            revocation_delay: std::time::Duration::ZERO,
            code_exchange_hold: std::time::Duration::ZERO,
            grant_limit: 100,
            codes: HashMap::new(),
            code_grants: HashMap::new(),
            grants: Vec::new(),
            access_tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            token_requests: Vec::new(),
            refresh_count: 0,
            code_exchange_count: 0,
            jwks_fetches: 0,
            discovery_fetches: 0,
            revoked: Vec::new(),
            issued_codes: Vec::new(),
            issued_access_tokens: Vec::new(),
            issued_refresh_tokens: Vec::new(),
            issued_id_tokens: Vec::new(),
        }
    }

    /// The provider's clock: real time moved by [`FakeProvider::advance_clock`].
    pub(super) fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.clock_offset
    }

    /// Why the grant's refresh token no longer works at the provider's `now`, if it
    /// does not: time-limited access ran out, or the Testing status's 7 days passed for
    /// a grant holding more than the basic scopes.
    pub(super) fn grant_expired(&self, grant: usize) -> bool {
        let grant = &self.grants[grant];
        let now = self.now();
        let basic = grant.scope.split(' ').all(|s| {
            matches!(
                s,
                "openid"
                    | "email"
                    | "profile"
                    | "https://www.googleapis.com/auth/userinfo.email"
                    | "https://www.googleapis.com/auth/userinfo.profile"
            )
        });
        grant.refresh_expires_at.is_some_and(|at| now >= at)
            || (self.testing_mode && !basic && now - grant.granted_at >= chrono::Duration::days(7))
    }

    pub(super) fn next_id(&mut self, kind: &str) -> String {
        self.counter += 1;
        format!("{kind}-{}-{:04}", self.prefix, self.counter)
    }

    pub(super) fn redirect_uri_allowed(&self, uri: &Url) -> bool {
        match &self.redirect_uri {
            Some(allowed) => {
                uri.as_str() == allowed || Url::parse(allowed).ok().as_ref() == Some(uri)
            }
            None => uri.scheme() == "http" && uri.host_str() == Some("127.0.0.1"),
        }
    }

    fn issue_access_token(&mut self, grant: usize) -> String {
        let token = self.next_id("at");
        let expires_at = Utc::now() + chrono::Duration::seconds(self.access_token_ttl);
        self.access_tokens
            .insert(token.clone(), AccessRecord { grant, expires_at });
        self.issued_access_tokens.push(token.clone());
        token
    }

    pub(super) fn issue_refresh_token(&mut self, grant: usize) -> String {
        let token = self.next_id("rt");
        self.refresh_tokens
            .insert(token.clone(), RefreshRecord { grant, valid: true });
        self.issued_refresh_tokens.push(token.clone());
        self.enforce_grant_limit(grant);
        token
    }

    /// Past the limit of live grants (with a refresh token) for one account and client,
    /// the oldest is ended, as Google does.
    fn enforce_grant_limit(&mut self, newest: usize) {
        let (client, sub) = (
            self.grants[newest].client_id.clone(),
            self.grants[newest].profile.sub.clone(),
        );
        let mut live: Vec<usize> = self
            .grants
            .iter()
            .enumerate()
            .filter(|(i, g)| {
                !g.revoked
                    && g.client_id == client
                    && g.profile.sub == sub
                    && self
                        .refresh_tokens
                        .values()
                        .any(|r| r.grant == *i && r.valid)
            })
            .map(|(i, _)| i)
            .collect();
        live.sort_unstable();
        while live.len() > self.grant_limit {
            let oldest = live.remove(0);
            self.grants[oldest].revoked = true;
        }
    }

    /// The scopes of every live grant of this grant's account and client, in order.
    pub(super) fn combined_scope(&self, grant: usize) -> String {
        let (client, sub) = (
            self.grants[grant].client_id.clone(),
            self.grants[grant].profile.sub.clone(),
        );
        let mut scopes: Vec<&str> = Vec::new();
        for g in self
            .grants
            .iter()
            .filter(|g| !g.revoked && g.client_id == client && g.profile.sub == sub)
        {
            for s in g.scope.split(' ') {
                if !s.is_empty() && !scopes.contains(&s) {
                    scopes.push(s);
                }
            }
        }
        scopes.join(" ")
    }

    pub(super) fn access_response(&mut self, grant: usize) -> (Map<String, Value>, String) {
        let access_token = self.issue_access_token(grant);
        let mut body = Map::new();
        body.insert("access_token".into(), json!(access_token));
        body.insert("token_type".into(), json!("Bearer"));
        body.insert("expires_in".into(), json!(self.access_token_ttl.max(0)));
        body.insert("scope".into(), json!(self.grants[grant].scope));
        (body, access_token)
    }

    /// The secret of registered client `id`.
    pub(super) fn client_secret_of(&self, id: &str) -> Option<&str> {
        if id == self.client_id {
            return Some(&self.client_secret);
        }
        self.extra_clients
            .iter()
            .find(|(other, _)| other == id)
            .map(|(_, secret)| secret.as_str())
    }

    pub(super) fn id_token_plan(
        &self,
        issuer: &str,
        tid: Option<String>,
        grant: usize,
        nonce: Option<String>,
        access_token: &str,
        tamper: IdTokenTamper,
    ) -> IdTokenPlan {
        let grant = &self.grants[grant];
        let now = Utc::now();
        let (iat, exp) = match tamper {
            IdTokenTamper::Expired => (
                now - chrono::Duration::seconds(2 * ID_TOKEN_TTL_SECS),
                now - chrono::Duration::seconds(ID_TOKEN_TTL_SECS),
            ),
            _ => (now, now + chrono::Duration::seconds(ID_TOKEN_TTL_SECS)),
        };
        let issuer = match tamper {
            IdTokenTamper::WrongIssuer => "https://wrong-issuer.example.com".to_owned(),
            _ => issuer.to_owned(),
        };
        let audience = match tamper {
            IdTokenTamper::WrongAudience => format!("other-client-{}.apps.test", self.prefix),
            _ => grant.client_id.clone(),
        };
        let nonce = match tamper {
            IdTokenTamper::WrongNonce => Some(format!("wrong-nonce-{}", self.prefix)),
            _ => nonce,
        };
        let key = match tamper {
            IdTokenTamper::BadSignature => self.keys.current.other(),
            _ => self.keys.current,
        };
        IdTokenPlan {
            issuer,
            audience,
            authorized_party: grant.client_id.clone(),
            iat,
            exp,
            nonce,
            profile: grant.profile.clone(),
            access_token: access_token.to_owned(),
            key,
            kid: self.keys.current_kid.clone(),
            tid,
        }
    }

    pub(super) fn record_token_request(&mut self, request: TokenRequest) {
        self.token_requests.push(request);
    }
}
