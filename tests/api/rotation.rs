//! Rotation without downtime: the data keys' wrapping key (`rotate-keys`: a new local
//! master key, or a KMS alias moved to a new key) while token reads and new grants go
//! on; the state key with its two-key window; API keys listed old and new together.

on_every_backend!(
    rotate_keys_while_reads_and_new_grants_continue,
    the_state_key_rotates_with_a_two_key_window,
    api_keys_rotate_by_listing_old_and_new_together,
);

mod kept;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axnt_oauth::rotate::{RotateOptions, rotate_keys};
use axnt_oauth::store::{Connection, ScanCursor};
use base64::Engine;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{self, API_KEY, Backend, FakeProvider, TestApp};

/// Every row of the instance's tokens table.
async fn all_rows(app: &TestApp) -> Vec<Connection> {
    let mut rows = Vec::new();
    let mut cursor: Option<ScanCursor> = None;
    loop {
        let page = app.store.scan(cursor.as_ref(), 50).await.expect("scan");
        rows.extend(page.rows);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return rows,
        }
    }
}

async fn access_token(app: &TestApp, user: &str) -> String {
    let response = app.token(user).await;
    assert_eq!(response.status(), StatusCode::OK, "token read for {user}");
    let body: serde_json::Value = response.json().await.expect("json");
    body["accessToken"]
        .as_str()
        .expect("accessToken")
        .to_string()
}

/// aws mode: a new KMS key, and the instance's alias moved to it. Returns its ARN.
async fn move_alias_to_a_new_key(app: &TestApp) -> String {
    let config = axnt_oauth::aws::sdk_config(&app.settings).await;
    let kms = aws_sdk_kms::Client::new(&config);
    let key = kms
        .create_key()
        .description("axnt-oauth rotated test key")
        .send()
        .await
        .expect("moto CreateKey");
    let arn = key
        .key_metadata()
        .and_then(|m| m.arn())
        .expect("an ARN")
        .to_string();
    let alias = app
        .base_env
        .iter()
        .find(|(k, _)| k == "AXNT_KMS_KEY_ID")
        .map(|(_, v)| v.clone())
        .expect("the instance's alias");
    kms.update_alias()
        .alias_name(alias)
        .target_key_id(&arn)
        .send()
        .await
        .expect("moto UpdateAlias");
    arn
}

async fn rotate_keys_while_reads_and_new_grants_continue(backend: Backend) {
    let provider = FakeProvider::start().await;
    // A data key per write, so every seal after the switch asks the key provider,
    // which then names the new key (the default reuses one for up to 5 minutes).
    // Browser rate limits off: the flows below come from one address, many a second.
    let app = Arc::new(
        TestApp::on(
            backend,
            &provider,
            &[
                ("AXNT_DATA_KEY_MAX_USES", "1"),
                // Every read opens the row, so reads during the run meet re-wrapped rows.
                ("AXNT_TOKEN_CACHE_SECS", "0"),
                ("AXNT_RATE_LIMIT_BROWSER_PER_MINUTE", "0"),
            ],
        )
        .await,
    );
    let users: Vec<String> = (0..12).map(|i| format!("rotating-{i}")).collect();
    let mut expected = HashMap::new();
    for user in &users {
        assert!(app.connect(user).await.status().is_success());
        expected.insert(user.clone(), access_token(&app, user).await);
    }
    let old_key = app
        .stored_row(&users[0])
        .await
        .expect("row")
        .encrypted_tokens
        .key_id;

    let new_kms_key = match backend {
        Backend::Aws => Some(move_alias_to_a_new_key(&app).await),
        Backend::Embedded => None,
    };

    // Reads of every user and new grants, all through the rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let grants = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (app, stop, reads, expected) = (
            Arc::clone(&app),
            Arc::clone(&stop),
            Arc::clone(&reads),
            expected.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                for (user, token) in &expected {
                    assert_eq!(&access_token(&app, user).await, token, "{user}'s token");
                    reads.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    let granter = {
        let (app, stop, grants) = (Arc::clone(&app), Arc::clone(&stop), Arc::clone(&grants));
        tokio::spawn(async move {
            let mut granted = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let user = format!("granted-{}", granted.len());
                assert!(
                    app.connect(&user).await.status().is_success(),
                    "{user} connects"
                );
                granted.push(user);
                grants.fetch_add(1, Ordering::SeqCst);
            }
            granted
        })
    };

    // Both under way before the rotation starts.
    let wait_for = |counter: &Arc<AtomicUsize>, at_least: usize| {
        let counter = Arc::clone(counter);
        async move {
            let waited = tokio::time::timeout(Duration::from_secs(60), async {
                while counter.load(Ordering::SeqCst) < at_least {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
            assert!(
                waited.is_ok(),
                "stuck below {at_least}: reads or grants stopped"
            );
        }
    };
    wait_for(&reads, users.len()).await;
    wait_for(&grants, 1).await;

    // A page per row, so the rotation yields between rows as often as it can.
    let options = RotateOptions {
        new_local_key: backend == Backend::Embedded,
        page_size: 1,
        ..RotateOptions::default()
    };
    let mut lines = Vec::new();
    let reads_before = reads.load(Ordering::SeqCst);
    let mut reads_during = 0;
    let report = rotate_keys(&app.settings, &options, &mut |p| {
        reads_during = reads.load(Ordering::SeqCst) - reads_before;
        lines.push(format!("{p:?} ({reads_during} reads since the start)"));
    })
    .await
    .expect("rotate-keys runs");
    // Reads and grants go on after the rotation too.
    wait_for(&reads, reads.load(Ordering::SeqCst) + 2 * users.len()).await;
    wait_for(&grants, grants.load(Ordering::SeqCst) + 1).await;
    stop.store(true, Ordering::SeqCst);
    reader
        .await
        .expect("every read answered 200 with the user's token");
    let granted = granter.await.expect("every new grant connected");

    assert!(report.success(), "{report:?}\n{lines:#?}");
    assert!(
        reads_during > 0,
        "reads were answered while the rotation ran"
    );
    assert_eq!(report.not_current, 0);
    assert!(
        report.passes[0].rewrapped >= users.len() as u64,
        "{report:?}"
    );
    assert_ne!(report.current_key, old_key);
    if let Some(arn) = &new_kms_key {
        assert_eq!(&report.current_key, arn, "the alias's new key, as its ARN");
    }
    let rows = all_rows(&app).await;
    assert!(rows.len() >= users.len() + granted.len());
    for row in &rows {
        assert_eq!(
            row.encrypted_tokens.key_id, report.current_key,
            "{} is under the new key",
            row.user_id
        );
    }
    // A second run finds nothing to do.
    let again = rotate_keys(&app.settings, &RotateOptions::default(), &mut |_| {})
        .await
        .expect("rotate-keys again");
    assert_eq!(again.passes.len(), 1);
    assert_eq!(again.passes[0].rewrapped, 0);
    assert_eq!(again.passes[0].already_current, rows.len() as u64);

    if backend == Backend::Embedded {
        // The retired master key can go: no row needs it.
        std::fs::remove_dir_all(
            app.data_dir
                .path()
                .join(axnt_oauth::crypto::RETIRED_KEYS_DIR),
        )
        .expect("remove the retired key");
    }
    // A new instance (no cached data key, no retired key file) reads every row.
    let fresh = app.sibling().await;
    for (user, token) in &expected {
        assert_eq!(&access_token(&fresh, user).await, token);
    }
    for user in &granted {
        access_token(&fresh, user).await;
    }
    fresh.stop().await;
}

fn random_key() -> String {
    let mut key = [0u8; 32];
    axnt_oauth::crypto::fill_random(&mut key);
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// An instance of `app`'s storage with these state and API keys: settings in embedded
/// mode, the secret (read at start-up) in aws mode.
async fn restarted_with(
    app: &TestApp,
    backend: Backend,
    provider: &FakeProvider,
    state_key: &str,
    previous_state_key: Option<&str>,
    api_keys: &[&str],
) -> TestApp {
    // The same public URL (so the redirect URI a flow began with), served elsewhere.
    let public = app
        .base_env
        .iter()
        .find(|(k, _)| k == "AXNT_PUBLIC_BASE_URL")
        .map_or_else(|| app.base.clone(), |(_, v)| v.clone());
    let public = ("AXNT_PUBLIC_BASE_URL", public.as_str());
    match backend {
        Backend::Embedded => {
            let mut env: Vec<(String, String)> = app
                .base_env
                .iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "AXNT_STATE_KEY" | "AXNT_PREVIOUS_STATE_KEY" | "AXNT_API_KEYS"
                    )
                })
                .cloned()
                .collect();
            env.push((public.0.into(), public.1.into()));
            env.push(("AXNT_STATE_KEY".into(), state_key.into()));
            if let Some(previous) = previous_state_key {
                env.push(("AXNT_PREVIOUS_STATE_KEY".into(), previous.into()));
            }
            env.push(("AXNT_API_KEYS".into(), api_keys.join(",")));
            TestApp::spawn_in(Arc::clone(&app.data_dir), env).await
        }
        Backend::Aws => {
            let mut document = json!({
                "client_id": provider.client_id(),
                "client_secret": provider.client_secret(),
                "state_key": state_key,
                "api_keys": api_keys,
            });
            if let Some(previous) = previous_state_key {
                document["previous_state_key"] = json!(previous);
            }
            aws_sdk_secretsmanager::Client::new(&axnt_oauth::aws::sdk_config(&app.settings).await)
                .put_secret_value()
                .secret_id(&app.settings.aws.secret_id)
                .secret_string(document.to_string())
                .send()
                .await
                .expect("moto PutSecretValue");
            app.sibling_with(&[public]).await
        }
    }
}

/// The state key the instance was started with.
async fn state_key_of(app: &TestApp, backend: Backend) -> String {
    match backend {
        Backend::Embedded => app
            .base_env
            .iter()
            .find(|(k, _)| k == "AXNT_STATE_KEY")
            .map(|(_, v)| v.clone())
            .expect("started with AXNT_STATE_KEY"),
        Backend::Aws => {
            let secret = aws_sdk_secretsmanager::Client::new(
                &axnt_oauth::aws::sdk_config(&app.settings).await,
            )
            .get_secret_value()
            .secret_id(&app.settings.aws.secret_id)
            .send()
            .await
            .expect("moto GetSecretValue");
            let document: serde_json::Value =
                serde_json::from_str(secret.secret_string().expect("a string")).expect("JSON");
            document["state_key"]
                .as_str()
                .expect("state_key")
                .to_string()
        }
    }
}

/// `url` (a link or callback under the shared public URL) sent to `instance` itself.
fn at(instance: &TestApp, url: &str) -> url::Url {
    let mut url = url::Url::parse(url).expect("URL");
    let base = url::Url::parse(&instance.base).expect("base");
    url.set_port(base.port()).expect("port");
    url
}

async fn the_state_key_rotates_with_a_two_key_window(backend: Backend) {
    let provider = FakeProvider::start().await;
    let old = random_key();
    let app = TestApp::on(backend, &provider, &[("AXNT_STATE_KEY", &old)]).await;
    let old = state_key_of(&app, backend).await;
    // Under the old key: a flow waiting at the provider, another one, and a link not
    // yet opened.
    let mut pending = Vec::new();
    for user in ["window-1", "window-2"] {
        let session = app
            .connect_session(json!({ "userId": user, "provider": "google" }))
            .await;
        let (provider_url, cookie) = app.start(session["url"].as_str().expect("url")).await;
        pending.push((app.authorize(&provider_url).await, cookie));
    }
    let link = app
        .connect_session(json!({ "userId": "window-3", "provider": "google" }))
        .await;

    let new = random_key();
    let window = restarted_with(&app, backend, &provider, &new, Some(&old), &[API_KEY]).await;
    let (callback, cookie) = &pending[0];
    let response = window
        .callback(&at(&window, callback.as_str()), Some(cookie))
        .await;
    assert!(response.status().is_success(), "{}", response.status());
    let response = window.complete("window-1", response).await;
    assert!(response.status().is_success(), "{}", response.status());
    assert!(window.stored_row("window-1").await.is_some());
    let link_url = at(&window, link["url"].as_str().expect("url"));
    let (provider_url, cookie) = window.start(link_url.as_str()).await;
    let callback = window.authorize(&provider_url).await;
    let response = window
        .callback(&at(&window, callback.as_str()), Some(&cookie))
        .await;
    assert!(response.status().is_success());
    let response = window.complete("window-3", response).await;
    assert!(response.status().is_success());
    assert!(window.stored_row("window-3").await.is_some());
    // What the new key seals, an instance without the old key opens.
    let sealed_new = window
        .connect_session(json!({ "userId": "window-4", "provider": "google" }))
        .await;

    let after = restarted_with(&window, backend, &provider, &new, None, &[API_KEY]).await;
    let (callback, cookie) = &pending[1];
    let response = after
        .callback(&at(&after, callback.as_str()), Some(cookie))
        .await;
    support::assert_page(response, StatusCode::BAD_REQUEST, "invalid_state").await;
    assert!(after.stored_row("window-2").await.is_none());
    after
        .start(at(&after, sealed_new["url"].as_str().expect("url")).as_str())
        .await;
}

async fn api_keys_rotate_by_listing_old_and_new_together(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    let state_key = state_key_of_any(&app, backend).await;
    let old = API_KEY;
    let new = "rotated-api-key-0123456789abcdef";
    let answer = |instance: &TestApp, key: &str| {
        let request = instance
            .http
            .get(instance.url("/v1/users/someone/connections"))
            .bearer_auth(key);
        async move { request.send().await.expect("send").status() }
    };
    let both = restarted_with(&app, backend, &provider, &state_key, None, &[old, new]).await;
    assert_eq!(answer(&both, old).await, StatusCode::OK);
    assert_eq!(answer(&both, new).await, StatusCode::OK);
    let only_new = restarted_with(&both, backend, &provider, &state_key, None, &[new]).await;
    assert_eq!(answer(&only_new, new).await, StatusCode::OK);
    assert_eq!(answer(&only_new, old).await, StatusCode::UNAUTHORIZED);
}

/// The instance's state key, wherever it came from (embedded mode generates one into
/// the data directory when none is set).
async fn state_key_of_any(app: &TestApp, backend: Backend) -> String {
    match backend {
        Backend::Embedded => std::fs::read_to_string(app.data_dir.path().join("state.key"))
            .expect("state.key")
            .trim()
            .to_string(),
        Backend::Aws => state_key_of(app, backend).await,
    }
}
