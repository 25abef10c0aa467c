//! Logging and metrics, set up once per process.
//!
//! Logs go to stderr (text or JSON) unless a test injects its own writer. Metrics are
//! recorded through the `metrics` facade into one Prometheus recorder, served at
//! `/metrics`. Neither ever carries a token: spans record ids and names only.

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogFormat, Settings};

/// Installs the global subscriber writing to stderr. Later calls do nothing.
///
/// `auto` (the default) writes JSON lines unless stderr is a terminal, so a container's
/// or a file's log is machine-readable and a developer's terminal is not; colour codes
/// are written only to a terminal, whatever the format.
pub fn init(settings: &Settings) {
    let terminal = std::io::stderr().is_terminal();
    let format = match settings.log.format {
        LogFormat::Auto if terminal => LogFormat::Text,
        LogFormat::Auto => LogFormat::Json,
        chosen => chosen,
    };
    install(&settings.log.filter, format, terminal, std::io::stderr);
}

/// Installs the global subscriber with an injected sink (tests capture logs this way),
/// without colour. Later calls do nothing: the first subscriber stays.
pub fn init_with_writer<W>(filter: &str, format: LogFormat, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    install(filter, format, false, writer);
}

fn install<W>(filter: &str, format: LogFormat, ansi: bool, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let result = match format {
        LogFormat::Json | LogFormat::Auto => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // An error means a subscriber exists already (a second app in one test process).
    drop(result);
}

/// The process's Prometheus recorder, installed on first use.
pub(crate) fn metrics() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            PrometheusBuilder::new()
                .set_buckets(&buckets)
                .ok()
                .and_then(|b| b.install_recorder().ok())
        })
        .clone()
}
