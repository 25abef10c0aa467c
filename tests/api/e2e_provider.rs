//! End to end against an independent OpenID provider from npm (`oauth2-mock-server`,
//! started by `tests/e2e/mock-provider.mjs`): discovery, JWKS, PKCE, ID-token
//! verification and refresh as another implementation does them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support;
use crate::support::{API_KEY, TestApp};

/// The npm provider as a child process, killed on drop.
struct NodeProvider {
    child: Child,
    issuer: String,
}

impl Drop for NodeProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node_provider() -> NodeProvider {
    let dir = std::env::var("TEST_AXNT_NODE_E2E_DIR").unwrap_or_else(|_| {
        panic!("TEST_AXNT_NODE_E2E_DIR is not set: run the suite with scripts/test, which installs the npm provider")
    });
    let mut child = Command::new("node")
        .arg(format!("{dir}/mock-provider.mjs"))
        .arg("0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node starts (Node.js 20.19+ is needed)");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the provider prints its issuer");
    let announced: Value = serde_json::from_str(&line).expect("one JSON line");
    let issuer = announced["issuer"].as_str().expect("issuer").to_string();
    NodeProvider { child, issuer }
}

async fn control(provider: &NodeProvider, body: Value) -> Value {
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/__control", provider.issuer))
        .json(&body)
        .send()
        .await
        .expect("control");
    response.json().await.expect("json")
}

#[tokio::test]
async fn a_full_flow_against_oauth2_mock_server() {
    let provider = start_node_provider();
    let env: Vec<(String, String)> = [
        ("AXNT_GOOGLE_ISSUER", provider.issuer.as_str()),
        ("AXNT_GOOGLE_CLIENT_ID", "axnt-e2e-client"),
        ("AXNT_GOOGLE_CLIENT_SECRET", "axnt-e2e-secret-value"),
        ("AXNT_API_KEYS", API_KEY),
        ("AXNT_ALLOWED_RETURN_URLS", support::RETURN_ORIGIN),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    control(&provider, json!({ "client": { "clientId": "axnt-e2e-client", "clientSecret": "axnt-e2e-secret-value" } })).await;
    let app = TestApp::spawn_in(Arc::new(tempfile::tempdir().expect("tempdir")), env).await;

    let session = app
        .connect_session(json!({ "userId": "e2e-user", "provider": "google", "loginHint": "e2e@example.com", "returnTo": support::RETURN_ORIGIN }))
        .await;
    let (provider_url, cookie) = app.start(session["url"].as_str().expect("url")).await;
    assert!(provider_url.as_str().starts_with(&provider.issuer));
    let callback = app.authorize(&provider_url).await;
    let response = app.callback(&callback, Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let code = support::redirect_query(&response)["confirmationCode"].clone();
    assert_eq!(
        response.headers()["location"],
        format!(
            "{}?status=pending_confirmation&provider=google&flowId={}&confirmationCode={code}",
            support::RETURN_ORIGIN,
            session["flowId"].as_str().expect("flowId")
        )
    );
    let confirmed = app
        .confirm(
            session["flowId"].as_str().expect("flowId"),
            "e2e-user",
            &code,
        )
        .await;
    assert_eq!(confirmed.status(), StatusCode::OK);

    let token: Value = app.token("e2e-user").await.json().await.expect("json");
    assert_eq!(token["email"], "e2e@example.com");
    let first = token["accessToken"].as_str().expect("token").to_string();

    // A token inside its margin is refreshed through the provider's refresh grant. A
    // 2-second token is held to half its lifetime (1 s), so it is due after a second.
    control(&provider, json!({ "accessTokenTtl": 2 })).await;
    let response = app.connect("e2e-user").await;
    assert_eq!(response.status(), StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let refreshed: Value = app.token("e2e-user").await.json().await.expect("json");
    assert_ne!(refreshed["accessToken"], first);
    let counts = control(&provider, json!({})).await;
    assert_eq!(counts["counts"]["token"]["refresh_token"], 1);

    // Revoked at the provider: the next refresh is invalid_grant → 409.
    control(&provider, json!({ "revokeAll": true })).await;
    let response = app.connect("e2e-user").await;
    assert_eq!(response.status(), StatusCode::OK);
    control(&provider, json!({ "revokeAll": true })).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let dead =
        support::assert_problem(app.token("e2e-user").await, 409, "reauthorization_required").await;
    assert_eq!(dead["cause"], "revoked_by_user");

    let steps = app.steps("e2e-user").await;
    assert_eq!(
        &steps[..10],
        [
            "session_created",
            "authorize_redirect",
            "callback_received",
            "state_verified",
            "code_exchanged",
            "id_token_verified",
            "awaiting_confirmation",
            "confirmed",
            "tokens_stored",
            "completed"
        ]
    );
    assert!(steps.contains(&"token_refreshed".to_string()));
    assert_eq!(steps.last().map(String::as_str), Some("refresh_failed"));
}

/// A provider named by settings alone, of the `oidc` kind its name defaults to: the
/// independent provider serves a whole flow, a refresh, a dead grant (read by OAuth's
/// rules, not Google's: "Token has been expired or revoked." names no cause here) and a
/// revocation, under its own name in routes, rows and the flow log.
#[tokio::test]
async fn an_oidc_provider_configured_by_settings_alone() {
    let provider = start_node_provider();
    control(&provider, json!({ "reset": true })).await;
    control(
        &provider,
        json!({ "client": { "clientId": "acme-client", "clientSecret": "acme-secret-value" } }),
    )
    .await;
    let env: Vec<(String, String)> = [
        ("AXNT_PROVIDERS", "acme"),
        ("AXNT_ACME_ISSUER", provider.issuer.as_str()),
        ("AXNT_ACME_CLIENT_ID", "acme-client"),
        ("AXNT_ACME_CLIENT_SECRET", "acme-secret-value"),
        ("AXNT_ACME_SCOPES", "email profile"),
        ("AXNT_API_KEYS", API_KEY),
        ("AXNT_ALLOWED_RETURN_URLS", support::RETURN_ORIGIN),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let app = TestApp::spawn_in(Arc::new(tempfile::tempdir().expect("tempdir")), env).await;
    assert_eq!(app.provider, "acme");

    let session = app
        .connect_session(json!({ "userId": "oidc-user", "provider": "acme", "returnTo": support::RETURN_ORIGIN }))
        .await;
    let (provider_url, cookie) = app.start(session["url"].as_str().expect("url")).await;
    assert!(provider_url.as_str().starts_with(&provider.issuer));
    assert!(
        provider_url
            .query_pairs()
            .any(|(k, v)| k == "redirect_uri" && v.ends_with("/oauth/acme/callback")),
        "{provider_url}"
    );
    let callback = app.authorize(&provider_url).await;
    let response = app.callback(&callback, Some(&cookie)).await;
    let query = support::redirect_query(&response);
    assert_eq!(query["provider"], "acme");
    let confirmed = app
        .confirm(&query["flowId"], "oidc-user", &query["confirmationCode"])
        .await;
    assert_eq!(confirmed.status(), StatusCode::OK);
    let first: Value = app.token("oidc-user").await.json().await.expect("json");
    assert!(first["accessToken"].is_string(), "{first}");

    control(&provider, json!({ "accessTokenTtl": 2 })).await;
    assert_eq!(app.connect("oidc-user").await.status(), StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let refreshed: Value = app.token("oidc-user").await.json().await.expect("json");
    assert_ne!(refreshed["accessToken"], first["accessToken"]);

    control(&provider, json!({ "revokeAll": true })).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let dead = support::assert_problem(
        app.token("oidc-user").await,
        409,
        "reauthorization_required",
    )
    .await;
    assert_eq!(dead["cause"], "unknown_invalid_grant");
    let items = app.flow_log("oidc-user").await;
    assert!(
        items.iter().all(|i| i["data"]["provider"] == "acme"),
        "{items:?}"
    );

    assert_eq!(app.connect("oidc-user").await.status(), StatusCode::OK);
    let deleted: Value = app
        .api_delete("/v1/users/oidc-user/connections/acme")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(deleted["revocation"], "revoked", "{deleted}");
    let counts = control(&provider, json!({})).await;
    assert_eq!(counts["counts"]["revoke"], 1, "{counts}");
}
