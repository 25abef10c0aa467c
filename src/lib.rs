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
//! - [`aws`]: aws mode's shared plumbing — SDK configuration, error sorting and
//!   metrics, table set-up, assembly of the aws backends.
//! - [`config`], [`cli`], [`app`], [`telemetry`], [`error`]: settings, commands,
//!   start-up, logging and metrics, and the one error type.

// Product code never unwraps: every failure is an error with context.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod app;
pub mod aws;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod error;
pub mod http;
pub mod oauth;
pub mod secrets;
pub mod store;
pub mod telemetry;
pub mod tokens;
