//! aws-mode fixtures over a moto server: uniquely named tables (made by the product's
//! own `setup` code), a KMS key behind a unique alias, and a Secrets Manager secret.
//!
//! `scripts/test` starts moto and exports `TEST_AXNT_MOTO_ENDPOINT` (plus dummy AWS
//! credentials and `AWS_REGION`). A test needing moto fails, never skips, without it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axnt_oauth::config::Settings;
use base64::Engine;

/// The moto endpoint `scripts/test` started, or a failure saying how to get one.
pub fn moto_endpoint() -> String {
    match std::env::var("TEST_AXNT_MOTO_ENDPOINT") {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "TEST_AXNT_MOTO_ENDPOINT is not set: this test needs a moto server. Run the suite with \
             scripts/test (it starts moto), or start `moto_server -H 127.0.0.1 -p PORT` and export \
             TEST_AXNT_MOTO_ENDPOINT=http://127.0.0.1:PORT"
        ),
    }
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Access keys for moto.
#[derive(Debug, Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl AwsCredentials {
    /// The dummies `scripts/test` exports (any value works while moto checks nothing).
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "testing".into())
        };
        Self {
            access_key_id: var("AWS_ACCESS_KEY_ID"),
            secret_access_key: var("AWS_SECRET_ACCESS_KEY"),
        }
    }
}

/// The AWS SDK variables pointing at `endpoint` with `credentials`.
pub fn sdk_pairs(endpoint: &str, credentials: &AwsCredentials) -> Vec<(String, String)> {
    let region = std::env::var("AWS_REGION")
        .ok()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "us-east-1".into());
    vec![
        ("AWS_ENDPOINT_URL".into(), endpoint.to_string()),
        ("AWS_REGION".into(), region),
        (
            "AWS_ACCESS_KEY_ID".into(),
            credentials.access_key_id.clone(),
        ),
        (
            "AWS_SECRET_ACCESS_KEY".into(),
            credentials.secret_access_key.clone(),
        ),
    ]
}

/// Settings from env pairs (as the service would load them).
pub fn settings_from(pairs: &[(String, String)]) -> Settings {
    // The admin listener on a free port, so instances started side by side do not
    // collide on its default.
    let admin = (
        "AXNT_ADMIN_LISTEN_ADDR".to_string(),
        "127.0.0.1:0".to_string(),
    );
    let admin = (!pairs.iter().any(|(k, _)| *k == admin.0)).then_some(admin);
    Settings::load(None, pairs.iter().cloned().chain(admin)).expect("aws test settings load")
}

/// What [`provision`] made.
#[derive(Debug, Clone)]
pub struct AwsFixture {
    /// Env pairs to layer onto the service's settings.
    pub env: Vec<(String, String)>,
    pub tokens_table: String,
    /// The key's unique alias (`alias/axnt-test-…`), as `AXNT_KMS_KEY_ID`.
    pub key_alias: String,
    pub key_arn: String,
    pub secret_id: String,
    /// The secret's `state_key`.
    pub state_key: String,
}

impl AwsFixture {
    pub fn settings(&self) -> Settings {
        settings_from(&self.env)
    }

    /// The SDK configuration the service would use.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        axnt_oauth::aws::sdk_config(&self.settings()).await
    }
}

/// The secret document the fixture stores.
pub fn secret_json(client_id: &str, client_secret: &str, state_key: &str, api_key: &str) -> String {
    serde_json::json!({
        "client_id": client_id,
        "client_secret": client_secret,
        "state_key": state_key,
        "api_keys": [api_key],
    })
    .to_string()
}

/// Tables (through `axnt_oauth::aws::setup`), a KMS key with a unique alias, and a
/// secret holding `secret_string` (or, when `None`, client credentials, a state key
/// and `api_key`), on the moto at `endpoint`, acting as `credentials`.
pub async fn provision(
    endpoint: &str,
    credentials: &AwsCredentials,
    client_id: &str,
    client_secret: &str,
    api_key: &str,
    secret_string: Option<&str>,
) -> AwsFixture {
    let tokens_table = unique("axnt-test-tokens");
    let logs_table = unique("axnt-test-logs");
    let events_table = unique("axnt-test-events");
    let key_alias = format!("alias/{}", unique("axnt-test"));
    let secret_id = unique("axnt-test/google-oauth");
    let mut state = [0u8; 32];
    axnt_oauth::crypto::fill_random(&mut state);
    let state_key = base64::engine::general_purpose::STANDARD.encode(state);

    let mut env = vec![("AXNT_BACKEND".to_string(), "aws".to_string())];
    env.extend(sdk_pairs(endpoint, credentials));
    env.extend([
        ("DYNAMODB_OAUTH_TABLE".to_string(), tokens_table.clone()),
        ("DYNAMODB_OAUTH_LOGS_TABLE".to_string(), logs_table),
        ("DYNAMODB_OAUTH_EVENTS_TABLE".to_string(), events_table),
        ("AXNT_KMS_KEY_ID".to_string(), key_alias.clone()),
        ("AXNT_GOOGLE_SECRET_ID".to_string(), secret_id.clone()),
    ]);
    let settings = settings_from(&env);

    let report = axnt_oauth::aws::setup::ensure_tables(&settings, false)
        .await
        .unwrap_or_else(|e| panic!("setup of the test tables on moto at {endpoint} failed: {e}"));
    assert!(!report.changes.is_empty(), "fresh tables were created");

    let config = axnt_oauth::aws::sdk_config(&settings).await;
    let kms = aws_sdk_kms::Client::new(&config);
    let key = kms
        .create_key()
        .description("axnt-oauth test key")
        .send()
        .await
        .expect("moto CreateKey");
    let key_arn = key
        .key_metadata()
        .and_then(|m| m.arn())
        .expect("CreateKey returns an ARN")
        .to_string();
    // The alias name is unique to this call: "already exists" means an earlier attempt
    // of the SDK's own retry (its answer lost while moto was busy) created it.
    if let Err(e) = kms
        .create_alias()
        .alias_name(&key_alias)
        .target_key_id(&key_arn)
        .send()
        .await
    {
        let retried = e
            .as_service_error()
            .is_some_and(|s| s.is_already_exists_exception());
        assert!(retried, "moto CreateAlias: {e:?}");
    }

    let document = secret_string
        .map(str::to_string)
        .unwrap_or_else(|| secret_json(client_id, client_secret, &state_key, api_key));
    aws_sdk_secretsmanager::Client::new(&config)
        .create_secret()
        .name(&secret_id)
        .secret_string(document)
        .send()
        .await
        .expect("moto CreateSecret");

    AwsFixture {
        env,
        tokens_table,
        key_alias,
        key_arn,
        secret_id,
        state_key,
    }
}

/// The fixture on the suite's moto with its dummy credentials.
pub async fn fixture(client_id: &str, client_secret: &str, api_key: &str) -> AwsFixture {
    provision(
        &moto_endpoint(),
        &AwsCredentials::from_env(),
        client_id,
        client_secret,
        api_key,
        None,
    )
    .await
}

/// The API key in [`default_fixture`]'s secret.
pub const API_KEY: &str = "aws-test-api-key-0123456789";

/// The fixture the aws-mode tests share: client `client-1`, secret `secret-1`, [`API_KEY`].
pub async fn default_fixture() -> AwsFixture {
    fixture("client-1", "secret-1", API_KEY).await
}

/// Env pairs putting the service in aws mode on fresh tables, key and secret (holding
/// the client credentials, a state key and `api_key`) on the suite's moto.
pub async fn aws_env(client_id: &str, client_secret: &str, api_key: &str) -> Vec<(String, String)> {
    fixture(client_id, client_secret, api_key).await.env
}

/// `$TEST_AXNT_MOTO_SERVER_BIN`, which `scripts/test` exports.
fn moto_server_bin() -> String {
    std::env::var("TEST_AXNT_MOTO_SERVER_BIN").unwrap_or_else(|_| {
        panic!(
            "TEST_AXNT_MOTO_SERVER_BIN is not set: run the suite with scripts/test, or export it \
             as the path of moto_server (e.g. .venv-moto/bin/moto_server)"
        )
    })
}

/// A moto server of a test's own (for IAM enforcement, or a load of its own), stopped
/// on drop.
pub struct OwnMoto {
    pub endpoint: String,
    child: Child,
}

impl Drop for OwnMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OwnMoto {
    /// Starts `$TEST_AXNT_MOTO_SERVER_BIN` on a free loopback port with `env`, and
    /// waits until it answers.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        Self::launch(Command::new(moto_server_bin()), env).await
    }

    /// Like the suite's own: moto answering one request at a time (through
    /// `scripts/moto-serial.py`, with the venv's Python), so conditional writes are
    /// atomic. For a test whose load would otherwise queue every other test behind it.
    pub async fn serial() -> Self {
        let bin = moto_server_bin();
        let python = std::path::Path::new(&bin).with_file_name("python");
        let mut command = Command::new(python);
        command.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/moto-serial.py"
        ));
        Self::launch(command, &[]).await
    }

    async fn launch(mut command: Command, env: &[(&str, &str)]) -> Self {
        let bin = format!("{:?}", command.get_program());
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let moto = Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            child,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = http
                .get(format!("{}/moto-api/", moto.endpoint))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return moto;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server on port {port} did not answer within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// An IAM user made through moto's IAM query API with one inline-managed policy, and
/// its access keys. Sent before moto enforces IAM (each call counts towards
/// `INITIAL_NO_AUTH_ACTION_COUNT`: [`IAM_CALLS_PER_USER`] per user), so the request
/// need not be signed; the Authorization header only tells moto which service it is.
pub async fn iam_user(endpoint: &str, name: &str, policy: &serde_json::Value) -> AwsCredentials {
    iam_call(endpoint, &[("Action", "CreateUser"), ("UserName", name)]).await;
    let created = iam_call(
        endpoint,
        &[
            ("Action", "CreatePolicy"),
            ("PolicyName", &format!("{name}-policy")),
            ("PolicyDocument", &policy.to_string()),
        ],
    )
    .await;
    let arn = xml_tag(&created, "Arn");
    iam_call(
        endpoint,
        &[
            ("Action", "AttachUserPolicy"),
            ("UserName", name),
            ("PolicyArn", &arn),
        ],
    )
    .await;
    let keys = iam_call(
        endpoint,
        &[("Action", "CreateAccessKey"), ("UserName", name)],
    )
    .await;
    AwsCredentials {
        access_key_id: xml_tag(&keys, "AccessKeyId"),
        secret_access_key: xml_tag(&keys, "SecretAccessKey"),
    }
}

/// One call of moto's IAM query API with `params` (`Action` among them), sent before
/// moto enforces IAM (it counts towards `INITIAL_NO_AUTH_ACTION_COUNT`); its answer.
pub async fn iam_call(endpoint: &str, params: &[(&str, &str)]) -> String {
    let mut form = vec![("Version", "2010-05-08")];
    form.extend_from_slice(params);
    let response = reqwest::Client::new()
        .post(format!("{endpoint}/"))
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDBOOTSTRAP/20250101/us-east-1/iam/aws4_request, \
             SignedHeaders=host, Signature=00",
        )
        .form(&form)
        .send()
        .await
        .expect("moto IAM call");
    let status = response.status();
    let body = response.text().await.expect("moto IAM body");
    assert!(status.is_success(), "moto IAM call failed: {status} {body}");
    body
}

/// The text of the first `<tag>` of a moto answer.
pub fn xml_tag(body: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let start = body.find(&open).map(|i| i + open.len());
    let end = body.find(&format!("</{tag}>"));
    match (start, end) {
        (Some(s), Some(e)) if s <= e => body[s..e].to_string(),
        _ => panic!("no <{tag}> in moto's answer: {body}"),
    }
}

/// IAM calls [`iam_user`] makes.
pub const IAM_CALLS_PER_USER: usize = 4;

/// `deploy/iam-policy.json`'s actions with `Resource: "*"` (moto checks these
/// services against `*` only), optionally without some actions.
pub fn runtime_policy_for_moto(without: &[&str]) -> serde_json::Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/iam-policy.json"
    ))
    .expect("deploy/iam-policy.json is readable");
    let policy: serde_json::Value =
        serde_json::from_str(&text).expect("deploy/iam-policy.json is JSON");
    let mut actions: Vec<String> = policy["Statement"]
        .as_array()
        .expect("Statement is a list")
        .iter()
        .flat_map(|s| s["Action"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_string))
        .filter(|a| !without.contains(&a.as_str()))
        .collect();
    // AWS authorizes each item of a TransactWriteItems by its own action (PutItem,
    // UpdateItem, DeleteItem: no IAM action is named after the call). moto checks the
    // call's name instead, so the policy it enforces names it where AWS would allow the
    // transaction's items.
    if actions.iter().any(|a| a == "dynamodb:PutItem") {
        actions.push("dynamodb:TransactWriteItems".into());
    }
    actions.sort();
    actions.dedup();
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]
    })
}
