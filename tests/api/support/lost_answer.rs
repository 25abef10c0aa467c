//! A proxy in front of moto that loses one answer, as a network that fails after a
//! write was done: the first request whose `X-Amz-Target` and body match what the test
//! armed reaches moto, moto applies it, and the client's connection is then closed
//! without a byte of the answer. The AWS SDK takes that for a transient failure
//! (hyper's "connection closed before message completed") and sends the same request
//! again, which finds the first one's effect in the table.
//!
//! HTTP-aware only as far as it must be: each connection's first request is read
//! (head, and a body of `Content-Length`); everything else is piped. moto answers
//! `Connection: close`, so each request comes on a connection of its own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Heads and bodies the proxy reads, at most (DynamoDB items are far smaller).
const MAX_REQUEST: usize = 1 << 20;

/// What the next lost answer answers: a target and strings its body holds.
#[derive(Clone)]
struct Trigger {
    target: String,
    needles: Vec<String>,
}

#[derive(Default)]
struct Counts {
    /// Requests that matched the trigger, the lost one and its retries.
    matched: AtomicUsize,
    lost: AtomicUsize,
}

/// See the module documentation.
pub struct AnswerLosingProxy {
    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL`.
    pub endpoint: String,
    armed: Arc<Mutex<Option<Trigger>>>,
    watched: Arc<Mutex<Option<Trigger>>>,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl AnswerLosingProxy {
    /// Proxies to `upstream` (an `http://host:port` URL).
    pub async fn start(upstream: &str) -> Self {
        let upstream = url::Url::parse(upstream).expect("upstream URL");
        let upstream = format!(
            "{}:{}",
            upstream.host_str().expect("host"),
            upstream.port().expect("port")
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let armed: Arc<Mutex<Option<Trigger>>> = Arc::default();
        let watched: Arc<Mutex<Option<Trigger>>> = Arc::default();
        let counts = Arc::new(Counts::default());
        let task = {
            let (armed, watched, counts) = (armed.clone(), watched.clone(), counts.clone());
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let (armed, watched, counts) = (armed.clone(), watched.clone(), counts.clone());
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        let _ = serve(inbound, &upstream, &armed, &watched, &counts).await;
                    });
                }
            })
        };
        Self {
            endpoint,
            armed,
            watched,
            counts,
            task,
        }
    }

    /// Loses the answer to the next request with this `X-Amz-Target` (e.g.
    /// `DynamoDB_20120810.PutItem`) whose body holds every one of `needles`; later
    /// matching requests (the SDK's retries) pass.
    pub fn lose_answer_to(&self, target: &str, needles: &[&str]) {
        let trigger = Trigger {
            target: target.to_string(),
            needles: needles.iter().map(|n| (*n).to_string()).collect(),
        };
        *self.watched.lock().expect("lock") = Some(trigger.clone());
        *self.armed.lock().expect("lock") = Some(trigger);
    }

    /// Answers lost so far.
    pub fn lost(&self) -> usize {
        self.counts.lost.load(Ordering::SeqCst)
    }

    /// Requests that matched the trigger so far: the one whose answer was lost, and
    /// each retry of it.
    pub fn matched(&self) -> usize {
        self.counts.matched.load(Ordering::SeqCst)
    }
}

impl Drop for AnswerLosingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads from `stream` into `buf` until a whole HTTP message (head, and a body of its
/// `Content-Length`) is in it, or the stream ends. Returns where the head ends and the
/// head's headers, lower-cased names.
async fn read_message(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(usize, Vec<(String, String)>)>> {
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(at) = find(buf, b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > MAX_REQUEST {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let headers: Vec<(String, String)> = String::from_utf8_lossy(&buf[..head_end])
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length.min(MAX_REQUEST) {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Some((head_end, headers)))
}

async fn serve(
    mut inbound: TcpStream,
    upstream: &str,
    armed: &Mutex<Option<Trigger>>,
    watched: &Mutex<Option<Trigger>>,
    counts: &Counts,
) -> std::io::Result<()> {
    let mut request = Vec::new();
    let Some((head_end, headers)) = read_message(&mut inbound, &mut request).await? else {
        return Ok(());
    };
    let target = headers
        .iter()
        .find(|(k, _)| k == "x-amz-target")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    let body = &request[head_end..];
    let is = |trigger: &Trigger| {
        trigger.target == target
            && trigger
                .needles
                .iter()
                .all(|n| find(body, n.as_bytes()).is_some())
    };
    let matched = watched.lock().expect("lock").as_ref().is_some_and(is);
    let lose = matched && {
        let mut armed = armed.lock().expect("lock");
        armed.as_ref().is_some_and(is) && armed.take().is_some()
    };
    if matched {
        counts.matched.fetch_add(1, Ordering::SeqCst);
    }
    let mut outbound = TcpStream::connect(upstream).await?;
    outbound.write_all(&request).await?;
    if lose {
        // moto applies the request and answers; the answer goes nowhere, and the
        // client's connection is closed without a byte of it.
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            read_message(&mut outbound, &mut answer),
        )
        .await;
        counts.lost.fetch_add(1, Ordering::SeqCst);
        drop(inbound);
        return Ok(());
    }
    tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await?;
    Ok(())
}
