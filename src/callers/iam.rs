//! AWS IAM callers: `Authorization: AWS-IAM <base64 of {"method", "url", "headers",
//! "body"}>`, an `sts:GetCallerIdentity` request the caller signed with its role's
//! credentials (as its SDK would send it; Vault's `iam` auth method carries the same).
//!
//! This service checks the request's shape (the one action, for this service: a
//! signed `X-Axnt-Server-Id` equal to `AXNT_IAM_SERVER_ID`, signed for the configured
//! STS endpoint, dated within its lifetime), sends it to that endpoint itself (never
//! to a URL the caller chose), and trusts the ARN STS answers. An identity so proved is
//! cached for the rest of the request's lifetime, at most a minute, keyed by the
//! request's digest: a hot caller that reuses its signed request (as EKS tokens are
//! reused) costs one STS call a minute. Nothing of the request is logged; the ARN is.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Deserialize;

use crate::crypto::sha256;

/// How long after its `X-Amz-Date` a signed request is accepted: STS's own limit for
/// a request signed in its headers, and the most a presigned one may ask for here.
pub(crate) const SIGNATURE_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// A signing clock this far ahead of ours is tolerated (STS allows the same).
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// The longest an identity is trusted without asking STS again.
pub(crate) const CACHE_AT_MOST: Duration = Duration::from_secs(60);
/// A header value longer than this is not a signed request (theirs are ~2 KiB).
const MAX_HEADER_LEN: usize = 16 * 1024;
/// The only request this service forwards.
const ACTION: [(&str, &str); 2] = [("Action", "GetCallerIdentity"), ("Version", "2011-06-15")];
/// The header that binds a signed request to this service.
pub(crate) const SERVER_ID_HEADER: &str = "x-axnt-server-id";

/// Why an `AWS-IAM` credential was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum IamError {
    /// Not a valid signed request for this service, or STS refused it (401). The text
    /// names the rule, never a value of the request.
    #[error("{0}")]
    Refused(String),
    /// STS could not be asked, or failed (503).
    #[error("STS could not check the caller's identity now: {0}")]
    Unavailable(String),
}

/// The caller's request as its header carries it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedRequest {
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, HeaderValues>,
    #[serde(default)]
    body: String,
}

/// A header's value, or its values (Go's `http.Header`, which Vault's clients send).
#[derive(Deserialize)]
#[serde(untagged)]
enum HeaderValues {
    One(String),
    Many(Vec<String>),
}

impl HeaderValues {
    fn joined(self) -> String {
        match self {
            Self::One(v) => v,
            Self::Many(vs) => vs.join(","),
        }
    }
}

/// A proved identity, until when it is trusted.
#[derive(Clone)]
struct Verified {
    arn: Arc<str>,
    until: Instant,
}

/// Each entry expires when its request's lifetime (capped) ends.
struct UntilSigned;

impl moka::Expiry<[u8; 32], Verified> for UntilSigned {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Verified,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.until.saturating_duration_since(created_at))
    }
}

/// Checks `AWS-IAM` credentials against STS.
pub(crate) struct IamVerifier {
    /// The STS endpoint requests go to.
    sts: url::Url,
    server_id: String,
    http: reqwest::Client,
    verified: moka::future::Cache<[u8; 32], Verified>,
}

impl IamVerifier {
    /// A verifier sending to `sts` (the regional endpoint, or `AWS_ENDPOINT_URL`'s)
    /// for callers that sign `server_id`.
    pub(crate) fn new(sts: url::Url, server_id: String, timeout: Duration) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("STS client: {e}"))?;
        Ok(Self {
            sts,
            server_id,
            http,
            verified: moka::future::Cache::builder()
                .max_capacity(10_000)
                .expire_after(UntilSigned)
                .build(),
        })
    }

    /// The host a caller must sign for (the endpoint's, with its port when it has one).
    pub(crate) fn host(&self) -> String {
        authority(&self.sts)
    }

    /// The ARN STS answers for `credential` (the text after `AWS-IAM `), an assumed
    /// role's session as its role, with whether it came from the cache.
    pub(crate) async fn verify(&self, credential: &str) -> Result<(String, bool), IamError> {
        let credential = credential.trim();
        if credential.len() > MAX_HEADER_LEN {
            return Err(refused("the AWS-IAM credential is too long"));
        }
        let key = sha256(credential.as_bytes());
        if let Some(hit) = self.verified.get(&key).await
            && hit.until > Instant::now()
        {
            return Ok((hit.arn.to_string(), true));
        }
        // One STS call for concurrent first uses of one request.
        let verified = self
            .verified
            .try_get_with(key, async {
                let request = self.check(credential)?;
                let arn = self.ask_sts(request.forward).await?;
                let until = request.valid_until.min(Instant::now() + CACHE_AT_MOST);
                Ok::<_, IamError>(Verified {
                    arn: super::entry::principal_arn(&arn).into(),
                    until,
                })
            })
            .await
            .map_err(|e: Arc<IamError>| (*e).clone())?;
        Ok((verified.arn.to_string(), false))
    }

    /// The request to send to STS, if `credential` is one this service may send.
    fn check(&self, credential: &str) -> Result<Checked, IamError> {
        let json = decode_base64(credential)
            .ok_or_else(|| refused("the AWS-IAM credential is not base64"))?;
        let request: SignedRequest = serde_json::from_slice(&json).map_err(|_| {
            refused("the AWS-IAM credential is not a JSON object {method, url, headers, body}")
        })?;
        let url = url::Url::parse(&request.url)
            .map_err(|_| refused("the signed request's url is not a URL"))?;
        if authority(&url) != self.host() || !matches!(url.path(), "" | "/") {
            return Err(refused(&format!(
                "the request must be signed for {}/ (this service's STS endpoint)",
                self.host()
            )));
        }
        let headers: BTreeMap<String, String> = request
            .headers
            .into_iter()
            .map(|(name, values)| (name.to_ascii_lowercase(), values.joined()))
            .collect();
        let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let is_amz = |name: &str| name.to_ascii_lowercase().starts_with("x-amz-");
        let presigned = query.iter().any(|(k, _)| k == "X-Amz-Signature");
        let method = request.method.to_ascii_uppercase();
        let (params, signed_headers, date, lifetime) = match (method.as_str(), presigned) {
            ("POST", false) => {
                if url.query().is_some() {
                    return Err(refused("a signed POST carries its action in the body"));
                }
                let auth = headers
                    .get("authorization")
                    .ok_or_else(|| refused("the signed request has no Authorization header"))?;
                let signed = signed_headers_of(auth)?;
                let date = headers
                    .get("x-amz-date")
                    .ok_or_else(|| refused("the signed request has no X-Amz-Date header"))?;
                let params: Vec<(String, String)> =
                    url::form_urlencoded::parse(request.body.as_bytes())
                        .into_owned()
                        .collect();
                (params, signed, date.clone(), SIGNATURE_LIFETIME)
            }
            ("GET", true) => {
                let get = |name: &str| {
                    query
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                        .ok_or_else(|| refused(&format!("the presigned URL has no {name}")))
                };
                let signed = get("X-Amz-SignedHeaders")?
                    .split(';')
                    .map(str::to_string)
                    .collect();
                let expires: u64 = get("X-Amz-Expires")?
                    .parse()
                    .map_err(|_| refused("X-Amz-Expires is not a number of seconds"))?;
                let lifetime = Duration::from_secs(expires).min(SIGNATURE_LIFETIME);
                let params = query.iter().filter(|(k, _)| !is_amz(k)).cloned().collect();
                (params, signed, get("X-Amz-Date")?, lifetime)
            }
            _ => {
                return Err(refused(
                    "the signed request must be a POST signed in its headers or a presigned GET",
                ));
            }
        };
        let mut params = params;
        params.sort();
        let mut action: Vec<(String, String)> = ACTION
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        action.sort();
        if params != action {
            return Err(refused(
                "the signed request must be exactly Action=GetCallerIdentity&Version=2011-06-15",
            ));
        }
        let signs = |name: &str| signed_headers.iter().any(|h: &String| h == name);
        if !signs("host") || !signs(SERVER_ID_HEADER) {
            return Err(refused(
                "the signed headers must include Host and X-Axnt-Server-Id",
            ));
        }
        if headers.get(SERVER_ID_HEADER) != Some(&self.server_id) {
            return Err(refused(
                "X-Axnt-Server-Id is not this service's (AXNT_IAM_SERVER_ID)",
            ));
        }
        let valid_until = valid_until(&date, lifetime)?;
        // What STS gets: the signed headers (and the signature's own), nothing else.
        let mut forward = self
            .http
            .request(
                if presigned {
                    reqwest::Method::GET
                } else {
                    reqwest::Method::POST
                },
                {
                    let mut to = self.sts.clone();
                    to.set_path("/");
                    to.set_query(url.query());
                    to
                },
            )
            .header("accept", "application/xml");
        for (name, value) in &headers {
            let signature_header = matches!(
                name.as_str(),
                "authorization" | "x-amz-date" | "x-amz-security-token" | "x-amz-content-sha256"
            );
            if name == "host" || name == "content-length" || !(signs(name) || signature_header) {
                continue;
            }
            forward = forward.header(name.as_str(), value.as_str());
        }
        if !presigned {
            if !headers.contains_key("content-type") {
                forward = forward.header(
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                );
            }
            forward = forward.body(request.body);
        }
        Ok(Checked {
            forward,
            valid_until,
        })
    }

    /// Sends the caller's request to STS: the ARN it answers, or why not.
    async fn ask_sts(&self, request: reqwest::RequestBuilder) -> Result<String, IamError> {
        let answer = request.send().await.map_err(|e| {
            IamError::Unavailable(format!("STS did not answer: {}", without_url(&e)))
        })?;
        let status = answer.status();
        let body = answer.text().await.map_err(|e| {
            IamError::Unavailable(format!("STS's answer was cut: {}", without_url(&e)))
        })?;
        if status.is_success() {
            return element(&body, "Arn")
                .filter(|arn| arn.starts_with("arn:"))
                .ok_or_else(|| IamError::Unavailable("STS answered without an ARN".into()));
        }
        let code = element(&body, "Code").unwrap_or_default();
        if status.is_server_error() || code.contains("Throttl") || status.as_u16() == 429 {
            return Err(IamError::Unavailable(format!(
                "STS answered {status} {code}"
            )));
        }
        Err(IamError::Refused(format!(
            "STS refused the signed request ({})",
            if code.is_empty() {
                status.to_string()
            } else {
                code
            }
        )))
    }
}

/// A request checked and ready to send, and until when its signature holds.
struct Checked {
    forward: reqwest::RequestBuilder,
    valid_until: Instant,
}

fn refused(why: &str) -> IamError {
    IamError::Refused(why.to_string())
}

/// `host` or `host:port` of `url`, as a `Host` header names it.
fn authority(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// base64, standard or URL-safe, padded or not.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    GeneralPurpose::new(&base64::alphabet::STANDARD, config)
        .decode(text)
        .or_else(|_| GeneralPurpose::new(&base64::alphabet::URL_SAFE, config).decode(text))
        .ok()
}

/// The `SignedHeaders=` list of a SigV4 `Authorization` header.
fn signed_headers_of(authorization: &str) -> Result<Vec<String>, IamError> {
    let rest = authorization
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| refused("the Authorization header is not AWS4-HMAC-SHA256"))?;
    rest.split(',')
        .map(str::trim)
        .find_map(|part| part.strip_prefix("SignedHeaders="))
        .map(|list| list.split(';').map(str::to_ascii_lowercase).collect())
        .ok_or_else(|| refused("the Authorization header names no SignedHeaders"))
}

/// When a request signed at `x_amz_date` (`20261205T101500Z`) stops being accepted, as
/// an instant of this process; refused when it already has, or is dated too far ahead.
fn valid_until(x_amz_date: &str, lifetime: Duration) -> Result<Instant, IamError> {
    let signed = chrono::NaiveDateTime::parse_from_str(x_amz_date, "%Y%m%dT%H%M%SZ")
        .map_err(|_| refused("X-Amz-Date is not a SigV4 date (YYYYMMDDTHHMMSSZ)"))?
        .and_utc();
    let now = chrono::Utc::now();
    let age = now.signed_duration_since(signed);
    let skew = chrono::Duration::from_std(CLOCK_SKEW).unwrap_or_default();
    let life = chrono::Duration::from_std(lifetime).unwrap_or_default();
    if age < -skew {
        return Err(refused("the signed request is dated in the future"));
    }
    if age >= life {
        return Err(refused(
            "the signed request has expired (sign a new one: it lasts 15 minutes at most)",
        ));
    }
    let left = (life - age).to_std().unwrap_or_default();
    Ok(Instant::now() + left)
}

/// The text of the first `<name>` element of an STS XML answer.
fn element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    let text = xml[start..end].trim();
    // ARNs and error codes carry no markup; anything escaped is not one of them.
    (!text.contains(['<', '&'])).then(|| text.to_string())
}

/// A transport error's text without its URL (the endpoint is the operator's; still,
/// the caller's query string never reaches a log through it).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    kind.to_string()
}

/// The STS endpoint for `region`, as the SDK's resolver names it (`sts.<region>.amazonaws.com`,
/// `.amazonaws.com.cn` in China), or the endpoint given.
pub(crate) fn sts_endpoint(endpoint_url: Option<&str>, region: &str) -> Result<url::Url, String> {
    let text = match endpoint_url {
        Some(url) => url.to_string(),
        None if region.starts_with("cn-") => format!("https://sts.{region}.amazonaws.com.cn/"),
        None => format!("https://sts.{region}.amazonaws.com/"),
    };
    url::Url::parse(&text).map_err(|e| format!("the STS endpoint {text:?} is not a URL: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> IamVerifier {
        IamVerifier::new(
            url::Url::parse("https://sts.eu-west-1.amazonaws.com/").expect("url"),
            "axnt.example".into(),
            Duration::from_secs(1),
        )
        .expect("verifier")
    }

    fn credential(method: &str, url: &str, headers: serde_json::Value, body: &str) -> String {
        let json =
            serde_json::json!({"method": method, "url": url, "headers": headers, "body": body});
        base64::engine::general_purpose::STANDARD.encode(json.to_string())
    }

    fn now_amz() -> String {
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()
    }

    fn signed_headers(date: &str, server_id: &str, signed: &str) -> serde_json::Value {
        serde_json::json!({
            "Host": ["sts.eu-west-1.amazonaws.com"],
            "X-Amz-Date": [date],
            "X-Axnt-Server-Id": [server_id],
            "Authorization": [format!("AWS4-HMAC-SHA256 Credential=AKID/20261205/eu-west-1/sts/aws4_request, SignedHeaders={signed}, Signature=00")],
        })
    }

    const BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";
    const URL: &str = "https://sts.eu-west-1.amazonaws.com/";

    fn why(credential: &str) -> String {
        match verifier().check(credential) {
            Ok(_) => "accepted".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_well_formed_request_is_accepted_for_sending() {
        let ok = credential(
            "POST",
            URL,
            signed_headers(
                &now_amz(),
                "axnt.example",
                "host;x-amz-date;x-axnt-server-id",
            ),
            BODY,
        );
        assert_eq!(why(&ok), "accepted");
    }

    #[test]
    fn requests_this_service_must_not_send_are_refused() {
        let date = now_amz();
        let good = || signed_headers(&date, "axnt.example", "host;x-amz-date;x-axnt-server-id");
        let cases = [
            (
                credential(
                    "POST",
                    URL,
                    signed_headers(&date, "other", "host;x-amz-date;x-axnt-server-id"),
                    BODY,
                ),
                "not this service's",
            ),
            (
                credential(
                    "POST",
                    URL,
                    signed_headers(&date, "axnt.example", "host;x-amz-date"),
                    BODY,
                ),
                "must include",
            ),
            (
                credential("POST", "https://evil.example/", good(), BODY),
                "must be signed for",
            ),
            (
                credential(
                    "POST",
                    "https://sts.eu-west-1.amazonaws.com/x",
                    good(),
                    BODY,
                ),
                "must be signed for",
            ),
            (
                credential("POST", URL, good(), "Action=AssumeRole&Version=2011-06-15"),
                "exactly",
            ),
            (
                credential(
                    "POST",
                    URL,
                    good(),
                    "Action=GetCallerIdentity&Version=2011-06-15&RoleArn=x",
                ),
                "exactly",
            ),
            (credential("PUT", URL, good(), BODY), "POST signed"),
            (
                credential(
                    "POST",
                    URL,
                    signed_headers(
                        "20200101T000000Z",
                        "axnt.example",
                        "host;x-amz-date;x-axnt-server-id",
                    ),
                    BODY,
                ),
                "expired",
            ),
            (
                credential(
                    "POST",
                    URL,
                    signed_headers(
                        "20991231T000000Z",
                        "axnt.example",
                        "host;x-amz-date;x-axnt-server-id",
                    ),
                    BODY,
                ),
                "future",
            ),
            ("not base64 !".into(), "base64"),
            (
                base64::engine::general_purpose::STANDARD.encode("[1]"),
                "JSON object",
            ),
        ];
        for (credential, expected) in cases {
            let why = why(&credential);
            assert!(why.contains(expected), "{why} ~ {expected}");
        }
    }

    #[test]
    fn sts_answers_are_read_for_their_arn_and_code() {
        let ok = "<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>arn:aws:iam::123456789012:user/a</Arn><UserId>X</UserId></GetCallerIdentityResult></GetCallerIdentityResponse>";
        assert_eq!(
            element(ok, "Arn").as_deref(),
            Some("arn:aws:iam::123456789012:user/a")
        );
        let err = "<ErrorResponse><Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code></Error></ErrorResponse>";
        assert_eq!(
            element(err, "Code").as_deref(),
            Some("SignatureDoesNotMatch")
        );
        assert_eq!(element("<Arn>a&amp;b</Arn>", "Arn"), None);
        assert_eq!(
            sts_endpoint(None, "eu-west-1").expect("url").as_str(),
            "https://sts.eu-west-1.amazonaws.com/"
        );
        assert_eq!(
            sts_endpoint(None, "cn-north-1").expect("url").as_str(),
            "https://sts.cn-north-1.amazonaws.com.cn/"
        );
    }
}
