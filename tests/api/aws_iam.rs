//! The run-time IAM policy under moto's IAM enforcement: its actions are enough for
//! everything the service does, and a missing one is named.

use std::sync::Arc;

use axnt_oauth::app::Backends;
use axnt_oauth::crypto::EnvelopeCipher;
use axnt_oauth::secrets::SecretsCache;
use axnt_oauth::store::flow_log::SortKeyClock;
use axnt_oauth::store::{Connection, FlowLogEntry, FlowStep, StoreError, UserInfo};
use chrono::Utc;

use crate::support::aws;
use crate::support::aws::{API_KEY, AwsCredentials, OwnMoto};

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
        replaced_account: None,
        grant: Default::default(),
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
    let secrets = SecretsCache::load(
        Arc::clone(&backends.secrets),
        Default::default(),
        Default::default(),
    )
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
    backends.tokens.put(&row, None, &[]).await.expect("PutItem");
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
        .put(&updated, Some(1), &[])
        .await
        .expect("conditional PutItem");
    assert_eq!(
        backends.tokens.list("lp-user").await.expect("Query").len(),
        1
    );
    let bound = |from_now_ms: i64| {
        let ms = Utc::now().timestamp_millis() + from_now_ms;
        format!(
            "{:08x}-{:04x}-0000-0000-000000000000",
            ms >> 16,
            ms & 0xffff
        )
    };
    // The removal with its event: one TransactWriteItems over both tables, allowed by
    // PutItem and DeleteItem; the feed's Query reads the event back.
    let event = axnt_oauth::store::Event {
        id: uuid::Uuid::now_v7().to_string(),
        kind: "connection.deleted".into(),
        user_id: "lp-user".into(),
        provider: "google".into(),
        timestamp: Utc::now(),
        data: serde_json::Map::new(),
        expires_at: Utc::now().timestamp() + 60,
    };
    assert!(
        backends
            .tokens
            .delete("lp-user", "google", 2, std::slice::from_ref(&event))
            .await
            .expect("DeleteItem with an event (TransactWriteItems)")
    );
    let read = backends
        .tokens
        .events_between(&bound(-60_000), &bound(60_000), 10)
        .await
        .expect("Query events");
    // Stored under the id the write made for it.
    assert_eq!(
        read.iter()
            .map(|e| (e.kind.as_str(), e.user_id.as_str(), &e.data))
            .collect::<Vec<_>>(),
        [(event.kind.as_str(), "lp-user", &event.data)]
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
        .put(
            &probe_row("lp-denied", row.encrypted_tokens.clone()),
            None,
            &[],
        )
        .await
        .expect_err("PutItem denied");
    let text = e.to_string();
    assert!(matches!(e, StoreError::AccessDenied(_)), "{text}");
    assert!(
        text.contains(&format!("dynamodb:PutItem on table/{}", f.tokens_table)),
        "{text}"
    );
}
