//! An HTTP proxy in front of moto that sees each AWS call (its `X-Amz-Target`, e.g.
//! `TrentService.Decrypt` or `DynamoDB_20120810.PutItem`, and its body) and can fail
//! the calls a test picks the way a network does: the connection closes before the
//! call reaches the service (`Fault::Unreachable`), or after the service acted on it,
//! so its answer is lost (`Fault::LoseAnswer`). Everything else is forwarded as it is.
//! One service can so be cut away while the others answer (a KMS blip with DynamoDB
//! up), which a TCP proxy cannot do: moto serves every service on one port.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// What happens to a call a rule picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The connection is closed before anything is forwarded.
    Unreachable,
    /// The call is forwarded and acted on; the connection is then closed without its
    /// answer.
    LoseAnswer,
}

/// Decides, from a call's `X-Amz-Target` and body, whether to fail it.
type Rule = Box<dyn FnMut(&str, &[u8]) -> Option<Fault> + Send>;

pub struct AwsFaultProxy {
    /// `http://127.0.0.1:PORT`: give it as `AWS_ENDPOINT_URL`.
    pub endpoint: String,
    rule: Arc<Mutex<Option<Rule>>>,
    /// Calls that matched [`lose_answer_to`](Self::lose_answer_to)'s trigger (the lost
    /// one and its retries), and answers lost.
    matched: Arc<AtomicUsize>,
    lost: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl AwsFaultProxy {
    /// Proxies to `target` (moto's endpoint URL).
    pub async fn start(target: &str) -> Self {
        let target = target.trim_end_matches('/').to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let rule: Arc<Mutex<Option<Rule>>> = Arc::new(Mutex::new(None));
        let shared = Arc::clone(&rule);
        let client = reqwest::Client::new();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (rule, client, target) = (Arc::clone(&shared), client.clone(), target.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: hyper::Request<Incoming>| {
                        forward(request, Arc::clone(&rule), client.clone(), target.clone())
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            endpoint,
            rule,
            matched: Arc::default(),
            lost: Arc::default(),
            task,
        }
    }

    /// Fails the calls `rule` picks (by `X-Amz-Target` and body) from now on; `None`
    /// from the rule forwards the call.
    pub fn set_rule(&self, rule: impl FnMut(&str, &[u8]) -> Option<Fault> + Send + 'static) {
        *self.rule.lock().expect("rule") = Some(Box::new(rule));
    }

    /// Every call of a service whose targets start with `prefix` (`TrentService.` for
    /// KMS, `DynamoDB_` for DynamoDB, `secretsmanager.`) is unreachable until
    /// [`clear`](Self::clear).
    pub fn cut(&self, prefix: &'static str) {
        self.set_rule(move |target, _| target.starts_with(prefix).then_some(Fault::Unreachable));
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

    /// Forwards everything again.
    pub fn clear(&self) {
        *self.rule.lock().expect("rule") = None;
    }
}

impl Drop for AwsFaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    request: hyper::Request<Incoming>,
    rule: Arc<Mutex<Option<Rule>>>,
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
    let fault = rule
        .lock()
        .expect("rule")
        .as_mut()
        .and_then(|rule| rule(&amz_target, &body));
    if fault == Some(Fault::Unreachable) {
        // An error from the service makes hyper close the connection unanswered.
        return Err(std::io::Error::other("cut"));
    }
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
    let answer = outbound
        .body(body)
        .send()
        .await
        .map_err(std::io::Error::other)?;
    let status = answer.status();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.map_err(std::io::Error::other)?;
    if fault == Some(Fault::LoseAnswer) {
        return Err(std::io::Error::other("answer lost"));
    }
    let mut response = hyper::Response::new(Body::from(bytes));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if name != hyper::header::CONTENT_LENGTH && name != hyper::header::TRANSFER_ENCODING {
            response.headers_mut().insert(name, value.clone());
        }
    }
    Ok(response)
}
