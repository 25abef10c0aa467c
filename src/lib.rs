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
//! - [`tokens`]: the token service — store a grant, hand out a valid token (refresh
//!   first), list and remove connections. Pure logic over the traits below.
//! - [`store`]: `TokenStore` and `FlowLog` and their backends (embedded SQLite,
//!   DynamoDB) and the buffered flow-log writer.
//! - [`crypto`]: envelope encryption and the `KeyProvider`s that wrap data keys.
//! - [`secrets`]: client credentials, state key and API keys, and their rotation.
//! - [`aws`]: aws mode's shared plumbing, a leaf that imports nothing of the service —
//!   SDK configuration, error sorting and metrics, table set-up.
//! - [`app`]: start-up — backend assembly for both modes (`app::backends`), wiring,
//!   serving and graceful shutdown.
//! - [`config`], [`cli`], [`telemetry`], [`error`]: settings, commands, logging and
//!   metrics, and the one error type (which imports nothing from [`http`]).
//! - [`rotate`]: `axnt-oauth rotate-keys`, moving stored data keys under the current
//!   wrapping key (over `store` and `crypto`, beside `check`).
//!
//! Arrows point down: `app` → `http` → `tokens`/`oauth` → `store`/`config` →
//! `secrets`/`crypto` → `aws` (a leaf: `config` fills the `aws::AwsSettings` it needs,
//! and checks keys with the one parser of each, `secrets::ApiKey` and
//! `crypto::SecretKey`). The module graph has no cycles (a unit test below checks it).

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
mod check;
pub mod cli;
pub mod config;
pub mod crypto;
mod error;
pub(crate) mod events;
#[cfg(any(test, fuzzing))]
pub mod fuzz;
mod http;
mod oauth;
mod retry;
pub mod rotate;
pub mod secrets;
pub mod store;
pub mod telemetry;
mod tokens;
pub mod webhooks;

#[cfg(test)]
mod layout {
    //! The module graph, as `crate::` paths in the sources draw it, has no cycles.

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

    fn cycle_from(
        graph: &BTreeMap<String, BTreeSet<String>>,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = cycle_from(graph, next, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }

    #[test]
    fn the_module_graph_has_no_cycles() {
        let graph = graph();
        assert!(
            graph.contains_key("tokens") && graph.contains_key("aws"),
            "{graph:?}"
        );
        let mut done = BTreeSet::new();
        for node in graph.keys() {
            let cycle = cycle_from(&graph, node, &mut Vec::new(), &mut done);
            assert_eq!(cycle, None, "an import cycle between modules");
        }
    }

    #[test]
    fn aws_is_a_leaf_and_errors_import_no_http() {
        let graph = graph();
        assert!(
            graph["aws"].is_empty(),
            "aws imports nothing of the service: {graph:?}"
        );
        assert!(!graph["error"].contains("http"));
    }
}
