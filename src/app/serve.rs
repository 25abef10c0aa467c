//! The accept loop: hyper with a timer and a watch over every connection (see
//! [`super::connections`]: what is closed, when, and what the caps shed), limits on the
//! request head, HTTP/2 keep-alive pings, and a shutdown with a deadline.
//!
//! `axum::serve` has no timer and no per-connection watch: there, a socket that sent
//! nothing (hyper's protocol detection read has no timeout), only the HTTP/2 preface,
//! or half a head held a connection and a file descriptor for ever, and a full listener
//! stopped accepting.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use hyper::body::{Body as HttpBody, Bytes, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::connections::{CloseReason, Connection, ConnectionLimits, Connections, InFlight, Next};
use crate::config::ServerSettings;
use crate::series::Label;

/// Header lines a request may carry; more is 431. Browsers send about 20.
const MAX_HEADERS: usize = 64;
/// Bytes of request head hyper buffers; a longer head is 431. Cookies and a callback URL
/// fit many times over.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long a connection that has served requests, closed for a timeout or a cap, may
/// take to say goodbye (an HTTP/2 GOAWAY) before its socket is closed. One that never
/// sent a request is closed at once.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What bounds serving, from the settings.
#[derive(Debug, Clone)]
pub(crate) struct ServeLimits {
    connections: ConnectionLimits,
    http2_ping_interval: Option<Duration>,
    http2_ping_timeout: Duration,
}

impl From<&ServerSettings> for ServeLimits {
    fn from(s: &ServerSettings) -> Self {
        Self {
            connections: ConnectionLimits::from(s),
            http2_ping_interval: s.http2_ping_interval,
            http2_ping_timeout: s.http2_ping_timeout,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets the connections
/// finish what they are doing until `deadline` (counted from the signal) and closes
/// the rest. Returns when every connection is closed or the deadline passed. Open
/// connections are the gauge [`HTTP_CONNECTIONS_OPEN`](crate::series::HTTP_CONNECTIONS_OPEN)`{listener=name}`; those the
/// server closed, [`HTTP_CONNECTIONS_CLOSED_TOTAL`](crate::series::HTTP_CONNECTIONS_CLOSED_TOTAL)`{listener=name, reason}`.
pub(crate) async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    deadline: Duration,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's own head timer restarts whenever a kept-alive connection goes idle,
        // so it would also be the idle limit between requests (which must outlast a
        // load balancer's); the connection's watch times heads and idleness apart.
        .header_read_timeout(None)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_ping_interval)
        .keep_alive_timeout(limits.http2_ping_timeout)
        .max_header_list_size(u32::try_from(MAX_HEAD_BYTES).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let connections = Arc::new(Connections::new(limits.connections));
    // Stopping: each connection finishes its requests and closes. Forced: the
    // deadline passed, sockets still open are closed.
    let stopping = CancellationToken::new();
    let forced = CancellationToken::new();
    let tasks = TaskTracker::new();
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = connections.room() => {}
        }
        let (stream, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let conn = match connections.admit(remote.ip()) {
            Ok(conn) => conn,
            Err(reason) => {
                closed(name, reason);
                drop(stream);
                continue;
            }
        };
        let service = service(router.clone(), remote, Arc::clone(&conn));
        let builder = Arc::clone(&builder);
        let connections = Arc::clone(&connections);
        let (stopping, forced) = (stopping.clone(), forced.clone());
        let open = metrics::gauge!(crate::series::HTTP_CONNECTIONS_OPEN, "listener" => name);
        open.increment(1.0);
        tasks.spawn(async move {
            let io = TokioIo::new(Watched {
                stream,
                conn: Arc::clone(&conn),
            });
            let connection = builder.serve_connection(io, service);
            drive(
                name,
                connection,
                &conn,
                connections.limits(),
                &stopping,
                &forced,
            )
            .await;
            connections.release(&conn);
            open.decrement(1.0);
        });
    }
    drop(listener);
    stopping.cancel();
    tasks.close();
    tokio::select! {
        () = tasks.wait() => {}
        () = tokio::time::sleep(deadline) => {
            tracing::warn!(
                deadline_secs = deadline.as_secs(),
                "connections still open at the shutdown deadline: closing them"
            );
            forced.cancel();
        }
    }
    Ok(())
}

fn closed(listener: &'static str, reason: CloseReason) {
    metrics::counter!(crate::series::HTTP_CONNECTIONS_CLOSED_TOTAL, "listener" => listener, "reason" => reason.label())
        .increment(1);
}

/// The router as a connection's service: each request carries the peer's address
/// (`ConnectInfo`) and keeps the connection busy until its answer is written.
fn service(
    router: Router,
    remote: SocketAddr,
    conn: Arc<Connection>,
) -> TowerToHyperService<
    impl tower::Service<
        Request<Incoming>,
        Response = axum::response::Response,
        Error = Infallible,
        Future = impl Future<Output = Result<axum::response::Response, Infallible>> + Send,
    > + Clone,
> {
    TowerToHyperService::new(tower::service_fn(move |mut request: Request<Incoming>| {
        let in_flight = conn.request_started(request.version() == http::Version::HTTP_2);
        request.extensions_mut().insert(ConnectInfo(remote));
        let router = router.clone();
        async move {
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok(response.map(|body| {
                Body::new(Answer {
                    body,
                    _in_flight: in_flight,
                })
            }))
        }
    }))
}

/// Serves one connection until it ends, its watch closes it (counted, before its socket
/// closes), or the server stops.
async fn drive<C>(
    name: &'static str,
    connection: C,
    conn: &Connection,
    limits: &ConnectionLimits,
    stopping: &CancellationToken,
    forced: &CancellationToken,
) where
    C: GracefulConnection<Error = Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(connection);
    let reason = loop {
        let at = match conn.next(limits, tokio::time::Instant::now()) {
            Next::Close(reason) => break Some(reason),
            Next::At(at) => Some(at),
            Next::Busy => None,
        };
        let wait = async {
            match at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = stopping.cancelled() => break None,
            () = conn.changed.notified() => {}
            () = wait => {}
        }
    };
    if let Some(reason) = reason {
        closed(name, reason);
    }
    if !conn.served() {
        // Nothing to say to a connection that asked nothing: close the socket.
        return;
    }
    connection.as_mut().graceful_shutdown();
    let grace = async {
        if reason.is_some() {
            tokio::time::sleep(CLOSE_GRACE).await;
        } else {
            // The server is stopping: as long as the drain deadline allows.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = connection.as_mut() => {}
        () = grace => {}
        () = forced.cancelled() => {}
    }
}

/// The socket, telling its connection's watch when bytes arrive (the start of an
/// HTTP/1 head on a kept-alive connection starts the head timer).
struct Watched {
    stream: TcpStream,
    conn: Arc<Connection>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// An answer's body, holding its connection busy until hyper has written it (and
/// drops it).
struct Answer {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
