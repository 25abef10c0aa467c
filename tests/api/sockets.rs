//! Connections that hold a slot without asking anything: sockets that send nothing, only
//! the HTTP/2 preface or part of a head, kept-alive connections idle between requests,
//! and HTTP/2 peers that stop answering pings. They are closed on their timeouts, and
//! at a connection cap the oldest of them makes room, so a client that sends a request
//! always gets in (all from 127.0.0.1, as an outside flood would be).

use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::{API_KEY, FakeProvider, TestApp};

/// One flood at a time: two of 2,200 sockets each on 2 cores, beside the rest of the
/// suite, made a socket's close miss its deadline by scheduling alone.
static FLOODS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The client connection preface, as RFC 9113 §3.4 prints it.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame (RFC 9113 §6.5): length 0, type 0x4, no flags, stream 0.
const H2_EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 0x4, 0, 0, 0, 0, 0];
const GET_HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

/// The flood holds 2,200 client sockets and up to as many server sockets in this one
/// process: raise the soft open-file limit (to the hard limit at most) when it is lower.
fn allow_open_files(wanted: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|current| current >= wanted) {
        return;
    }
    let raised = limit.maximum.map_or(wanted, |max| max.min(wanted));
    assert!(
        raised >= wanted,
        "the hard open-file limit ({raised}) is below {wanted}: raise it (ulimit -Hn)"
    );
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(raised),
            maximum: limit.maximum,
        },
    )
    .expect("raise the open-file limit");
}

struct Socket {
    stream: TcpStream,
    opened: Instant,
}

/// Opens a connection and sends `bytes` (nothing when empty); keeps it open.
async fn open(app: &TestApp, bytes: &[u8]) -> Socket {
    let opened = Instant::now();
    let connect = TcpStream::connect(app.base.trim_start_matches("http://"));
    let mut stream = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .expect("connected within 10 s: the listener still accepts")
        .expect("connect");
    if !bytes.is_empty() {
        stream.write_all(bytes).await.expect("write");
    }
    Socket { stream, opened }
}

/// When the server closed `stream` (end of stream or reset), reading and discarding what
/// it sent before; `None` if it was still open at `by`.
async fn closed_by(stream: &mut TcpStream, by: Instant) -> Option<Instant> {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(by, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(Instant::now()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Reads one HTTP/1.1 answer (head and `Content-Length` body); its status line.
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("answered in time")
            .expect("read");
        assert!(n > 0, "closed before the answer was whole");
        received.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&received).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())
                    .flatten()
            })
            .unwrap_or(0);
        if body.len() >= length {
            return head.lines().next().unwrap_or_default().to_string();
        }
    }
}

/// `axnt_http_connections_closed_total{listener="public", reason}` (the process's
/// recorder: compare before and after).
async fn closed_total(app: &TestApp, reason: &str) -> f64 {
    let wanted = format!(r#"reason="{reason}""#);
    app.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("axnt_http_connections_closed_total{"))
        .filter(|l| l.contains(r#"listener="public""#) && l.contains(&wanted))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A client without a connection pool: every request on a new connection, which must
/// get in while the flood holds the slots.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// 1,100 sockets that send nothing and 1,100 that send only the HTTP/2 preface, from
/// the address the checks come from: `/healthz` and a token read still answer, and
/// every flood socket is closed within the header-read timeout of its opening (one shed
/// at a cap, sooner).
async fn flood(extra: &[(&str, &str)]) {
    let _one_at_a_time = FLOODS.lock().await;
    allow_open_files(8_192);
    let timeout = Duration::from_secs(3);
    let provider = FakeProvider::start().await;
    let settings = [&[("AXNT_HEADER_READ_TIMEOUT_SECS", "3")], extra].concat();
    let app = TestApp::spawn_with(&provider, &settings).await;
    assert_eq!(app.connect("flooded").await.status(), StatusCode::OK);
    let reasons = [
        "first_request_timeout",
        "shed_client_cap",
        "shed_cap",
        "refused_cap",
    ];
    let mut before = Vec::new();
    for reason in reasons {
        before.push(closed_total(&app, reason).await);
    }

    let mut sockets = Vec::with_capacity(2_200);
    for _ in 0..1_100 {
        sockets.push(open(&app, b"").await);
    }
    for _ in 0..1_100 {
        sockets.push(open(&app, H2_PREFACE).await);
    }

    let client = fresh_client();
    let health = client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("/healthz answers during the flood");
    assert_eq!(health.status(), StatusCode::OK);
    let token = client
        .get(app.url("/v1/users/flooded/tokens/google"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("a token read answers during the flood");
    assert_eq!(token.status(), StatusCode::OK);

    let slack = Duration::from_secs(2);
    for (i, socket) in sockets.iter_mut().enumerate() {
        let by = socket.opened + timeout + slack;
        assert!(
            closed_by(&mut socket.stream, by).await.is_some(),
            "flood socket {i} still open {:?} after it opened",
            timeout + slack
        );
    }
    let mut after = Vec::new();
    for reason in reasons {
        after.push(closed_total(&app, reason).await);
    }
    let closed: f64 = after.iter().zip(&before).take(3).map(|(a, b)| a - b).sum();
    assert!(closed >= 2_200.0, "closed by the server: {closed}");
    for (i, reason) in reasons.iter().enumerate().skip(3) {
        assert_eq!(
            after[i], before[i],
            "{reason}: a new connection was refused"
        );
    }
}

/// The per-client cap (default) sheds the flood's own oldest sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_and_preface_flood_leaves_the_service_answering_and_is_closed_in_time() {
    flood(&[]).await;
}

/// With no per-client cap below the listener's, the flood fills the listener: the
/// listener's cap sheds its oldest sockets instead of refusing newcomers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_listener_cap_the_flood_is_shed_so_a_live_client_gets_in() {
    flood(&[("AXNT_MAX_CONNECTIONS_PER_CLIENT", "1024")]).await;
}

/// Under every cap: a socket that sends nothing, only the HTTP/2 preface, or part of a
/// head is closed when the header-read timeout has passed, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_ask_nothing_are_closed_at_the_header_read_timeout() {
    let timeout = Duration::from_secs(2);
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with(&provider, &[("AXNT_HEADER_READ_TIMEOUT_SECS", "2")]).await;
    let before = closed_total(&app, "first_request_timeout").await;
    let mut sockets = Vec::new();
    for bytes in [
        &b""[..],
        H2_PREFACE,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
    ] {
        for _ in 0..20 {
            sockets.push(open(&app, bytes).await);
        }
    }
    for socket in &mut sockets {
        let closed = closed_by(&mut socket.stream, socket.opened + timeout * 2)
            .await
            .expect("closed within the timeout (and a second of slack)");
        assert!(
            closed - socket.opened >= timeout,
            "closed before the timeout"
        );
    }
    let after = closed_total(&app, "first_request_timeout").await;
    assert!(after - before >= 60.0, "counted: {}", after - before);
}

/// A load balancer keeps its connections open between requests for longer than a
/// request head may take (ALB: 60 s): a kept-alive HTTP/1 connection outlives the
/// header-read timeout and is closed at the idle timeout; a head begun on it still has
/// to be whole within the header-read timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_connections_last_until_the_idle_timeout_not_the_head_timeout() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with(
        &provider,
        &[
            ("AXNT_HEADER_READ_TIMEOUT_SECS", "1"),
            ("AXNT_CONNECTION_IDLE_TIMEOUT_SECS", "5"),
        ],
    )
    .await;
    let idle_before = closed_total(&app, "idle_timeout").await;
    let head_before = closed_total(&app, "head_timeout").await;

    let mut kept = open(&app, GET_HEALTHZ).await;
    assert_eq!(read_answer(&mut kept.stream).await, "HTTP/1.1 200 OK");
    tokio::time::sleep(Duration::from_secs(2)).await;
    kept.stream.write_all(GET_HEALTHZ).await.expect("write");
    assert_eq!(
        read_answer(&mut kept.stream).await,
        "HTTP/1.1 200 OK",
        "answered on the same connection after 2 s idle"
    );
    let answered = Instant::now();

    let mut slow = open(&app, GET_HEALTHZ).await;
    assert_eq!(read_answer(&mut slow.stream).await, "HTTP/1.1 200 OK");
    slow.stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .expect("write");
    let begun = Instant::now();
    let closed = closed_by(&mut slow.stream, begun + Duration::from_secs(3))
        .await
        .expect("a half head closed by the header-read timeout");
    assert!(closed - begun >= Duration::from_secs(1));

    let closed = closed_by(&mut kept.stream, answered + Duration::from_secs(8))
        .await
        .expect("closed by the idle timeout");
    assert!(
        closed - answered >= Duration::from_millis(4_500),
        "closed {:?} after its last answer",
        closed - answered
    );
    assert!(closed_total(&app, "idle_timeout").await > idle_before);
    assert!(closed_total(&app, "head_timeout").await > head_before);
}

/// An HTTP/2 client that answers pings: kept while idle up to the idle timeout, then
/// closed; one that sent no request at all, at the header-read timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_answering_pings_are_closed_at_the_idle_timeout() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with(
        &provider,
        &[
            ("AXNT_HEADER_READ_TIMEOUT_SECS", "2"),
            ("AXNT_CONNECTION_IDLE_TIMEOUT_SECS", "4"),
            ("AXNT_HTTP2_PING_INTERVAL_SECS", "1"),
            ("AXNT_HTTP2_PING_TIMEOUT_SECS", "1"),
        ],
    )
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();

    let tcp = TcpStream::connect(&addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("handshake");
    // Driving the connection answers the server's pings.
    let driven = tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let request = http::Request::get(app.url("/healthz"))
        .body(())
        .expect("request");
    let (answer, _) = client.send_request(request, true).expect("send");
    let answer = answer.await.expect("answer");
    assert_eq!(answer.status(), http::StatusCode::OK);
    drop(answer);
    let answered = Instant::now();
    tokio::time::timeout(Duration::from_secs(8), driven)
        .await
        .expect("closed by the idle timeout")
        .expect("task")
        .ok();
    let lasted = answered.elapsed();
    assert!(
        lasted >= Duration::from_millis(3_500),
        "closed {lasted:?} after its answer: pings answered must keep it to the idle timeout"
    );
    drop(client);

    let opened = Instant::now();
    let tcp = TcpStream::connect(&addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("handshake");
    tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("closed by the header-read timeout")
        .ok();
    assert!(opened.elapsed() >= Duration::from_secs(2));
    drop(client);
}

/// An HTTP/2 peer that stops answering pings (gone, or reading nothing) is closed after
/// the ping interval and timeout, long before the other limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_peer_that_never_answers_pings_is_closed() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with(
        &provider,
        &[
            ("AXNT_HEADER_READ_TIMEOUT_SECS", "60"),
            ("AXNT_HTTP2_PING_INTERVAL_SECS", "1"),
            ("AXNT_HTTP2_PING_TIMEOUT_SECS", "1"),
        ],
    )
    .await;
    let mut silent = open(&app, &[H2_PREFACE, H2_EMPTY_SETTINGS].concat()).await;
    let closed = closed_by(&mut silent.stream, silent.opened + Duration::from_secs(15))
        .await
        .expect("closed once its ping went unanswered");
    assert!(closed - silent.opened < Duration::from_secs(15));
}
