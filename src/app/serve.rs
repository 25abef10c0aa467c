//! The accept loop: hyper with a timer, so a connection that sends its request head too
//! slowly is closed (`axum::serve` has no timer, so a half-sent head held a connection,
//! a file descriptor and graceful shutdown for ever), a cap on connections served at
//! once, limits on the request head, and a shutdown with a deadline.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::config::ServerSettings;

/// Header lines a request may carry; more is 431. Browsers send about 20.
const MAX_HEADERS: usize = 64;
/// Bytes of request head hyper buffers; a longer head is 431. Cookies and a callback URL
/// fit many times over.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What bounds serving, from the settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServeLimits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_connections: usize,
}

impl From<&ServerSettings> for ServeLimits {
    fn from(s: &ServerSettings) -> Self {
        Self {
            header_read_timeout: s.header_read_timeout,
            max_connections: s.max_connections,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets the connections
/// finish what they are doing until `deadline` (counted from the signal) and closes
/// the rest. Returns when every connection is closed or the deadline passed. Open
/// connections are the gauge `axnt_http_connections_open{listener=name}`.
pub(crate) async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    deadline: Duration,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(MAX_HEAD_BYTES).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
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
        let service = router
            .clone()
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(remote));
                request
            })
            .map_err(|e: Infallible| match e {});
        let service = TowerToHyperService::new(service);
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        let open = metrics::gauge!("axnt_http_connections_open", "listener" => name);
        open.increment(1.0);
        tokio::spawn(async move {
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            open.decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(deadline) => {
            tracing::warn!(
                deadline_secs = deadline.as_secs(),
                "connections still open at the shutdown deadline: closing them"
            );
        }
    }
    Ok(())
}
