//! A webhook receiver on 127.0.0.1 that records every request it gets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
    pub answered: u16,
}

/// A webhook receiver on 127.0.0.1: records every request, and answers 500 to the
/// first `fail_first` of them; an answer may be held back a while first.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    got: Arc<Mutex<Vec<Received>>>,
    fail_first: Arc<Mutex<usize>>,
    /// Requests that arrived, answered or not.
    arrived: Arc<Mutex<usize>>,
    /// How long each answer is held back.
    hold: Arc<Mutex<Duration>>,
}

impl Receiver {
    pub async fn start(fail_first: usize) -> Self {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let fail = Arc::new(Mutex::new(fail_first));
        let arrived: Arc<Mutex<usize>> = Arc::default();
        let hold: Arc<Mutex<Duration>> = Arc::default();
        let (g, f) = (Arc::clone(&got), Arc::clone(&fail));
        let (a, h) = (Arc::clone(&arrived), Arc::clone(&hold));
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (g, f) = (Arc::clone(&g), Arc::clone(&f));
                let (a, h) = (Arc::clone(&a), Arc::clone(&h));
                async move {
                    *a.lock().expect("lock") += 1;
                    let hold = *h.lock().expect("lock");
                    tokio::time::sleep(hold).await;
                    let header = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    let status = {
                        let mut left = f.lock().expect("lock");
                        if *left > 0 {
                            *left -= 1;
                            StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            StatusCode::NO_CONTENT
                        }
                    };
                    g.lock().expect("lock").push(Received {
                        id: header("webhook-id"),
                        timestamp: header("webhook-timestamp"),
                        signature: header("webhook-signature"),
                        body: body.to_vec(),
                        answered: status.as_u16(),
                    });
                    status
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            got,
            fail_first: fail,
            arrived,
            hold,
        }
    }

    /// Requests that arrived, including those whose answer is still held back.
    pub fn arrived(&self) -> usize {
        *self.arrived.lock().expect("lock")
    }

    /// Holds each answer back for `hold` from now on.
    pub fn hold_answers(&self, hold: Duration) {
        *self.hold.lock().expect("lock") = hold;
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }

    pub fn delivered(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.answered < 300)
            .collect()
    }

    pub fn fail_next(&self, n: usize) {
        *self.fail_first.lock().expect("lock") = n;
    }

    /// Waits (at most 20 s) until `n` deliveries succeeded.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.delivered().len() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.delivered()
    }
}
