//! At least once, on the default feed delay, when a store write is slow: a change whose
//! write would commit after the feed delay (a DynamoDB transaction held on its way to
//! the store, a SQLite write waiting behind another connection's) still has its event
//! reach an application that follows the feed by its cursor, and the webhook receiver,
//! each once; meanwhile other users' events pass it by.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::aws_proxy::AwsProxy;
use crate::support::webhook_receiver::Receiver;
use crate::support::{FakeProvider, TestApp, aws};

/// Follows the feed as an application does: keeps `next`, asks again every 100 ms.
struct Follower {
    seen: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    fn start(app: &TestApp) -> Self {
        let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (http, base, key) = (app.http.clone(), app.base.clone(), crate::support::API_KEY);
        let into = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut cursor: Option<String> = None;
            loop {
                let mut url = format!("{base}/v1/events?limit=100");
                if let Some(after) = &cursor {
                    url.push_str(&format!("&after={after}"));
                }
                if let Ok(response) = http.get(&url).bearer_auth(key).send().await
                    && let Ok(page) = response.json::<Value>().await
                {
                    if let Some(items) = page["items"].as_array() {
                        into.lock().expect("lock").extend(items.iter().cloned());
                    }
                    if let Some(next) = page["next"].as_str() {
                        cursor = Some(next.to_string());
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { seen, task }
    }

    fn seen(&self) -> Vec<Value> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The whole feed, from its start.
async fn whole_feed(app: &TestApp) -> Value {
    let feed: Value = app
        .api_get("/v1/events?limit=500")
        .await
        .json()
        .await
        .expect("feed");
    feed
}

/// `DELETE` of `user`'s connection (not revoked), answered in its own task.
fn delete_later(app: &TestApp, user: &str) -> tokio::task::JoinHandle<StatusCode> {
    let (http, url) = (
        app.http.clone(),
        app.url(&format!("/v1/users/{user}/connections/google?revoke=false")),
    );
    tokio::spawn(async move {
        http.delete(url)
            .bearer_auth(crate::support::API_KEY)
            .send()
            .await
            .expect("DELETE")
            .status()
    })
}

/// `(type, userId)` of each event, in the order told.
fn told(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_string(),
                e["data"]["userId"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn deleted(user: &str) -> (String, String) {
    ("connection.deleted".to_string(), user.to_string())
}

/// Waits (at most `secs`) until `done`.
async fn until(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..secs * 10 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done()
}

/// The webhook settings of `receiver`, on the default feed delay.
fn webhook_env(receiver: &Receiver) -> Vec<(&'static str, String)> {
    crate::webhooks::env(receiver)
        .into_iter()
        .filter(|(k, _)| *k != "AXNT_EVENTS_FEED_DELAY_MS")
        .collect()
}

/// Both users connected, and both `connection.created` seen by the follower and the
/// receiver.
async fn two_connected(app: &TestApp, receiver: &Receiver, follower: &Follower, users: [&str; 2]) {
    for user in users {
        assert!(app.connect(user).await.status().is_success(), "{user}");
    }
    assert!(
        until(30, || follower.seen().len() >= 2
            && receiver.delivered().len() >= 2)
        .await,
        "both connections told: {:?}",
        told(&follower.seen())
    );
}

/// After the slow write and a quick one behind it: each deletion told once, to the
/// follower and to the receiver, and nothing twice.
async fn both_deletions_told_once(
    app: &TestApp,
    receiver: &Receiver,
    follower: &Follower,
    users: [&str; 2],
) {
    let all_told = until(40, || {
        let seen = told(&follower.seen());
        let got: Vec<String> = receiver
            .delivered()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect();
        users.iter().all(|u| {
            seen.contains(&deleted(u))
                && got
                    .iter()
                    .any(|b| b.contains("connection.deleted") && b.contains(u))
        })
    })
    .await;
    assert!(
        all_told,
        "both deletions reach the feed's follower and the receiver: followed {:?}, delivered {:?}",
        told(&follower.seen()),
        receiver
            .delivered()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect::<Vec<_>>()
    );
    let seen = follower.seen();
    let mut ids: Vec<&str> = seen.iter().filter_map(|e| e["id"].as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 4, "four events, each once: {:?}", told(&seen));
    let delivered = receiver.delivered();
    let mut delivered_ids: Vec<&str> = delivered.iter().map(|r| r.id.as_str()).collect();
    delivered_ids.sort_unstable();
    assert_eq!(delivered_ids, ids, "the receiver got the same four, once");
    // The whole feed, from its start, holds nothing more either.
    let feed = whole_feed(app).await;
    assert_eq!(
        feed["items"].as_array().map(Vec::len),
        Some(4),
        "nothing told twice: {feed}"
    );
    for user in users {
        assert!(app.stored_row(user).await.is_none(), "{user} is deleted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_a_transaction_held_past_the_feed_delay_still_reaches_feed_and_receiver() {
    let provider = FakeProvider::start().await;
    let receiver = Receiver::start(0).await;
    let proxy = AwsProxy::start(&aws::moto_endpoint()).await;
    let env = webhook_env(&receiver);
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let app = TestApp::aws_via(&proxy.endpoint, &provider, &pairs).await;
    let follower = Follower::start(&app);
    let users = ["late-ann", "late-bob"];
    two_connected(&app, &receiver, &follower, users).await;

    // Ann's deletion reaches DynamoDB six seconds after it was sent (every attempt
    // sent in the next five seconds does), long after the feed's 3 s.
    proxy.hold(
        "TransactWriteItems",
        users[0],
        Duration::from_secs(6),
        Duration::from_secs(5),
    );
    let slow = delete_later(&app, users[0]);
    // Bob's, a moment later, is stored at once: the feed and the webhook cursor pass
    // it three seconds on, while Ann's is still on its way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        delete_later(&app, users[1])
            .await
            .expect("the quick deletion"),
        StatusCode::OK
    );

    both_deletions_told_once(&app, &receiver, &follower, users).await;
    assert_eq!(
        slow.await.expect("the slow deletion"),
        StatusCode::OK,
        "the slow deletion is answered as done"
    );
    assert!(!proxy.held().is_empty(), "the transaction was held");
    // Every held request has reached the store by now: none stored anything twice.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let feed = whole_feed(&app).await;
    assert_eq!(
        told(feed["items"].as_array().expect("items"))
            .iter()
            .filter(|t| **t == deleted(users[0]))
            .count(),
        1,
        "the held attempts, arriving late, stored nothing: {feed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_a_transaction_whose_answer_is_late_is_known_stored_and_told_once() {
    let provider = FakeProvider::start().await;
    let receiver = Receiver::start(0).await;
    let proxy = AwsProxy::start(&aws::moto_endpoint()).await;
    let env = webhook_env(&receiver);
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let app = TestApp::aws_via(&proxy.endpoint, &provider, &pairs).await;
    let follower = Follower::start(&app);
    let users = ["lost-ann", "lost-bob"];
    two_connected(&app, &receiver, &follower, users).await;

    // Ann's deletion is stored at once, but its answer comes four seconds later.
    proxy.hold_answer(
        "TransactWriteItems",
        users[0],
        Duration::from_secs(4),
        Duration::from_secs(1),
    );
    let slow = delete_later(&app, users[0]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        delete_later(&app, users[1])
            .await
            .expect("the quick deletion"),
        StatusCode::OK
    );
    assert_eq!(
        slow.await.expect("the slow deletion"),
        StatusCode::OK,
        "stored, and answered as done (not as a conflict with itself)"
    );
    assert_eq!(proxy.held(), ["TransactWriteItems"]);
    both_deletions_told_once(&app, &receiver, &follower, users).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_write_behind_a_held_sqlite_writer_still_reaches_feed_and_receiver() {
    let provider = FakeProvider::start().await;
    let receiver = Receiver::start(0).await;
    let env = webhook_env(&receiver);
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let app = TestApp::spawn_with(&provider, &pairs).await;
    let follower = Follower::start(&app);
    let users = ["late-ann", "late-bob"];
    two_connected(&app, &receiver, &follower, users).await;

    // Another connection holds the database's write lock for four seconds (within the
    // five-second busy timeout, past the feed's three).
    let path = app.data_dir.path().join("axnt-oauth.db");
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let blocker = std::thread::spawn(move || {
        let db = rusqlite::Connection::open(path).expect("open the database");
        db.execute_batch("BEGIN IMMEDIATE")
            .expect("take the write lock");
        held_tx.send(()).expect("held");
        std::thread::sleep(Duration::from_secs(4));
        db.execute_batch("COMMIT").expect("release it");
    });
    held_rx.recv().expect("the lock is held");
    let first = delete_later(&app, users[0]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = delete_later(&app, users[1]);
    blocker.join().expect("blocker");
    assert_eq!(first.await.expect("first"), StatusCode::OK);
    assert_eq!(second.await.expect("second"), StatusCode::OK);
    both_deletions_told_once(&app, &receiver, &follower, users).await;
}
