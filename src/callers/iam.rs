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

use super::CredentialError;
use crate::crypto::sha256;

/// How long after its `X-Amz-Date` a signed request is accepted: STS's own limit for
/// a request signed in its headers, and the most a presigned one may ask for here.
const SIGNATURE_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// A signing clock this far ahead of ours is tolerated (STS allows the same).
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// The longest an identity is trusted without asking STS again.
const CACHE_AT_MOST: Duration = Duration::from_secs(60);
/// A header value longer than this is not a signed request (theirs are ~2 KiB).
const MAX_HEADER_LEN: usize = 16 * 1024;
/// The only request this service forwards.
const ACTION: [(&str, &str); 2] = [("Action", "GetCallerIdentity"), ("Version", "2011-06-15")];
/// The header that binds a signed request to this service.
const SERVER_ID_HEADER: &str = "x-axnt-server-id";

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

/// A header's value, or its values (Go's `http.Header`, which Vault's clients send):
/// one value only is accepted.
#[derive(Deserialize)]
#[serde(untagged)]
enum HeaderValues {
    One(String),
    Many(Vec<String>),
}

impl HeaderValues {
    fn single(self) -> Option<String> {
        match self {
            Self::One(v) => Some(v),
            Self::Many(mut vs) if vs.len() == 1 => vs.pop(),
            Self::Many(_) => None,
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
    /// A verifier sending to `sts` for callers that sign `server_id`; `sts` must be
    /// https, or http on loopback (whatever ARN it answers is trusted).
    pub(crate) fn new(sts: url::Url, server_id: String, timeout: Duration) -> Result<Self, String> {
        if !crate::guard::https_or_loopback(sts.as_str()) {
            return Err(format!(
                "the STS endpoint {sts} must be https (http only on loopback)"
            ));
        }
        let http = crate::guard::outbound_client(timeout)?;
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
    pub(crate) async fn verify(&self, credential: &str) -> Result<(String, bool), CredentialError> {
        let credential = credential.trim();
        if credential.len() > MAX_HEADER_LEN {
            return Err(refused("the AWS-IAM credential is too long"));
        }
        // Checked first (in memory), so the cache is keyed by what STS would be sent:
        // two encodings of one signed request are one entry.
        let call = self.check(credential)?;
        // moka answers nothing for an entry past its expiry (`UntilSigned`).
        if let Some(hit) = self.verified.get(&call.key).await {
            return Ok((hit.arn.to_string(), true));
        }
        // One STS call for concurrent first uses of one request.
        let key = call.key;
        let verified = self
            .verified
            .try_get_with(key, async {
                let until = call.valid_until.min(Instant::now() + CACHE_AT_MOST);
                let arn = self.ask_sts(call).await?;
                Ok::<_, CredentialError>(Verified {
                    arn: super::entry::principal_arn(&arn).into(),
                    until,
                })
            })
            .await
            .map_err(|e: Arc<CredentialError>| (*e).clone())?;
        Ok((verified.arn.to_string(), false))
    }

    /// The request to send to STS, if `credential` is one this service may send.
    fn check(&self, credential: &str) -> Result<Call, CredentialError> {
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
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, values) in request.headers {
            let value = values
                .single()
                .ok_or_else(|| refused("each header of the signed request has one value"))?;
            let valid = reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
                && reqwest::header::HeaderValue::from_str(&value).is_ok();
            if !valid {
                return Err(refused("the signed request has a malformed header"));
            }
            if headers.insert(name.to_ascii_lowercase(), value).is_some() {
                return Err(refused("the signed request names a header twice"));
            }
        }
        let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let mut names = std::collections::HashSet::new();
        if !query.iter().all(|(k, _)| names.insert(k.as_str())) {
            return Err(refused("the signed request names a parameter twice"));
        }
        let presigned = names.contains("X-Amz-Signature");
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
                let mut params = Vec::new();
                for (name, value) in &query {
                    if name.starts_with("X-Amz-") {
                        if !PRESIGN_PARAMS.contains(&name.as_str()) {
                            return Err(refused(
                                "the presigned URL has a parameter SigV4 does not define",
                            ));
                        }
                    } else {
                        params.push((name.clone(), value.clone()));
                    }
                }
                if get("X-Amz-Algorithm")? != "AWS4-HMAC-SHA256" {
                    return Err(refused("the presigned URL is not signed AWS4-HMAC-SHA256"));
                }
                let signed = get("X-Amz-SignedHeaders")?
                    .split(';')
                    .map(str::to_ascii_lowercase)
                    .collect();
                let expires: u64 = get("X-Amz-Expires")?
                    .parse()
                    .map_err(|_| refused("X-Amz-Expires is not a number of seconds"))?;
                let lifetime = Duration::from_secs(expires).min(SIGNATURE_LIFETIME);
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
        // What STS is sent: the signed headers and the signature's own, nothing else
        // (an added header could only make STS refuse what the caller signed), and the
        // body's type, needed to read it, signed or not.
        let mut forward: Vec<(String, String)> = headers
            .into_iter()
            .filter(|(name, _)| {
                let signature_header = matches!(
                    name.as_str(),
                    "authorization"
                        | "x-amz-date"
                        | "x-amz-security-token"
                        | "x-amz-content-sha256"
                );
                let body_type = name == "content-type" && !presigned;
                name != "host"
                    && name != "content-length"
                    && (signs(name) || signature_header || body_type)
            })
            .collect();
        let body = (!presigned).then_some(request.body);
        if body.is_some() && !forward.iter().any(|(name, _)| name == "content-type") {
            forward.push((
                "content-type".into(),
                "application/x-www-form-urlencoded; charset=utf-8".into(),
            ));
        }
        let query = url.query().map(str::to_string);
        let key = sha256(
            serde_json::json!([presigned, query, forward, body])
                .to_string()
                .as_bytes(),
        );
        Ok(Call {
            presigned,
            query,
            headers: forward,
            body,
            valid_until,
            key,
        })
    }

    /// Sends the caller's request to STS: the ARN it answers, or why not.
    async fn ask_sts(&self, call: Call) -> Result<String, CredentialError> {
        let mut to = self.sts.clone();
        to.set_path("/");
        to.set_query(call.query.as_deref());
        let method = if call.presigned {
            reqwest::Method::GET
        } else {
            reqwest::Method::POST
        };
        let mut request = self.http.request(method, to);
        for (name, value) in &call.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(body) = call.body {
            request = request.body(body);
        }
        let answer = request.send().await.map_err(|e| {
            if e.is_builder() {
                refused("the signed request cannot be sent as given")
            } else {
                CredentialError::Unavailable(format!("STS did not answer: {}", without_url(&e)))
            }
        })?;
        let status = answer.status();
        let body = answer.text().await.map_err(|e| {
            CredentialError::Unavailable(format!("STS's answer was cut: {}", without_url(&e)))
        })?;
        if status.is_success() {
            return crate::aws::sts::caller_arn(&body)
                .ok_or_else(|| CredentialError::Unavailable("STS answered without an ARN".into()));
        }
        let code = crate::aws::sts::error_code(&body).unwrap_or_default();
        let refusal = matches!(status.as_u16(), 400 | 401 | 403) && !code.contains("Throttl");
        if !refusal {
            return Err(CredentialError::Unavailable(format!(
                "STS answered {status} {code}"
            )));
        }
        Err(CredentialError::Refused(format!(
            "STS refused the signed request ({})",
            if code.is_empty() {
                status.to_string()
            } else {
                code
            }
        )))
    }
}

/// The `X-Amz-*` parameters a presigned URL may carry.
const PRESIGN_PARAMS: [&str; 7] = [
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

/// A checked request, ready to send: what STS is sent, until when its signature
/// holds, and the digest it is cached by.
struct Call {
    presigned: bool,
    query: Option<String>,
    headers: Vec<(String, String)>,
    body: Option<String>,
    valid_until: Instant,
    key: [u8; 32],
}

fn refused(why: &str) -> CredentialError {
    CredentialError::Refused(why.to_string())
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

/// The `SignedHeaders=` list of a SigV4 `Authorization` header, which must have
/// exactly one `Credential`, `SignedHeaders` and `Signature`.
fn signed_headers_of(authorization: &str) -> Result<Vec<String>, CredentialError> {
    let rest = authorization
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| refused("the Authorization header is not AWS4-HMAC-SHA256"))?;
    let parts: Vec<(&str, &str)> = rest
        .split(',')
        .map(|part| part.trim().split_once('=').unwrap_or((part.trim(), "")))
        .collect();
    let one = |name: &str| {
        let mut found = parts.iter().filter(|(k, _)| *k == name);
        match (found.next(), found.next()) {
            (Some((_, v)), None) => Ok(*v),
            _ => Err(refused(
                "the Authorization header must have one Credential, SignedHeaders and Signature",
            )),
        }
    };
    one("Credential")?;
    one("Signature")?;
    if parts.len() != 3 {
        return Err(refused(
            "the Authorization header must have one Credential, SignedHeaders and Signature",
        ));
    }
    Ok(one("SignedHeaders")?
        .split(';')
        .map(str::to_ascii_lowercase)
        .collect())
}

/// When a request signed at `x_amz_date` (`20261205T101500Z`) stops being accepted, as
/// an instant of this process; refused when it already has, or is dated too far ahead.
fn valid_until(x_amz_date: &str, lifetime: Duration) -> Result<Instant, CredentialError> {
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

/// A transport error's kind, without its URL (the caller's query string never reaches
/// a log through it).
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
    fn ambiguous_requests_are_refused_before_sts_sees_them() {
        let date = now_amz();
        let signed = "host;x-amz-date;x-axnt-server-id";
        let mut twice_named = signed_headers(&date, "axnt.example", signed);
        twice_named["x-axnt-server-id"] = serde_json::json!(["other"]);
        let mut two_values = signed_headers(&date, "axnt.example", signed);
        two_values["X-Axnt-Server-Id"] = serde_json::json!(["axnt.example", "other"]);
        let mut two_lists = signed_headers(&date, "axnt.example", signed);
        two_lists["Authorization"] = serde_json::json!([format!(
            "AWS4-HMAC-SHA256 Credential=AKID/20261205/eu-west-1/sts/aws4_request, SignedHeaders={signed}, SignedHeaders=host;x-amz-date, Signature=00"
        )]);
        let mut malformed = signed_headers(&date, "axnt.example", signed);
        malformed["X-Extra"] = serde_json::json!(["a\nb"]);
        let presign = |extra: &str| {
            format!(
                "{URL}?Action=GetCallerIdentity&Version=2011-06-15&X-Amz-Algorithm=AWS4-HMAC-SHA256\
                 &X-Amz-Credential=AKID%2F20261205%2Feu-west-1%2Fsts%2Faws4_request&X-Amz-Date={date}\
                 &X-Amz-Expires=60&X-Amz-SignedHeaders=host%3Bx-axnt-server-id&X-Amz-Signature=00{extra}"
            )
        };
        let presigned_headers = serde_json::json!({"X-Axnt-Server-Id": ["axnt.example"]});
        assert_eq!(
            why(&credential(
                "GET",
                &presign(""),
                presigned_headers.clone(),
                ""
            )),
            "accepted"
        );
        let cases = [
            (credential("POST", URL, twice_named, BODY), "twice"),
            (credential("POST", URL, two_values, BODY), "one value"),
            (
                credential("POST", URL, two_lists, BODY),
                "one Credential, SignedHeaders",
            ),
            (credential("POST", URL, malformed, BODY), "malformed header"),
            (
                credential(
                    "GET",
                    &presign("&X-Amz-Foo=1"),
                    presigned_headers.clone(),
                    "",
                ),
                "does not define",
            ),
            (
                credential(
                    "GET",
                    &presign("&X-Amz-Date=20200101T000000Z"),
                    presigned_headers.clone(),
                    "",
                ),
                "twice",
            ),
            (
                credential("GET", &presign("&RoleArn=x"), presigned_headers, ""),
                "exactly",
            ),
        ];
        for (credential, expected) in cases {
            let why = why(&credential);
            assert!(why.contains(expected), "{why} ~ {expected}");
        }
    }

    #[test]
    fn one_signed_request_is_one_cache_entry_however_it_is_encoded() {
        let headers = signed_headers(
            &now_amz(),
            "axnt.example",
            "host;x-amz-date;x-axnt-server-id",
        );
        let json =
            serde_json::json!({"method": "POST", "url": URL, "headers": headers, "body": BODY});
        let compact = json.to_string();
        let spaced = serde_json::to_string_pretty(&json).expect("json");
        let engines = [
            base64::engine::general_purpose::STANDARD.encode(&compact),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&compact),
            base64::engine::general_purpose::STANDARD.encode(&spaced),
        ];
        let verifier = verifier();
        let keys: Vec<[u8; 32]> = engines
            .iter()
            .map(|c| {
                verifier
                    .check(c)
                    .map(|call| call.key)
                    .map_err(|e| e.to_string())
                    .expect("accepted")
            })
            .collect();
        assert!(keys.iter().all(|k| *k == keys[0]));
    }
}
