//! An HTTP proxy in front of moto that sees each AWS call — its `X-Amz-Target` (e.g.
//! `TrentService.Decrypt`, `DynamoDB_20120810.TransactWriteItems`) and its body — and
//! can fail the calls a test picks the way a network does:
//!
//! - `Unreachable`: the connection closes before the call reaches the service;
//! - `LoseAnswer`: the call is acted on, then the connection closes without its answer;
//! - `Hold`: the call reaches the service late, after the client may have given up on
//!   it (and may still take effect);
//! - `HoldAnswer`: the call is acted on at once, its answer comes late;
//! - `Answer`: the proxy answers itself, as the service would (a disabled key).
//!
//! One service can so be cut away while the others answer (a KMS blip with DynamoDB
//! up), which a TCP proxy cannot do: moto serves every service on one port. Everything
//! no rule picks is forwarded as it is.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// What happens to a call a rule picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The connection is closed before anything is forwarded.
    Unreachable,
    /// The call is forwarded and acted on; the connection is then closed without its
    /// answer.
    LoseAnswer,
    /// The call is forwarded this late, whatever became of the client meanwhile.
    Hold(Duration),
    /// The call is forwarded at once; its answer is given this late.
    HoldAnswer(Duration),
    /// The proxy answers this status and JSON body itself.
    Answer(u16, String),
}

/// Decides, from a call's `X-Amz-Target` and body, whether to fail it.
type Rule = Box<dyn FnMut(&str, &[u8]) -> Option<Fault> + Send>;

/// A rule for calls of one operation whose body names something, for a while.
struct Timed {
    operation: String,
    naming: String,
    until: Instant,
    fault: Fault,
}

#[derive(Default)]
struct Rules {
    rule: Option<Rule>,
    timed: Vec<Timed>,
    /// Operations held so far (by `Hold` and `HoldAnswer`), in order.
    held: Vec<String>,
}

impl Rules {
    fn pick(&mut self, target: &str, body: &[u8]) -> Option<Fault> {
        let operation = target.rsplit('.').next().unwrap_or_default();
        let text = String::from_utf8_lossy(body);
        let now = Instant::now();
        let timed = self
            .timed
            .iter()
            .find(|r| r.operation == operation && text.contains(&r.naming) && now < r.until)
            .map(|r| r.fault.clone());
        let fault = timed.or_else(|| self.rule.as_mut().and_then(|rule| rule(target, body)));
        if matches!(fault, Some(Fault::Hold(_) | Fault::HoldAnswer(_))) {
            self.held.push(operation.to_string());
        }
        fault
    }
}

pub struct AwsProxy {
    /// `http://127.0.0.1:PORT`: give it as `AWS_ENDPOINT_URL`.
    pub endpoint: String,
    rules: Arc<Mutex<Rules>>,
    /// Calls that matched [`lose_answer_to`](Self::lose_answer_to)'s trigger (the lost
    /// one and its retries), and answers lost.
    matched: Arc<AtomicUsize>,
    lost: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl AwsProxy {
    /// Proxies to `target` (moto's endpoint URL).
    pub async fn start(target: &str) -> Self {
        let target = target.trim_end_matches('/').to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let rules: Arc<Mutex<Rules>> = Arc::default();
        let shared = Arc::clone(&rules);
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (rules, client, target) = (Arc::clone(&shared), client.clone(), target.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: hyper::Request<Incoming>| {
                        forward(request, Arc::clone(&rules), client.clone(), target.clone())
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            endpoint,
            rules,
            matched: Arc::default(),
            lost: Arc::default(),
            task,
        }
    }

    fn rules(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.rules.lock().expect("rules")
    }

    /// Fails the calls `rule` picks (by `X-Amz-Target` and body) from now on; `None`
    /// from the rule forwards the call.
    pub fn set_rule(&self, rule: impl FnMut(&str, &[u8]) -> Option<Fault> + Send + 'static) {
        self.rules().rule = Some(Box::new(rule));
    }

    /// Every call of a service whose targets start with `prefix` (`TrentService.` for
    /// KMS, `DynamoDB_` for DynamoDB, `secretsmanager.`) is unreachable until
    /// [`clear`](Self::clear).
    pub fn cut(&self, prefix: &'static str) {
        self.set_rule(move |target, _| target.starts_with(prefix).then_some(Fault::Unreachable));
    }

    /// Forwards everything again (the timed rules run out on their own).
    pub fn clear(&self) {
        self.rules().rule = None;
    }

    /// Loses the answer to the next call with this `X-Amz-Target` (e.g.
    /// `DynamoDB_20120810.PutItem`) whose body holds every one of `needles`, as a
    /// network that fails after the write was done; later matching calls (the SDK's
    /// retries) pass, and are counted in [`matched`](Self::matched).
    pub fn lose_answer_to(&self, target: &str, needles: &[&str]) {
        let target = target.to_string();
        let needles: Vec<String> = needles.iter().map(|n| (*n).to_string()).collect();
        let (matched, lost) = (Arc::clone(&self.matched), Arc::clone(&self.lost));
        let mut armed = true;
        self.set_rule(move |call, body| {
            let body = String::from_utf8_lossy(body);
            if call != target || !needles.iter().all(|n| body.contains(n.as_str())) {
                return None;
            }
            matched.fetch_add(1, Ordering::SeqCst);
            if !std::mem::replace(&mut armed, false) {
                return None;
            }
            lost.fetch_add(1, Ordering::SeqCst);
            Some(Fault::LoseAnswer)
        });
    }

    /// Calls that matched [`lose_answer_to`](Self::lose_answer_to): the one whose
    /// answer was lost, and each retry of it.
    pub fn matched(&self) -> usize {
        self.matched.load(Ordering::SeqCst)
    }

    /// Answers lost so far by [`lose_answer_to`](Self::lose_answer_to).
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }

    /// Holds every `operation` call (e.g. `TransactWriteItems`) whose body contains
    /// `naming` and that arrives within `window` from now for `hold`, then forwards it.
    pub fn hold(&self, operation: &str, naming: &str, hold: Duration, window: Duration) {
        self.add(operation, naming, window, Fault::Hold(hold));
    }

    /// Forwards every `operation` call whose body contains `naming` and that arrives
    /// within `window` from now at once, but gives its answer only after `hold`.
    pub fn hold_answer(&self, operation: &str, naming: &str, hold: Duration, window: Duration) {
        self.add(operation, naming, window, Fault::HoldAnswer(hold));
    }

    /// Answers every `operation` call whose body contains `naming` with `status` and
    /// `body` from now on.
    pub fn answer(&self, operation: &str, naming: &str, status: u16, body: &str) {
        self.add(
            operation,
            naming,
            Duration::from_secs(24 * 3600),
            Fault::Answer(status, body.to_string()),
        );
    }

    /// The operations held so far, in order.
    pub fn held(&self) -> Vec<String> {
        self.rules().held.clone()
    }

    fn add(&self, operation: &str, naming: &str, window: Duration, fault: Fault) {
        self.rules().timed.push(Timed {
            operation: operation.to_string(),
            naming: naming.to_string(),
            until: Instant::now() + window,
            fault,
        });
    }
}

impl Drop for AwsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    request: hyper::Request<Incoming>,
    rules: Arc<Mutex<Rules>>,
    client: reqwest::Client,
    target: String,
) -> Result<hyper::Response<Body>, std::io::Error> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(Body::new(body), usize::MAX)
        .await
        .map_err(std::io::Error::other)?;
    let amz_target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let fault = rules.lock().expect("rules").pick(&amz_target, &body);
    let (hold, answer_after) = match &fault {
        // An error from the service makes hyper close the connection unanswered.
        Some(Fault::Unreachable) => return Err(std::io::Error::other("cut")),
        Some(Fault::Answer(status, json)) => {
            let mut response = hyper::Response::new(Body::from(json.clone()));
            *response.status_mut() =
                hyper::StatusCode::from_u16(*status).map_err(std::io::Error::other)?;
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/x-amz-json-1.1"),
            );
            return Ok(response);
        }
        Some(Fault::Hold(hold)) => (*hold, Duration::ZERO),
        Some(Fault::HoldAnswer(hold)) => (Duration::ZERO, *hold),
        Some(Fault::LoseAnswer) | None => (Duration::ZERO, Duration::ZERO),
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let mut outbound = client.request(parts.method.clone(), format!("{target}{path}"));
    for (name, value) in &parts.headers {
        if name != hyper::header::HOST && name != hyper::header::CONTENT_LENGTH {
            outbound = outbound.header(name, value);
        }
    }
    // Its own task: a client that gives up (and so drops this call) does not stop the
    // call from reaching the service.
    let sent = tokio::spawn(async move {
        tokio::time::sleep(hold).await;
        let answer = outbound.body(body).send().await?;
        let status = answer.status();
        let headers = answer.headers().clone();
        let bytes = answer.bytes().await?;
        Ok::<_, reqwest::Error>((status, headers, bytes))
    });
    let (status, headers, bytes) = sent
        .await
        .map_err(std::io::Error::other)?
        .map_err(std::io::Error::other)?;
    tokio::time::sleep(answer_after).await;
    if fault == Some(Fault::LoseAnswer) {
        return Err(std::io::Error::other("answer lost"));
    }
    let mut response = hyper::Response::new(Body::from(bytes));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if !matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    Ok(response)
}
