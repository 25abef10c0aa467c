//! The soak: three instances on one store; a provider that rotates every refresh
//! token, fails a few percent of refreshes with 500 and holds every answer up to
//! 1.5 s; tokens that live 4 s; readers that give up after 0.2–10 s; an instance
//! stopped and started again every few seconds; and the store unavailable for seconds
//! at a time, again and again (aws: DynamoDB, KMS and Secrets Manager cut behind a
//! proxy; embedded: the SQLite file write-locked by another connection, as another
//! process would). Refresh leases lapse during those outages while their holders still
//! hold new tokens they cannot store. No read answers 409, the provider never sees a
//! spent refresh token, and every user reads 200 at the end.
//!
//! About a minute per backend in the suite; `TEST_AXNT_SOAK_SECS` runs it longer
//! (`TEST_AXNT_SOAK_SECS=1800 scripts/test soak -- --nocapture` prints its figures).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::support::fake_provider::RefreshChaos;
use crate::support::{API_KEY, Backend, CuttableProxy, FakeProvider, TestApp};

on_every_backend!(soak_rotating_provider_with_restarts_and_store_outages);

/// Store up this long between outages.
const UP: Duration = Duration::from_secs(7);
/// Each outage: longer than two thirds of the refresh lease (provider timeout 2 s + 5 s),
/// so a lease held across one lapses before the store comes back.
const DOWN: Duration = Duration::from_secs(8);

/// How the store is taken away.
enum Outage {
    /// Every AWS endpoint, behind one proxy.
    Aws(CuttableProxy),
    /// The SQLite file.
    Embedded(PathBuf),
}

impl Outage {
    /// The store is unavailable for `down`, then back.
    async fn for_a_while(&self, down: Duration) {
        match self {
            Outage::Aws(proxy) => {
                proxy.cut();
                tokio::time::sleep(down).await;
                proxy.restore();
            }
            Outage::Embedded(db) => {
                let db = db.clone();
                let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
                let lock = tokio::task::spawn_blocking(move || {
                    let other = rusqlite::Connection::open(db).expect("open the database");
                    other
                        .busy_timeout(Duration::from_secs(30))
                        .expect("busy timeout");
                    // WAL mode: readers go on, every writer waits, then fails.
                    other.execute_batch("BEGIN EXCLUSIVE").expect("write lock");
                    let _ = locked_tx.send(());
                    std::thread::sleep(down);
                    other.execute_batch("COMMIT").expect("unlock");
                });
                locked_rx.await.expect("locked");
                lock.await.expect("lock task");
            }
        }
    }
}

/// What the readers saw.
#[derive(Default)]
struct Tally {
    served: AtomicUsize,
    conflicts: AtomicUsize,
    /// Other answers by status and `code`.
    others: Mutex<BTreeMap<String, usize>>,
}

impl Tally {
    async fn record(&self, response: reqwest::Response) {
        match response.status() {
            StatusCode::OK => {
                self.served.fetch_add(1, Ordering::SeqCst);
            }
            status => {
                if status == StatusCode::CONFLICT {
                    // The first 409's body says why (its cause), for the failure report.
                    if self.conflicts.fetch_add(1, Ordering::SeqCst) == 0 {
                        eprintln!(
                            "soak: first 409: {}",
                            response.text().await.unwrap_or_default()
                        );
                    }
                    return;
                }
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                let key = format!(
                    "{} {} {}",
                    status.as_u16(),
                    body["code"].as_str().unwrap_or("-"),
                    body["cause"].as_str().unwrap_or("-")
                );
                *self.others.lock().expect("tally").entry(key).or_default() += 1;
            }
        }
    }
}

async fn soak_rotating_provider_with_restarts_and_store_outages(backend: Backend) {
    let secs: u64 = std::env::var("TEST_AXNT_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let provider = Arc::new(FakeProvider::start().await);
    provider.rotate_refresh_tokens(true);
    provider.set_access_token_ttl(4);
    let settings = [
        ("AXNT_REFRESH_COOLDOWN_SECS", "1"),
        ("AXNT_LAST_USED_INTERVAL_SECS", "1"),
        // A 7-second refresh lease (provider timeout + 5 s). AWS calls keep their
        // default timeout: a start-up call slower than it (moto on a busy machine)
        // fails the start.
        ("AXNT_PROVIDER_TIMEOUT_SECS", "2"),
    ];
    let (first, outage) = match backend {
        Backend::Embedded => {
            let app = TestApp::on(backend, &provider, &settings).await;
            let db = app.data_dir.path().join("axnt-oauth.db");
            (app, Outage::Embedded(db))
        }
        Backend::Aws => {
            let proxy = CuttableProxy::start(&crate::support::aws::moto_endpoint()).await;
            let app = TestApp::aws_behind(&proxy, &provider, &settings).await;
            (app, Outage::Aws(proxy))
        }
    };
    // Named per backend: both soaks log into this process's one capture.
    let prefix = format!("soak-{backend:?}-").to_lowercase();
    let users: Vec<String> = (0..6).map(|i| format!("{prefix}{i}")).collect();
    for user in &users {
        assert!(first.connect(user).await.status().is_success());
    }
    provider.set_refresh_chaos(Some(RefreshChaos {
        fail_percent: 3,
        max_hold: Duration::from_millis(1500),
    }));
    let second = first.sibling().await;
    let third = first.sibling().await;
    let instances = Arc::new(tokio::sync::RwLock::new(vec![
        Some(first),
        Some(second),
        Some(third),
    ]));
    let until = Instant::now() + Duration::from_secs(secs);
    let tally = Arc::new(Tally::default());
    let mut readers = Vec::new();
    for r in 0..12usize {
        let (instances, users, tally) = (Arc::clone(&instances), users.clone(), Arc::clone(&tally));
        readers.push(tokio::spawn(async move {
            let mut i = r;
            while Instant::now() < until {
                i = i.wrapping_mul(31).wrapping_add(7);
                let target = {
                    let live = instances.read().await;
                    live.iter()
                        .flatten()
                        .nth(i % 3)
                        .or_else(|| live.iter().flatten().next())
                        .map(|app| {
                            app.url(&format!(
                                "/v1/users/{}/tokens/google",
                                users[i % users.len()]
                            ))
                        })
                };
                let Some(url) = target else { continue };
                let patience = Duration::from_millis(200 + (i % 98) as u64 * 100);
                let client = reqwest::Client::builder()
                    .timeout(patience)
                    .build()
                    .expect("client");
                if let Ok(response) = client.get(url).bearer_auth(API_KEY).send().await {
                    tally.record(response).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // Instances are stopped at any time, in the middle of an outage too (shutdown while
    // a write is held). In aws mode they also start in the middle of one (start-up waits
    // for Secrets Manager, serving probes meanwhile); an embedded instance starts once
    // the database file is writable again.
    let store_up = Arc::new(tokio::sync::Mutex::new(()));
    let outage = Arc::new(outage);
    let outages = tokio::spawn({
        let (store_up, outage) = (Arc::clone(&store_up), Arc::clone(&outage));
        let (tally, provider) = (Arc::clone(&tally), Arc::clone(&provider));
        async move {
            let mut count = 0usize;
            while Instant::now() + UP + DOWN < until {
                tokio::time::sleep(UP).await;
                let _down = store_up.lock().await;
                outage.for_a_while(DOWN).await;
                count += 1;
                if count.is_multiple_of(20) {
                    eprintln!(
                        "soak ({backend:?}) so far: {count} outages, {} reads served, {} answered \
                         409, {} spent refresh tokens presented",
                        tally.served.load(Ordering::SeqCst),
                        tally.conflicts.load(Ordering::SeqCst),
                        provider.spent_refresh_tokens_presented()
                    );
                }
            }
            count
        }
    });
    let mut slot = 0;
    let (mut restarts, mut stopped_in_outages) = (0usize, 0usize);
    while Instant::now() + Duration::from_secs(3) < until {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let stopped = instances.write().await[slot].take();
        if let Some(app) = stopped {
            let (dir, env) = (Arc::clone(&app.data_dir), app.base_env.clone());
            let next = match store_up.try_lock() {
                // Up: start the next instance, then stop this one (its drain may still
                // run into an outage).
                Ok(up) => {
                    let next = TestApp::spawn_in(dir, env).await;
                    drop(up);
                    app.stop().await;
                    next
                }
                // Away: stop now, in the middle of writes it cannot make, and start the
                // next one at once (aws), or once the store is back (embedded).
                Err(_) => {
                    app.stop().await;
                    stopped_in_outages += 1;
                    if backend == Backend::Aws {
                        TestApp::spawn_in(dir, env).await
                    } else {
                        let _up = store_up.lock().await;
                        TestApp::spawn_in(dir, env).await
                    }
                }
            };
            instances.write().await[slot] = Some(next);
            restarts += 1;
        }
        slot = (slot + 1) % 3;
    }
    for reader in readers {
        reader.await.expect("reader");
    }
    let outages = outages.await.expect("outages");
    provider.set_refresh_chaos(None);
    let live = instances.read().await;
    let app = live.iter().flatten().next().expect("an instance");
    let mut last = Vec::new();
    for user in &users {
        // A cooldown from a last failed refresh, or a lapsed lease's hold after the last
        // outage, may still run: wait it out.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut response = app.token(user).await;
        while response.status() == StatusCode::SERVICE_UNAVAILABLE && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            response = app.token(user).await;
        }
        last.push((user.clone(), response.status()));
        tally.record(response).await;
    }
    // What the instances logged about leases that lapsed in outages.
    let logs = crate::support::captured_logs();
    let logged = |what: &str| {
        logs.lines()
            .filter(|l| l.contains(what) && l.contains(&prefix))
            .count()
    };
    let held = logged("held for its holder");
    let taken_over = logged("took over a refresh lease");
    let dropped = logged("refreshed tokens were not stored");
    let conflicts = tally.conflicts.load(Ordering::SeqCst);
    let served = tally.served.load(Ordering::SeqCst);
    let spent = provider.spent_refresh_tokens_presented();
    eprintln!(
        "soak ({backend:?}, {secs} s): {outages} store outages of {} s, {restarts} restarts \
         ({stopped_in_outages} stopped during an outage), \
         {} refreshes, {served} reads served, {conflicts} answered 409, others {:?}, \
         {spent} spent refresh tokens presented; lapsed leases held {held}, taken over \
         {taken_over}, refreshed tokens not stored {dropped}",
        DOWN.as_secs(),
        provider.refresh_count(),
        tally.others.lock().expect("tally"),
    );
    assert!(
        outages >= 3,
        "the store went away several times ({outages})"
    );
    assert_eq!(conflicts, 0, "no read answered 409");
    assert_eq!(spent, 0, "no spent refresh token was presented");
    assert!(served > 50, "reads were served ({served})");
    for (user, status) in last {
        assert_eq!(status, StatusCode::OK, "{user} reads 200 at the end");
    }
}
