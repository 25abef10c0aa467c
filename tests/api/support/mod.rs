//! Helpers for integration tests. They go through public interfaces only: the real
//! router on a real loopback socket, a fake provider over real HTTP, the store's
//! trait, the database file on disk.

pub mod aws;
pub mod aws_proxy;
pub mod fake_github;
pub mod fake_provider;
pub mod webhook_receiver;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use axnt_oauth::app::{App, Backends};
use axnt_oauth::config::{LogFormat, Settings};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use url::Url;

pub use fake_provider::FakeProvider;

/// Which kind of provider a suite that runs under several ([`Shape`]) is run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// The fake provider as Google (refresh rotation as each test sets it).
    Google,
    /// The fake provider as Microsoft Entra (tenant issuer template, rotation,
    /// no revocation), configured as the `microsoft` provider.
    Microsoft,
}

tokio::task_local! {
    /// The shape of the test being run (see `on_every_backend_and_provider!`).
    pub static SHAPE: Shape;
}

/// The shape of the test being run; Google unless it runs under another.
pub fn shape() -> Shape {
    SHAPE.try_with(|s| *s).unwrap_or(Shape::Google)
}

/// A fake provider of the shape of the test being run.
pub async fn provider_of_shape() -> FakeProvider {
    match shape() {
        Shape::Google => FakeProvider::start().await,
        Shape::Microsoft => FakeProvider::start_microsoft().await,
    }
}

/// Every log line of this test process, for "no secret in the logs" assertions.
static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct LogSink(Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut logs) = self.0.lock() {
            logs.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures this process's logs at debug level (once per test binary).
pub fn capture_logs() {
    let sink = LOGS
        .get_or_init(|| Arc::new(Mutex::new(Vec::new())))
        .clone();
    axnt_oauth::telemetry::init_with_writer("debug", LogFormat::Json, move || {
        LogSink(sink.clone())
    });
}

/// Everything logged so far by this test process.
pub fn captured_logs() -> String {
    LOGS.get()
        .and_then(|l| {
            l.lock()
                .ok()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
        })
        .unwrap_or_default()
}

pub const API_KEY: &str = "test-api-key-0123456789abcdef";

/// Longer than the feed ever holds an event back in these tests: a feed delay set
/// below the backend's shortest safe one (`AXNT_EVENTS_FEED_DELAY_MS=0`) is raised to
/// it, 0.5 s embedded and 3 s on DynamoDB. Wait this long before asserting that the
/// feed holds nothing (more).
pub const FEED_HOLD: std::time::Duration = std::time::Duration::from_millis(3_500);
/// A loopback port free when asked (for a process the test starts itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub const RETURN_ORIGIN: &str = "http://127.0.0.1:9/app";

/// Which backend an instance runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    /// DynamoDB, KMS and Secrets Manager on the suite's moto, each test on its own
    /// tables, key and secret.
    Aws,
}

/// A running service instance.
pub struct TestApp {
    pub base: String,
    /// The admin listener's base URL (`/metrics`), on a port of its own.
    pub admin_base: String,
    pub settings: Settings,
    pub data_dir: Arc<tempfile::TempDir>,
    /// The settings environment it was started with (before its own address), so a
    /// sibling instance can share its storage.
    pub base_env: Vec<(String, String)>,
    /// The instance's own tokens store (to read rows as they are stored).
    pub store: Arc<dyn axnt_oauth::store::TokenStore>,
    /// The instance's own keys (to open rows as it opens them).
    pub keys: Arc<dyn axnt_oauth::crypto::KeyProvider>,
    pub http: reqwest::Client,
    /// The provider the helpers connect and read: the first `AXNT_PROVIDERS` lists.
    pub provider: String,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Settings pointing at `provider`, on a fresh data directory, plus `extra` env pairs.
/// A Microsoft-like fake is the `microsoft` provider, its client in the settings.
pub fn env_for(provider: &FakeProvider, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: HashMap<String, String> = HashMap::new();
    let name = match provider.tenant() {
        Some(_) => {
            env.insert("AXNT_PROVIDERS".into(), "microsoft".into());
            "MICROSOFT"
        }
        None => "GOOGLE",
    };
    env.insert(format!("AXNT_{name}_ISSUER"), provider.issuer());
    env.insert(format!("AXNT_{name}_CLIENT_ID"), provider.client_id());
    env.insert(
        format!("AXNT_{name}_CLIENT_SECRET"),
        provider.client_secret(),
    );
    env.insert("AXNT_API_KEYS".into(), API_KEY.into());
    env.insert("AXNT_ALLOWED_RETURN_URLS".into(), RETURN_ORIGIN.into());
    env.insert("AXNT_LOG".into(), "debug".into());
    for (k, v) in extra {
        env.insert((*k).into(), (*v).into());
    }
    env.into_iter().collect()
}

/// An instance whose API keys are `keys` (a JSON list of keys and `{name, key,
/// operations, providers, clients}` objects): from `AXNT_API_KEYS` (embedded) or the
/// secret's `api_keys` (aws), plus `extra` env pairs.
pub async fn app_with_keys(
    backend: Backend,
    provider: &FakeProvider,
    keys: &Value,
    extra: &[(&str, &str)],
) -> TestApp {
    match backend {
        Backend::Embedded => {
            let listed = keys.to_string();
            let mut env = vec![("AXNT_API_KEYS", listed.as_str())];
            env.extend_from_slice(extra);
            TestApp::on(backend, provider, &env).await
        }
        Backend::Aws => {
            let mut state = [0u8; 32];
            axnt_oauth::crypto::fill_random(&mut state);
            use base64::Engine as _;
            let secret = serde_json::json!({
                "client_id": provider.client_id(),
                "client_secret": provider.client_secret(),
                "state_key": base64::engine::general_purpose::STANDARD.encode(state),
                "api_keys": keys,
            })
            .to_string();
            let fixture = aws::provision(
                &aws::moto_endpoint(),
                &aws::AwsCredentials::from_env(),
                &provider.client_id(),
                &provider.client_secret(),
                API_KEY,
                Some(&secret),
            )
            .await;
            let mut env = env_for_secret(provider, extra);
            env.extend(fixture.env);
            TestApp::spawn_in(Arc::new(tempfile::tempdir().expect("tempdir")), env).await
        }
    }
}

/// [`env_for`] without the client credentials and API key: for aws mode, where they
/// come from the Secrets Manager secret.
pub fn env_for_secret(provider: &FakeProvider, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    env_for(provider, extra)
        .into_iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "AXNT_GOOGLE_CLIENT_ID" | "AXNT_GOOGLE_CLIENT_SECRET" | "AXNT_API_KEYS"
            )
        })
        .collect()
}

impl TestApp {
    /// Starts an instance on `backend` with fresh storage, pointed at `provider`.
    /// In aws mode the client credentials come from the Secrets Manager secret.
    pub async fn on(backend: Backend, provider: &FakeProvider, extra: &[(&str, &str)]) -> Self {
        match backend {
            Backend::Embedded => Self::spawn_with(provider, extra).await,
            Backend::Aws => {
                let mut env = env_for_secret(provider, extra);
                env.extend(
                    aws::aws_env(&provider.client_id(), &provider.client_secret(), API_KEY).await,
                );
                let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
                Self::spawn_in(dir, env).await
            }
        }
    }

    /// aws mode with every AWS call going through `proxy` (to moto), so a test can cut
    /// DynamoDB, KMS and Secrets Manager away at once.
    pub async fn aws_behind(
        proxy: &CuttableProxy,
        provider: &FakeProvider,
        extra: &[(&str, &str)],
    ) -> Self {
        Self::aws_via(&proxy.endpoint, provider, extra).await
    }

    /// aws mode with every AWS call sent to `endpoint` (a proxy in front of moto).
    pub async fn aws_via(endpoint: &str, provider: &FakeProvider, extra: &[(&str, &str)]) -> Self {
        let mut env = env_for_secret(provider, extra);
        for (k, v) in aws::aws_env(&provider.client_id(), &provider.client_secret(), API_KEY).await
        {
            let v = if k == "AWS_ENDPOINT_URL" {
                endpoint.to_string()
            } else {
                v
            };
            env.push((k, v));
        }
        Self::spawn_in(
            std::sync::Arc::new(tempfile::tempdir().expect("tempdir")),
            env,
        )
        .await
    }

    /// aws mode on a moto of the test's own (see [`aws::OwnMoto::serial`]): tables, key
    /// and secret made there.
    pub async fn aws_on(
        moto: &aws::OwnMoto,
        provider: &FakeProvider,
        extra: &[(&str, &str)],
    ) -> Self {
        let mut env = env_for_secret(provider, extra);
        let fixture = aws::provision(
            &moto.endpoint,
            &aws::AwsCredentials::from_env(),
            &provider.client_id(),
            &provider.client_secret(),
            API_KEY,
            None,
        )
        .await;
        env.extend(fixture.env);
        Self::spawn_in(
            std::sync::Arc::new(tempfile::tempdir().expect("tempdir")),
            env,
        )
        .await
    }

    pub async fn spawn_with(provider: &FakeProvider, extra: &[(&str, &str)]) -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        Self::spawn_in(dir, env_for(provider, extra)).await
    }

    /// Starts an instance with `env` on `data_dir` (shared by instances that share a
    /// store). When a dependency is unavailable (AWS cut away), it returns an instance
    /// that waits for it: see [`TestApp::started`].
    pub async fn spawn_in(
        data_dir: Arc<tempfile::TempDir>,
        mut env: Vec<(String, String)>,
    ) -> Self {
        capture_logs();
        let base_env = env.clone();
        // 127.0.0.1 on a free port, unless the test names an address (e.g.
        // `[::ffff:127.0.0.1]:0`: a dual-stack socket, whose IPv4 peers are IPv4-mapped).
        let bind = env
            .iter()
            .rev()
            .find(|(k, _)| k == "AXNT_LISTEN_ADDR")
            .map_or_else(|| "127.0.0.1:0".to_string(), |(_, v)| v.clone());
        env.retain(|(k, _)| k != "AXNT_LISTEN_ADDR");
        let listener = TcpListener::bind(&bind).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let base = format!(
            "http://{}",
            std::net::SocketAddr::new(addr.ip().to_canonical(), addr.port())
        );
        env.push((
            "AXNT_DATA_DIR".into(),
            data_dir.path().display().to_string(),
        ));
        if !env.iter().any(|(k, _)| k == "AXNT_PUBLIC_BASE_URL") {
            env.push(("AXNT_PUBLIC_BASE_URL".into(), base.clone()));
        }
        env.push(("AXNT_LISTEN_ADDR".into(), addr.to_string()));
        if !env.iter().any(|(k, _)| k == "AXNT_ADMIN_LISTEN_ADDR") {
            env.push(("AXNT_ADMIN_LISTEN_ADDR".into(), "127.0.0.1:0".into()));
        }
        let provider = env
            .iter()
            .rev()
            .find(|(k, _)| k == "AXNT_PROVIDERS")
            .and_then(|(_, v)| v.split(',').next())
            .unwrap_or("google")
            .trim()
            .to_string();
        let settings = Settings::load(None, env).expect("test settings load");
        let backends = Backends::open(&settings).await.expect("backends open");
        let store = Arc::clone(&backends.tokens);
        let keys = Arc::clone(&backends.keys);
        let app = App::with_listener(settings.clone(), backends, listener)
            .await
            .expect("app builds");
        let admin_base = app
            .admin_addr()
            .map(|a| format!("http://{a}"))
            .unwrap_or_default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Self {
            base,
            admin_base,
            settings,
            data_dir,
            base_env,
            store,
            keys,
            http,
            provider,
            task,
            stop: Some(stop),
        }
    }

    /// Waits until the instance has started: an instance whose dependency was
    /// unavailable when it was spawned (e.g. [`TestApp::aws_behind`] a cut proxy) serves
    /// only `/healthz` and `/readyz` (503 `"status":"starting"`) until the dependency is
    /// back, then everything. Panics after `within`.
    pub async fn started(&self, within: std::time::Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let status = match self.http.get(self.url("/readyz")).send().await {
                Ok(r) => r.json::<Value>().await.map(|b| b["status"].clone()).ok(),
                Err(_) => None,
            };
            if status.as_ref().is_some_and(|s| s != "starting") {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still starting after {within:?}: {status:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// A second instance on the same storage, keys and secrets (another "host").
    pub async fn sibling(&self) -> Self {
        self.sibling_with(&[]).await
    }

    /// A second instance on the same storage, with some settings changed.
    pub async fn sibling_with(&self, extra: &[(&str, &str)]) -> Self {
        let mut env = self.base_env.clone();
        env.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string())),
        );
        Self::spawn_in(Arc::clone(&self.data_dir), env).await
    }

    /// Stops gracefully and waits until the server has finished.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A URL on the admin listener (`/metrics`).
    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{}", self.admin_base, path)
    }

    /// The admin listener's `/metrics` text (the process's recorder: every app in this
    /// test process counts into it).
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("scrape /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    pub async fn api_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("GET")
    }

    pub async fn api_post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .expect("POST")
    }

    pub async fn api_delete(&self, path: &str) -> reqwest::Response {
        self.http
            .delete(self.url(path))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("DELETE")
    }

    /// Creates a connect session; returns its JSON (`url`, `expiresAt`, `flowId`).
    pub async fn connect_session(&self, body: Value) -> Value {
        let response = self.api_post("/v1/connect-sessions", body).await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "connect session is created"
        );
        response.json().await.expect("json")
    }

    /// `GET` the start link; returns the provider URL it redirects to and the
    /// binding cookie (`name=value`).
    pub async fn start(&self, start_url: &str) -> (Url, String) {
        let response = self.http.get(start_url).send().await.expect("start");
        assert_eq!(
            response.status(),
            StatusCode::FOUND,
            "start redirects to the provider"
        );
        let location = response
            .headers()
            .get("location")
            .expect("location")
            .to_str()
            .expect("ascii")
            .to_string();
        let cookie = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|c| c.starts_with("axnt_flow_") || c.starts_with("__Host-axnt_flow_"))
            .expect("binding cookie")
            .to_string();
        let pair = cookie.split(';').next().expect("cookie pair").to_string();
        (Url::parse(&location).expect("provider URL"), pair)
    }

    /// Follows the provider's authorize endpoint (which approves at once) and returns
    /// the callback URL it redirects to.
    pub async fn authorize(&self, provider_url: &Url) -> Url {
        let response = self
            .http
            .get(provider_url.as_str())
            .send()
            .await
            .expect("authorize");
        assert_eq!(
            response.status(),
            StatusCode::FOUND,
            "provider redirects back"
        );
        let location = response
            .headers()
            .get("location")
            .expect("location")
            .to_str()
            .expect("ascii");
        Url::parse(location).expect("callback URL")
    }

    /// `GET` the callback with an optional cookie.
    pub async fn callback(&self, callback_url: &Url, cookie: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(callback_url.as_str());
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send().await.expect("callback")
    }

    /// A whole flow for `user_id` up to the callback (no return URL), without the
    /// confirm a held grant then waits for; returns the callback's response.
    pub async fn connect_unconfirmed(&self, user_id: &str) -> reqwest::Response {
        let session = self
            .connect_session(json!({ "userId": user_id, "provider": self.provider }))
            .await;
        self.follow(&session).await
    }

    /// A connect session's browser leg, as a browser follows it: `/start`, the
    /// provider's consent, the callback; the callback's answer.
    pub async fn follow(&self, session: &Value) -> reqwest::Response {
        let (provider_url, cookie) = self.start(session["url"].as_str().expect("url")).await;
        let callback = self.authorize(&provider_url).await;
        self.callback(&callback, Some(&cookie)).await
    }

    /// `user_id`'s grant held for confirmation, from a link returning to the
    /// application: the `flowId` and `confirmationCode` its return redirect carried.
    pub async fn held_grant(&self, user_id: &str) -> (String, String) {
        let session = self
            .connect_session(json!({
                "userId": user_id, "provider": self.provider, "returnTo": format!("{RETURN_ORIGIN}/done"),
            }))
            .await;
        let callback = self.follow(&session).await;
        let query = redirect_query(&callback);
        assert_eq!(query["status"], "pending_confirmation", "{query:?}");
        (query["flowId"].clone(), query["confirmationCode"].clone())
    }

    /// A whole flow for `user_id`, as an application does it: link, consent, callback,
    /// and, when the grant is held for confirmation (the default), the confirm (see
    /// [`complete`](Self::complete)).
    pub async fn connect(&self, user_id: &str) -> reqwest::Response {
        let callback = self.connect_unconfirmed(user_id).await;
        self.complete(user_id, callback).await
    }

    /// What an application does with a callback's answer for its logged-in `user_id`:
    /// a held grant (a return redirect with `status=pending_confirmation`, or the page
    /// that shows the code) is confirmed, and the confirm's response (200 JSON on
    /// success) returned; any other answer is returned as it came.
    pub async fn complete(&self, user_id: &str, callback: reqwest::Response) -> reqwest::Response {
        if callback.status() == StatusCode::FOUND {
            return match redirect_query(&callback).get("status").map(String::as_str) {
                Some("pending_confirmation") => self
                    .confirm_redirect(&callback, user_id)
                    .await
                    .expect("held"),
                _ => callback,
            };
        }
        let (status, headers) = (callback.status(), callback.headers().clone());
        let page = callback.text().await.expect("callback page");
        match (status, page_confirmation(&page)) {
            (StatusCode::OK, Some((flow_id, code))) => self.confirm(&flow_id, user_id, &code).await,
            _ => {
                let mut rebuilt = http::Response::builder().status(status);
                for (name, value) in &headers {
                    rebuilt = rebuilt.header(name, value);
                }
                reqwest::Response::from(rebuilt.body(page).expect("response"))
            }
        }
    }

    /// `POST /v1/connect-sessions/{flowId}/confirm` for `user_id` with `code`.
    pub async fn confirm(&self, flow_id: &str, user_id: &str, code: &str) -> reqwest::Response {
        self.api_post(
            &format!("/v1/connect-sessions/{flow_id}/confirm"),
            json!({ "userId": user_id, "confirmationCode": code }),
        )
        .await
    }

    /// Confirms the held grant a return redirect (`Location` with
    /// `status=pending_confirmation`) announces, for `user_id`; returns the confirm's
    /// response, or `None` when the redirect announced no held grant.
    pub async fn confirm_redirect(
        &self,
        callback: &reqwest::Response,
        user_id: &str,
    ) -> Option<reqwest::Response> {
        let query = redirect_query(callback);
        if query.get("status").map(String::as_str) != Some("pending_confirmation") {
            return None;
        }
        Some(
            self.confirm(&query["flowId"], user_id, &query["confirmationCode"])
                .await,
        )
    }

    pub async fn token(&self, user_id: &str) -> reqwest::Response {
        self.api_get(&format!("/v1/users/{user_id}/tokens/{}", self.provider))
            .await
    }

    /// The user's flow-log steps, oldest first.
    pub async fn steps(&self, user_id: &str) -> Vec<String> {
        let items = self.flow_log(user_id).await;
        items
            .iter()
            .rev()
            .map(|i| i["step"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The user's flow-log items, newest first (as the API answers).
    pub async fn flow_log(&self, user_id: &str) -> Vec<Value> {
        let response = self
            .api_get(&format!("/v1/users/{user_id}/flow-logs?limit=500"))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("json");
        body["items"].as_array().cloned().unwrap_or_default()
    }

    /// Everything stored for tokens, as raw bytes: the SQLite file and its WAL, or
    /// every item of the DynamoDB tokens table as the API returns it.
    pub async fn raw_storage(&self) -> Vec<u8> {
        match self.settings.backend {
            axnt_oauth::config::Backend::Embedded => {
                let mut bytes = Vec::new();
                for name in ["axnt-oauth.db", "axnt-oauth.db-wal"] {
                    if let Ok(b) = std::fs::read(self.data_dir.path().join(name)) {
                        bytes.extend(b);
                    }
                }
                bytes
            }
            axnt_oauth::config::Backend::Aws => {
                let sdk = axnt_oauth::aws::sdk_config(&self.settings).await;
                let client = aws_sdk_dynamodb::Client::new(&sdk);
                let items = client
                    .scan()
                    .table_name(&self.settings.aws.tokens_table)
                    .send()
                    .await
                    .expect("scan the tokens table");
                format!("{:?}", items.items()).into_bytes()
            }
        }
    }

    /// The stored row, read through the instance's own store.
    pub async fn stored_row(&self, user_id: &str) -> Option<axnt_oauth::store::Connection> {
        self.store
            .get(user_id, &self.provider)
            .await
            .expect("read row")
    }

    /// The refresh token stored for `user_id`, opened as the service opens it.
    pub async fn stored_refresh_token(&self, user_id: &str) -> Option<String> {
        let row = self.stored_row(user_id).await?;
        let cipher = axnt_oauth::crypto::EnvelopeCipher::new(
            Arc::clone(&self.keys),
            self.settings.aws.tokens_table.clone(),
        );
        let plain = cipher
            .open(&row.user_id, &row.provider, &row.encrypted_tokens)
            .await
            .expect("the stored tokens open");
        let set: Value = serde_json::from_slice(&plain).expect("a token set");
        set.get("refreshToken")
            .or_else(|| set.get("refresh_token"))
            .and_then(Value::as_str)
            .map(str::to_string)
    }
}

/// The query of a redirect's `Location` (a return redirect's `status`, `flowId`,
/// `confirmationCode`, …).
pub fn redirect_query(response: &reqwest::Response) -> HashMap<String, String> {
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("a redirect");
    Url::parse(location)
        .expect("redirect URL")
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The confirmation code a pending page shows, if it shows one.
pub fn page_confirmation_code(page: &str) -> Option<String> {
    page_element(page, "confirmationCode")
}

/// The flow id and confirmation code a pending page shows, if it shows them.
pub fn page_confirmation(page: &str) -> Option<(String, String)> {
    Some((
        page_element(page, "flowId")?,
        page_element(page, "confirmationCode")?,
    ))
}

/// The text of the element with `id` on one of the service's pages.
fn page_element(page: &str, id: &str) -> Option<String> {
    let open = format!("id=\"{id}\">");
    let start = page.find(&open)? + open.len();
    let end = page[start..].find('<')? + start;
    Some(page[start..end].to_string())
}

/// A browser page with `status` naming `code` (the error pages say their code).
pub async fn assert_page(response: reqwest::Response, status: StatusCode, code: &str) {
    assert_eq!(response.status(), status);
    let page = response.text().await.expect("page");
    assert!(page.contains(code), "the page names {code}: {page}");
}

/// Asserts a problem+json answer with `status` and `code`; returns the body.
pub async fn assert_problem(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status for {code}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        content_type.starts_with("application/problem+json"),
        "problem+json, got {content_type}"
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["code"], code, "code in {body}");
    assert_eq!(body["status"], status);
    body
}

/// Whether `haystack` contains `needle` (bytes).
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
}

/// The stored refresh token is the provider's latest: it opens to the last one the
/// provider issued, and removing the connection revokes that one at the provider (one
/// that can revoke; a Microsoft-like one answers that it cannot).
pub async fn assert_stored_refresh_token_is_the_latest(
    app: &TestApp,
    provider: &FakeProvider,
    user_id: &str,
) {
    assert_eq!(
        provider.spent_refresh_tokens_presented(),
        0,
        "no spent refresh token was presented"
    );
    assert_eq!(
        app.stored_refresh_token(user_id).await,
        provider.latest_refresh_token(),
        "the stored refresh token is the latest the provider issued"
    );
    let response = app
        .api_delete(&format!("/v1/users/{user_id}/connections/{}", app.provider))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let deleted: Value = response.json().await.expect("json");
    if provider.tenant().is_some() {
        assert_eq!(deleted["revocation"], "not_possible", "{deleted}");
        assert!(provider.revoked_tokens().is_empty());
        return;
    }
    assert_eq!(deleted["revocation"], "revoked", "{deleted}");
    assert_eq!(
        provider.revoked_tokens().last(),
        provider.latest_refresh_token().as_ref(),
        "the revoked refresh token is the latest the provider issued"
    );
}

/// The cause of `user_id`'s dead grant at the app's provider, checked everywhere it is
/// reported: the 409 (with a remedy), the connection list, the flow log and
/// `axnt_grants_ended_total{provider, cause}` (the process's recorder: other tests'
/// instances count into it too, so the check is that this death was counted).
pub async fn assert_died_of(app: &TestApp, user_id: &str, cause: &str) {
    let dead = assert_problem(app.token(user_id).await, 409, "reauthorization_required").await;
    assert_eq!(dead["cause"], cause, "409 for {user_id}");
    assert!(
        dead["remedy"].as_str().is_some_and(|r| !r.is_empty()),
        "a remedy for {cause}"
    );
    let response = app
        .api_get(&format!("/v1/users/{user_id}/connections"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    let listed = body["connections"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["provider"] == app.provider.as_str()))
        .cloned()
        .expect("listed");
    assert_eq!(listed["isActive"], false);
    assert_eq!(listed["health"], "dead");
    assert_eq!(listed["cause"], cause, "listed for {user_id}");
    assert_eq!(listed["remedy"], dead["remedy"]);
    let items = app.flow_log(user_id).await;
    let failed = items
        .iter()
        .find(|i| i["step"] == "refresh_failed")
        .expect("refresh_failed");
    assert_eq!(failed["data"]["cause"], cause, "flow log for {user_id}");
    let provider = format!("provider=\"{}\"", app.provider);
    let counted = app.metrics().await.lines().any(|l| {
        l.starts_with("axnt_grants_ended_total{")
            && l.contains(&provider)
            && l.contains(&format!("cause=\"{cause}\""))
    });
    assert!(
        counted,
        "axnt_grants_ended_total counts {cause} at {provider}"
    );
}

/// A connected user whose row must not change while bad requests are made.
pub async fn connected(
    backend: Backend,
    provider: &FakeProvider,
    extra: &[(&str, &str)],
) -> (TestApp, axnt_oauth::store::Connection) {
    let app = TestApp::on(backend, provider, extra).await;
    assert!(app.connect("victim").await.status().is_success());
    let row = app.stored_row("victim").await.expect("row");
    (app, row)
}

/// Asserts that the row [`connected`] stored for `victim` is still `row`.
pub async fn assert_unchanged(app: &TestApp, row: &axnt_oauth::store::Connection) {
    assert_eq!(
        app.stored_row("victim").await.as_ref(),
        Some(row),
        "stored row unchanged"
    );
}

/// A TCP proxy in front of a server that a test can cut and restore, to make a
/// backend unreachable without losing its data (moto keeps everything in memory).
/// A cut closes new connections at once and ends the established ones too, so a
/// client's pooled keep-alive connections do not carry it through the outage.
pub struct CuttableProxy {
    pub endpoint: String,
    open: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    /// Proxies `127.0.0.1:<port>` to the host and port of `target` (an http URL).
    pub async fn start(target: &str) -> Self {
        let target = Url::parse(target).expect("target URL");
        let target = format!(
            "{}:{}",
            target.host_str().expect("host"),
            target.port().expect("port")
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let (open, gate) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*gate.borrow() {
                    drop(inbound); // cut: the connection is closed at once
                    continue;
                }
                let (target, mut gate) = (target.clone(), gate.clone());
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        // Both sockets are dropped (closed) when the proxy is cut.
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = gate.wait_for(|open| !*open) => {}
                        }
                    }
                });
            }
        });
        Self {
            endpoint,
            open,
            task,
        }
    }

    /// Closes every connection through the proxy and refuses new ones until
    /// [`restore`](Self::restore).
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    pub fn restore(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `GET /v1/audit?{query}`'s items once `done` holds for them (the audit trail writes
/// behind the reads, by windows), failing after 10 s.
pub async fn audit_until(
    app: &TestApp,
    query: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let mut items = Vec::new();
    for _ in 0..100 {
        let response = app.api_get(&format!("/v1/audit?{query}")).await;
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        let body: serde_json::Value = response.json().await.expect("json");
        items = body["items"].as_array().cloned().unwrap_or_default();
        if done(&items) {
            return items;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the audit never showed what was expected: {items:?}");
}
