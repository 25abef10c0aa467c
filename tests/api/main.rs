//! The integration tests, one binary: every module below shares one build of `support`
//! (the fake provider, moto fixtures, `TestApp`) instead of each test file compiling its
//! own copy. Run one concern with its module path, e.g. `scripts/test refresh_faults::`.

/// Each scenario runs once per backend: `embedded::NAME` and `aws::NAME`.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test] async fn $name() { super::$name(super::Backend::Embedded).await })*
        }
        mod aws {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Backend::Aws).await })*
        }
    };
}

/// Each scenario runs once per backend against the Google-shaped fake provider
/// (`embedded::NAME`, `aws::NAME`), and once per backend against a Microsoft-shaped one
/// configured as the `microsoft` provider (`microsoft::embedded::NAME`, …): the
/// scenario takes its provider from `support::provider_of_shape`.
macro_rules! on_every_backend_and_provider {
    ($($name:ident),* $(,)?) => {
        on_every_backend!($($name),*);
        mod microsoft {
            mod embedded {
                $(#[tokio::test] async fn $name() {
                    crate::support::SHAPE
                        .scope(crate::support::Shape::Microsoft, super::super::$name(crate::support::Backend::Embedded))
                        .await
                })*
            }
            mod aws {
                $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() {
                    crate::support::SHAPE
                        .scope(crate::support::Shape::Microsoft, super::super::$name(crate::support::Backend::Aws))
                        .await
                })*
            }
        }
    };
}

mod audit;
mod aws_iam;
mod aws_kms;
mod aws_secrets;
mod aws_setup;
mod callers;
mod cli;
mod connect_faults;
mod deploy;
mod docs;
mod e2e_provider;
mod edges;
mod events;
mod flow;
mod grants;
mod import_api;
mod internal_api;
mod late_writes;
mod limits;
mod links;
mod lost_answers;
mod metrics;
mod migrate;
mod providers;
mod refresh_faults;
mod retention;
mod risc;
mod risc_scan;
mod rotation;
mod schema;
mod secrets;
mod soak;
mod sockets;
mod startup;
mod store_conformance;
mod support;
mod token_cache;
mod tokens;
mod webhooks;
mod workload_callers;
