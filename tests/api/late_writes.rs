//! At least once, on the default feed delay, when a store write is slow: a change whose
//! write would commit after the feed delay (a DynamoDB transaction held on its way to
//! the store, a SQLite write waiting behind another connection's) still has its event
//! reach an application that follows the feed by its cursor, and the webhook receiver,
//! each once; meanwhile other users' events pass it by. When DynamoDB is slower than
//! the fence's budget too, the event stored late is told again under a new id; what
//! cannot be settled is logged, never dropped silently.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::aws_proxy::{AwsProxy, Fault};
use crate::support::webhook_receiver::Receiver;
use crate::support::{Backend, FakeProvider, TestApp, aws};

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

/// Whether each user's deletion has reached the follower and the receiver.
fn deletions_told(receiver: &Receiver, follower: &Follower, users: [&str; 2]) -> bool {
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
}

/// After the slow write and a quick one behind it: each deletion told once, to the
/// follower and to the receiver, and nothing twice.
async fn both_deletions_told_once(
    app: &TestApp,
    receiver: &Receiver,
    follower: &Follower,
    users: [&str; 2],
) {
    let all_told = until(40, || deletions_told(receiver, follower, users)).await;
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

/// One instance reaches DynamoDB slowly — every call late, its fences later than their
/// budget — while another serves the feed and the webhooks at full speed: an event
/// that instance stores after the feed has passed its moment still reaches the feed's
/// follower and the receiver (re-told under a new id that names the original), and
/// nothing is told that was not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_an_instance_whose_every_store_call_is_slow_still_tells_its_late_events() {
    let provider = FakeProvider::start().await;
    let receiver = Receiver::start(0).await;
    let env = webhook_env(&receiver);
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let reader = TestApp::on(Backend::Aws, &provider, &pairs).await;
    let follower = Follower::start(&reader);
    let users = ["slow-ann", "slow-bob"];
    two_connected(&reader, &receiver, &follower, users).await;
    let proxy = AwsProxy::start(&aws::moto_endpoint()).await;
    let writer = reader
        .sibling_with(&[
            ("AWS_ENDPOINT_URL", proxy.endpoint.as_str()),
            ("AXNT_WEBHOOK_URLS", ""),
        ])
        .await;

    // For the next eight seconds every DynamoDB call of the writer reaches the store
    // two seconds late, a fence five; Ann's deletion (its transaction) five.
    let slow_until = tokio::time::Instant::now() + Duration::from_secs(8);
    proxy.set_rule(move |target, body| {
        if !target.starts_with("DynamoDB_") || tokio::time::Instant::now() >= slow_until {
            return None;
        }
        let fence =
            target.ends_with(".PutItem") && String::from_utf8_lossy(body).contains("\"fence\"");
        Some(Fault::Hold(Duration::from_secs(if fence { 5 } else { 2 })))
    });
    proxy.hold(
        "TransactWriteItems",
        users[0],
        Duration::from_secs(5),
        Duration::from_secs(8),
    );
    let slow = delete_later(&writer, users[0]);
    assert!(
        until(10, || proxy
            .held()
            .iter()
            .any(|op| op == "TransactWriteItems"))
        .await,
        "Ann's deletion was sent: {:?}",
        proxy.held()
    );
    // Bob's, made just after Ann's by the quick instance, is stored at once: the feed
    // and the webhook cursor pass both three seconds on, two before Ann's lands.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        delete_later(&reader, users[1])
            .await
            .expect("the quick deletion"),
        StatusCode::OK
    );
    let answered = slow.await.expect("the slow deletion");
    assert!(
        answered == StatusCode::OK || answered == StatusCode::SERVICE_UNAVAILABLE,
        "done, or an outcome the writer could not learn in time: {answered}"
    );
    assert!(reader.stored_row(users[0]).await.is_none(), "Ann's is gone");

    let told_everywhere = until(40, || deletions_told(&receiver, &follower, users)).await;
    assert!(
        told_everywhere,
        "both deletions reach the follower and the receiver: followed {:?}",
        told(&follower.seen())
    );
    // The store holds Ann's deletion as written late, and its copy naming it; the
    // follower got at least one of them, and no event that was not stored.
    let feed = whole_feed(&reader).await;
    let items = feed["items"].as_array().expect("items").clone();
    let anns: Vec<&Value> = items
        .iter()
        .filter(|e| e["type"] == "connection.deleted" && e["data"]["userId"] == users[0])
        .collect();
    let original = anns
        .iter()
        .find(|e| e["data"].get("originalId").is_none())
        .unwrap_or_else(|| panic!("the late original is stored: {feed}"));
    assert!(
        anns.len() >= 2
            && anns
                .iter()
                .filter(|e| e["id"] != original["id"])
                .all(|e| e["data"]["originalId"] == original["id"]),
        "re-told under new ids, each naming the original: {anns:?}"
    );
    let stored: Vec<&Value> = items.iter().map(|e| &e["id"]).collect();
    for e in follower.seen() {
        assert!(stored.contains(&&e["id"]), "told only what is stored: {e}");
    }
}

/// A write whose outcome the instance cannot learn (no fence gets through) is left to
/// be settled in the background; at shutdown, what is still unsettled is not dropped
/// silently: it is logged with the replay that sends its events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_writes_still_unsettled_at_shutdown_are_logged_with_their_replay() {
    let provider = FakeProvider::start().await;
    let proxy = AwsProxy::start(&aws::moto_endpoint()).await;
    let app = TestApp::aws_via(&proxy.endpoint, &provider, &[]).await;
    let user = "unsettled-ann";
    assert!(app.connect(user).await.status().is_success());

    // Ann's deletion never gets an answer, and no fence reaches DynamoDB.
    proxy.set_rule(move |target, body| {
        let body = String::from_utf8_lossy(body);
        let fence = target.ends_with(".PutItem") && body.contains("\"fence\"");
        let ann = target.ends_with(".TransactWriteItems") && body.contains(user);
        (fence || ann).then_some(Fault::Unreachable)
    });
    let answered = delete_later(&app, user).await.expect("the deletion");
    assert_eq!(
        answered,
        StatusCode::SERVICE_UNAVAILABLE,
        "an outcome not known"
    );
    app.stop().await;

    let logs = crate::support::captured_logs();
    let line = logs
        .lines()
        .find(|l| l.contains("still settling at shutdown"))
        .unwrap_or_else(|| panic!("the unsettled write is logged at shutdown"));
    assert!(
        line.contains("connection.deleted") && line.contains("events replay --since"),
        "{line}"
    );
}
