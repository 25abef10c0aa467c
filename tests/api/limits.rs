//! Rate limits and the admin listener: floods from one client meet 429 with
//! `Retry-After` and change nothing stored; the client is the socket's peer unless a
//! trusted proxy forwarded it; `/metrics` is served only on the admin listener.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{self, API_KEY, FakeProvider, TestApp};

fn retry_after(response: &reqwest::Response) -> u64 {
    response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in whole seconds")
}

/// Opens `/oauth/google/start` for a session from `forwarded_for` (when given).
async fn start(app: &TestApp, url: &str, forwarded_for: Option<&str>) -> reqwest::Response {
    let mut request = app.http.get(url);
    if let Some(ip) = forwarded_for {
        request = request.header("x-forwarded-for", ip);
    }
    request.send().await.expect("start")
}

#[tokio::test]
async fn a_browser_start_flood_meets_a_429_page_and_logs_nothing_more() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with(
        &provider,
        &[
            ("AXNT_RATE_LIMIT_BROWSER_PER_MINUTE", "1"),
            ("AXNT_RATE_LIMIT_BROWSER_BURST", "3"),
        ],
    )
    .await;
    // Links are single-use: the burst opens three of them.
    let mut url = String::new();
    for _ in 0..3 {
        let session = app
            .connect_session(json!({ "userId": "flood", "provider": "google" }))
            .await;
        url = session["url"].as_str().expect("url").to_string();
        assert_eq!(start(&app, &url, None).await.status(), StatusCode::FOUND);
    }
    let url = url.as_str();
    let logged = app.flow_log("flood").await.len();
    for _ in 0..20 {
        let response = start(&app, url, None).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!((1..=60).contains(&retry_after(&response)));
        let headers = response.headers();
        assert!(
            headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/html")),
            "a page, not JSON"
        );
        for name in [
            "content-security-policy",
            "referrer-policy",
            "x-content-type-options",
        ] {
            assert!(headers.contains_key(name), "{name} on the 429 page");
        }
        assert!(headers.get("set-cookie").is_none(), "no binding cookie");
        let page = response.text().await.expect("page");
        assert!(page.contains("rate_limited"), "{page}");
    }
    let callback = app
        .http
        .get(app.url("/oauth/google/callback?state=x&code=y"))
        .send()
        .await
        .expect("callback");
    assert_eq!(
        callback.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "callbacks share the limit"
    );
    assert_eq!(
        app.flow_log("flood").await.len(),
        logged,
        "refused starts log nothing"
    );
    // The internal API is not a browser route: not limited by it.
    assert_eq!(
        app.api_get("/v1/users/flood/connections").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_wrong_api_key_flood_brakes_the_client_and_the_key_is_never_shown() {
    support::capture_logs();
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with(
        &provider,
        &[
            ("AXNT_RATE_LIMIT_AUTH_FAILURES_PER_MINUTE", "1"),
            ("AXNT_RATE_LIMIT_AUTH_FAILURES_BURST", "3"),
        ],
    )
    .await;
    let planted = "planted-wrong-key-5f0c9e1d2b";
    let call = |key: &'static str| {
        app.http
            .post(app.url("/v1/connect-sessions"))
            .bearer_auth(key)
            .json(&json!({ "userId": "braked", "provider": "google" }))
            .send()
    };
    for _ in 0..3 {
        support::assert_problem(call(planted).await.expect("send"), 401, "unauthorized").await;
    }
    for _ in 0..10 {
        let response = call(planted).await.expect("send");
        let wait = retry_after(&response);
        assert!((1..=60).contains(&wait), "Retry-After {wait}");
        support::assert_problem(response, 429, "rate_limited").await;
    }
    // The brake is on failed attempts only: a right key from the braked client is
    // served (a service sharing the guesser's address is not locked out), and the
    // next wrong key is still braked.
    let right = call(API_KEY).await.expect("send");
    assert_eq!(right.status(), StatusCode::CREATED);
    assert!(!right.headers().contains_key("retry-after"));
    support::assert_problem(call(planted).await.expect("send"), 429, "rate_limited").await;
    assert!(app.stored_row("braked").await.is_none());

    let metrics = app.metrics().await;
    assert!(metrics.contains(r#"status="429""#));
    assert!(!metrics.contains(planted));
    assert!(
        !support::captured_logs().contains(planted),
        "the key is in the logs"
    );
}

/// The same flood through a trusted proxy is counted per forwarded client; from an
/// untrusted peer, `X-Forwarded-For` is ignored and the peer is the client.
#[tokio::test]
async fn forwarded_clients_are_told_apart_only_behind_a_trusted_proxy() {
    let provider = FakeProvider::start().await;
    let limits = [
        ("AXNT_RATE_LIMIT_BROWSER_PER_MINUTE", "1"),
        ("AXNT_RATE_LIMIT_BROWSER_BURST", "2"),
    ];
    let behind_proxy = [limits.as_slice(), &[("AXNT_TRUSTED_PROXIES", "127.0.0.1")]].concat();
    let app = TestApp::spawn_with(&provider, &behind_proxy).await;
    let url = app.url("/oauth/google/start?session=x");
    for _ in 0..2 {
        assert_ne!(
            start(&app, &url, Some("203.0.113.1")).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    assert_eq!(
        start(&app, &url, Some("203.0.113.1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another client behind the same proxy has its own allowance.
    assert_ne!(
        start(&app, &url, Some("203.0.113.2")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    let app = TestApp::spawn_with(&provider, &limits).await;
    let url = app.url("/oauth/google/start?session=x");
    for i in 0..2 {
        let forged = format!("198.51.100.{i}");
        assert_ne!(
            start(&app, &url, Some(&forged)).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    assert_eq!(
        start(&app, &url, Some("198.51.100.9")).await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "a forged X-Forwarded-For from an untrusted peer buys no new allowance"
    );
}

/// An API call from the client forwarded as `forwarded_for`, with `key`.
async fn api_call(app: &TestApp, forwarded_for: &str, key: &str) -> reqwest::Response {
    app.http
        .get(app.url("/v1/users/someone/connections"))
        .header("x-forwarded-for", forwarded_for)
        .bearer_auth(key)
        .send()
        .await
        .expect("send")
}

/// Two users behind the load balancer (`app`'s peer is a trusted proxy): their browser
/// buckets are their own, counted by the right-most forwarded hop (an IPv6 client by
/// its /64); a flood of wrong keys from one brakes that one's wrong keys only, and no
/// call with a valid key is ever answered 429; the flow log records the forwarded
/// client.
async fn two_users_behind_the_proxy(app: &TestApp) {
    let url = app.url("/oauth/google/start?session=x");
    let (one, other) = ("203.0.113.7", "203.0.113.8");
    for _ in 0..2 {
        assert_ne!(
            start(app, &url, Some(one)).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    assert_eq!(
        start(app, &url, Some(one)).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // A hop forged to the left of the one the proxy appended buys nothing.
    assert_eq!(
        start(app, &url, Some(format!("198.51.100.77, {one}").as_str()))
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        start(app, &url, Some(format!("::ffff:{one}").as_str()))
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS,
        "an IPv4-mapped hop is the same client"
    );
    assert_ne!(
        start(app, &url, Some(other)).await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "another user behind the same proxy has a bucket of its own"
    );
    // IPv6 clients: one /64 is one client.
    for hop in ["2001:db8:1:2::1", "2001:db8:1:2::2"] {
        assert_ne!(
            start(app, &url, Some(hop)).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    assert_eq!(
        start(app, &url, Some("2001:db8:1:2:ffff::9"))
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_ne!(
        start(app, &url, Some("2001:db8:1:3::1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // A flood of wrong keys from one user: its wrong keys are braked, its right key
    // and the other user are not.
    let mut braked = 0;
    for _ in 0..20 {
        let wrong = api_call(app, one, "wrong-key-0123456789abcdef")
            .await
            .status();
        assert!(
            [StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS].contains(&wrong),
            "{wrong}"
        );
        braked += usize::from(wrong == StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            api_call(app, one, API_KEY).await.status(),
            StatusCode::OK,
            "a valid key is never braked"
        );
    }
    assert!(braked >= 15, "the flood was braked: {braked} of 20");
    assert_eq!(api_call(app, other, API_KEY).await.status(), StatusCode::OK);
    assert_eq!(
        api_call(app, other, "wrong-key-0123456789abcdef")
            .await
            .status(),
        StatusCode::UNAUTHORIZED,
        "the other user's failures are counted apart"
    );

    // The flow log's client is the forwarded one, in canonical form.
    let session = app
        .connect_session(json!({ "userId": "forwarded", "provider": "google" }))
        .await;
    let session_url = session["url"].as_str().expect("url");
    let started = start(app, session_url, Some("198.51.100.1, ::ffff:192.0.2.44")).await;
    assert_eq!(started.status(), StatusCode::FOUND);
    let items = app.flow_log("forwarded").await;
    let ip_of = |step: &str| {
        items
            .iter()
            .find(|i| i["step"] == step)
            .map(|i| i["ipAddress"].clone())
    };
    assert_eq!(ip_of("authorize_redirect"), Some(json!("192.0.2.44")));
    // The session was made without X-Forwarded-For: the proxy itself, as IPv4.
    assert_eq!(ip_of("session_created"), Some(json!("127.0.0.1")));
}

const LIMITS_BEHIND_PROXY: [(&str, &str); 4] = [
    ("AXNT_RATE_LIMIT_BROWSER_PER_MINUTE", "1"),
    ("AXNT_RATE_LIMIT_BROWSER_BURST", "2"),
    ("AXNT_RATE_LIMIT_AUTH_FAILURES_PER_MINUTE", "1"),
    ("AXNT_RATE_LIMIT_AUTH_FAILURES_BURST", "3"),
];

/// The proxy given as a CIDR range (the loopback network the test's peer is in).
#[tokio::test]
async fn behind_a_proxy_range_users_have_their_own_buckets_and_valid_keys_are_never_braked() {
    let provider = FakeProvider::start().await;
    let settings = [
        LIMITS_BEHIND_PROXY.as_slice(),
        &[("AXNT_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.0/8, fd00::/8")],
    ]
    .concat();
    let app = TestApp::spawn_with(&provider, &settings).await;
    two_users_behind_the_proxy(&app).await;
}

/// A dual-stack listener sees an IPv4 proxy as `::ffff:127.0.0.1`: it is the trusted
/// `127.0.0.1` all the same.
#[tokio::test]
async fn behind_a_proxy_seen_as_ipv4_mapped_users_are_told_apart() {
    let provider = FakeProvider::start().await;
    let settings = [
        LIMITS_BEHIND_PROXY.as_slice(),
        &[
            ("AXNT_TRUSTED_PROXIES", "127.0.0.1"),
            ("AXNT_LISTEN_ADDR", "[::ffff:127.0.0.1]:0"),
        ],
    ]
    .concat();
    let app = TestApp::spawn_with(&provider, &settings).await;
    two_users_behind_the_proxy(&app).await;
}

#[tokio::test]
async fn metrics_are_served_on_the_admin_listener_only() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with(&provider, &[]).await;
    let public = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("send");
    support::assert_problem(public, 404, "not_found").await;
    assert!(!app.admin_base.is_empty() && app.admin_base != app.base);
    let admin = app
        .http
        .get(app.admin_url("/metrics"))
        .send()
        .await
        .expect("send");
    assert_eq!(admin.status(), StatusCode::OK);
    assert!(
        admin
            .text()
            .await
            .expect("text")
            .contains("axnt_http_requests_total")
    );
    let health = app
        .http
        .get(app.admin_url("/healthz"))
        .send()
        .await
        .expect("send");
    assert_eq!(health.status(), StatusCode::OK);
    // The admin listener serves nothing else.
    let api = app
        .http
        .get(app.admin_url("/v1/users/x/connections"))
        .send()
        .await
        .expect("send");
    assert_eq!(api.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_admin_listener_can_be_turned_off() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with(&provider, &[("AXNT_ADMIN_LISTEN_ADDR", "off")]).await;
    assert!(app.admin_base.is_empty());
    let public = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("send");
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}
