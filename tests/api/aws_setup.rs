//! `setup` and `check` in aws mode against moto: tables created once and left alone the
//! second time, and the binary run as an operator runs it.

use aws_sdk_dynamodb::types::{BillingMode, KeyType, ScalarAttributeType, TimeToLiveStatus};
use axnt_oauth::aws::setup::{Change, ensure_tables};

use crate::support::aws;
use crate::support::aws::{AwsCredentials, default_fixture};

#[tokio::test]
async fn setup_twice_changes_nothing_the_second_time() {
    let endpoint = aws::moto_endpoint();
    let mut env = vec![("AXNT_BACKEND".to_string(), "aws".to_string())];
    env.extend(aws::sdk_pairs(&endpoint, &AwsCredentials::from_env()));
    let tokens = aws::unique("axnt-setup-tokens");
    let logs = aws::unique("axnt-setup-logs");
    let events = aws::unique("axnt-setup-events");
    env.push(("DYNAMODB_OAUTH_TABLE".into(), tokens.clone()));
    env.push(("DYNAMODB_OAUTH_LOGS_TABLE".into(), logs.clone()));
    env.push(("DYNAMODB_OAUTH_EVENTS_TABLE".into(), events.clone()));
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
            Change::CreateTable {
                table: events.clone(),
                keys: "day S HASH, id S RANGE".into()
            },
            Change::EnableTtl {
                table: events.clone()
            },
            Change::EnablePointInTimeRecovery {
                table: events.clone()
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

    for (table, hash, range) in [
        (&tokens, "userId", "provider"),
        (&logs, "userId", "timestamp"),
        (&events, "day", "id"),
    ] {
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
                (hash.to_string(), KeyType::Hash),
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
    for table in [&tokens, &events] {
        let backups = dynamo
            .describe_continuous_backups()
            .table_name(table)
            .send()
            .await
            .expect("DescribeContinuousBackups");
        let pitr = backups
            .continuous_backups_description()
            .and_then(|d| d.point_in_time_recovery_description())
            .and_then(|p| p.point_in_time_recovery_status())
            .map(|s| s.as_str().to_string());
        assert_eq!(pitr.as_deref(), Some("ENABLED"), "PITR on {table}");
    }
}

/// The binary, as an operator runs it: `setup` twice, then `check`.
#[tokio::test]
async fn the_cli_sets_up_and_checks_aws_mode() {
    let f = default_fixture().await;
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
    assert_all_but_discovery_pass(&text);
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

/// The setup document's `.env`: the whole aws configuration (tables, key, secret, and the
/// AWS SDK's own endpoint and region) read from a `.env` in the working directory, with a
/// variable set in the environment winning over the file.
#[tokio::test]
async fn a_dot_env_in_the_working_directory_configures_the_service() {
    let f = default_fixture().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut file = String::from("# as the setup document's section 3 writes it\n");
    for (name, value) in &f.env {
        file.push_str(&format!("{name}=\"{value}\"\n"));
    }
    file.push_str("AXNT_GOOGLE_ISSUER=http://127.0.0.1:9\nAXNT_LOG=warn\n");
    std::fs::write(dir.path().join(".env"), file).expect("write .env");
    let check = |extra: &[(&str, &str)]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_axnt-oauth"))
            .arg("check")
            .current_dir(dir.path())
            .env_clear()
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(extra.iter().copied())
            .output()
            .expect("run axnt-oauth check");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    let text = check(&[]);
    assert_all_but_discovery_pass(&text);

    let text = check(&[("DYNAMODB_OAUTH_TABLE", "axnt-test-env-wins")]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains("axnt-test-env-wins")),
        "the environment's table name wins over the file's: {text}"
    );
}

/// `check`'s output with every line passing but provider discovery (accounts.google.com
/// is not reachable from the tests).
fn assert_all_but_discovery_pass(text: &str) {
    for part in [
        "configuration",
        "client credentials",
        "key round trip",
        "tokens table",
        "logs table",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("ok") && l.contains(part)),
            "{part} passes: {text}"
        );
    }
}
