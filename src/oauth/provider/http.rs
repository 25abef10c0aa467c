//! The provider's HTTP side: the client handed to `openidconnect`, the calls to the
//! token and revocation endpoints, and how their failures are sorted by whether the
//! provider may have acted on the request.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use openidconnect::{
    AuthorizationCode, HttpRequest, HttpResponse, OAuth2TokenResponse, PkceCodeVerifier,
    RefreshToken, RequestTokenError, TokenResponse,
};
use secrecy::{ExposeSecret, SecretString};

use super::{OidcProvider, ProviderError, ProviderTokenResponse, ProviderTokens, TokenErrorAnswer};
use crate::secrets::ClientCredentials;

/// An HTTP failure below the OAuth layer, sorted by whether the provider may have acted
/// on the request: a refresh token sent in a request that may have been processed may
/// have been rotated, so its caller must not treat "no answer" like "not sent".
/// 5xx and 429 answers are failures too, so that they are retried and reported as
/// "unavailable" rather than parsed as OAuth errors.
#[derive(Debug, thiserror::Error)]
pub(super) enum HttpFailure {
    /// No connection was made (DNS, refused, connect timeout) or the request could not
    /// be built: the provider never saw it.
    #[error("not sent: {0}")]
    NotSent(String),
    /// The provider answered 5xx or 429: it did not serve the request.
    #[error("answered HTTP {0}")]
    Status(u16),
    /// Connected, but no whole answer within the timeout: the request may have been
    /// processed.
    #[error("timed out waiting for the answer")]
    Timeout,
    /// The connection broke while sending or reading the answer (reset, truncated
    /// body): the request may have been processed.
    #[error("no complete answer: {0}")]
    Interrupted(String),
}

impl HttpFailure {
    /// What this failure means to the caller of a provider endpoint.
    pub(super) fn into_provider_error(self) -> ProviderError {
        match self {
            Self::NotSent(_) | Self::Status(_) => ProviderError::Unavailable(self.to_string()),
            Self::Timeout | Self::Interrupted(_) => ProviderError::OutcomeUnknown(self.to_string()),
        }
    }
}

/// Whether a refresh was refused in a way a refresh token of another client is (not a
/// failure of the provider, which may have redeemed it).
fn refused_for_its_client(result: &Result<ProviderTokens, ProviderError>) -> bool {
    matches!(
        result,
        Err(ProviderError::InvalidGrant(_)
            | ProviderError::InvalidClient
            | ProviderError::Rejected { .. })
    )
}

/// Whether a `200` answer is an OAuth error all the same (GitHub answers its token
/// errors with 200): an object with `error` and no `access_token`. It is then read as
/// the error it is, not as a token response missing its token.
fn is_error_answer(body: &[u8]) -> bool {
    // Every token response passes here: only one that names an error is parsed twice.
    const ERROR: &[u8] = b"\"error\"";
    if !body.windows(ERROR.len()).any(|w| w == ERROR) {
        return false;
    }
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body).is_ok_and(|o| {
        o.get("error").is_some_and(|e| e.is_string()) && !o.contains_key("access_token")
    })
}

/// Whether an HTTP status means "not served, retry later" rather than an answer.
pub(super) fn is_unavailable_status(status: reqwest::StatusCode) -> bool {
    status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS
}

/// The HTTP client handed to `openidconnect`: reqwest without redirects, with 5xx and
/// 429 answers turned into failures.
#[derive(Clone)]
pub(super) struct ProviderHttp(pub(super) reqwest::Client);

impl<'c> openidconnect::AsyncHttpClient<'c> for ProviderHttp {
    type Error = HttpFailure;
    type Future =
        Pin<Box<dyn Future<Output = Result<HttpResponse, HttpFailure>> + Send + Sync + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = reqwest::Request::try_from(request)
                .map_err(|e| HttpFailure::NotSent(error_chain(&e)))?;
            let response = self.0.execute(request).await.map_err(classify_reqwest)?;
            let status = response.status();
            if is_unavailable_status(status) {
                return Err(HttpFailure::Status(status.as_u16()));
            }
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(classify_reqwest)?;
            let status = if status == reqwest::StatusCode::OK && is_error_answer(&body) {
                reqwest::StatusCode::BAD_REQUEST
            } else {
                status
            };
            let mut out = http::Response::builder().status(status);
            if let Some(h) = out.headers_mut() {
                *h = headers;
            }
            // The provider answered, but we cannot hand the answer on: as good as lost.
            out.body(body.to_vec())
                .map_err(|e| HttpFailure::Interrupted(e.to_string()))
        })
    }
}

impl OidcProvider {
    /// Exchanges an authorization code. Never retried: a code is single-use, and a
    /// second attempt after a lost answer would only earn `invalid_grant`.
    #[tracing::instrument(skip_all, fields(provider = %self.config.name))]
    pub(crate) async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: &str,
        redirect_uri: &str,
        client: Option<&str>,
    ) -> Result<ProviderTokens, ProviderError> {
        let creds = self.credentials_for(client).await?;
        let d = self.discovered().await?;
        let client = self.client(&d, &creds, Some(redirect_uri))?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| ProviderError::Malformed(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()))
            .request_async(&self.http)
            .await;
        let result = self.token_result(response, &creds.client_id);
        if matches!(result, Err(ProviderError::InvalidClient)) {
            // The secret may have been rotated: have it re-read for the next flow. A
            // code is not retried here (see above).
            self.secrets.reload_soon();
        }
        result
    }

    /// Redeems a refresh token.
    #[tracing::instrument(skip_all, fields(provider = %self.config.name))]
    pub(crate) async fn refresh(
        &self,
        refresh_token: &SecretString,
        client: Option<&str>,
    ) -> Result<ProviderTokens, ProviderError> {
        let first = self.refresh_as(refresh_token, client).await;
        if client.is_some() || !refused_for_its_client(&first) {
            return first;
        }
        // A grant recorded before clients were: made with one of the provider's clients,
        // the current one unless it has been replaced since. A provider refuses a
        // refresh token presented by another client before redeeming it, so each other
        // client is tried once; the answer records the one that worked.
        for other in self.other_client_ids() {
            let next = self.refresh_as(refresh_token, Some(&other)).await;
            if !refused_for_its_client(&next) {
                return next;
            }
        }
        first
    }

    /// The ids of the provider's clients other than the current one.
    fn other_client_ids(&self) -> Vec<String> {
        self.secrets
            .current()
            .other_clients
            .iter()
            .map(|c| c.client_id.clone())
            .collect()
    }

    /// [`refresh`](Self::refresh) with one client: after `invalid_client`, the secret
    /// re-read and, when it changed, the refresh tried once more.
    async fn refresh_as(
        &self,
        refresh_token: &SecretString,
        client: Option<&str>,
    ) -> Result<ProviderTokens, ProviderError> {
        let creds = self.credentials_for(client).await?;
        let first = self.refresh_with(&creds, refresh_token).await;
        if !matches!(first, Err(ProviderError::InvalidClient)) {
            return first;
        }
        // The client secret may have been rotated since we last read it: re-read it
        // (at most once per interval, however many refreshes fail: a wrong secret must
        // not turn every refresh into a read of the secret store) and, when the
        // credentials changed — by this re-read or another since `creds` were taken —
        // try once more (a refresh token is not spent by a request whose client
        // authentication failed).
        match self
            .secrets
            .reload_throttled(self.secret_reload_min_interval)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(
                    "client secret re-read recently; not re-reading it after invalid_client"
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-reading the client secret after invalid_client failed")
            }
        }
        let fresh = self.credentials_for(client).await?;
        if fresh.client_id == creds.client_id
            && fresh.client_secret.expose_secret() == creds.client_secret.expose_secret()
        {
            return first;
        }
        tracing::info!("client credentials changed in the secret; retrying the refresh with them");
        self.refresh_with(&fresh, refresh_token).await
    }

    async fn refresh_with(
        &self,
        creds: &ClientCredentials,
        refresh_token: &SecretString,
    ) -> Result<ProviderTokens, ProviderError> {
        let d = self.discovered().await?;
        let client = self.client(&d, creds, None)?;
        let token = RefreshToken::new(refresh_token.expose_secret().to_string());
        let response = client
            .exchange_refresh_token(&token)
            .map_err(|e| ProviderError::Malformed(e.to_string()))?
            .request_async(&self.http)
            .await;
        self.token_result(response, &creds.client_id)
    }

    fn token_result(
        &self,
        response: Result<ProviderTokenResponse, RequestTokenError<HttpFailure, TokenErrorAnswer>>,
        client_id: &str,
    ) -> Result<ProviderTokens, ProviderError> {
        let quirks = self.config.profile.quirks;
        match response {
            Ok(r) => Ok(ProviderTokens {
                access_token: SecretString::from(r.access_token().secret().clone()),
                refresh_token: r
                    .refresh_token()
                    .map(|t| SecretString::from(t.secret().clone())),
                id_token: r.id_token().map(|t| SecretString::from(t.to_string())),
                expires_in: r
                    .expires_in()
                    .or(quirks.unexpiring_access_tokens.then_some(UNEXPIRING)),
                scope: r.scopes().map(|scopes| {
                    let separators: &[char] = if quirks.comma_separated_scopes {
                        &[',', ' ']
                    } else {
                        &[' ']
                    };
                    scopes
                        .iter()
                        .flat_map(|s| s.as_str().split(separators))
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join(" ")
                }),
                token_type: "Bearer".into(),
                refresh_token_expires_in: r.extra_fields().extra_fields().refresh_token_lifetime(),
                client_id: Some(client_id.to_string()),
            }),
            Err(e) => Err(self.classify_token_error(e)),
        }
    }

    fn classify_token_error(
        &self,
        e: RequestTokenError<HttpFailure, TokenErrorAnswer>,
    ) -> ProviderError {
        match e {
            RequestTokenError::ServerResponse(r) => r.classify(self.config.profile.read_refusal),
            RequestTokenError::Request(f) => f.into_provider_error(),
            // Only where and what kind: serde's message can quote the offending value,
            // and in a token response that value may be a token.
            RequestTokenError::Parse(e, _body) => ProviderError::Malformed(format!(
                "unreadable token response at `{}` ({:?} error)",
                e.path(),
                e.inner().classify()
            )),
            RequestTokenError::Other(e) => ProviderError::Malformed(e),
        }
    }

    /// Returns whether a revocation was sent and accepted.
    #[tracing::instrument(skip_all, fields(provider = %self.config.name))]
    pub(crate) async fn revoke(
        &self,
        token: &SecretString,
        client: Option<&str>,
    ) -> Result<bool, ProviderError> {
        let first = self.revoke_as(token, client).await;
        if client.is_some() || !matches!(first, Err(ProviderError::Rejected { .. })) {
            return first;
        }
        // A grant recorded before clients were: as for a refresh, each other client.
        for other in self.other_client_ids() {
            let next = self.revoke_as(token, Some(&other)).await;
            if !matches!(next, Err(ProviderError::Rejected { .. })) {
                return next;
            }
        }
        first
    }

    async fn revoke_as(
        &self,
        token: &SecretString,
        client: Option<&str>,
    ) -> Result<bool, ProviderError> {
        let profile = &self.config.profile;
        if profile.revocation == super::Revocation::Unsupported {
            return Ok(false);
        }
        let creds = self.credentials_for(client).await?;
        if profile.revocation == super::Revocation::GitHubGrant {
            return self.revoke_github_grant(&creds, token).await;
        }
        let endpoint = match &profile.revoke_url {
            Some(url) => url.to_string(),
            None => {
                let d = self.discovered().await?;
                let Some(endpoint) = d.metadata.additional_metadata().revocation_endpoint.clone()
                else {
                    return Ok(false);
                };
                endpoint
            }
        };
        // RFC 7009 by hand: `oauth2`'s revoke refuses any non-https endpoint, which
        // would rule out a loopback issuer (tests, a local provider). The request is
        // one form POST with the client's credentials, encoded as RFC 6749 §2.3.1 says.
        let encode =
            |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let request = self
            .http
            .0
            .post(endpoint)
            .basic_auth(
                encode(&creds.client_id),
                Some(encode(creds.client_secret.expose_secret())),
            )
            .form(&[
                ("token", token.expose_secret()),
                ("token_type_hint", "refresh_token"),
            ]);
        match refused_revocation(request).await? {
            None => Ok(true),
            Some(response) => {
                // Google answers 400 invalid_token for a token that is already dead: the
                // grant is gone either way.
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                let error = body["error"].as_str().unwrap_or("unknown").to_string();
                if error == "invalid_token" {
                    Ok(true)
                } else {
                    Err(ProviderError::Rejected { error })
                }
            }
        }
    }
}

/// Sends a revocation: `None` when the provider accepted it (2xx), the answer when it
/// refused (to read), an error when it is unavailable (5xx, 429) or did not answer.
async fn refused_revocation(
    request: reqwest::RequestBuilder,
) -> Result<Option<reqwest::Response>, ProviderError> {
    let response = request
        .send()
        .await
        .map_err(|e| classify_reqwest(e).into_provider_error())?;
    let status = response.status();
    if status.is_success() {
        Ok(None)
    } else if is_unavailable_status(status) {
        Err(ProviderError::Unavailable(format!(
            "revocation answered HTTP {}",
            status.as_u16()
        )))
    } else {
        Ok(Some(response))
    }
}

impl OidcProvider {
    /// GitHub's grant revocation: `DELETE /applications/{client_id}/grant` with the
    /// client's Basic authentication and the access token in a JSON body; 204 when the
    /// grant is gone.
    async fn revoke_github_grant(
        &self,
        creds: &ClientCredentials,
        access_token: &SecretString,
    ) -> Result<bool, ProviderError> {
        let Some(template) = &self.config.profile.revoke_url else {
            return Ok(false);
        };
        let client_id =
            url::form_urlencoded::byte_serialize(creds.client_id.as_bytes()).collect::<String>();
        let url = template
            .as_str()
            .replace("%7Bclient_id%7D", &client_id)
            .replace("{client_id}", &client_id);
        let request = self
            .http
            .0
            .delete(url)
            .basic_auth(&creds.client_id, Some(creds.client_secret.expose_secret()))
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .json(&serde_json::json!({ "access_token": access_token.expose_secret() }));
        match refused_revocation(request).await? {
            None => Ok(true),
            Some(response) => Err(ProviderError::Rejected {
                error: format!("revocation_http_{}", response.status().as_u16()),
            }),
        }
    }
}

/// The lifetime given to an access token that does not expire (GitHub's OAuth apps):
/// ten years, so its `expiresAt` says "not before the grant ends".
const UNEXPIRING: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Sorts a reqwest error by whether the request may have reached the provider.
/// `is_connect` holds for connect failures and connect timeouts alike (a connect
/// timeout is also `is_timeout`), so it is asked first.
pub(super) fn classify_reqwest(e: reqwest::Error) -> HttpFailure {
    if e.is_connect() || e.is_builder() {
        HttpFailure::NotSent(error_chain(&e))
    } else if e.is_timeout() {
        HttpFailure::Timeout
    } else {
        HttpFailure::Interrupted(error_chain(&e))
    }
}

/// An error and its causes on one line (reqwest hides the useful part in `source`).
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use openidconnect::AsyncHttpClient;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// GitHub answers token errors with HTTP 200: read as the error they are; a token
    /// response, or one that also carries a token, is not.
    #[test]
    fn an_error_answered_with_200_is_an_error() {
        assert!(is_error_answer(
            br#"{"error":"bad_refresh_token","error_description":"The refresh token passed is incorrect or expired."}"#
        ));
        assert!(!is_error_answer(
            br#"{"access_token":"t","token_type":"bearer","scope":""}"#
        ));
        assert!(!is_error_answer(br#"{"access_token":"t","error":"odd"}"#));
        assert!(!is_error_answer(b"access_token=t&token_type=bearer"));
    }

    /// A loopback server that reads one request, then does `answer` with the socket.
    async fn server<F, Fut>(answer: F) -> String
    where
        F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                answer(socket).await;
            }
        });
        format!("http://{addr}/token")
    }

    async fn call(url: &str) -> Result<HttpResponse, ProviderError> {
        let http = ProviderHttp(
            crate::guard::outbound_client(Duration::from_millis(500)).expect("client"),
        );
        let request = http::Request::builder()
            .method("POST")
            .uri(url)
            .body(b"grant_type=refresh_token".to_vec())
            .expect("request");
        http.call(request)
            .await
            .map_err(HttpFailure::into_provider_error)
    }

    #[tokio::test]
    async fn a_refused_connection_never_reached_the_provider() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/token", listener.local_addr().expect("addr"));
        drop(listener);
        assert!(matches!(
            call(&url).await,
            Err(ProviderError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn no_answer_after_connecting_is_an_unknown_outcome() {
        let url = server(|socket| async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(socket);
        })
        .await;
        assert!(matches!(
            call(&url).await,
            Err(ProviderError::OutcomeUnknown(_))
        ));
    }

    #[tokio::test]
    async fn a_connection_closed_before_the_answer_is_an_unknown_outcome() {
        let url = server(|socket| async move { drop(socket) }).await;
        assert!(matches!(
            call(&url).await,
            Err(ProviderError::OutcomeUnknown(_))
        ));
    }

    #[tokio::test]
    async fn a_truncated_answer_is_an_unknown_outcome() {
        let url = server(|mut socket| async move {
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"access_token\"")
                .await;
        })
        .await;
        assert!(matches!(
            call(&url).await,
            Err(ProviderError::OutcomeUnknown(_))
        ));
    }

    #[tokio::test]
    async fn answers_429_and_5xx_are_unavailable_and_4xx_are_answers() {
        for (status, unavailable) in [(429, true), (500, true), (503, true), (400, false)] {
            let url = server(move |mut socket| async move {
                let head = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\n{{}}");
                let _ = socket.write_all(head.as_bytes()).await;
            })
            .await;
            let result = call(&url).await;
            assert_eq!(
                matches!(result, Err(ProviderError::Unavailable(_))),
                unavailable,
                "HTTP {status}"
            );
            assert_eq!(result.is_ok(), !unavailable, "HTTP {status}");
        }
    }
}
