//! Micro-benchmarks of the token read's parts and of the flow's sealing:
//! `cargo bench --features bench --bench micro`.
//!
//! - envelope seal and open, with the data key unwrapped each time (embedded mode's
//!   local master key: one more AES-GCM) and with it cached (aws mode's data-key cache);
//! - the authorization `state` sealed and opened (`/start`, callback);
//! - a row encoded to and decoded from its DynamoDB item, and read from and written to
//!   the SQLite file (through the store, so the blocking-pool hop is included);
//! - the API-key check of every internal call;
//! - the audit record of a token read: counted in its open window (every read of a
//!   connection but the first in a window), and one that queues a record (the first),
//!   whose write the trail's writer then makes.

use std::hint::black_box;

use axnt_oauth::bench_api::{self, EnvelopeCipher};
use axnt_oauth::callers::ApiKey;
use axnt_oauth::store::embedded::EmbeddedStore;
use axnt_oauth::store::prelude::*;
use chrono::Utc;
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::runtime::Runtime;

const TABLE: &str = "axnt-oauth-tokens";

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime for the async calls")
}

fn sample_plaintext() -> Vec<u8> {
    let now = Utc::now().timestamp();
    bench_api::token_set_json(
        &format!("ya29.{}", "a".repeat(160)),
        &format!("1//{}", "r".repeat(100)),
        now,
        now + 3600,
    )
    .expect("a token set serialises")
}

fn envelope(c: &mut Criterion) {
    let rt = runtime();
    let plaintext = sample_plaintext();
    let mut group = c.benchmark_group("envelope");
    for (name, keys) in [
        ("cold_key", bench_api::random_local_keys()),
        (
            "cached_key",
            bench_api::cached_keys(bench_api::random_local_keys()),
        ),
    ] {
        let cipher = EnvelopeCipher::new(keys, TABLE);
        let sealed = rt
            .block_on(cipher.seal("user-1", "google", &plaintext))
            .expect("seal");
        group.bench_function(format!("seal/{name}"), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(cipher.seal("user-1", "google", &plaintext).await) })
        });
        group.bench_function(format!("open/{name}"), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(cipher.open("user-1", "google", &sealed).await) })
        });
        let row = bench_api::connection("user-1", sealed.clone(), 0, Utc::now());
        group.bench_function(format!("open_token_set/{name}"), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(bench_api::open_token_set(&cipher, &row).await) })
        });
    }
    group.finish();
}

fn state(c: &mut Criterion) {
    let states = bench_api::FlowStates::random();
    let sealed = states.seal("user-1").expect("seal");
    let mut group = c.benchmark_group("state");
    group.bench_function("seal", |b| b.iter(|| black_box(states.seal("user-1"))));
    group.bench_function("open", |b| b.iter(|| black_box(states.open(&sealed))));
    group.finish();
}

fn rows(c: &mut Criterion) {
    let rt = runtime();
    let cipher = EnvelopeCipher::new(bench_api::random_local_keys(), TABLE);
    let sealed = rt
        .block_on(cipher.seal("user-1", "google", &sample_plaintext()))
        .expect("seal");
    let row = bench_api::connection("user-1", sealed, Utc::now().timestamp() + 3600, Utc::now());
    let item = bench_api::dynamo_encode(&row).expect("encode");
    let mut group = c.benchmark_group("row");
    group.bench_function("dynamodb_encode", |b| {
        b.iter(|| black_box(bench_api::dynamo_encode(&row)))
    });
    group.bench_function("dynamodb_decode", |b| {
        b.iter(|| black_box(bench_api::dynamo_decode(&item)))
    });

    let doc = bench_api::sqlite_encode(&row).expect("encode");
    group.bench_function("sqlite_encode", |b| {
        b.iter(|| black_box(bench_api::sqlite_encode(&row)))
    });
    group.bench_function("sqlite_decode", |b| {
        b.iter(|| black_box(bench_api::sqlite_decode(&doc)))
    });

    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = EmbeddedStore::open(&dir.path().join("bench.db")).expect("open the database");
    rt.block_on(store.put(&row, None, &[])).expect("insert");
    group.bench_function("sqlite_get", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(store.get("user-1", "google").await) })
    });
    let mut current = row.clone();
    group.bench_function("sqlite_put", |b| {
        b.iter(|| {
            let mut next = current.clone();
            next.version += 1;
            rt.block_on(store.put(&next, Some(current.version), &[]))
                .expect("conditional put");
            current = next;
        })
    });
    group.finish();
}

fn api_key(c: &mut Criterion) {
    let rt = runtime();
    let keys = ["bench-key-0123456789abcdef", "bench-key-fedcba9876543210"];
    let cache = rt
        .block_on(bench_api::api_key_cache(&keys))
        .expect("the secrets cache");
    let mut group = c.benchmark_group("api_key");
    group.bench_function("parse_and_check", |b| {
        b.iter(|| {
            let presented = ApiKey::parse(black_box(keys[1])).expect("a valid key");
            black_box(cache.accepts_api_key(&presented))
        })
    });
    group.finish();
}

fn audit(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = EmbeddedStore::open(&dir.path().join("bench.db")).expect("open the database");
    let trail = rt.block_on(async { bench_api::AuditBench::new(&store) });
    let mut group = c.benchmark_group("audit");
    rt.block_on(trail.served("billing", "user-1"));
    group.bench_function("counted", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(trail.served("billing", "user-1").await) })
    });
    let mut next = 0u64;
    group.bench_function("queued", |b| {
        b.iter(|| {
            next += 1;
            let user = format!("user-{next}");
            black_box(rt.block_on(trail.served("billing", &user)))
        })
    });
    group.finish();
}

criterion_group!(benches, envelope, state, rows, api_key, audit);
criterion_main!(benches);
