//! OAuth on the wire: client authentication, form encoding, PKCE, error answers and
//! redirects, as the provider's endpoints need them.

use std::collections::HashMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::json;
use url::Url;

use super::state::Inner;

/// `client_secret_basic` (RFC 6749 §2.3.1: both parts form-urlencoded, then Base64) or
/// `client_secret_post`; using both at once is an `invalid_request`.
/// The id of the client the request authenticates as (Basic or the form).
pub(super) fn authenticate_client(
    st: &Inner,
    authorization: Option<&str>,
    params: &HashMap<String, String>,
) -> Result<String, OAuthError> {
    let basic = authorization.and_then(|v| strip_prefix_ignore_case(v, "Basic "));
    let (id, secret) = match basic {
        Some(encoded) => {
            if params.contains_key("client_secret") {
                return Err(OAuthError::invalid_request(
                    "more than one client authentication method",
                ));
            }
            let Some((id, secret)) = decode_basic(encoded.trim()) else {
                return Err(OAuthError::invalid_client("malformed Basic credentials"));
            };
            if params
                .get("client_id")
                .is_some_and(|form_id| *form_id != id)
            {
                return Err(OAuthError::invalid_client(
                    "client_id in the form differs from Basic",
                ));
            }
            (id, secret)
        }
        None => match (params.get("client_id"), params.get("client_secret")) {
            (Some(id), Some(secret)) => (id.clone(), secret.clone()),
            _ => return Err(OAuthError::invalid_client("client authentication required")),
        },
    };
    if st.client_secret_of(&id) == Some(secret.as_str()) {
        Ok(id)
    } else {
        Err(OAuthError::invalid_client("wrong client credentials"))
    }
}

/// The client id of a Basic `Authorization` header, unchecked.
pub(super) fn basic_client_id(authorization: Option<&str>) -> Option<String> {
    let encoded = authorization.and_then(|v| strip_prefix_ignore_case(v, "Basic "))?;
    decode_basic(encoded.trim()).map(|(id, _)| id)
}

fn decode_basic(encoded: &str) -> Option<(String, String)> {
    let decoded = STANDARD.decode(encoded).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

/// Decodes one `application/x-www-form-urlencoded` component: `+` is a space, `%XX` a
/// byte. `None` for a malformed escape or a result that is not UTF-8.
fn form_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

pub(super) fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

/// Form or query parameters; a repeated name keeps its last value.
pub(super) fn parse_form(bytes: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(bytes).into_owned().collect()
}

pub(super) fn pkce_s256(verifier: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

pub(super) fn has_openid(scope: &str) -> bool {
    scope.split(' ').any(|s| s == "openid")
}

/// An OAuth error answer: `{"error", "error_description"}` with a status.
pub(super) struct OAuthError {
    pub(super) status: StatusCode,
    pub(super) error: String,
    description: String,
    /// Google's `error_subtype` (`invalid_rapt`).
    subtype: Option<String>,
}

impl OAuthError {
    pub(super) fn new(status: StatusCode, error: &str, description: &str) -> Self {
        Self {
            status,
            error: error.to_owned(),
            description: description.to_owned(),
            subtype: None,
        }
    }

    /// Google's answer for a refresh token that was revoked or ran out.
    pub(super) fn expired_or_revoked() -> Self {
        Self::invalid_grant("Token has been expired or revoked.")
    }

    /// Google's answer when a Workspace session-control policy demands a new sign-in.
    pub(super) fn invalid_rapt() -> Self {
        Self {
            subtype: Some("invalid_rapt".into()),
            ..Self::invalid_grant("reauth related error (invalid_rapt)")
        }
    }

    /// Google's answer when a Workspace administrator restricted the app or a scope.
    pub(super) fn admin_policy_enforced() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "admin_policy_enforced",
            "Access to this app or one of its scopes is restricted by the administrator.",
        )
    }

    pub(super) fn invalid_request(description: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    pub(super) fn invalid_grant(description: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    /// `401 invalid_client`, with the `WWW-Authenticate` challenge RFC 6749 §5.2 asks for.
    pub(super) fn invalid_client(description: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
    }

    /// A scripted failure: `temporarily_unavailable` for 429 and 503, `server_error`
    /// otherwise.
    pub(super) fn scripted(status: u16) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let error = match status {
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                "temporarily_unavailable"
            }
            _ => "server_error",
        };
        Self::new(status, error, "scripted failure")
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.error, "error_description": self.description});
        if let Some(subtype) = &self.subtype {
            body["error_subtype"] = json!(subtype);
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"fake-provider\""),
            );
        }
        response
    }
}

/// An error `/authorize` shows the user instead of redirecting (bad client or redirect URI).
pub(super) fn error_page(error: &str, description: &str) -> Response {
    OAuthError::new(StatusCode::BAD_REQUEST, error, description).into_response()
}

/// `302 Found` to `base` with `pairs` appended to its query.
pub(super) fn redirect_to(base: &Url, pairs: &[(&str, &str)]) -> Response {
    let mut url = base.clone();
    url.query_pairs_mut().extend_pairs(pairs);
    let location = HeaderValue::from_str(url.as_str())
        .expect("fake provider: a serialized URL is a valid header value");
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}
