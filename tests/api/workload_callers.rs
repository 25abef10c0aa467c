//! Callers that prove who they are with the identity they already have, beside API
//! keys: an AWS IAM user or role (a signed `sts:GetCallerIdentity` this service sends
//! to STS, here a moto of the test's own that enforces IAM, so a bad signature is
//! refused by STS itself) and an OIDC workload token (here from the fake provider,
//! which serves discovery and JWKS as any issuer does). Each caller has the same
//! limits a key has, is named in the audit and metrics, and no credential reaches a
//! log.
//!
//! The header format is Vault's `iam` auth method's: base64 of `{"method", "url",
//! "headers", "body"}` with each header a list of values (Go's `http.Header`),
//! <https://developer.hashicorp.com/vault/docs/auth/aws#iam-auth-method>. The request
//! is STS's `GetCallerIdentity`, `Action=GetCallerIdentity&Version=2011-06-15`,
//! <https://docs.aws.amazon.com/STS/latest/APIReference/API_GetCallerIdentity.html>.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{
    self, API_KEY, Backend, FakeProvider, TestApp, app_with_keys, assert_problem, audit_until, aws,
};

const SERVER_ID: &str = "axnt.tests.internal";
/// moto's account.
const ACCOUNT: &str = "123456789012";

/// Credentials to sign with: an IAM user's keys, or an assumed role's session.
struct Signer {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl From<&aws::AwsCredentials> for Signer {
    fn from(c: &aws::AwsCredentials) -> Self {
        Self {
            access_key_id: c.access_key_id.clone(),
            secret_access_key: c.secret_access_key.clone(),
            session_token: None,
        }
    }
}

impl Signer {
    /// The example keys AWS's documentation prints: a signature no STS accepts.
    fn example() -> Self {
        Self {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }
}

const GET_CALLER_IDENTITY: &str = "Action=GetCallerIdentity&Version=2011-06-15";

/// An STS query-API POST of `body` to `endpoint`, signed (SigV4) at `at` by `signer`
/// as an SDK signs it, with `server_id` in `X-Axnt-Server-Id`: its URL and headers.
fn signed_sts(
    endpoint: &str,
    signer: &Signer,
    body: &str,
    server_id: &str,
    at: SystemTime,
) -> (String, Vec<(String, String)>) {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    use aws_sigv4::sign::v4;
    let url = format!("{endpoint}/");
    let parsed = url::Url::parse(&url).expect("endpoint URL");
    let host = format!(
        "{}:{}",
        parsed.host_str().expect("host"),
        parsed.port().expect("port")
    );
    let mut headers = vec![
        ("Host".to_string(), host),
        (
            "Content-Type".to_string(),
            "application/x-www-form-urlencoded; charset=utf-8".to_string(),
        ),
        ("X-Axnt-Server-Id".to_string(), server_id.to_string()),
    ];
    let identity = aws_credential_types::Credentials::new(
        &signer.access_key_id,
        &signer.secret_access_key,
        signer.session_token.clone(),
        None,
        "tests",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("sts")
        .time(at)
        .settings(SigningSettings::default())
        .build()
        .expect("signing params")
        .into();
    let signable = SignableRequest::new(
        "POST",
        &url,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body.as_bytes()),
    )
    .expect("signable request");
    let (instructions, _) = sign(signable, &params).expect("sign").into_parts();
    for (name, value) in instructions.headers() {
        headers.push((name.to_string(), value.to_string()));
    }
    (url, headers)
}

/// `Authorization: AWS-IAM …` for a `GetCallerIdentity` signed at `at` by `signer`
/// for `endpoint`, with `server_id` in `X-Axnt-Server-Id`.
fn aws_iam(endpoint: &str, signer: &Signer, server_id: &str, at: SystemTime) -> String {
    let (url, headers) = signed_sts(endpoint, signer, GET_CALLER_IDENTITY, server_id, at);
    let headers: serde_json::Map<String, Value> =
        headers.into_iter().map(|(k, v)| (k, json!([v]))).collect();
    let request =
        json!({"method": "POST", "url": url, "headers": headers, "body": GET_CALLER_IDENTITY});
    base64::engine::general_purpose::STANDARD.encode(request.to_string())
}

/// A session of `role_arn`, assumed (STS `AssumeRole`, signed) by `user` on moto.
async fn assume_role(endpoint: &str, user: &aws::AwsCredentials, role_arn: &str) -> Signer {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("Action", "AssumeRole")
        .append_pair("Version", "2011-06-15")
        .append_pair("RoleArn", role_arn)
        .append_pair("RoleSessionName", "worker-1")
        .finish();
    let (url, headers) = signed_sts(endpoint, &user.into(), &body, "unused", SystemTime::now());
    let mut request = reqwest::Client::new().post(url).body(body);
    for (name, value) in headers.iter().filter(|(n, _)| n != "Host") {
        request = request.header(name.as_str(), value.as_str());
    }
    let answer = request.send().await.expect("AssumeRole");
    let status = answer.status();
    let text = answer.text().await.expect("AssumeRole body");
    assert!(status.is_success(), "AssumeRole: {status} {text}");
    Signer {
        access_key_id: aws::xml_tag(&text, "AccessKeyId"),
        secret_access_key: aws::xml_tag(&text, "SecretAccessKey"),
        session_token: Some(aws::xml_tag(&text, "SessionToken")),
    }
}

/// The same signed request with one header's value replaced.
fn with_header(credential: &str, name: &str, value: &str) -> String {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut request: Value =
        serde_json::from_slice(&engine.decode(credential).expect("base64")).expect("json");
    request["headers"][name] = json!([value]);
    engine.encode(request.to_string())
}

async fn get_as(app: &TestApp, authorization: &str, path: &str) -> reqwest::Response {
    app.http
        .get(app.url(path))
        .header("Authorization", authorization)
        .send()
        .await
        .expect("request")
}

/// Seconds since the epoch, for a token's `iat` and `exp`.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A workload token of `claims`, signed RS256 by the fake issuer's current key and
/// naming it.
fn workload_token(provider: &FakeProvider, claims: &Value) -> String {
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": provider.signing_kid()});
    provider.signed_jwt(&header, claims, false)
}

/// `axnt_caller_checks_total{kind, outcome}` as `/metrics` shows it.
async fn checks(app: &TestApp, kind: &str, outcome: &str) -> f64 {
    let text = app.metrics().await;
    text.lines()
        .filter(|l| l.starts_with("axnt_caller_checks_total{"))
        .filter(|l| {
            l.contains(&format!("kind=\"{kind}\"")) && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Two IAM users on a moto that enforces IAM: `token-reader`, mapped to a caller that
/// may read Google tokens of `tenant-a:` users, and `stranger`, mapped to none. A
/// signed request of each; a wrong server id, an expired and a tampered request, and
/// the unmapped user are refused; a hot caller reusing its signed request costs STS
/// less than one call per hundred reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_callers_are_proved_by_sts_mapped_by_arn_and_cached() {
    // Three users (four calls each) and a role (three), made before moto enforces IAM.
    let moto = aws::OwnMoto::start(&[(
        "INITIAL_NO_AUTH_ACTION_COUNT",
        &(3 * aws::IAM_CALLS_PER_USER + 3).to_string(),
    )])
    .await;
    let policy = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "sts:GetCallerIdentity", "Resource": "*"},
        {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}
    ]});
    let reader = aws::iam_user(&moto.endpoint, "token-reader", &policy).await;
    let stranger = aws::iam_user(&moto.endpoint, "stranger", &policy).await;
    let assumer = aws::iam_user(&moto.endpoint, "assumer", &policy).await;
    let trust = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:user/assumer")}, "Action": "sts:AssumeRole"}
    ]});
    let role = aws::iam_call(
        &moto.endpoint,
        &[
            ("Action", "CreateRole"),
            ("RoleName", "reader-role"),
            ("Path", "/team/"),
            ("AssumeRolePolicyDocument", &trust.to_string()),
        ],
    )
    .await;
    let role_arn = aws::xml_tag(&role, "Arn");
    assert_eq!(
        role_arn,
        format!("arn:aws:iam::{ACCOUNT}:role/team/reader-role")
    );
    let role_policy = aws::iam_call(
        &moto.endpoint,
        &[
            ("Action", "CreatePolicy"),
            ("PolicyName", "reader-role-policy"),
            ("PolicyDocument", &policy.to_string()),
        ],
    )
    .await;
    aws::iam_call(
        &moto.endpoint,
        &[
            ("Action", "AttachRolePolicy"),
            ("RoleName", "reader-role"),
            ("PolicyArn", &aws::xml_tag(&role_policy, "Arn")),
        ],
    )
    .await;
    let provider = FakeProvider::start().await;
    let callers = json!([
        API_KEY,
        {
            "name": "iam-reader",
            "iamArn": format!("arn:aws:iam::{ACCOUNT}:user/token-reader"),
            "operations": ["read_tokens"],
            "providers": ["google"],
            "userIds": ["tenant-a:*"],
        },
        {
            "name": "role-reader",
            "iamArn": role_arn,
            "operations": ["read_tokens"],
        },
    ]);
    let app = app_with_keys(
        Backend::Embedded,
        &provider,
        &callers,
        &[
            ("AXNT_IAM_SERVER_ID", SERVER_ID),
            ("AXNT_IAM_STS_ENDPOINT", &moto.endpoint),
            ("AXNT_AUDIT_WINDOW_SECS", "1"),
        ],
    )
    .await;
    for user in ["tenant-a:kim", "tenant-b:lee"] {
        assert!(app.connect(user).await.status().is_success(), "{user}");
    }
    let reader = Signer::from(&reader);
    let credential = aws_iam(&moto.endpoint, &reader, SERVER_ID, SystemTime::now());
    let as_reader = format!("AWS-IAM {credential}");

    let read = get_as(&app, &as_reader, "/v1/users/tenant-a:kim/tokens/google").await;
    assert_eq!(read.status(), StatusCode::OK);
    let body: Value = read.json().await.expect("json");
    assert!(
        body["accessToken"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    let me: Value = get_as(&app, &as_reader, "/v1/whoami")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(me["name"], "iam-reader", "{me}");
    assert_eq!(me["kind"], "iam", "{me}");
    assert_eq!(me["operations"], json!(["read_tokens"]), "{me}");
    assert_eq!(me["userIds"], json!(["tenant-a:*"]), "{me}");

    // A session of the role is matched by its role (whose path STS leaves out).
    let session = assume_role(&moto.endpoint, &assumer, &role_arn).await;
    let as_role = format!(
        "AWS-IAM {}",
        aws_iam(&moto.endpoint, &session, SERVER_ID, SystemTime::now())
    );
    let read = get_as(&app, &as_role, "/v1/users/tenant-b:lee/tokens/google").await;
    assert_eq!(read.status(), StatusCode::OK);
    let me: Value = get_as(&app, &as_role, "/v1/whoami")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(me["name"], "role-reader", "{me}");

    // Its limits hold as a key's do.
    let other_tenant = get_as(&app, &as_reader, "/v1/users/tenant-b:lee/tokens/google").await;
    assert_problem(other_tenant, 403, "caller_not_allowed").await;
    let other_operation = get_as(&app, &as_reader, "/v1/connections").await;
    assert_problem(other_operation, 403, "caller_not_allowed").await;

    // Refused: a user no caller names, another service's id, an expired request, a
    // tampered one (STS checks the signature), and what is not a signed request.
    let path = "/v1/users/tenant-a:kim/tokens/google";
    let unmapped = aws_iam(
        &moto.endpoint,
        &Signer::from(&stranger),
        SERVER_ID,
        SystemTime::now(),
    );
    let body = assert_problem(
        get_as(&app, &format!("AWS-IAM {unmapped}"), path).await,
        401,
        "unauthorized",
    )
    .await;
    assert!(
        !body.to_string().contains("iam-reader"),
        "no other caller is named: {body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("user/stranger is not a caller")),
        "{body}"
    );
    let elsewhere = aws_iam(
        &moto.endpoint,
        &reader,
        "another-service",
        SystemTime::now(),
    );
    let body = assert_problem(
        get_as(&app, &format!("AWS-IAM {elsewhere}"), path).await,
        401,
        "unauthorized",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("X-Axnt-Server-Id")),
        "{body}"
    );
    let old = aws_iam(
        &moto.endpoint,
        &reader,
        SERVER_ID,
        SystemTime::now() - Duration::from_secs(20 * 60),
    );
    let body = assert_problem(
        get_as(&app, &format!("AWS-IAM {old}"), path).await,
        401,
        "unauthorized",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("expired")),
        "{body}"
    );
    let fresh = aws_iam(&moto.endpoint, &reader, SERVER_ID, SystemTime::now());
    let tampered = with_header(&fresh, "Content-Type", "application/x-www-form-urlencoded");
    let body = assert_problem(
        get_as(&app, &format!("AWS-IAM {tampered}"), path).await,
        401,
        "unauthorized",
    )
    .await;
    // Refused by STS itself: the signature no longer matches.
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("STS refused")),
        "{body}"
    );
    assert_problem(
        get_as(&app, "AWS-IAM bm90IGEgcmVxdWVzdA==", path).await,
        401,
        "unauthorized",
    )
    .await;

    // A hot caller: 300 reads with one signed request.
    let asked_before = checks(&app, "iam", "verified").await;
    for _ in 0..300 {
        let read = get_as(&app, &as_reader, path).await;
        assert_eq!(read.status(), StatusCode::OK);
    }
    let asked = checks(&app, "iam", "verified").await - asked_before;
    assert!(asked < 3.0, "{asked} STS calls for 300 reads");
    assert!(checks(&app, "iam", "cached").await >= 300.0);

    // Named in the audit and the metrics; no credential in a log.
    let items = audit_until(&app, "caller=iam-reader", |items| {
        items
            .iter()
            .filter(|i| i["outcome"] == "served" || i["outcome"] == "refreshed")
            .map(|i| i["count"].as_u64().unwrap_or(0))
            .sum::<u64>()
            >= 301
    })
    .await;
    assert!(
        items.iter().all(|i| i["caller"] == "iam-reader"),
        "{items:?}"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("caller=\"iam-reader\""),
        "api calls are counted by the caller's name"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let logs = support::captured_logs();
    for secret in [
        credential.as_str(),
        &reader.secret_access_key,
        &stranger.secret_access_key,
        &session.secret_access_key,
        unmapped.as_str(),
    ] {
        assert!(!logs.contains(secret), "a credential reached the log");
        assert!(
            !metrics.contains(secret),
            "a credential reached the metrics"
        );
    }
}

/// A caller bound to Kubernetes-shaped workload tokens of the fake provider (its
/// issuer, audience `axnt-oauth`, `sub` of `tenant-a`'s service accounts): a token
/// with those claims reads; a wrong audience, an expired token, another subject, a
/// key the issuer does not publish, `alg: none`, HS256 keyed with the public key and a
/// token of an issuer nobody trusts are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_workload_tokens_prove_their_callers() {
    let provider = FakeProvider::start().await;
    let issuer = provider.issuer();
    let callers = json!([
        API_KEY,
        // The first caller a token matches is its caller: the manager's exact subject
        // before the namespace's pattern.
        {
            "name": "k8s-manager",
            "oidc": {
                "issuer": issuer,
                "audience": "axnt-oauth",
                "claims": {"sub": "system:serviceaccount:tenant-a:manager"},
            },
            "operations": ["manage_connections", "read_logs"],
            "userIds": ["tenant-a:*"],
        },
        {
            "name": "k8s-reader",
            "oidc": {
                "issuer": issuer,
                "audience": "axnt-oauth",
                "claims": {"sub": "system:serviceaccount:tenant-a:*"},
            },
            "operations": ["read_tokens"],
            "userIds": ["tenant-a:*"],
        },
    ]);
    let app = app_with_keys(
        Backend::Embedded,
        &provider,
        &callers,
        &[("AXNT_AUDIT_WINDOW_SECS", "1")],
    )
    .await;
    for user in ["tenant-a:kim", "tenant-b:lee"] {
        assert!(app.connect(user).await.status().is_success(), "{user}");
    }
    let now = now_secs();
    let claims = |changes: Value| {
        let mut claims = json!({
            "iss": issuer,
            "aud": "axnt-oauth",
            "sub": "system:serviceaccount:tenant-a:reader",
            "iat": now,
            "exp": now + 600,
        });
        for (k, v) in changes.as_object().expect("object") {
            claims[k] = v.clone();
        }
        claims
    };
    let kid = provider.signing_kid();
    let rs256 = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
    let token = workload_token(&provider, &claims(json!({})));
    let bearer = |t: &str| format!("Bearer {t}");
    let path = "/v1/users/tenant-a:kim/tokens/google";

    let read = get_as(&app, &bearer(&token), path).await;
    assert_eq!(read.status(), StatusCode::OK);
    let me: Value = get_as(&app, &bearer(&token), "/v1/whoami")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(me["name"], "k8s-reader", "{me}");
    assert_eq!(me["kind"], "oidc", "{me}");
    let other_tenant = get_as(
        &app,
        &bearer(&token),
        "/v1/users/tenant-b:lee/tokens/google",
    )
    .await;
    assert_problem(other_tenant, 403, "caller_not_allowed").await;

    // HS256 keyed with the issuer's public key (as published), the classic confusion.
    let discovery: Value = reqwest::get(format!("{issuer}/.well-known/openid-configuration"))
        .await
        .expect("discovery")
        .json()
        .await
        .expect("discovery json");
    let jwks: Value = reqwest::get(discovery["jwks_uri"].as_str().expect("jwks_uri"))
        .await
        .expect("jwks")
        .json()
        .await
        .expect("jwks json");
    let public = jwks["keys"][0].to_string();
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let input = format!(
        "{}.{}",
        engine.encode(json!({"alg": "HS256", "typ": "JWT", "kid": kid}).to_string()),
        engine.encode(claims(json!({})).to_string())
    );
    let mac = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, public.as_bytes()),
        input.as_bytes(),
    );
    let hs256 = format!("{input}.{}", engine.encode(mac.as_ref()));
    let none = format!(
        "{}.{}.",
        engine.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
        engine.encode(claims(json!({})).to_string())
    );
    let refused = [
        ("another audience", provider.signed_jwt(&rs256, &claims(json!({"aud": "someone-else"})), false)),
        ("expired", provider.signed_jwt(&rs256, &claims(json!({"iat": now - 1200, "exp": now - 600})), false)),
        ("another subject", provider.signed_jwt(&rs256, &claims(json!({"sub": "system:serviceaccount:tenant-b:reader"})), false)),
        ("a key not published", provider.signed_jwt(&json!({"alg": "RS256", "typ": "JWT", "kid": "not-published"}), &claims(json!({})), true)),
        ("a rogue key under a published kid", provider.signed_jwt(&rs256, &claims(json!({})), true)),
        ("alg none", none),
        ("HS256 with the public key", hs256),
        ("an issuer nobody trusts", provider.signed_jwt(&rs256, &claims(json!({"iss": "https://issuer.invalid"})), false)),
        ("no expiry", provider.signed_jwt(&rs256, &json!({"iss": issuer, "aud": "axnt-oauth", "sub": "system:serviceaccount:tenant-a:reader"}), false)),
    ];
    for (why, token) in &refused {
        let answer = get_as(&app, &bearer(token), path).await;
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "{why}");
        let body: Value = answer.json().await.expect("json");
        assert_eq!(body["code"], "unauthorized", "{why}: {body}");
    }
    // Another caller of the same issuer, told apart by its subject; the flow log
    // names it on the steps it made.
    let manager = provider.signed_jwt(
        &rs256,
        &claims(json!({"sub": "system:serviceaccount:tenant-a:manager"})),
        false,
    );
    let session = app
        .http
        .post(app.url("/v1/connect-sessions"))
        .bearer_auth(&manager)
        .json(&json!({"userId": "tenant-a:new", "provider": "google"}))
        .send()
        .await
        .expect("session");
    assert!(
        session.status().is_success(),
        "{}",
        session.text().await.unwrap_or_default()
    );
    let reader_may_not = app
        .http
        .post(app.url("/v1/connect-sessions"))
        .bearer_auth(&token)
        .json(&json!({"userId": "tenant-a:new", "provider": "google"}))
        .send()
        .await
        .expect("session");
    assert_problem(reader_may_not, 403, "caller_not_allowed").await;
    let steps: Value = get_as(&app, &bearer(&manager), "/v1/users/tenant-a:new/flow-logs")
        .await
        .json()
        .await
        .expect("json");
    let created = steps["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["step"] == "session_created")
        .unwrap_or_else(|| panic!("no session_created step: {steps}"));
    assert_eq!(created["data"]["caller"], "k8s-manager", "{created}");

    // API keys work unchanged beside them.
    assert_eq!(
        get_as(&app, &bearer(API_KEY), path).await.status(),
        StatusCode::OK
    );

    let items = audit_until(&app, "caller=k8s-reader", |items| !items.is_empty()).await;
    assert!(
        items.iter().all(|i| i["caller"] == "k8s-reader"),
        "{items:?}"
    );
    assert!(app.metrics().await.contains("caller=\"k8s-reader\""));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let logs = support::captured_logs();
    let signature = token.rsplit('.').next().expect("signature");
    assert!(
        !logs.contains(signature),
        "a workload token reached the log"
    );
    for (_, token) in &refused {
        if let Some(signature) = token.rsplit('.').next().filter(|s| !s.is_empty()) {
            assert!(!logs.contains(signature), "a refused token reached the log");
        }
    }
}

/// When STS or a workload token's issuer does not answer, a caller of those kinds is
/// told to retry (503 `identity_unavailable`, `Retry-After`), not that it is unknown;
/// API keys go on working meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_whose_identity_cannot_be_checked_is_told_to_retry() {
    // STS refuses connections (nothing listens); the issuer accepts and never answers.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let sts = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let issuer = format!("http://{}", silent.local_addr().expect("addr"));
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let provider = FakeProvider::start().await;
    let callers = json!([
        API_KEY,
        {"name": "iam-reader", "iamArn": format!("arn:aws:iam::{ACCOUNT}:user/token-reader")},
        {"name": "ci", "oidc": {"issuer": issuer, "audience": "axnt-oauth", "claims": {"sub": "job"}}},
    ]);
    let app = app_with_keys(
        Backend::Embedded,
        &provider,
        &callers,
        &[
            ("AXNT_IAM_SERVER_ID", SERVER_ID),
            ("AXNT_IAM_STS_ENDPOINT", &sts),
            ("AXNT_PROVIDER_TIMEOUT_SECS", "1"),
        ],
    )
    .await;
    assert!(app.connect("kim").await.status().is_success());
    let path = "/v1/users/kim/tokens/google";

    let signer = Signer::example();
    let iam = format!(
        "AWS-IAM {}",
        aws_iam(&sts, &signer, SERVER_ID, SystemTime::now())
    );
    let answer = get_as(&app, &iam, path).await;
    assert!(answer.headers().contains_key("retry-after"));
    assert_problem(answer, 503, "identity_unavailable").await;

    let now = now_secs();
    let token = workload_token(
        &provider,
        &json!({"iss": issuer, "aud": "axnt-oauth", "sub": "job", "exp": now + 600}),
    );
    let answer = get_as(&app, &format!("Bearer {token}"), path).await;
    assert!(answer.headers().contains_key("retry-after"));
    assert_problem(answer, 503, "identity_unavailable").await;

    assert_eq!(
        get_as(&app, &format!("Bearer {API_KEY}"), path)
            .await
            .status(),
        StatusCode::OK
    );
    held.abort();
}

/// An STS stand-in on loopback that refuses every request as STS refuses a bad
/// signature, and counts them.
async fn refusing_sts() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let asked = std::sync::Arc::new(AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&asked);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let _ = socket.read(&mut buf).await;
                // As STS prints it: https://docs.aws.amazon.com/STS/latest/APIReference/CommonErrors.html
                let body = "<ErrorResponse><Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code><Message>no</Message></Error></ErrorResponse>";
                let answer = format!(
                    "HTTP/1.1 403 Forbidden\r\ncontent-type: text/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    (endpoint, asked)
}

/// A client that keeps presenting credentials that prove nothing is braked like one
/// with wrong keys (429), and its credentials are then not sent on to STS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_braked_client_is_not_sent_on_to_sts() {
    let (sts, asked) = refusing_sts().await;
    let provider = FakeProvider::start().await;
    let callers = json!([
        API_KEY,
        {"name": "iam-reader", "iamArn": format!("arn:aws:iam::{ACCOUNT}:user/token-reader")},
    ]);
    let app = app_with_keys(
        Backend::Embedded,
        &provider,
        &callers,
        &[
            ("AXNT_IAM_SERVER_ID", SERVER_ID),
            ("AXNT_IAM_STS_ENDPOINT", &sts),
            ("AXNT_RATE_LIMIT_AUTH_FAILURES_PER_MINUTE", "1"),
            ("AXNT_RATE_LIMIT_AUTH_FAILURES_BURST", "3"),
        ],
    )
    .await;
    let signer = Signer::example();
    let path = "/v1/users/kim/tokens/google";
    let mut statuses = Vec::new();
    let mut asked_when_braked = None;
    for _ in 0..6 {
        // A new signature each time (X-Amz-Date has whole seconds), so no answer
        // comes from the cache.
        let forged = format!(
            "AWS-IAM {}",
            aws_iam(&sts, &signer, SERVER_ID, SystemTime::now())
        );
        let status = get_as(&app, &forged, path).await.status().as_u16();
        statuses.push(status);
        if status == 429 && asked_when_braked.is_none() {
            asked_when_braked = Some(asked.load(std::sync::atomic::Ordering::SeqCst));
        }
        tokio::time::sleep(Duration::from_millis(1_100)).await;
    }
    assert_eq!(statuses[..3], [401, 401, 401], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 429), "{statuses:?}");
    // The failure that trips the brake was checked; none after it.
    assert_eq!(
        Some(asked.load(std::sync::atomic::Ordering::SeqCst)),
        asked_when_braked,
        "STS was asked for the braked client"
    );
}

/// The issuer rotates its signing key: a token of the new key reads once the keys are
/// fetched again (at most every few seconds for a key not held). While the issuer is
/// away, the keys held go on serving, and a token of a key they lack is told to retry
/// (503), not that it is forged; when the issuer is back, it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_issuer_key_is_picked_up_and_an_outage_is_not_a_refusal() {
    let provider = FakeProvider::start().await;
    let issuer = provider.issuer();
    let callers = json!([
        API_KEY,
        {"name": "job", "oidc": {"issuer": issuer, "audience": "axnt-oauth", "claims": {"sub": "job"}}},
    ]);
    let app = app_with_keys(Backend::Embedded, &provider, &callers, &[]).await;
    assert!(app.connect("kim").await.status().is_success());
    let now = now_secs();
    let claims = json!({"iss": issuer, "aud": "axnt-oauth", "sub": "job", "exp": now + 600});
    let token = || format!("Bearer {}", workload_token(&provider, &claims));
    let path = "/v1/users/kim/tokens/google";
    let before = token();
    assert_eq!(get_as(&app, &before, path).await.status(), StatusCode::OK);

    provider.rotate_signing_key();
    let rotated = token();
    tokio::time::sleep(Duration::from_millis(5_200)).await;
    assert_eq!(get_as(&app, &rotated, path).await.status(), StatusCode::OK);

    provider.set_discovery_available(false);
    provider.rotate_signing_key();
    let during = token();
    tokio::time::sleep(Duration::from_millis(5_200)).await;
    assert_problem(
        get_as(&app, &during, path).await,
        503,
        "identity_unavailable",
    )
    .await;
    assert_eq!(
        get_as(&app, &rotated, path).await.status(),
        StatusCode::OK,
        "the keys held serve while the issuer is away"
    );

    provider.set_discovery_available(true);
    tokio::time::sleep(Duration::from_millis(5_200)).await;
    assert_eq!(get_as(&app, &during, path).await.status(), StatusCode::OK);
}
