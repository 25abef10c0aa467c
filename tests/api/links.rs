//! Connect links that bind the right people: single-use links, session binding (a
//! grant held until the application's backend confirms its flow with the one-time code
//! the return redirect carried; the default), forced linking refused, a different
//! Google account replacing a connection made visible, and `expectedEmail` /
//! `hostedDomain`.

on_every_backend!(
    a_link_opened_a_second_time_is_refused_and_logs_nothing,
    binding_is_the_default_and_the_returning_browser_confirms_once,
    a_link_forwarded_to_another_account_stores_nothing_for_its_sender,
    a_step_up_link_is_bound_the_same_way,
    an_unconfirmed_grant_is_never_handed_out_and_leaves_the_connection_as_it_was,
    an_unconfirmed_grant_expires,
    a_confirm_naming_another_user_discards_the_grant,
    a_session_cannot_waive_binding_unless_pinned_to_an_account,
    binding_turned_off_stores_at_once_and_is_warned_about,
    the_confirmation_code_is_never_logged_or_stored_in_clear,
    another_account_replacing_a_connection_is_visible,
    expected_email_and_hosted_domain_are_checked_against_the_id_token,
);

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::fake_provider::Profile;
use crate::support::{
    API_KEY, Backend, FakeProvider, RETURN_ORIGIN, TestApp, assert_problem, assert_unchanged,
    captured_logs, connected, contains, redirect_query,
};

/// Runs a session's flow through the provider and returns the callback's answer.
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

/// A return redirect announcing a held grant: its flow id and confirmation code.
fn held(callback: &reqwest::Response) -> (String, String) {
    assert_eq!(callback.status(), StatusCode::FOUND, "a return redirect");
    let query = redirect_query(callback);
    assert_eq!(query["status"], "pending_confirmation", "{query:?}");
    (query["flowId"].clone(), query["confirmationCode"].clone())
}

/// `axnt_held_grants_discarded_total{reason}` in the process's metrics.
async fn discarded(app: &TestApp, reason: &str) -> f64 {
    let metrics = app.metrics().await;
    let prefix = format!("axnt_held_grants_discarded_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn a_link_opened_a_second_time_is_refused_and_logs_nothing(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    let session = app.connect_session(session_body("alice", json!({}))).await;
    let link = session["url"].as_str().expect("url");

    let first = app.follow(&session).await;
    let confirmed = app.confirm_redirect(&first, "alice").await.expect("held");
    assert_eq!(confirmed.status(), StatusCode::OK);
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

async fn binding_is_the_default_and_the_returning_browser_confirms_once(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    let session = app.connect_session(session_body("carol", json!({}))).await;
    assert_eq!(
        session["requireConfirmation"], true,
        "binding is the default"
    );
    let flow_id = session["flowId"].as_str().expect("flowId").to_string();

    let callback = app.follow(&session).await;
    let query = redirect_query(&callback);
    assert_eq!(query["flowId"], flow_id);
    assert_eq!(query["provider"], "google");
    let (_, code) = held(&callback);
    // At least 128 bits: 22 or more base64url characters.
    assert!(
        code.len() >= 22
            && code
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{code}"
    );
    assert!(
        app.steps("carol")
            .await
            .contains(&"awaiting_confirmation".to_string())
    );
    assert_problem(app.token("carol").await, 404, "not_connected").await;

    let confirmed = confirm(
        &app,
        &flow_id,
        json!({ "userId": "carol", "confirmationCode": code }),
    )
    .await;
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

    // Confirmed once: the same code again finds nothing, and changes nothing.
    let row = app.stored_row("carol").await;
    let again = json!({ "userId": "carol", "confirmationCode": code });
    assert_problem(
        confirm(&app, &flow_id, again.clone()).await,
        404,
        "confirmation_not_found",
    )
    .await;
    assert_eq!(app.stored_row("carol").await, row);
    assert_problem(
        confirm(&app, "no-such-flow", again).await,
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
    for bad in [
        json!({ "userId": "carol", "confirmationCode": 7 }),
        json!({ "userId": "carol", "confirmationCode": "x".repeat(129) }),
        json!({ "userId": "carol", "confirmationCode": "c", "extra": 1 }),
    ] {
        assert_problem(confirm(&app, &flow_id, bad).await, 400, "invalid_request").await;
    }
}

/// Mallory, a user of the application, sends the link the application made for him to
/// a victim ("connect your Google to …"). The victim's Google account completes it and
/// the victim's browser comes back to the application with the code. Whatever Mallory
/// tries, nothing of the victim's is stored under his id; the held grant is discarded.
async fn a_link_forwarded_to_another_account_stores_nothing_for_its_sender(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    let mallory = provider.profile();
    let victim = Profile::for_prefix("v9");
    let wrong_code = "A".repeat(32);
    let attempts = [
        // The flow id alone (an empty body): all Mallory can learn.
        None,
        Some(json!({ "userId": "mallory" })),
        Some(json!({ "userId": "mallory", "confirmationCode": wrong_code })),
        // The victim's browser brings the right code to the application, where the
        // logged-in user is the victim: the application confirms for its user.
        Some(json!({ "userId": "victim-in-app", "confirmationCode": "<code>" })),
    ];
    let before = discarded(&app, "wrong_code").await + discarded(&app, "other_user").await;
    for attempt in &attempts {
        provider.set_profile(mallory.clone());
        let session = app
            .connect_session(session_body("mallory", json!({})))
            .await;
        provider.set_profile(victim.clone());
        let (flow_id, code) = held(&app.follow(&session).await);
        assert_problem(app.token("mallory").await, 404, "not_connected").await;
        let refused = match attempt {
            None => app
                .http
                .post(app.url(&format!("/v1/connect-sessions/{flow_id}/confirm")))
                .bearer_auth(API_KEY)
                .send()
                .await
                .expect("confirm"),
            Some(body) => {
                let body = body.to_string().replace("<code>", &code);
                confirm(&app, &flow_id, serde_json::from_str(&body).expect("json")).await
            }
        };
        assert_problem(refused, 404, "confirmation_not_found").await;
        // Discarded: the right user with the right code finds nothing now.
        assert_problem(
            confirm(
                &app,
                &flow_id,
                json!({ "userId": "mallory", "confirmationCode": code }),
            )
            .await,
            404,
            "confirmation_not_found",
        )
        .await;
        assert!(app.stored_row("mallory").await.is_none(), "{attempt:?}");
        assert!(app.stored_row("victim-in-app").await.is_none());
    }
    let after = discarded(&app, "wrong_code").await + discarded(&app, "other_user").await;
    assert!(after - before >= attempts.len() as f64, "discards counted");

    // Mallory's own account, his own browser: his code confirms.
    provider.set_profile(mallory.clone());
    let session = app
        .connect_session(session_body("mallory", json!({})))
        .await;
    let callback = app.follow(&session).await;
    let confirmed = app
        .confirm_redirect(&callback, "mallory")
        .await
        .expect("held");
    assert_eq!(confirmed.status(), StatusCode::OK);
    let body: Value = confirmed.json().await.expect("json");
    assert_eq!(body["sub"], mallory.sub.as_str());
    assert_eq!(app.token("mallory").await.status(), StatusCode::OK);
}

async fn a_step_up_link_is_bound_the_same_way(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    let owner = provider.profile();
    assert_eq!(app.connect("sam").await.status(), StatusCode::OK);
    let drive = "https://www.googleapis.com/auth/drive.readonly";
    let read = |app: &TestApp| {
        let url = format!(
            "/v1/users/sam/tokens/google?requiredScopes={drive}&returnTo={RETURN_ORIGIN}/scopes"
        );
        let http = app.http.clone();
        let url = app.url(&url);
        async move {
            http.get(url)
                .bearer_auth(API_KEY)
                .send()
                .await
                .expect("read")
        }
    };
    let step_up = assert_problem(read(&app).await, 403, "insufficient_scope").await;
    let link = step_up["stepUpUrl"]
        .as_str()
        .expect("stepUpUrl")
        .to_string();

    // Forwarded to another account: refused (the step-up names the connected account),
    // nothing held, and a confirm with its flow id finds nothing.
    provider.set_profile(Profile::for_prefix("s7"));
    let (provider_url, cookie) = app.start(&link).await;
    let callback = app.authorize(&provider_url).await;
    let refused = app.callback(&callback, Some(&cookie)).await;
    let query = redirect_query(&refused);
    assert_eq!(query["status"], "error");
    assert_eq!(query["error"], "account_not_allowed");
    assert!(!query.contains_key("confirmationCode"));
    assert_problem(
        confirm(&app, &query["flowId"], json!({ "userId": "sam" })).await,
        404,
        "confirmation_not_found",
    )
    .await;
    assert_problem(read(&app).await, 403, "insufficient_scope").await;

    // The owner, through a fresh step-up link: held, then confirmed with the code the
    // return redirect carried; the token now holds the scope.
    provider.set_profile(owner);
    let step_up = assert_problem(read(&app).await, 403, "insufficient_scope").await;
    let (provider_url, cookie) = app
        .start(step_up["stepUpUrl"].as_str().expect("stepUpUrl"))
        .await;
    let callback = app.authorize(&provider_url).await;
    let callback = app.callback(&callback, Some(&cookie)).await;
    let (flow_id, code) = held(&callback);
    assert_problem(read(&app).await, 403, "insufficient_scope").await;
    assert_problem(
        confirm(
            &app,
            &flow_id,
            json!({ "userId": "sam", "confirmationCode": "B".repeat(32) }),
        )
        .await,
        404,
        "confirmation_not_found",
    )
    .await;
    // That wrong code discarded it: a new step-up, and this time the right code.
    let step_up = assert_problem(read(&app).await, 403, "insufficient_scope").await;
    let (provider_url, cookie) = app
        .start(step_up["stepUpUrl"].as_str().expect("stepUpUrl"))
        .await;
    let callback = app.authorize(&provider_url).await;
    let callback = app.callback(&callback, Some(&cookie)).await;
    let (flow_id2, code2) = held(&callback);
    assert_ne!((&flow_id, &code), (&flow_id2, &code2));
    let confirmed = confirm(
        &app,
        &flow_id2,
        json!({ "userId": "sam", "confirmationCode": code2 }),
    )
    .await;
    assert_eq!(confirmed.status(), StatusCode::OK);
    assert_eq!(read(&app).await.status(), StatusCode::OK);

    // A returnTo outside the allow-list is refused before anything is made.
    let outside = app
        .api_get(&format!(
            "/v1/users/sam/tokens/google?requiredScopes={drive}&returnTo=https://evil.example/x"
        ))
        .await;
    assert_problem(outside, 400, "return_url_not_allowed").await;
}

async fn an_unconfirmed_grant_is_never_handed_out_and_leaves_the_connection_as_it_was(
    backend: Backend,
) {
    let provider = FakeProvider::start().await;
    let (app, row) = connected(backend, &provider, &[]).await;
    let old_token: Value = app.token("victim").await.json().await.expect("json");
    let session = app.connect_session(session_body("victim", json!({}))).await;
    held(&app.follow(&session).await);

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
    let session = app.connect_session(session_body("dave", json!({}))).await;
    let (flow_id, code) = held(&app.follow(&session).await);
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    assert_problem(
        confirm(
            &app,
            &flow_id,
            json!({ "userId": "dave", "confirmationCode": code }),
        )
        .await,
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
    let session = app.connect_session(session_body("sender", json!({}))).await;
    let (flow_id, code) = held(&app.follow(&session).await);
    let before = discarded(&app, "other_user").await;
    assert_problem(
        confirm(
            &app,
            &flow_id,
            json!({ "userId": "victim", "confirmationCode": code }),
        )
        .await,
        404,
        "confirmation_not_found",
    )
    .await;
    assert!(discarded(&app, "other_user").await > before, "counted");
    // Discarded: not even the link's own user can confirm it now.
    assert_problem(
        confirm(
            &app,
            &flow_id,
            json!({ "userId": "sender", "confirmationCode": code }),
        )
        .await,
        404,
        "confirmation_not_found",
    )
    .await;
    assert!(app.stored_row("sender").await.is_none());
    assert!(app.stored_row("victim").await.is_none());
    assert_problem(
        confirm(
            &app,
            &flow_id,
            json!({ "userId": "../x", "confirmationCode": code }),
        )
        .await,
        400,
        "invalid_request",
    )
    .await;
}

async fn a_session_cannot_waive_binding_unless_pinned_to_an_account(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    let session = app
        .connect_session(session_body(
            "erin",
            json!({ "requireConfirmation": false }),
        ))
        .await;
    assert_eq!(session["requireConfirmation"], true);
    let callback = app.follow(&session).await;
    held(&callback);
    assert!(app.stored_row("erin").await.is_none());
    let confirmed = app.confirm_redirect(&callback, "erin").await.expect("held");
    assert_eq!(confirmed.status(), StatusCode::OK);
    assert!(app.stored_row("erin").await.is_some());

    // Pinned to the account (the verified ID token must match): stored at once.
    let email = provider.profile().email;
    let session = app
        .connect_session(session_body("erin2", json!({ "expectedEmail": email })))
        .await;
    assert_eq!(session["requireConfirmation"], false);
    let callback = app.follow(&session).await;
    let query = redirect_query(&callback);
    assert_eq!(query["status"], "connected");
    assert!(!query.contains_key("confirmationCode"));
    assert!(app.stored_row("erin2").await.is_some());
    // …unless the session asks for the confirmation too.
    let session = app
        .connect_session(session_body(
            "erin3",
            json!({ "expectedEmail": email, "requireConfirmation": true }),
        ))
        .await;
    assert_eq!(session["requireConfirmation"], true);
    held(&app.follow(&session).await);
    assert!(app.stored_row("erin3").await.is_none());
}

async fn binding_turned_off_stores_at_once_and_is_warned_about(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(
        backend,
        &provider,
        &[("AXNT_REQUIRE_CONFIRMATION", "false")],
    )
    .await;
    assert!(captured_logs().contains("AXNT_REQUIRE_CONFIRMATION=false"));
    let session = app.connect_session(session_body("gus", json!({}))).await;
    assert_eq!(session["requireConfirmation"], false);
    let query = redirect_query(&app.follow(&session).await);
    assert_eq!(query["status"], "connected");
    assert!(!query.contains_key("confirmationCode"));
    assert!(app.stored_row("gus").await.is_some());
    // A session may still ask for it.
    let session = app
        .connect_session(session_body("gus2", json!({ "requireConfirmation": true })))
        .await;
    held(&app.follow(&session).await);
    assert!(app.stored_row("gus2").await.is_none());
}

/// The code exists only in the return redirect: never in a log line, the flow log, an
/// event, the metrics or the store (where it is sealed with the grant).
async fn the_confirmation_code_is_never_logged_or_stored_in_clear(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[("AXNT_EVENTS_FEED_DELAY_MS", "0")]).await;
    let session = app.connect_session(session_body("hal", json!({}))).await;
    let callback = app.follow(&session).await;
    let (flow_id, code) = held(&callback);
    let held_storage = app.raw_storage().await;
    let confirmed = confirm(
        &app,
        &flow_id,
        json!({ "userId": "hal", "confirmationCode": code }),
    )
    .await;
    assert_eq!(confirmed.status(), StatusCode::OK);
    // A wrong one too, so a refusal's path is covered.
    let session = app.connect_session(session_body("hal", json!({}))).await;
    let (flow_id, wrong) = held(&app.follow(&session).await);
    let wrong = format!("{}x", &wrong[1..]);
    confirm(
        &app,
        &flow_id,
        json!({ "userId": "hal", "confirmationCode": wrong }),
    )
    .await;
    let events = app
        .api_get("/v1/events?limit=500")
        .await
        .text()
        .await
        .expect("feed");
    let flow_log = serde_json::to_string(&app.flow_log("hal").await).expect("json");
    for (what, text) in [
        ("the logs", captured_logs()),
        ("the flow log", flow_log),
        ("the events", events),
        ("the metrics", app.metrics().await),
    ] {
        assert!(!text.contains(&code), "the code is in {what}");
        assert!(!text.contains(&wrong), "the wrong code is in {what}");
    }
    assert!(
        !contains(&held_storage, &code),
        "the code is stored in clear"
    );
    assert!(!contains(&app.raw_storage().await, &code));
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

    // The change needs the confirm, and the confirm says so.
    provider.set_profile(first.clone());
    let session = app.connect_session(session_body("frank", json!({}))).await;
    let callback = app.follow(&session).await;
    let body: Value = app
        .confirm_redirect(&callback, "frank")
        .await
        .expect("held")
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
        let callback = app.follow(&session).await;
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
        redirect_query(&app.follow(&session).await)["status"],
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
