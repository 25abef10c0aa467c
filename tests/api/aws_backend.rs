//! aws mode against moto with the real SDK clients: KMS envelopes and the data-key
//! cache, Secrets Manager (rotation, both JSON shapes, malformed secrets), `setup`,
//! `check`, and the run-time IAM policy under moto's IAM enforcement.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::{BillingMode, KeyType, ScalarAttributeType, TimeToLiveStatus};
use axnt_oauth::app::{App, Backends, StartupError};
use axnt_oauth::aws::setup::{Change, ensure_tables};
use axnt_oauth::crypto::cache::{CacheLimits, CachingKeyProvider};
use axnt_oauth::crypto::kms::KmsKeyProvider;
use axnt_oauth::crypto::{CryptoError, EnvelopeCipher, KeyProvider};
use axnt_oauth::secrets::secrets_manager::SecretsManagerSource;
use axnt_oauth::secrets::{ApiKey, SecretError, SecretsCache};
use axnt_oauth::store::flow_log::SortKeyClock;
use axnt_oauth::store::{Connection, FlowLogEntry, FlowStep, StoreError, UserInfo};
use chrono::Utc;
use secrecy::ExposeSecret;

use crate::support::aws;
use crate::support::aws::{AwsCredentials, AwsFixture, OwnMoto};

const API_KEY: &str = "aws-test-api-key-0123456789";

async fn fixture() -> AwsFixture {
    aws::fixture("client-1", "secret-1", API_KEY).await
}

fn limits(max_uses: u64, max_age: Duration, ttl: Duration) -> CacheLimits {
    CacheLimits {
        max_uses,
        max_age,
        decrypted_entries: 100,
        decrypted_ttl: ttl,
    }
}

// ---- KMS ----------------------------------------------------------------------------

#[tokio::test]
async fn kms_envelopes_are_bound_to_their_context_and_row() {
    let f = fixture().await;
    let config = f.sdk_config().await;
    let kms: Arc<dyn KeyProvider> = Arc::new(KmsKeyProvider::new(&config, &f.key_alias));
    let cipher = EnvelopeCipher::new(Arc::clone(&kms), f.tokens_table.clone());
    let envelope = cipher
        .seal("alice", "google", b"token set")
        .await
        .expect("seal");
    assert_eq!(
        envelope.key_id, f.key_arn,
        "the envelope names the key ARN KMS used, not the alias"
    );
    let opened = cipher
        .open("alice", "google", &envelope)
        .await
        .expect("open");
    assert_eq!(opened.as_slice(), b"token set");

    // Associated data: the same ciphertext on another row does not open.
    for (user, provider) in [("bob", "google"), ("alice", "github")] {
        assert!(
            matches!(
                cipher.open(user, provider, &envelope).await,
                Err(CryptoError::Integrity)
            ),
            "moved to {user}/{provider}"
        );
    }
    let other_table = EnvelopeCipher::new(Arc::clone(&kms), "another-table");
    assert!(
        other_table
            .open("alice", "google", &envelope)
            .await
            .is_err()
    );

    // Encryption context: a data key wrapped under ours does not unwrap under another.
    let edk = axnt_oauth::crypto::b64_decode(&envelope.edk).expect("edk is base64");
    // KMS itself is asked, through the SDK, with another context than the service's.
    let refused = aws_sdk_kms::Client::new(&config)
        .decrypt()
        .key_id(&envelope.key_id)
        .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(edk.clone()))
        .encryption_context("service", "axnt-oauth")
        .encryption_context("purpose", "something-else")
        .send()
        .await;
    assert!(refused.is_err(), "another context is refused by KMS");
    let accepted = aws_sdk_kms::Client::new(&config)
        .decrypt()
        .key_id(&envelope.key_id)
        .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(edk.clone()))
        .set_encryption_context(Some(
            axnt_oauth::crypto::kms::ENCRYPTION_CONTEXT
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        ))
        .send()
        .await;
    assert!(
        accepted.is_ok(),
        "the service's own context is accepted: {accepted:?}"
    );
    // An altered wrapped key is refused too.
    let mut flipped = edk.clone();
    if let Some(b) = flipped.last_mut() {
        *b ^= 1;
    }
    assert!(
        kms.decrypt_data_key(&envelope.key_id, &flipped)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn kms_errors_name_the_key_and_region() {
    let f = fixture().await;
    let config = f.sdk_config().await;
    let missing = KmsKeyProvider::new(&config, "alias/axnt-test-does-not-exist");
    let e = missing
        .generate_data_key()
        .await
        .err()
        .expect("no such key");
    let text = e.to_string();
    assert!(
        text.contains("alias/axnt-test-does-not-exist")
            && text.contains("not found in region us-east-1"),
        "{text}"
    );
}

#[tokio::test]
async fn the_data_key_cache_serves_repeated_reads() {
    let f = fixture().await;
    let config = f.sdk_config().await;
    let kms = Arc::new(KmsKeyProvider::new(&config, &f.key_alias));
    let cached: Arc<dyn KeyProvider> = Arc::new(CachingKeyProvider::new(
        kms.clone(),
        limits(3, Duration::from_secs(60), Duration::from_secs(60)),
    ));
    let cipher = EnvelopeCipher::new(cached, f.tokens_table.clone());
    let mut envelopes = Vec::new();
    for user in ["u1", "u2", "u3"] {
        envelopes.push((
            user,
            cipher
                .seal(user, "google", user.as_bytes())
                .await
                .expect("seal"),
        ));
    }
    assert_eq!(kms.calls(), 1, "three seals share one GenerateDataKey");
    assert_eq!(envelopes[0].1.edk, envelopes[2].1.edk, "one data key");
    assert_ne!(envelopes[0].1.iv, envelopes[1].1.iv, "never one nonce");
    for _ in 0..5 {
        for (user, env) in &envelopes {
            let opened = cipher.open(user, "google", env).await.expect("open");
            assert_eq!(opened.as_slice(), user.as_bytes());
        }
    }
    assert_eq!(kms.calls(), 1, "reads of our own writes cost no KMS call");
    let fourth = cipher.seal("u4", "google", b"u4").await.expect("seal");
    assert_eq!(
        kms.calls(),
        2,
        "the fourth seal needs a new data key (max 3 uses)"
    );
    assert_ne!(fourth.edk, envelopes[0].1.edk);

    // Another instance: one Decrypt per data key, then cached.
    let other_kms = Arc::new(KmsKeyProvider::new(&config, &f.key_alias));
    let other = EnvelopeCipher::new(
        Arc::new(CachingKeyProvider::new(
            other_kms.clone(),
            limits(3, Duration::from_secs(60), Duration::from_secs(60)),
        )),
        f.tokens_table.clone(),
    );
    for _ in 0..10 {
        for (user, env) in &envelopes {
            other
                .open(user, "google", env)
                .await
                .expect("open elsewhere");
        }
    }
    assert_eq!(
        other_kms.calls(),
        1,
        "one Decrypt serves every read of that data key"
    );
}

#[tokio::test]
async fn the_data_key_cache_honours_its_age_limits() {
    let f = fixture().await;
    let config = f.sdk_config().await;
    let kms = Arc::new(KmsKeyProvider::new(&config, &f.key_alias));
    let cipher = EnvelopeCipher::new(
        Arc::new(CachingKeyProvider::new(
            kms.clone(),
            limits(1000, Duration::from_millis(700), Duration::from_secs(60)),
        )),
        f.tokens_table.clone(),
    );
    cipher.seal("u", "google", b"x").await.expect("seal");
    cipher.seal("u", "google", b"x").await.expect("seal");
    assert_eq!(kms.calls(), 1);
    tokio::time::sleep(Duration::from_millis(900)).await;
    cipher.seal("u", "google", b"x").await.expect("seal");
    assert_eq!(
        kms.calls(),
        2,
        "a data key older than its max age is not reused"
    );

    let writer = EnvelopeCipher::new(
        Arc::new(KmsKeyProvider::new(&config, &f.key_alias)),
        f.tokens_table.clone(),
    );
    let env = writer.seal("u", "google", b"x").await.expect("seal");
    let reader_kms = Arc::new(KmsKeyProvider::new(&config, &f.key_alias));
    let reader = EnvelopeCipher::new(
        Arc::new(CachingKeyProvider::new(
            reader_kms.clone(),
            limits(1000, Duration::from_secs(60), Duration::from_millis(700)),
        )),
        f.tokens_table.clone(),
    );
    reader.open("u", "google", &env).await.expect("open");
    reader.open("u", "google", &env).await.expect("open");
    assert_eq!(reader_kms.calls(), 1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    reader.open("u", "google", &env).await.expect("open");
    assert_eq!(
        reader_kms.calls(),
        2,
        "a decrypted key is forgotten after its TTL"
    );
}

// ---- Secrets Manager ----------------------------------------------------------------

async fn put_secret(f: &AwsFixture, value: &str) {
    aws_sdk_secretsmanager::Client::new(&f.sdk_config().await)
        .put_secret_value()
        .secret_id(&f.secret_id)
        .secret_string(value)
        .send()
        .await
        .expect("moto PutSecretValue");
}

fn api_key(text: &str) -> ApiKey {
    ApiKey::parse(text).expect("a well-formed key")
}

#[tokio::test]
async fn a_rotated_secret_is_picked_up_by_reload() {
    let f = fixture().await;
    let source = Arc::new(SecretsManagerSource::new(
        &f.sdk_config().await,
        &f.secret_id,
    ));
    let cache = SecretsCache::load(source, None, Vec::new())
        .await
        .expect("secret loads");
    let current = cache.current();
    assert_eq!(
        current.client.as_ref().map(|c| c.client_id.as_str()),
        Some("client-1")
    );
    assert!(
        current.state_key.is_some(),
        "state_key read from the secret"
    );
    assert!(
        cache.accepts_api_key(&api_key(API_KEY)),
        "api_keys read from the secret"
    );

    put_secret(
        &f,
        &aws::secret_json(
            "client-2",
            "secret-2",
            &f.state_key,
            "rotated-api-key-0123456789",
        ),
    )
    .await;
    cache.reload().await.expect("reload");
    let rotated = cache.current();
    let client = rotated.client.as_ref().expect("client");
    assert_eq!(client.client_id, "client-2");
    assert_eq!(client.client_secret.expose_secret(), "secret-2");
    assert!(cache.accepts_api_key(&api_key("rotated-api-key-0123456789")));
    assert!(
        !cache.accepts_api_key(&api_key(API_KEY)),
        "the old key is gone"
    );
}

#[tokio::test]
async fn the_google_console_json_shape_is_accepted() {
    let f = fixture().await;
    put_secret(
        &f,
        r#"{"web":{"client_id":"console-id.apps.googleusercontent.com","project_id":"p","auth_uri":"https://accounts.google.com/o/oauth2/auth","token_uri":"https://oauth2.googleapis.com/token","client_secret":"console-secret","redirect_uris":["http://127.0.0.1:8080/oauth/google/callback"]}}"#,
    )
    .await;
    let source = SecretsManagerSource::new(&f.sdk_config().await, &f.secret_id);
    let secrets = axnt_oauth::secrets::SecretSource::load(&source)
        .await
        .expect("console shape parses");
    let client = secrets.client.expect("client");
    assert_eq!(client.client_id, "console-id.apps.googleusercontent.com");
    assert_eq!(client.client_secret.expose_secret(), "console-secret");
}

#[tokio::test]
async fn a_malformed_secret_stops_start_up_naming_the_field() {
    let f = fixture().await;
    put_secret(
        &f,
        r#"{"client_id":"id","client_secret":"planted-secret-value","state_key":"too-short"}"#,
    )
    .await;
    let settings = f.settings();
    let backends = Backends::open(&settings).await.expect("backends open");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let failed = App::with_listener(settings, backends, listener).await;
    let Err(e) = failed else {
        panic!("a malformed secret must stop start-up")
    };
    let text = e.to_string();
    assert!(
        matches!(e, StartupError::Secret(SecretError::Malformed { .. })),
        "{text}"
    );
    assert!(
        text.contains("state_key") && text.contains(&f.secret_id),
        "{text}"
    );
    assert!(!text.contains("planted-secret-value"), "{text}");

    put_secret(&f, r#"{"client_id":"id"}"#).await;
    let source = SecretsManagerSource::new(&f.sdk_config().await, &f.secret_id);
    let e = axnt_oauth::secrets::SecretSource::load(&source)
        .await
        .expect_err("no client_secret");
    assert!(e.to_string().contains("client_secret"), "{e}");
}

#[tokio::test]
async fn a_missing_secret_is_named() {
    let f = fixture().await;
    let source = SecretsManagerSource::new(&f.sdk_config().await, "axnt-test/no-such-secret");
    let e = axnt_oauth::secrets::SecretSource::load(&source)
        .await
        .expect_err("missing");
    assert!(matches!(e, SecretError::NotFound(_)), "{e}");
    assert!(e.to_string().contains("axnt-test/no-such-secret"), "{e}");
}

// ---- setup --------------------------------------------------------------------------

#[tokio::test]
async fn setup_twice_changes_nothing_the_second_time() {
    let endpoint = aws::moto_endpoint();
    let mut env = vec![("AXNT_BACKEND".to_string(), "aws".to_string())];
    env.extend(aws::sdk_pairs(&endpoint, &AwsCredentials::from_env()));
    let tokens = aws::unique("axnt-setup-tokens");
    let logs = aws::unique("axnt-setup-logs");
    env.push(("DYNAMODB_OAUTH_TABLE".into(), tokens.clone()));
    env.push(("DYNAMODB_OAUTH_LOGS_TABLE".into(), logs.clone()));
    let settings = aws::settings_from(&env);

    let planned = ensure_tables(&settings, true).await.expect("dry run");
    let config = axnt_oauth::aws::sdk_config(&settings).await;
    let dynamo = aws_sdk_dynamodb::Client::new(&config);
    assert!(
        dynamo
            .describe_table()
            .table_name(&tokens)
            .send()
            .await
            .is_err(),
        "a dry run creates nothing"
    );

    let first = ensure_tables(&settings, false).await.expect("first setup");
    assert_eq!(
        first.changes, planned.changes,
        "the dry run's plan is what happens"
    );
    assert_eq!(
        first.changes,
        vec![
            Change::CreateTable {
                table: tokens.clone(),
                keys: "userId S HASH, provider S RANGE".into()
            },
            Change::EnableTtl {
                table: tokens.clone()
            },
            Change::EnablePointInTimeRecovery {
                table: tokens.clone()
            },
            Change::CreateTable {
                table: logs.clone(),
                keys: "userId S HASH, timestamp S RANGE".into()
            },
            Change::EnableTtl {
                table: logs.clone()
            },
        ]
    );
    let second = ensure_tables(&settings, false).await.expect("second setup");
    assert!(second.changes.is_empty(), "{:?}", second.changes);
    assert!(
        second.notes.iter().all(|n| n.contains("already as wanted")),
        "{:?}",
        second.notes
    );

    for (table, range) in [(&tokens, "provider"), (&logs, "timestamp")] {
        let described = dynamo
            .describe_table()
            .table_name(table)
            .send()
            .await
            .expect("DescribeTable");
        let t = described.table().expect("table");
        let keys: Vec<(String, KeyType)> = t
            .key_schema()
            .iter()
            .map(|k| (k.attribute_name().to_string(), k.key_type().clone()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("userId".to_string(), KeyType::Hash),
                (range.to_string(), KeyType::Range)
            ]
        );
        assert!(
            t.attribute_definitions()
                .iter()
                .all(|a| *a.attribute_type() == ScalarAttributeType::S)
        );
        assert_eq!(
            t.billing_mode_summary().and_then(|b| b.billing_mode()),
            Some(&BillingMode::PayPerRequest)
        );
        let ttl = dynamo
            .describe_time_to_live()
            .table_name(table)
            .send()
            .await
            .expect("DescribeTimeToLive");
        let ttl = ttl.time_to_live_description().expect("ttl");
        assert_eq!(ttl.time_to_live_status(), Some(&TimeToLiveStatus::Enabled));
        assert_eq!(ttl.attribute_name(), Some("expiresAt"));
    }
    let backups = dynamo
        .describe_continuous_backups()
        .table_name(&tokens)
        .send()
        .await
        .expect("DescribeContinuousBackups");
    let pitr = backups
        .continuous_backups_description()
        .and_then(|d| d.point_in_time_recovery_description())
        .and_then(|p| p.point_in_time_recovery_status())
        .map(|s| s.as_str().to_string());
    assert_eq!(pitr.as_deref(), Some("ENABLED"), "PITR on the tokens table");
}

/// The binary, as an operator runs it: `setup` twice, then `check`.
#[tokio::test]
async fn the_cli_sets_up_and_checks_aws_mode() {
    let f = fixture().await;
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_axnt-oauth"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(f.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("AXNT_LOG", "warn")
            .env("AXNT_GOOGLE_ISSUER", "http://127.0.0.1:9")
            .output()
            .expect("run axnt-oauth");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), text)
    };
    // The fixture ran setup already: the CLI finds everything as wanted.
    let (code, text) = run(&["setup"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("already as wanted: nothing changed"),
        "{text}"
    );
    assert!(
        text.contains(&format!("KMS key {}: present", f.key_alias)),
        "{text}"
    );
    assert!(
        text.contains(&format!("secret {}: present", f.secret_id)),
        "{text}"
    );
    let (code, text) = run(&["setup", "--dry-run"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("plan (aws, nothing changed)"), "{text}");

    let (code, text) = run(&["check"]);
    assert!(
        !text.contains("secret-1"),
        "no secret in check's output: {text}"
    );
    // Discovery of accounts.google.com is not reachable from here: every other line passes.
    for line in [
        "configuration",
        "client credentials",
        "key round trip",
        "tokens table",
        "logs table",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("ok") && l.contains(line)),
            "{line} passes: {text}"
        );
    }
    let _ = code;

    // A missing table is named with its region.
    let mut env = f.env.clone();
    env.retain(|(k, _)| k != "DYNAMODB_OAUTH_TABLE");
    env.push((
        "DYNAMODB_OAUTH_TABLE".into(),
        "axnt-test-no-such-table".into(),
    ));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_axnt-oauth"))
        .arg("check")
        .env_clear()
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("AXNT_LOG", "warn")
        .output()
        .expect("run axnt-oauth check");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_ne!(output.status.code(), Some(0));
    assert!(
        text.contains("table axnt-test-no-such-table not found in region us-east-1"),
        "{text}"
    );
}

// ---- least privilege ----------------------------------------------------------------

fn probe_row(user_id: &str, envelope: axnt_oauth::crypto::Envelope) -> Connection {
    // The stores keep milliseconds.
    let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 3);
    Connection {
        user_id: user_id.into(),
        provider: "google".into(),
        email: None,
        encrypted_tokens: envelope,
        user_info: UserInfo {
            sub: "1".into(),
            ..UserInfo::default()
        },
        created_at: now,
        updated_at: now,
        last_used: now,
        access_token_expires_at: now.timestamp() + 3600,
        expires_at: now.timestamp() + 86_400,
        is_active: true,
        version: 1,
        refresh: Default::default(),
    }
}

/// With moto enforcing IAM, a user holding only `deploy/iam-policy.json`'s actions
/// runs everything the service does at run time; without `dynamodb:PutItem`, a write
/// is an access denial naming that action.
#[tokio::test]
async fn the_run_time_policy_is_enough_and_its_absence_is_named() {
    // Three users are made before enforcement starts; everything after is signed and
    // checked against their policies.
    let moto = OwnMoto::start(&[(
        "INITIAL_NO_AUTH_ACTION_COUNT",
        &(3 * aws::IAM_CALLS_PER_USER).to_string(),
    )])
    .await;
    let admin = aws::iam_user(
        &moto.endpoint,
        "axnt-admin",
        &serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}),
    )
    .await;
    let service = aws::iam_user(
        &moto.endpoint,
        "axnt-service",
        &aws::runtime_policy_for_moto(&[]),
    )
    .await;
    let no_put = aws::iam_user(
        &moto.endpoint,
        "axnt-no-put",
        &aws::runtime_policy_for_moto(&["dynamodb:PutItem"]),
    )
    .await;

    // The operator (admin) provisions; setup's extra actions are the admin's.
    let f = aws::provision(
        &moto.endpoint,
        &admin,
        "client-lp",
        "secret-lp",
        API_KEY,
        None,
    )
    .await;
    let as_user = |credentials: &AwsCredentials| {
        let mut env = f.env.clone();
        env.retain(|(k, _)| {
            !k.starts_with("AWS_ACCESS_KEY_ID") && !k.starts_with("AWS_SECRET_ACCESS_KEY")
        });
        env.push((
            "AWS_ACCESS_KEY_ID".into(),
            credentials.access_key_id.clone(),
        ));
        env.push((
            "AWS_SECRET_ACCESS_KEY".into(),
            credentials.secret_access_key.clone(),
        ));
        aws::settings_from(&env)
    };

    // Before anything else: enforcement is on (a stranger's keys are refused).
    let stranger = as_user(&AwsCredentials {
        access_key_id: "AKIDSTRANGER".into(),
        secret_access_key: "nope".into(),
    });
    let refused = Backends::open(&stranger)
        .await
        .expect("open")
        .tokens
        .ping()
        .await;
    assert!(
        matches!(refused, Err(StoreError::AccessDenied(_))),
        "{refused:?}"
    );

    let settings = as_user(&service);
    let backends = Backends::open(&settings).await.expect("aws backends open");
    backends.tokens.ping().await.expect("tokens ping (GetItem)");
    backends.flow_log.ping().await.expect("logs ping (GetItem)");
    let secrets = SecretsCache::load(Arc::clone(&backends.secrets), None, Vec::new())
        .await
        .expect("GetSecretValue");
    assert!(secrets.current().client.is_some());

    let cipher = EnvelopeCipher::new(Arc::clone(&backends.keys), f.tokens_table.clone());
    let sealed = cipher
        .seal("lp-user", "google", b"tokens")
        .await
        .expect("GenerateDataKey");
    let uncached = EnvelopeCipher::new(
        axnt_oauth::app::uncached_key_provider(&settings).await,
        f.tokens_table.clone(),
    );
    let opened = uncached
        .open("lp-user", "google", &sealed)
        .await
        .expect("Decrypt");
    assert_eq!(opened.as_slice(), b"tokens");

    let row = probe_row("lp-user", sealed);
    backends.tokens.put(&row, None).await.expect("PutItem");
    assert_eq!(
        backends
            .tokens
            .get("lp-user", "google")
            .await
            .expect("GetItem"),
        Some(row.clone())
    );
    let updated = Connection {
        version: 2,
        ..row.clone()
    };
    backends
        .tokens
        .put(&updated, Some(1))
        .await
        .expect("conditional PutItem");
    assert_eq!(
        backends.tokens.list("lp-user").await.expect("Query").len(),
        1
    );
    assert!(
        backends
            .tokens
            .delete("lp-user", "google", 2)
            .await
            .expect("DeleteItem")
    );

    let entry = FlowLogEntry {
        user_id: "lp-user".into(),
        timestamp: SortKeyClock::default().next_key(Utc::now()),
        flow_id: "lp".into(),
        step: FlowStep::SessionCreated,
        data: serde_json::Map::new(),
        error: None,
        ip_address: None,
        user_agent: None,
        expires_at: Utc::now().timestamp() + 60,
    };
    backends.flow_log.append(&entry).await.expect("queued");
    backends
        .flow_log
        .flush()
        .await
        .expect("PutItem on the logs table");
    assert_eq!(
        backends
            .flow_log
            .list("lp-user", 10, None)
            .await
            .expect("Query logs"),
        vec![entry]
    );
    let others = axnt_oauth::aws::setup::other_resources(&settings).await;
    assert!(
        others.iter().all(|l| l.contains(": present")),
        "DescribeKey, DescribeSecret: {others:?}"
    );

    // Without PutItem: the write is refused, and the message names the action.
    let denied = Backends::open(&as_user(&no_put)).await.expect("open");
    denied.tokens.ping().await.expect("GetItem still allowed");
    let e = denied
        .tokens
        .put(&probe_row("lp-denied", row.encrypted_tokens.clone()), None)
        .await
        .expect_err("PutItem denied");
    let text = e.to_string();
    assert!(matches!(e, StoreError::AccessDenied(_)), "{text}");
    assert!(
        text.contains(&format!("dynamodb:PutItem on table/{}", f.tokens_table)),
        "{text}"
    );
}
