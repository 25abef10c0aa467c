//! An HTTP proxy in front of moto that can hold chosen AWS requests back (a request the
//! network delays: it reaches the service after the client gave up on it, and may
//! still take effect), hold their answers back (the request took effect, the client
//! does not hear of it in time), or answer them itself (as the service answers a
//! disabled key).
//! Requests are chosen by their operation (`X-Amz-Target`, e.g. `TransactWriteItems`)
//! and a string their body contains; everything else passes unchanged.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

#[derive(Clone)]
enum Action {
    /// Forward after `hold`, whatever became of the client meanwhile.
    Hold(Duration),
    /// Forward at once; answer after `hold`.
    HoldAnswer(Duration),
    /// Answer `status` with this JSON body, as the service would.
    Answer(u16, String),
}

#[derive(Clone)]
struct Rule {
    operation: String,
    naming: String,
    /// The rule applies to requests arriving before this.
    until: Instant,
    action: Action,
}

#[derive(Clone)]
struct Shared {
    target: String,
    client: reqwest::Client,
    rules: Arc<Mutex<Vec<Rule>>>,
    held: Arc<Mutex<Vec<String>>>,
}

/// The proxy; point `AWS_ENDPOINT_URL` at [`AwsProxy::endpoint`].
pub struct AwsProxy {
    pub endpoint: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl AwsProxy {
    /// Proxies to `target` (moto's endpoint URL).
    pub async fn start(target: &str) -> Self {
        let shared = Shared {
            target: target.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            rules: Arc::default(),
            held: Arc::default(),
        };
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the AWS proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            endpoint,
            shared,
            task,
        }
    }

    /// Holds every `operation` request whose body contains `naming` and that arrives
    /// within `window` from now for `hold`, then forwards it.
    pub fn hold(&self, operation: &str, naming: &str, hold: Duration, window: Duration) {
        self.add(operation, naming, window, Action::Hold(hold));
    }

    /// Forwards every `operation` request whose body contains `naming` and that arrives
    /// within `window` from now at once, but gives its answer only after `hold`.
    pub fn hold_answer(&self, operation: &str, naming: &str, hold: Duration, window: Duration) {
        self.add(operation, naming, window, Action::HoldAnswer(hold));
    }

    /// Answers every `operation` request whose body contains `naming` with `status`
    /// and `body` from now on.
    pub fn answer(&self, operation: &str, naming: &str, status: u16, body: &str) {
        self.add(
            operation,
            naming,
            Duration::from_secs(24 * 3600),
            Action::Answer(status, body.to_string()),
        );
    }

    /// The operations held so far, in order.
    pub fn held(&self) -> Vec<String> {
        self.shared.held.lock().expect("lock").clone()
    }

    fn add(&self, operation: &str, naming: &str, window: Duration, action: Action) {
        self.shared.rules.lock().expect("lock").push(Rule {
            operation: operation.to_string(),
            naming: naming.to_string(),
            until: Instant::now() + window,
            action,
        });
    }
}

impl Drop for AwsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let operation = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or_default()
        .to_string();
    let text = String::from_utf8_lossy(&body);
    let action = shared
        .rules
        .lock()
        .expect("lock")
        .iter()
        .find(|r| r.operation == operation && text.contains(&r.naming) && Instant::now() < r.until)
        .map(|r| r.action.clone());
    let (hold, answer_after) = match action {
        Some(Action::Answer(status, body)) => {
            return (
                StatusCode::from_u16(status).expect("status"),
                [("content-type", "application/x-amz-json-1.1")],
                body,
            )
                .into_response();
        }
        Some(Action::Hold(hold)) => {
            shared.held.lock().expect("lock").push(operation);
            (hold, Duration::ZERO)
        }
        Some(Action::HoldAnswer(hold)) => {
            shared.held.lock().expect("lock").push(operation);
            (Duration::ZERO, hold)
        }
        None => (Duration::ZERO, Duration::ZERO),
    };
    // Its own task: a client that gives up (and so drops this handler) does not stop
    // the request from reaching the service.
    let sent = tokio::spawn(async move {
        tokio::time::sleep(hold).await;
        let mut request = shared
            .client
            .request(method, format!("{}{}", shared.target, uri));
        for (name, value) in &headers {
            if name != "host" && name != "content-length" {
                request = request.header(name, value);
            }
        }
        let response = request.body(body).send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await?;
        Ok::<_, reqwest::Error>((status, headers, body))
    });
    let sent = sent.await;
    tokio::time::sleep(answer_after).await;
    match sent {
        Ok(Ok((status, headers, body))) => {
            let mut response =
                (StatusCode::from_u16(status).expect("status"), body).into_response();
            for (name, value) in &headers {
                if !matches!(
                    name.as_str(),
                    "content-length" | "transfer-encoding" | "connection"
                ) {
                    response.headers_mut().insert(name, value.clone());
                }
            }
            response
        }
        _ => StatusCode::BAD_GATEWAY.into_response(),
    }
}
