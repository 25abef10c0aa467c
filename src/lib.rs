//! axnt-oauth runs the OAuth flow for an application's users, keeps their tokens
//! envelope-encrypted, logs every step of every flow, and hands internal services a
//! valid access token on demand.
//!
//! # Layout
//!
//! - [`http`]: where requests enter — `oauth` (browsers), `api` (internal services),
//!   `probes`; one `router()` each, merged once.
//! - [`oauth`]: what the flow means — providers and discovery, sealed flow state,
//!   ID-token verification, the return-URL allow-list.
//! - `connect`: the connect flow as a service (links, start, callback, confirmation);
//!   the browser routes and the connect-session endpoints answer from its outcomes.
//! - [`tokens`]: the token service — store a grant, hand out a valid token (refresh
//!   first), list and remove connections. Pure logic over the traits below.
//! - [`store`]: `TokenStore` and `FlowLog` and their backends (embedded SQLite,
//!   DynamoDB) and the buffered flow-log writer.
//! - [`crypto`]: envelope encryption and the `KeyProvider`s that wrap data keys.
//! - [`secrets`]: client credentials, state key and the callers the secret names, and
//!   their rotation.
//! - [`callers`]: who calls the internal API (API keys, AWS IAM roles, OIDC workload
//!   tokens) and what each may do.
//! - [`aws`]: aws mode's shared plumbing, a leaf that imports nothing of the service
//!   but the names of its metrics — SDK configuration, error sorting and metrics,
//!   table set-up.
//! - [`app`]: start-up — backend assembly for both modes (`app::backends`), wiring,
//!   serving and graceful shutdown.
//! - [`config`], [`cli`], [`telemetry`], [`error`]: settings, commands, logging and
//!   metrics, and the API's error, to which each service's own error is mapped (it
//!   imports nothing from [`http`]).
//! - [`rotate`]: `axnt-oauth rotate-keys`, moving stored data keys under the current
//!   wrapping key (over `store` and `crypto`, beside `check`).
//!
//! - `jobs` (the one runner of periodic work), `breaker` (the one circuit breaker),
//!   `retry` (the one backoff), `guard` (the SSRF guard and the one outbound HTTP
//!   client), `series` (every metric's name, kind and help): leaves; `jwks` (an
//!   issuer's published keys, cached) just above them.
//!
//! Arrows point down the layers: `cli` → `check`/`rotate` → `app` → `http` →
//! `connect` → `tokens`/`webhooks`/`audit` → `error` → `oauth`/`events`/`telemetry` →
//! `store`/`config` → `secrets` → `callers` → `crypto` → `jwks` → the leaves (`aws`, `guard`, `jobs`,
//! `breaker`, then `retry` and `series`). `config` fills the `aws::AwsSettings` it needs and checks
//! keys with the one parser of each, `callers::ApiKey` and `crypto::SecretKey`, and
//! URLs with `guard`; it imports no service. A unit test below holds every import to
//! the layers.

//!
//! Private by default: a module or item is `pub` only when the binary or the
//! integration tests (`tests/api/`) reach it, so the compiler reports dead code.

// Product code never unwraps: every failure is an error with context.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod app;
pub(crate) mod audit;
pub mod aws;
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench_api;
mod breaker;
pub mod callers;
mod check;
pub mod cli;
pub mod config;
mod connect;
pub mod crypto;
mod error;
pub(crate) mod events;
#[cfg(any(test, fuzzing))]
pub mod fuzz;
mod guard;
mod http;
mod ids;
mod jobs;
mod jwks;
mod migrate;
mod oauth;
mod retry;
pub mod rotate;
pub mod secrets;
mod series;
pub mod store;
pub mod telemetry;
mod tokens;
pub mod webhooks;

#[cfg(test)]
mod layout {
    //! The module graph, as `crate::` paths in the sources draw it, runs down the
    //! layers: no import goes up or sideways (so there are no cycles either).

    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// Top-level module → the top-level modules its files name through `crate::`.
    fn graph() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut stack = vec![src.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read src") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let relative = path.strip_prefix(&src).expect("under src");
                let first = relative
                    .components()
                    .next()
                    .and_then(|c| c.as_os_str().to_str())
                    .unwrap_or_default()
                    .trim_end_matches(".rs")
                    .to_string();
                if first == "lib" || first == "main" || path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("read file");
                let edges = graph.entry(first.clone()).or_default();
                for (i, _) in text.match_indices("crate::") {
                    let target: String = text[i + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if !target.is_empty() && target != first {
                        edges.insert(target);
                    }
                }
            }
        }
        graph
    }

    /// The layers, top to bottom: a module imports only modules of the layers below
    /// its own. A new top-level module is placed here (the test fails until it is).
    const LAYERS: &[&[&str]] = &[
        // Entry points: commands, fuzz targets, the benchmark's helpers.
        &["cli", "fuzz", "bench_api"],
        // Commands over an assembled service.
        &["check", "rotate", "migrate"],
        // Start-up, wiring, serving, shutdown.
        &["app"],
        // Where requests enter.
        &["http"],
        // The API's error: each service's failures mapped to HTTP, once.
        &["error"],
        // The connect flow, over the services.
        &["connect"],
        // Services, each with its own failures.
        &["tokens", "webhooks", "audit"],
        // What an event tells (a grant's forecast among it).
        &["events"],
        // What a flow means; logging and metrics set-up.
        &["oauth", "telemetry"],
        // Storage and settings.
        &["store", "config"],
        &["secrets"],
        // Who calls, and how each proves it.
        &["callers"],
        &["crypto"],
        // Leaves.
        // An issuer's keys, fetched with the guard's client.
        &["jwks"],
        &["aws", "guard", "jobs", "breaker", "ids"],
        // What the leaves themselves use: the backoff, the metric names.
        &["retry", "series"],
    ];

    fn layer_of(module: &str) -> Option<usize> {
        LAYERS.iter().position(|layer| layer.contains(&module))
    }

    /// Every import that does not go down a layer (or names a module no layer holds).
    fn upward_imports(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
        let mut wrong = Vec::new();
        for (from, targets) in graph {
            for to in targets {
                match (layer_of(from), layer_of(to)) {
                    (Some(a), Some(b)) if a < b => {}
                    (Some(_), Some(_)) => wrong.push(format!("{from} -> {to}")),
                    _ => wrong.push(format!("{from} -> {to} (place both in LAYERS)")),
                }
            }
        }
        wrong
    }

    #[test]
    fn every_import_goes_down_a_layer() {
        let graph = graph();
        assert!(
            graph.contains_key("tokens") && graph.contains_key("aws"),
            "{graph:?}"
        );
        assert_eq!(upward_imports(&graph), Vec::<String>::new());
    }

    #[test]
    fn an_upward_or_sideways_import_is_found() {
        let mut graph = graph();
        graph
            .entry("config".into())
            .or_default()
            .insert("webhooks".into());
        graph
            .entry("tokens".into())
            .or_default()
            .insert("audit".into());
        graph.entry("new".into()).or_default().insert("aws".into());
        assert_eq!(
            upward_imports(&graph),
            [
                "config -> webhooks",
                "new -> aws (place both in LAYERS)",
                "tokens -> audit"
            ]
        );
    }

    #[test]
    fn aws_is_a_leaf_and_errors_import_no_http() {
        let graph = graph();
        assert!(
            graph["aws"].iter().all(|m| m == "series"),
            "aws imports nothing of the service but the names of its metrics: {graph:?}"
        );
        assert!(!graph["error"].contains("http"));
    }
}
