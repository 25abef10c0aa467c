//! Connect links that bind the right people: single-use links, confirmation mode (a
//! grant held until the application's backend confirms its flow), a different Google
//! account replacing a connection made visible, and `expectedEmail` / `hostedDomain`.

on_every_backend!(
    a_link_opened_a_second_time_is_refused_and_logs_nothing,
    a_confirmed_grant_becomes_the_connection_once,
    an_unconfirmed_grant_is_never_handed_out_and_leaves_the_connection_as_it_was,
    an_unconfirmed_grant_expires,
    a_confirm_naming_another_user_discards_the_grant,
    the_confirmation_setting_cannot_be_waived_by_a_session,
    another_account_replacing_a_connection_is_visible,
    expected_email_and_hosted_domain_are_checked_against_the_id_token,
);

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::{Value, json};
use url::Url;

use crate::support::fake_provider::Profile;
use crate::support::{
    Backend, FakeProvider, RETURN_ORIGIN, TestApp, assert_problem, assert_unchanged, connected,
};

/// The query of a redirect's `Location`.
fn redirect_query(response: &reqwest::Response) -> HashMap<String, String> {
    assert_eq!(response.status(), StatusCode::FOUND, "a redirect");
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("location");
    Url::parse(location)
        .expect("url")
        .query_pairs()
        .into_owned()
        .collect()
}

/// Runs a session's flow through the provider and returns the callback's answer.
async fn run(app: &TestApp, session: &Value) -> reqwest::Response {
    let (provider_url, cookie) = app.start(session["url"].as_str().expect("url")).await;
    let callback = app.authorize(&provider_url).await;
    app.callback(&callback, Some(&cookie)).await
}

fn session_body(user_id: &str, extra: Value) -> Value {
    let mut body = json!({
        "userId": user_id,
        "provider": "google",
        "returnTo": format!("{RETURN_ORIGIN}/done"),
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

async fn confirm(app: &TestApp, flow_id: &str, body: Value) -> reqwest::Response {
    app.api_post(&format!("/v1/connect-sessions/{flow_id}/confirm"), body)
        .await
}

async fn a_link_opened_a_second_time_is_refused_and_logs_nothing(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    let session = app.connect_session(session_body("alice", json!({}))).await;
    let link = session["url"].as_str().expect("url");

    let first = run(&app, &session).await;
    assert_eq!(redirect_query(&first)["status"], "connected");
    let row = app.stored_row("alice").await.expect("row");
    let steps = app.steps("alice").await;

    // The same link again, as whoever it leaked to would open it: a page, no redirect
    // to the provider, no cookie, nothing written.
    for _ in 0..3 {
        let again = app.http.get(link).send().await.expect("start again");
        assert_eq!(again.status(), StatusCode::CONFLICT);
        assert!(again.headers().get("set-cookie").is_none());
        assert!(again.headers().get("location").is_none());
        let page = again.text().await.expect("page");
        assert!(page.contains("already used"), "{page}");
        assert!(page.contains("session_already_used"), "{page}");
    }
    assert_eq!(app.steps("alice").await, steps, "flow log unchanged");
    assert_eq!(app.stored_row("alice").await.as_ref(), Some(&row));

    // Opened twice before the first finished (two tabs): the second is refused too.
    let session = app.connect_session(session_body("bob", json!({}))).await;
    let link = session["url"].as_str().expect("url");
    let (_provider_url, _cookie) = app.start(link).await;
    let again = app.http.get(link).send().await.expect("second tab");
    assert_eq!(again.status(), StatusCode::CONFLICT);
}

async fn a_confirmed_grant_becomes_the_connection_once(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    let session = app
        .connect_session(session_body(
            "carol",
            json!({ "requireConfirmation": true }),
        ))
        .await;
    assert_eq!(session["requireConfirmation"], true);
    let flow_id = session["flowId"].as_str().expect("flowId").to_string();

    let callback = run(&app, &session).await;
    let query = redirect_query(&callback);
    assert_eq!(query["status"], "pending_confirmation");
    assert_eq!(query["flowId"], flow_id);
    assert_eq!(query["provider"], "google");
    assert!(
        app.steps("carol")
            .await
            .contains(&"awaiting_confirmation".to_string())
    );
    assert_problem(app.token("carol").await, 404, "not_connected").await;

    let confirmed = confirm(&app, &flow_id, json!({ "userId": "carol" })).await;
    assert_eq!(confirmed.status(), StatusCode::OK);
    let body: Value = confirmed.json().await.expect("json");
    assert_eq!(body["userId"], "carol");
    assert_eq!(body["flowId"], flow_id.as_str());
    assert_eq!(body["email"], provider.profile().email.as_str());
    assert_eq!(body["accountChanged"], false);
    assert_eq!(body["replaced"], false);

    let token = app.token("carol").await;
    assert_eq!(token.status(), StatusCode::OK);
    let token: Value = token.json().await.expect("json");
    assert_eq!(
        token["accessToken"].as_str(),
        provider.latest_access_token().as_deref()
    );
    let steps = app.steps("carol").await;
    for step in ["confirmed", "tokens_stored", "completed"] {
        assert!(steps.contains(&step.to_string()), "{step} in {steps:?}");
    }

    // Confirmed once: a second confirm finds nothing, and changes nothing.
    let row = app.stored_row("carol").await;
    assert_problem(
        confirm(&app, &flow_id, json!({})).await,
        404,
        "confirmation_not_found",
    )
    .await;
    assert_eq!(app.stored_row("carol").await, row);
    assert_problem(
        confirm(&app, "no-such-flow", json!({})).await,
        404,
        "confirmation_not_found",
    )
    .await;
    assert_problem(
        confirm(&app, "not%20a%20flow", json!({})).await,
        400,
        "invalid_request",
    )
    .await;
}

async fn an_unconfirmed_grant_is_never_handed_out_and_leaves_the_connection_as_it_was(
    backend: Backend,
) {
    let provider = FakeProvider::start().await;
    let (app, row) = connected(backend, &provider, &[]).await;
    let old_token: Value = app.token("victim").await.json().await.expect("json");
    let session = app
        .connect_session(session_body(
            "victim",
            json!({ "requireConfirmation": true }),
        ))
        .await;
    let callback = run(&app, &session).await;
    assert_eq!(redirect_query(&callback)["status"], "pending_confirmation");

    // The held grant is not served: the row and its token are the old ones.
    assert_unchanged(&app, &row).await;
    let token: Value = app.token("victim").await.json().await.expect("json");
    assert_eq!(token["accessToken"], old_token["accessToken"]);
    assert_ne!(
        token["accessToken"].as_str(),
        provider.latest_access_token().as_deref(),
        "the held grant's access token is not handed out"
    );
    let listed: Value = app
        .api_get("/v1/users/victim/connections")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(listed["connections"].as_array().map(Vec::len), Some(1));
}

async fn an_unconfirmed_grant_expires(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[("AXNT_CONFIRMATION_TTL_SECS", "1")]).await;
    let session = app
        .connect_session(session_body("dave", json!({ "requireConfirmation": true })))
        .await;
    let flow_id = session["flowId"].as_str().expect("flowId").to_string();
    let callback = run(&app, &session).await;
    assert_eq!(redirect_query(&callback)["status"], "pending_confirmation");
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    assert_problem(
        confirm(&app, &flow_id, json!({ "userId": "dave" })).await,
        410,
        "confirmation_expired",
    )
    .await;
    assert_problem(app.token("dave").await, 404, "not_connected").await;
    assert!(app.stored_row("dave").await.is_none());
}

async fn a_confirm_naming_another_user_discards_the_grant(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    // An app user sends their own link to a victim: the victim's Google account comes
    // back to the application, whose logged-in user is not the link's.
    let session = app
        .connect_session(session_body(
            "sender",
            json!({ "requireConfirmation": true }),
        ))
        .await;
    let flow_id = session["flowId"].as_str().expect("flowId").to_string();
    run(&app, &session).await;
    assert_problem(
        confirm(&app, &flow_id, json!({ "userId": "victim" })).await,
        404,
        "confirmation_not_found",
    )
    .await;
    // Discarded: not even the link's own user can confirm it now.
    assert_problem(
        confirm(&app, &flow_id, json!({ "userId": "sender" })).await,
        404,
        "confirmation_not_found",
    )
    .await;
    assert!(app.stored_row("sender").await.is_none());
    assert!(app.stored_row("victim").await.is_none());
    assert_problem(
        confirm(&app, &flow_id, json!({ "userId": "../x" })).await,
        400,
        "invalid_request",
    )
    .await;
}

async fn the_confirmation_setting_cannot_be_waived_by_a_session(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[("AXNT_REQUIRE_CONFIRMATION", "true")]).await;
    let session = app
        .connect_session(session_body(
            "erin",
            json!({ "requireConfirmation": false }),
        ))
        .await;
    assert_eq!(session["requireConfirmation"], true);
    let callback = run(&app, &session).await;
    assert_eq!(redirect_query(&callback)["status"], "pending_confirmation");
    assert!(app.stored_row("erin").await.is_none());
    let flow_id = session["flowId"].as_str().expect("flowId");
    assert_eq!(
        confirm(&app, flow_id, json!({})).await.status(),
        StatusCode::OK
    );
    assert!(app.stored_row("erin").await.is_some());
}

async fn another_account_replacing_a_connection_is_visible(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    let first = provider.profile();
    assert!(app.connect("frank").await.status().is_success());

    // The same account again: a re-connect, not an account change.
    assert!(app.connect("frank").await.status().is_success());
    let log = app.flow_log("frank").await;
    let stored = log
        .iter()
        .find(|e| e["step"] == "tokens_stored")
        .expect("tokens_stored");
    assert_eq!(stored["data"]["accountChanged"], false);

    let second = Profile {
        sub: "2999".into(),
        email: "someone-else@example.com".into(),
        ..first.clone()
    };
    provider.set_profile(second.clone());
    assert!(app.connect("frank").await.status().is_success());

    // Newest first: this flow's tokens_stored says whose account it replaced.
    let log = app.flow_log("frank").await;
    let stored = log
        .iter()
        .find(|e| e["step"] == "tokens_stored")
        .expect("tokens_stored");
    assert_eq!(stored["data"]["accountChanged"], true, "{stored}");
    assert_eq!(stored["data"]["previousSub"], first.sub.as_str());
    assert_eq!(stored["data"]["previousEmail"], first.email.as_str());

    let listed: Value = app
        .api_get("/v1/users/frank/connections")
        .await
        .json()
        .await
        .expect("json");
    let connection = &listed["connections"][0];
    assert_eq!(connection["userInfo"]["sub"], second.sub.as_str());
    assert_eq!(connection["previousAccount"]["sub"], first.sub.as_str());
    assert_eq!(connection["previousAccount"]["email"], first.email.as_str());
    assert!(connection["previousAccount"]["replacedAt"].is_string());

    // In confirmation mode the change needs the confirm, and the confirm says so.
    provider.set_profile(first.clone());
    let session = app
        .connect_session(session_body(
            "frank",
            json!({ "requireConfirmation": true }),
        ))
        .await;
    run(&app, &session).await;
    let flow_id = session["flowId"].as_str().expect("flowId");
    let body: Value = confirm(&app, flow_id, json!({ "userId": "frank" }))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["accountChanged"], true, "{body}");
    assert_eq!(body["previousAccount"]["sub"], second.sub.as_str());
}

async fn expected_email_and_hosted_domain_are_checked_against_the_id_token(backend: Backend) {
    let provider = FakeProvider::start().await;
    let (app, row) = connected(backend, &provider, &[]).await;
    let email = provider.profile().email;

    // Another account than the one asked for: back to the app with the error, and the
    // existing connection untouched.
    for constraint in [
        json!({ "expectedEmail": "someone-else@example.com" }),
        json!({ "hostedDomain": "example.com" }), // a consumer account has no `hd`
    ] {
        let session = app
            .connect_session(session_body("victim", constraint.clone()))
            .await;
        let callback = run(&app, &session).await;
        let query = redirect_query(&callback);
        assert_eq!(query["status"], "error", "{constraint}");
        assert_eq!(query["error"], "account_not_allowed", "{constraint}");
        assert_unchanged(&app, &row).await;
    }

    // The expected account, in any letter case, with the hint sent to the provider.
    let session = app
        .connect_session(session_body(
            "victim",
            json!({ "expectedEmail": email.to_uppercase() }),
        ))
        .await;
    let (provider_url, cookie) = app.start(session["url"].as_str().expect("url")).await;
    let hint = provider_url
        .query_pairs()
        .find(|(k, _)| k == "login_hint")
        .map(|(_, v)| v.into_owned());
    assert_eq!(hint, Some(email.to_uppercase()));
    let callback = app.authorize(&provider_url).await;
    let callback = app.callback(&callback, Some(&cookie)).await;
    assert_eq!(redirect_query(&callback)["status"], "connected");

    // A Workspace account of the asked-for domain.
    provider.set_profile(Profile {
        hd: Some("corp.example".into()),
        ..provider.profile()
    });
    let session = app
        .connect_session(session_body(
            "victim",
            json!({ "hostedDomain": "CORP.example" }),
        ))
        .await;
    assert_eq!(
        redirect_query(&run(&app, &session).await)["status"],
        "connected"
    );

    for bad in [
        json!({ "expectedEmail": "not-an-email" }),
        json!({ "expectedEmail": "a@b@c" }),
        json!({ "expectedEmail": "a b@example.com" }),
        json!({ "hostedDomain": "" }),
        json!({ "hostedDomain": "exa mple.com" }),
        json!({ "hostedDomain": "example.com/x" }),
    ] {
        let response = app
            .api_post("/v1/connect-sessions", session_body("victim", bad))
            .await;
        assert_problem(response, 400, "invalid_request").await;
    }
}
