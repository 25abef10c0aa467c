//! Google grants as they live and die: the scope ledger (requested and granted scopes),
//! partial grants accepted or refused, required scopes with a step-up link, the cause
//! of each way a grant ends (in the 409, the connections list, the flow log and the
//! metrics), client-side failures that leave the grant alone, and the health forecast.

on_every_backend!(
    a_partial_grant_is_accepted_and_flagged,
    a_refused_partial_grant_stores_nothing_and_says_what_is_missing,
    a_missing_required_scope_answers_403_with_a_step_up_link_that_works,
    a_step_up_session_is_for_the_connected_account_only,
    each_way_a_grant_ends_is_named_with_its_cause,
    client_and_provider_failures_keep_the_grant_active,
    a_testing_mode_grant_near_seven_days_is_at_risk,
    operators_list_the_connections_that_need_attention,
    a_revocation_that_fails_is_retried_after_a_restart,
    a_deletion_without_revocation_forgets_locally_only,
    a_hanging_revocation_endpoint_is_kept_for_later_within_the_request,
    the_keepalive_refreshes_an_idle_connection_and_leaves_a_fresh_one,
    the_grant_counter_warns_at_the_limit_and_names_the_eviction,
);

use chrono::{DateTime, Duration as Delta, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use url::Url;

use crate::support::fake_provider::{Profile, RefreshBehaviour};
use crate::support::{
    Backend, FakeProvider, RETURN_ORIGIN, TestApp, assert_died_of, assert_page, assert_problem,
};

const DRIVE: &str = "https://www.googleapis.com/auth/drive.readonly";
const CALENDAR: &str = "https://www.googleapis.com/auth/calendar.readonly";

/// A whole flow for the session `body` (its `userId` and `provider` added), completed
/// as the application does (a held grant confirmed for `user_id`); returns the
/// callback's answer, or the confirm's when there was one.
async fn flow(app: &TestApp, user_id: &str, body: Value) -> reqwest::Response {
    let mut body = body;
    body["userId"] = json!(user_id);
    body["provider"] = json!("google");
    let session = app.connect_session(body).await;
    follow(app, user_id, session["url"].as_str().expect("url")).await
}

/// Follows a start link through the provider's consent to the callback, and completes
/// it for `user_id` as the application does.
async fn follow(app: &TestApp, user_id: &str, start_url: &str) -> reqwest::Response {
    let (provider_url, cookie) = app.start(start_url).await;
    let callback = app.authorize(&provider_url).await;
    let answer = app.callback(&callback, Some(&cookie)).await;
    app.complete(user_id, answer).await
}

/// The user's one connection as listed.
async fn connection(app: &TestApp, user_id: &str) -> Value {
    let response = app
        .api_get(&format!("/v1/users/{user_id}/connections"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    body["connections"][0].clone()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn time(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().expect("a time"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

/// Rewrites the row's grant clocks as if the grant were `age` old and never refreshed.
async fn age_grant(app: &TestApp, user_id: &str, age: Delta) {
    let row = app.stored_row(user_id).await.expect("row");
    let consented = Utc::now() - age;
    let older = axnt_oauth::store::Connection {
        grant: axnt_oauth::store::GrantLedger {
            consented_at: Some(consented),
            last_refreshed_at: None,
            ..row.grant.clone()
        },
        updated_at: consented,
        version: row.version + 1,
        ..row.clone()
    };
    app.store
        .put(&older, Some(row.version), &[])
        .await
        .expect("age the row");
}

async fn a_partial_grant_is_accepted_and_flagged(backend: Backend) {
    let provider = FakeProvider::start().await;
    provider.untick_scopes(&[DRIVE]);
    let app = TestApp::on(backend, &provider, &[]).await;
    let response = flow(&app, "pia", json!({ "scopes": [DRIVE, CALENDAR] })).await;
    assert_eq!(response.status(), StatusCode::OK, "accepted by default");

    let listed = connection(&app, "pia").await;
    assert_eq!(listed["partialGrant"], true);
    assert_eq!(strings(&listed["missingScopes"]), vec![DRIVE.to_string()]);
    let requested = strings(&listed["requestedScopes"]);
    for scope in ["openid", "email", "profile", DRIVE, CALENDAR] {
        assert!(requested.iter().any(|s| s == scope), "{scope} requested");
    }
    let granted = strings(&listed["grantedScopes"]);
    assert!(granted.iter().any(|s| s == CALENDAR));
    assert!(!granted.iter().any(|s| s == DRIVE), "unticked: not granted");
    assert!(listed["scopesChangedAt"].is_string());
    assert!(listed["consentedAt"].is_string());

    let items = app.flow_log("pia").await;
    let stored = items
        .iter()
        .find(|i| i["step"] == "tokens_stored")
        .expect("tokens_stored");
    assert_eq!(stored["data"]["partialGrant"], true);
    assert_eq!(
        strings(&stored["data"]["missingScopes"]),
        vec![DRIVE.to_string()]
    );

    // The token it hands out names what was granted.
    let token: Value = app.token("pia").await.json().await.expect("json");
    assert!(!token["scope"].as_str().expect("scope").contains(DRIVE));
}

async fn a_refused_partial_grant_stores_nothing_and_says_what_is_missing(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(
        backend,
        &provider,
        &[
            ("AXNT_PARTIAL_GRANT", "reject"),
            ("AXNT_ALLOWED_RETURN_URLS", RETURN_ORIGIN),
        ],
    )
    .await;
    assert!(app.connect("rex").await.status().is_success());
    let before = app.stored_row("rex").await.expect("row");

    provider.untick_scopes(&[DRIVE]);
    let response = flow(
        &app,
        "rex",
        json!({ "scopes": [DRIVE], "returnTo": format!("{RETURN_ORIGIN}/done") }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = Url::parse(
        response
            .headers()
            .get("location")
            .expect("location")
            .to_str()
            .expect("ascii"),
    )
    .expect("url");
    let query: std::collections::HashMap<String, String> =
        location.query_pairs().into_owned().collect();
    assert_eq!(query["status"], "error");
    assert_eq!(query["error"], "scopes_not_granted");
    assert_eq!(query["missingScopes"], DRIVE);
    assert_eq!(
        app.stored_row("rex").await.as_ref(),
        Some(&before),
        "the existing connection is left as it was"
    );
    let items = app.flow_log("rex").await;
    assert_eq!(items[0]["step"], "failed");
    assert_eq!(items[0]["data"]["code"], "scopes_not_granted");

    // Without a return URL the page says it; a session may still accept.
    let response = flow(&app, "rex", json!({ "scopes": [DRIVE] })).await;
    assert_page(response, StatusCode::FORBIDDEN, "scopes_not_granted").await;
    let response = flow(
        &app,
        "rex",
        json!({ "scopes": [DRIVE], "partialGrant": "accept" }),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(connection(&app, "rex").await["partialGrant"], true);

    // A first connection refused leaves no row at all.
    let response = flow(&app, "ria", json!({ "scopes": [DRIVE] })).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(app.stored_row("ria").await.is_none());
}

async fn a_missing_required_scope_answers_403_with_a_step_up_link_that_works(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    let response = flow(&app, "sam", json!({ "scopes": [CALENDAR] })).await;
    assert_eq!(response.status(), StatusCode::OK);

    // Held scopes pass, in either spelling Google uses for the basic ones.
    let held = app
        .api_get(&format!(
            "/v1/users/sam/tokens/google?requiredScopes={CALENDAR},email,https://www.googleapis.com/auth/userinfo.profile"
        ))
        .await;
    assert_eq!(held.status(), StatusCode::OK);

    let refused = app
        .api_get(&format!(
            "/v1/users/sam/tokens/google?requiredScopes={CALENDAR},{DRIVE}"
        ))
        .await;
    let problem = assert_problem(refused, 403, "insufficient_scope").await;
    assert_eq!(strings(&problem["missingScopes"]), vec![DRIVE.to_string()]);
    assert!(problem["remedy"].is_string());
    assert!(problem.get("accessToken").is_none());
    let step_up = problem["stepUpUrl"]
        .as_str()
        .expect("stepUpUrl")
        .to_string();

    // The link asks Google for the missing scope, adding to the grant, for this account.
    let (provider_url, cookie) = app.start(&step_up).await;
    let asked: std::collections::HashMap<String, String> =
        provider_url.query_pairs().into_owned().collect();
    assert!(asked["scope"].split(' ').any(|s| s == DRIVE));
    assert!(
        !asked["scope"].split(' ').any(|s| s == CALENDAR),
        "only what is missing"
    );
    assert_eq!(asked["include_granted_scopes"], "true");
    assert_eq!(asked["login_hint"], provider.profile().email);
    assert!(
        asked.get("prompt").is_none_or(|p| !p.contains("consent")),
        "a live grant is stepped up without forcing consent: no new refresh token"
    );
    let minted = provider.issued_refresh_tokens().len();
    let stored_refresh = provider.latest_refresh_token();
    let callback = app.authorize(&provider_url).await;
    let answer = app.callback(&callback, Some(&cookie)).await;
    assert_eq!(app.complete("sam", answer).await.status(), StatusCode::OK);

    let token = app
        .api_get(&format!(
            "/v1/users/sam/tokens/google?requiredScopes={CALENDAR},{DRIVE}"
        ))
        .await;
    assert_eq!(token.status(), StatusCode::OK);
    let token: Value = token.json().await.expect("json");
    let scope = token["scope"].as_str().expect("scope");
    for wanted in [CALENDAR, DRIVE, "openid"] {
        assert!(scope.split(' ').any(|s| s == wanted), "{wanted} in {scope}");
    }
    assert_eq!(
        provider.issued_refresh_tokens().len(),
        minted,
        "no refresh token minted by the step-up"
    );
    assert!(stored_refresh.is_some_and(|t| provider.is_refresh_token_valid(&t)));
    let listed = connection(&app, "sam").await;
    assert_eq!(listed["partialGrant"], false);
    assert_eq!(listed["accountGrants"], 1);
    // The kept refresh token's next access token covers the stepped-up scopes too, and
    // the ledger keeps them.
    provider.set_access_token_ttl(0);
    let step_up_consent = listed["consentedAt"].clone();
    let again = flow(
        &app,
        "sam",
        json!({ "mode": "step_up", "scopes": [CALENDAR] }),
    )
    .await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(
        connection(&app, "sam").await["consentedAt"],
        step_up_consent,
        "a step-up that minted no refresh token keeps the grant's consent time"
    );
    provider.set_access_token_ttl(3600);
    let refreshed = app
        .api_get(&format!(
            "/v1/users/sam/tokens/google?requiredScopes={CALENDAR},{DRIVE}"
        ))
        .await;
    assert_eq!(refreshed.status(), StatusCode::OK, "after a refresh too");
    let granted = strings(&connection(&app, "sam").await["grantedScopes"]);
    assert!(granted.contains(&DRIVE.to_string()) && granted.contains(&CALENDAR.to_string()));
    let requested = strings(&listed["requestedScopes"]);
    assert!(requested.contains(&CALENDAR.to_string()) && requested.contains(&DRIVE.to_string()));

    // Bad input is a 400, and nothing is read.
    let reads = provider.refresh_count();
    let bad = app
        .api_get("/v1/users/sam/tokens/google?requiredScopes=a%22b")
        .await;
    assert_problem(bad, 400, "invalid_request").await;
    assert_eq!(provider.refresh_count(), reads);
}

async fn a_step_up_session_is_for_the_connected_account_only(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    let none = app
        .api_post(
            "/v1/connect-sessions",
            json!({ "userId": "tia", "provider": "google", "mode": "step_up", "scopes": [DRIVE] }),
        )
        .await;
    assert_problem(none, 404, "not_connected").await;

    assert!(app.connect("tia").await.status().is_success());
    let before = app.stored_row("tia").await.expect("row");
    let session = app
        .connect_session(
            json!({ "userId": "tia", "provider": "google", "mode": "step_up", "scopes": [DRIVE] }),
        )
        .await;
    provider.set_profile(Profile::for_prefix("0bad"));
    let response = follow(&app, "tia", session["url"].as_str().expect("url")).await;
    assert_page(response, StatusCode::FORBIDDEN, "account_not_allowed").await;
    assert_eq!(app.stored_row("tia").await.as_ref(), Some(&before));
}

/// Connects `user_id` with the Drive scope, then makes every token read refresh.
async fn connected_with_drive(app: &TestApp, provider: &FakeProvider, user_id: &str) {
    provider.set_access_token_ttl(0);
    let response = flow(app, user_id, json!({ "scopes": [DRIVE] })).await;
    assert_eq!(response.status(), StatusCode::OK, "{user_id} connects");
}

/// `axnt_grants_ended_total{cause}` as the instance's scrape says.
async fn ended(app: &TestApp, cause: &str) -> f64 {
    app.metrics()
        .await
        .lines()
        .filter(|l| {
            l.starts_with("axnt_grants_ended_total{") && l.contains(&format!("cause=\"{cause}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn each_way_a_grant_ends_is_named_with_its_cause(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;

    connected_with_drive(&app, &provider, "rapt").await;
    provider.refresh_failure([RefreshBehaviour::InvalidRapt]);
    assert_died_of(&app, "rapt", "session_reauth_required").await;

    connected_with_drive(&app, &provider, "admin").await;
    provider.refresh_failure([RefreshBehaviour::AdminPolicyEnforced]);
    assert_died_of(&app, "admin", "admin_policy_enforced").await;

    connected_with_drive(&app, &provider, "plain").await;
    provider.refresh_failure([RefreshBehaviour::InvalidGrant]);
    assert_died_of(&app, "plain", "unknown_invalid_grant").await;

    // The user removes the app in their Google account.
    connected_with_drive(&app, &provider, "revoker").await;
    let refresh_token = provider.latest_refresh_token().expect("issued");
    let revoked = reqwest::Client::new()
        .post(provider.url("/revoke"))
        .form(&[("token", refresh_token.as_str())])
        .send()
        .await
        .expect("revoke");
    assert!(revoked.status().is_success());
    assert_died_of(&app, "revoker", "revoked_by_user").await;

    // Time-limited access: Google says how long, then refuses.
    provider.set_refresh_token_lifetime(Some(1));
    connected_with_drive(&app, &provider, "limited").await;
    provider.set_refresh_token_lifetime(None);
    let row = app.stored_row("limited").await.expect("row");
    assert!(
        row.grant.refresh_token_expires_at.is_some(),
        "the end is stored"
    );
    provider.advance_clock(5);
    assert_died_of(&app, "limited", "time_limited_access_expired").await;

    // Testing status, undeclared: a non-basic grant refused 7 days after consent,
    // never refreshed past that mark, is taken for the Testing expiry.
    provider.set_testing_mode(true);
    connected_with_drive(&app, &provider, "tester").await;
    provider.advance_clock(7 * 86_400 + 60);
    age_grant(&app, "tester", Delta::days(7) + Delta::seconds(60)).await;
    assert_died_of(&app, "tester", "testing_mode_expired").await;
    provider.set_testing_mode(false);

    // Six months unused: Google's refusal is the same as a revocation; the clock tells.
    connected_with_drive(&app, &provider, "idler").await;
    age_grant(&app, "idler", Delta::days(181)).await;
    let refresh_token = provider.latest_refresh_token().expect("issued");
    reqwest::Client::new()
        .post(provider.url("/revoke"))
        .form(&[("token", refresh_token.as_str())])
        .send()
        .await
        .expect("revoke");
    assert_died_of(&app, "idler", "idle_expired").await;
}

async fn client_and_provider_failures_keep_the_grant_active(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(
        backend,
        &provider,
        &[
            ("AXNT_REFRESH_COOLDOWN_SECS", "0"),
            ("AXNT_REFRESH_DEADLINE_SECS", "1"),
        ],
    )
    .await;
    connected_with_drive(&app, &provider, "kept").await;

    provider.refresh_failure(RefreshBehaviour::Status(503).times(1000));
    let outage = app.token("kept").await;
    let body = assert_problem(outage, 503, "provider_unavailable").await;
    assert_eq!(body["cause"], "provider_unavailable");
    assert!(body["remedy"].is_string());
    provider.clear_refresh_failures();
    let listed = connection(&app, "kept").await;
    assert_eq!(listed["isActive"], true);
    assert_ne!(listed["health"], "dead");

    let secret = provider.client_secret();
    provider.set_client_secret("rotated-without-telling-the-service");
    let refused = app.token("kept").await;
    let body = assert_problem(refused, 502, "provider_error").await;
    assert_eq!(body["cause"], "client_credentials_invalid");
    assert!(body["remedy"].as_str().expect("remedy").contains("client"));
    let row = app.stored_row("kept").await.expect("row");
    assert!(row.is_active, "the user's grant is not at fault");
    assert_eq!(row.refresh.inactive_cause, None);

    provider.set_client_secret(secret);
    assert_eq!(app.token("kept").await.status(), StatusCode::OK);
}

async fn a_testing_mode_grant_near_seven_days_is_at_risk(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(
        backend,
        &provider,
        &[("AXNT_GOOGLE_PUBLISHING_STATUS", "testing")],
    )
    .await;
    let response = flow(&app, "una", json!({ "scopes": [DRIVE] })).await;
    assert_eq!(response.status(), StatusCode::OK);
    let fresh = connection(&app, "una").await;
    assert_eq!(fresh["health"], "ok");
    assert_eq!(fresh["predictedExpiryReason"], "testing_mode");

    age_grant(&app, "una", Delta::days(6) + Delta::hours(23)).await;
    let row = app.stored_row("una").await.expect("row");
    let consented = row.grant.consented_at.expect("consentedAt");
    let listed = connection(&app, "una").await;
    assert_eq!(listed["health"], "at_risk");
    assert_eq!(listed["predictedExpiryReason"], "testing_mode");
    let predicted = time(&listed["predictedExpiry"]);
    assert!(
        (predicted - (consented + Delta::days(7)))
            .num_seconds()
            .abs()
            <= 1,
        "{predicted} is 7 days after {consented}"
    );

    // Basic scopes only (another account, which granted nothing more before): the
    // Testing clock does not apply; the idle clock is far.
    provider.set_profile(Profile::for_prefix("0b0b"));
    assert!(app.connect("ivo").await.status().is_success());
    let basic = connection(&app, "ivo").await;
    assert_eq!(basic["health"], "ok");
    assert_eq!(basic["predictedExpiryReason"], "idle_limit");
    assert!(time(&basic["predictedExpiry"]) > Utc::now() + Delta::days(170));
}

async fn operators_list_the_connections_that_need_attention(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(
        backend,
        &provider,
        &[("AXNT_GOOGLE_PUBLISHING_STATUS", "testing")],
    )
    .await;
    assert!(app.connect("fine").await.status().is_success());
    let response = flow(&app, "risky", json!({ "scopes": [DRIVE] })).await;
    assert_eq!(response.status(), StatusCode::OK);
    age_grant(&app, "risky", Delta::days(6)).await;
    connected_with_drive(&app, &provider, "gone").await;
    provider.refresh_failure([RefreshBehaviour::InvalidRapt]);
    assert_problem(app.token("gone").await, 409, "reauthorization_required").await;

    let page = |query: String| {
        let app = &app;
        async move {
            let response = app.api_get(&format!("/v1/connections{query}")).await;
            assert_eq!(response.status(), StatusCode::OK, "{query}");
            response.json::<Value>().await.expect("json")
        }
    };
    let users = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["userId"].as_str().expect("userId").to_string())
            .collect()
    };
    let dead = page("?health=dead".into()).await;
    assert_eq!(users(&dead), vec!["gone".to_string()]);
    assert_eq!(dead["items"][0]["cause"], "session_reauth_required");
    assert_eq!(dead["next"], Value::Null);
    let at_risk = page("?health=at_risk".into()).await;
    assert_eq!(users(&at_risk), vec!["risky".to_string()]);
    assert_eq!(at_risk["items"][0]["predictedExpiryReason"], "testing_mode");

    // One at a time, every connection once, never a token.
    let (mut seen, mut after) = (Vec::new(), String::new());
    for _ in 0..10 {
        let body = page(format!("?limit=1{after}")).await;
        let text = body.to_string();
        for secret in provider.secrets() {
            assert!(!text.contains(&secret), "a listing carries no token");
        }
        seen.extend(users(&body));
        match body["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, vec!["fine", "gone", "risky"]);

    for bad in [
        "?health=sick",
        "?limit=0",
        "?after=not-a-cursor",
        "?limit=501",
    ] {
        assert_problem(
            app.api_get(&format!("/v1/connections{bad}")).await,
            400,
            "invalid_request",
        )
        .await;
    }
}

/// The user's newest flow-log item of `step`, waiting up to 10 s for it to land.
async fn logged(app: &TestApp, user_id: &str, step: &str) -> Value {
    for _ in 0..100 {
        if let Some(item) = app
            .flow_log(user_id)
            .await
            .into_iter()
            .find(|i| i["step"] == step)
        {
            return item;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no {step} item in {user_id}'s flow log");
}

/// Polls `check` every 100 ms for at most `secs`.
async fn eventually(secs: u64, mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..secs * 10 {
        if check() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    check()
}

async fn a_revocation_that_fails_is_retried_after_a_restart(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[("AXNT_REVOCATION_RETRY_SECS", "1")]).await;
    assert!(app.connect("rita").await.status().is_success());
    let rita_token = provider.latest_refresh_token().expect("issued");
    provider.set_revocation_available(false);
    let response = app.api_delete("/v1/users/rita/connections/google").await;
    assert_eq!(response.status(), StatusCode::OK);
    let deleted: Value = response.json().await.expect("json");
    assert_eq!(deleted["revocation"], "pending");
    assert_eq!(deleted["revokedToken"], "refresh_token");
    assert!(
        deleted["note"]
            .as_str()
            .expect("note")
            .contains("every scope")
    );
    assert_problem(app.token("rita").await, 404, "not_connected").await;
    let deleted_step = app
        .flow_log("rita")
        .await
        .into_iter()
        .find(|i| i["step"] == "deleted")
        .expect("deleted logged");
    assert_eq!(deleted_step["data"]["revocation"], "pending");
    assert!(!provider.revoked_tokens().contains(&rita_token));
    assert!(
        !crate::support::contains(&app.raw_storage().await, &rita_token),
        "the kept revocation's token is sealed"
    );

    // A second user deleted meanwhile, who then connects the same account again: that
    // revocation must never be sent (Google's would end the new grant too).
    assert!(app.connect("ruth").await.status().is_success());
    let ruth_old = provider.latest_refresh_token().expect("issued");
    let response = app.api_delete("/v1/users/ruth/connections/google").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(app.connect("ruth").await.status().is_success());

    // The instance stops while the provider is still failing; another starts on the
    // same storage after the provider is back.
    let (dir, env) = (app.data_dir.clone(), app.base_env.clone());
    app.stop().await;
    provider.set_revocation_available(true);
    let restarted = TestApp::spawn_in(dir, env).await;
    assert!(
        eventually(15, || provider.revoked_tokens().contains(&rita_token)).await,
        "the kept revocation is sent after the restart"
    );
    // aws mode writes flow-log items from a queue: they land shortly after.
    let retried = logged(&restarted, "rita", "revoked").await;
    assert_eq!(retried["data"]["retried"], true);
    assert_eq!(retried["data"]["outcome"], "revoked_on_retry");
    let superseded = logged(&restarted, "ruth", "revoked").await;
    assert_eq!(superseded["data"]["outcome"], "revocation_superseded");
    assert_eq!(superseded["error"], "revocation_superseded");
    assert!(!provider.revoked_tokens().contains(&ruth_old));
    assert_eq!(restarted.token("ruth").await.status(), StatusCode::OK);
    // Nothing kept is left to retry.
    assert!(
        restarted
            .store
            .revocations_due(i64::MAX, 10)
            .await
            .expect("due")
            .is_empty()
    );
}

async fn a_deletion_without_revocation_forgets_locally_only(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    assert!(app.connect("lena").await.status().is_success());
    let refresh = provider.latest_refresh_token().expect("issued");
    let response = app
        .api_delete("/v1/users/lena/connections/google?revoke=false")
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let deleted: Value = response.json().await.expect("json");
    assert_eq!(deleted["revocation"], "skipped");
    assert!(provider.revoked_tokens().is_empty());
    assert!(provider.is_refresh_token_valid(&refresh));
    assert!(app.stored_row("lena").await.is_none());
    assert_problem(
        app.api_delete("/v1/users/lena/connections/google?revoke=maybe")
            .await,
        400,
        "invalid_request",
    )
    .await;
}

async fn the_keepalive_refreshes_an_idle_connection_and_leaves_a_fresh_one(backend: Backend) {
    let provider = FakeProvider::start().await;
    let keepalive = [
        ("AXNT_KEEPALIVE_DAYS", "30"),
        ("AXNT_KEEPALIVE_INTERVAL_SECS", "1"),
        ("AXNT_KEEPALIVE_PER_MINUTE", "6000"),
    ];
    let app = TestApp::on(backend, &provider, &keepalive).await;
    // Two instances: each tries a pass every second; one at a time runs it.
    let other = app.sibling().await;
    assert!(app.connect("recent").await.status().is_success());
    provider.set_access_token_ttl(0);
    assert!(app.connect("dormant").await.status().is_success());
    provider.set_access_token_ttl(3600);
    age_grant(&app, "dormant", Delta::days(31)).await;

    assert!(
        eventually(15, || provider.refresh_count() >= 1).await,
        "the idle connection is refreshed"
    );
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        provider.refresh_count(),
        1,
        "once, and the fresh one not at all"
    );
    let dormant = connection(&app, "dormant").await;
    assert!(dormant["lastRefreshedAt"].is_string());
    assert_eq!(dormant["health"], "ok");
    assert_eq!(
        connection(&app, "recent").await["lastRefreshedAt"],
        Value::Null
    );
    let refreshed = app
        .flow_log("dormant")
        .await
        .into_iter()
        .find(|i| i["step"] == "token_refreshed")
        .expect("the refresh is logged");
    assert_eq!(refreshed["userAgent"], "axnt-oauth keep-alive");
    other.stop().await;
}

/// One Google account connected under several user ids: each connection mints a
/// refresh token, and Google keeps only the newest few (here 3) alive.
async fn the_grant_counter_warns_at_the_limit_and_names_the_eviction(backend: Backend) {
    let provider = FakeProvider::start().await;
    provider.set_grant_limit(3);
    provider.set_access_token_ttl(0);
    let app = TestApp::on(backend, &provider, &[("AXNT_GOOGLE_GRANT_LIMIT", "3")]).await;
    assert!(app.connect("first").await.status().is_success());
    let listed = connection(&app, "first").await;
    assert_eq!(listed["accountGrants"], 1);
    assert_eq!(listed["grantLimitWarning"], false);

    assert!(app.connect("second").await.status().is_success());
    let stored = app
        .flow_log("second")
        .await
        .into_iter()
        .find(|i| i["step"] == "tokens_stored")
        .expect("tokens_stored");
    assert_eq!(stored["data"]["accountGrants"], 2);
    assert_eq!(
        stored["data"]["grantLimitWarning"], true,
        "warned from 90 % (2 of 3)"
    );
    assert_eq!(connection(&app, "first").await["grantLimitWarning"], true);

    // Two more: Google ends the oldest grant, "first"'s.
    assert!(app.connect("third").await.status().is_success());
    assert!(app.connect("fourth").await.status().is_success());
    let dead = assert_problem(app.token("first").await, 409, "reauthorization_required").await;
    assert_eq!(dead["cause"], "token_limit_evicted");
    assert_eq!(
        connection(&app, "first").await["cause"],
        "token_limit_evicted"
    );
    assert!(ended(&app, "token_limit_evicted").await >= 1.0);
    // The newer ones live on.
    assert_eq!(app.token("fourth").await.status(), StatusCode::OK);
}

/// Google's revocation endpoint accepts the connection and never answers: the DELETE
/// still answers in time, having kept the revocation, and the row is gone.
async fn a_hanging_revocation_endpoint_is_kept_for_later_within_the_request(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[("AXNT_PROVIDER_TIMEOUT_SECS", "10")]).await;
    assert!(app.connect("hana").await.status().is_success());
    provider.set_revocation_delay(std::time::Duration::from_secs(60));
    let started = std::time::Instant::now();
    let response = app.api_delete("/v1/users/hana/connections/google").await;
    let took = started.elapsed();
    assert_eq!(response.status(), StatusCode::OK, "after {took:?}");
    let deleted: Value = response.json().await.expect("json");
    assert_eq!(deleted["revocation"], "pending");
    assert!(
        took < std::time::Duration::from_secs(10),
        "answered in {took:?}"
    );
    assert!(app.stored_row("hana").await.is_none());
    assert_eq!(
        app.store
            .revocations_due(i64::MAX, 10)
            .await
            .expect("due")
            .len(),
        1,
        "kept for later"
    );
}
