//! A revocation kept to be tried again, and a grant held for confirmation, hold sealed
//! tokens too: `rotate-keys` moves them under the new key, so retiring the old key
//! cancels nothing a user asked for.

on_every_backend!(a_kept_revocation_reaches_the_provider_after_rotation_and_retirement);

use std::time::Duration;

use axnt_oauth::rotate::{RotateOptions, rotate_keys};
use axnt_oauth::store::{Sealed, SealedItem, TokenStore};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::aws_proxy::AwsProxy;
use crate::support::{Backend, FakeProvider, TestApp};

/// Every sealed item of `store`.
async fn sealed_items(store: &dyn TokenStore) -> Vec<SealedItem> {
    let mut items = Vec::new();
    let mut cursor: Option<Sealed> = None;
    for _ in 0..10_000 {
        let page = store.scan_sealed(cursor.as_ref(), 50).await.expect("scan");
        items.extend(page.items);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return items,
        }
    }
    panic!("the sealed scan never ended");
}

/// Polls `check` every 100 ms for at most `secs`.
async fn eventually(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..secs * 10 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check()
}

async fn a_kept_revocation_reaches_the_provider_after_rotation_and_retirement(backend: Backend) {
    let provider = FakeProvider::start().await;
    let extra = [("AXNT_REVOCATION_RETRY_SECS", "1")];
    // aws mode: through a proxy that can answer for KMS as it answers for a disabled
    // key, once the old key is retired.
    let proxy = match backend {
        Backend::Embedded => None,
        Backend::Aws => Some(AwsProxy::start(&crate::support::aws::moto_endpoint()).await),
    };
    let app = match &proxy {
        None => TestApp::on(backend, &provider, &extra).await,
        Some(proxy) => TestApp::aws_via(&proxy.endpoint, &provider, &extra).await,
    };

    // The provider's revocation endpoint fails for a passing reason: the user's
    // revocation is kept, to be tried again.
    assert!(app.connect("kept").await.status().is_success());
    let kept_token = provider.latest_refresh_token().expect("issued");
    provider.set_revocation_available(false);
    let response = app.api_delete("/v1/users/kept/connections/google").await;
    assert_eq!(response.status(), StatusCode::OK);
    let deleted: Value = response.json().await.expect("json");
    assert_eq!(deleted["revocation"], "pending", "{deleted}");
    // A grant held for its flow's confirmation, sealed as well.
    let session = app
        .connect_session(json!({
            "userId": "held",
            "provider": "google",
            "requireConfirmation": true,
        }))
        .await;
    let (provider_url, cookie) = app.start(session["url"].as_str().expect("url")).await;
    let callback = app.authorize(&provider_url).await;
    assert!(
        app.callback(&callback, Some(&cookie))
            .await
            .status()
            .is_success()
    );
    let flow_id = session["flowId"].as_str().expect("flowId").to_string();
    let before = sealed_items(app.store.as_ref()).await;
    let old_key = before
        .iter()
        .find(|i| matches!(i.item, Sealed::Revocation { .. }))
        .expect("the kept revocation")
        .envelope
        .key_id
        .clone();
    assert!(
        before.iter().any(|i| i.item
            == Sealed::PendingGrant {
                flow_id: flow_id.clone()
            }
            && i.envelope.key_id == old_key),
        "the held grant, under the same key: {before:#?}"
    );

    // Rotation, with the service stopped (so no instance holds the old key in memory).
    if backend == Backend::Aws {
        super::move_alias_to_a_new_key(&app).await;
    }
    let (dir, env, settings) = (
        app.data_dir.clone(),
        app.base_env.clone(),
        app.settings.clone(),
    );
    app.stop().await;
    let options = RotateOptions {
        new_local_key: backend == Backend::Embedded,
        page_size: 1,
        ..RotateOptions::default()
    };
    let report = rotate_keys(&settings, &options, &mut |_| {})
        .await
        .expect("rotate-keys runs");

    // The old key is retired: embedded, its file is removed; aws, KMS refuses it as it
    // refuses a disabled key (DisabledException, HTTP 400, in the Decrypt API's errors:
    // https://docs.aws.amazon.com/kms/latest/APIReference/API_Decrypt.html).
    match &proxy {
        None => std::fs::remove_dir_all(dir.path().join(axnt_oauth::crypto::RETIRED_KEYS_DIR))
            .expect("remove the retired key"),
        Some(proxy) => proxy.answer(
            "Decrypt",
            &old_key,
            400,
            &json!({"__type": "DisabledException", "message": format!("{old_key} is disabled.")})
                .to_string(),
        ),
    }
    provider.set_revocation_available(true);
    let fresh = TestApp::spawn_in(dir, env).await;
    assert!(
        eventually(20, || provider.revoked_tokens().contains(&kept_token)).await,
        "the kept revocation reaches the provider after the old key is retired"
    );

    assert!(report.success(), "{report:?}");
    assert_eq!(
        (report.verified.revocations, report.verified.pending_grants),
        (1, 1),
        "{report:?}"
    );
    let after = sealed_items(fresh.store.as_ref()).await;
    assert!(
        after.iter().any(|i| i.item
            == Sealed::PendingGrant {
                flow_id: flow_id.clone()
            }),
        "the held grant is kept"
    );
    assert!(
        after
            .iter()
            .all(|i| i.envelope.key_id == report.current_key),
        "nothing needs the old key: {after:#?}"
    );
    fresh.stop().await;
}
