//! The queue against a store that can be held: bounds, shares, merging, settling.

use super::*;

/// A store that can be held (writes wait) and records what it got.
struct Held {
    open: watch::Sender<bool>,
    got: Mutex<Vec<Record>>,
    /// How many records each write carried.
    batches: Mutex<Vec<usize>>,
}

#[async_trait]
impl Sink for Held {
    async fn write(&self, records: Vec<Record>) {
        self.batches.lock().push(records.len());
        let _ = self.open.subscribe().wait_for(|open| *open).await;
        self.got.lock().extend(records);
    }
}

fn held() -> Arc<Held> {
    Arc::new(Held {
        open: watch::Sender::new(false),
        got: Mutex::new(Vec::new()),
        batches: Mutex::new(Vec::new()),
    })
}

fn open(sink: &Held) {
    sink.open.send_replace(true);
}

fn refusal(caller: &str, user: &str) -> Record {
    let now = Utc::now();
    Record {
        key: RecordKey {
            caller: caller.into(),
            target: Target::Connection {
                user_id: user.into(),
                provider: "google".into(),
            },
            outcome: ReadOutcome::Refused,
            reason: Some("not_connected"),
        },
        count: 1,
        first_at: now,
        last_at: now,
        scopes: None,
        request_id: None,
    }
}

fn soon(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

/// The reads written of `user`.
fn written(sink: &Held, user: &str) -> u64 {
    sink.got
        .lock()
        .iter()
        .filter(|r| matches!(&r.key.target, Target::Connection { user_id, .. } if user_id == user))
        .map(|r| r.count)
        .sum()
}

#[tokio::test]
async fn a_full_queue_waits_then_refuses_and_never_drops_what_it_took() {
    let sink = held();
    // Eight slots, two per caller: four callers fill it.
    let queue = Arc::new(Queue::new(8));
    assert_eq!(queue.share(), 2);
    let _writer = queue.spawn_writer(sink.clone(), 1);
    for caller in ["c1", "c2", "c3", "c4"] {
        queue
            .push(refusal(caller, &format!("{caller}-a")), soon(50))
            .await
            .expect("a slot");
        queue
            .push(refusal(caller, &format!("{caller}-b")), soon(50))
            .await
            .expect("a slot");
    }
    // Identical records merge into the waiting one (c4-b: c1-a may be in flight).
    for _ in 0..10 {
        queue
            .push(refusal("c4", "c4-b"), soon(50))
            .await
            .expect("merged");
    }
    let started = Instant::now();
    assert!(
        queue.push(refusal("c5", "c"), soon(100)).await.is_err(),
        "full"
    );
    assert!(started.elapsed() >= Duration::from_millis(90), "it waited");
    assert!(!queue.settled(Duration::from_millis(50)).await);

    // The store comes back: a waiting read gets its slot, and everything is written.
    let queue2 = Arc::clone(&queue);
    let waiter = tokio::spawn(async move { queue2.push(refusal("c5", "d"), soon(5_000)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    open(&sink);
    waiter.await.expect("task").expect("room once written");
    assert!(queue.settled(Duration::from_secs(5)).await);
    assert_eq!(
        (
            written(&sink, "c1-a"),
            written(&sink, "c4-b"),
            written(&sink, "c"),
            written(&sink, "d")
        ),
        (1, 11, 0, 1)
    );
    assert!(sink.got.lock().len() <= 10, "c4-b's reads merged");
    assert_eq!(queue.unwritten(), Unwritten::default());
}

#[tokio::test]
async fn a_caller_at_its_share_waits_for_its_own_records_while_others_go_on() {
    let sink = held();
    let queue = Arc::new(Queue::new(8));
    let _writer = queue.spawn_writer(sink.clone(), 4);
    queue
        .push(refusal("flood", "u1"), soon(10))
        .await
        .expect("a slot");
    queue
        .push(refusal("flood", "u2"), soon(10))
        .await
        .expect("a slot");
    // Six slots are free, but none of them is the flooder's.
    let started = Instant::now();
    assert!(queue.push(refusal("flood", "u3"), soon(100)).await.is_err());
    assert!(started.elapsed() >= Duration::from_millis(90), "it waited");
    // Another caller takes its own share at once, and no more.
    let started = Instant::now();
    for user in ["v1", "v2"] {
        queue
            .push(refusal("other", user), soon(0))
            .await
            .expect("room");
    }
    assert!(started.elapsed() < Duration::from_millis(50), "no wait");
    assert!(queue.push(refusal("other", "v3"), soon(0)).await.is_err());

    // Once the flooder's records are written, its share is free again.
    let queue2 = Arc::clone(&queue);
    let waiter =
        tokio::spawn(async move { queue2.push(refusal("flood", "u4"), soon(5_000)).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    open(&sink);
    waiter.await.expect("task").expect("its own record written");
    assert!(queue.settled(Duration::from_secs(5)).await);
    let users = ["u1", "u2", "u3", "u4", "v1", "v2", "v3"];
    let got: Vec<u64> = users.iter().map(|u| written(&sink, u)).collect();
    assert_eq!(got, [1, 1, 0, 1, 1, 1, 0]);
    // A caller with nothing queued is forgotten once another caller comes.
    queue
        .push(refusal("third", "w"), soon(10))
        .await
        .expect("room");
    assert_eq!(
        queue.shares.lock().keys().collect::<Vec<_>>(),
        [&"third".to_string()]
    );
}

#[tokio::test]
async fn windows_enter_a_full_queue_and_settled_waits_for_them() {
    let sink = held();
    let queue = Arc::new(Queue::new(1));
    let _writer = queue.spawn_writer(sink.clone(), 2);
    queue
        .push(refusal("c", "a"), soon(10))
        .await
        .expect("a slot");
    queue.push_unbounded(refusal("c", "w1"));
    queue.push_unbounded(refusal("c", "w2"));
    assert_eq!(queue.unwritten().records, 3);
    open(&sink);
    assert!(queue.settled(Duration::from_secs(5)).await);
    assert_eq!(sink.got.lock().len(), 3);
}

#[tokio::test]
async fn records_waiting_while_the_store_is_busy_are_written_together() {
    let sink = held();
    let queue = Arc::new(Queue::new(100));
    let _writer = queue.spawn_writer(sink.clone(), 1);
    queue
        .push(refusal("c1", "first"), soon(50))
        .await
        .expect("a slot");
    // The first write holds the one writer; what comes meanwhile waits for it.
    for _ in 0..100 {
        if !sink.batches.lock().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for i in 0..(BATCH + 3) {
        queue
            .push(refusal("c1", &format!("later-{i}")), soon(50))
            .await
            .expect("a slot");
    }
    open(&sink);
    assert!(queue.settled(Duration::from_secs(5)).await, "all written");
    assert_eq!(*sink.batches.lock(), vec![1, BATCH, 3]);
    assert_eq!(sink.got.lock().len(), BATCH + 4);
}
