//! Every metric series the service writes, described and registered at zero when it
//! starts, so `rate()` and `increase()` see the first event and an alert on a series
//! that has not happened yet has something to evaluate.
//!
//! Labels come from fixed sets (routes, outcomes, reasons, configured provider names),
//! never from a request: no user id, token or caller-chosen string is ever a label.

use metrics::{describe_counter, describe_gauge, describe_histogram};

use super::connections::CloseReason;
use crate::audit::AuditWait;
use crate::aws::error::{CALL_OK, FailureKind};
use crate::config::Backend;
use crate::connect::{CONFIRMED, FLOW_FAILURE_REASONS};
use crate::crypto::cache::DataKeyUse;
use crate::http::{ROUTES, STATUSES_EVERY_ROUTE_CAN_ANSWER};
use crate::oauth::grant::Cause;
use crate::series::{CacheOutcome, Kind, Label, Series};
use crate::tokens::refresh::{LapseOutcome, RefreshOutcome, SuppressedReason};
use crate::tokens::{Discard, ReadOutcome, RevocationOutcome, SecurityEventOutcome, TokenError};

/// The AWS calls the running service makes (setup's and check's are left out).
const AWS_CALLS: [(&str, &str); 8] = [
    ("dynamodb", "GetItem"),
    ("dynamodb", "PutItem"),
    ("dynamodb", "UpdateItem"),
    ("dynamodb", "DeleteItem"),
    ("dynamodb", "Query"),
    ("kms", "GenerateDataKey"),
    ("kms", "Decrypt"),
    ("secretsmanager", "GetSecretValue"),
];

/// Describes every series and registers each label set at zero.
pub(super) fn register(backend: Backend, providers: &[String]) {
    describe();
    for route in ROUTES {
        let (method, template) = (route.method, route.template);
        for status in route.ok.iter().chain(&STATUSES_EVERY_ROUTE_CAN_ANSWER) {
            metrics::counter!(crate::series::HTTP_REQUESTS_TOTAL, "method" => method, "route" => template, "status" => status.to_string())
                .increment(0);
        }
        // Registered, a histogram shows its buckets at zero.
        let _ = metrics::histogram!(crate::series::HTTP_REQUEST_DURATION_SECONDS, "method" => method, "route" => template);
    }
    for listener in ["public", "admin"] {
        metrics::gauge!(crate::series::HTTP_CONNECTIONS_OPEN, "listener" => listener)
            .increment(0.0);
        for reason in CloseReason::labels() {
            metrics::counter!(crate::series::HTTP_CONNECTIONS_CLOSED_TOTAL, "listener" => listener, "reason" => reason)
                .increment(0);
        }
    }
    for provider in providers {
        let provider = provider.as_str();
        for name in [
            crate::series::FLOWS_STARTED_TOTAL,
            crate::series::FLOWS_COMPLETED_TOTAL,
        ] {
            metrics::counter!(name, "provider" => provider.to_string()).increment(0);
        }
        for reason in FLOW_FAILURE_REASONS {
            metrics::counter!(crate::series::FLOWS_FAILED_TOTAL, "provider" => provider.to_string(), "reason" => reason)
                .increment(0);
        }
        for outcome in ReadOutcome::labels() {
            metrics::counter!(crate::series::TOKEN_READS_TOTAL, "provider" => provider.to_string(), "outcome" => outcome)
                .increment(0);
        }
        for outcome in RefreshOutcome::labels() {
            metrics::counter!(crate::series::TOKEN_REFRESHES_TOTAL, "provider" => provider.to_string(), "outcome" => outcome)
                .increment(0);
        }
        for outcome in RevocationOutcome::labels() {
            metrics::counter!(crate::series::REVOCATIONS_TOTAL, "provider" => provider.to_string(), "outcome" => outcome)
                .increment(0);
        }
        metrics::counter!(crate::series::ACCOUNT_GRANT_LIMIT_WARNINGS_TOTAL, "provider" => provider.to_string())
            .increment(0);
        for cause in Cause::labels() {
            metrics::counter!(crate::series::GRANTS_ENDED_TOTAL, "provider" => provider.to_string(), "cause" => cause)
                .increment(0);
        }
        for reason in SuppressedReason::labels() {
            metrics::counter!(crate::series::TOKEN_REFRESH_SUPPRESSED_TOTAL, "provider" => provider.to_string(), "reason" => reason)
                .increment(0);
        }
        for outcome in SecurityEventOutcome::labels() {
            metrics::counter!(crate::series::SECURITY_EVENTS_TOTAL, "provider" => provider.to_string(), "outcome" => outcome)
                .increment(0);
        }
        metrics::counter!(crate::series::SECURITY_EVENT_ROWS_SCANNED_TOTAL, "provider" => provider.to_string())
            .increment(0);
    }
    metrics::counter!(crate::series::TOKEN_READS_TOTAL, "provider" => "unknown", "outcome" => "unknown_provider")
        .increment(0);
    for outcome in LapseOutcome::labels() {
        metrics::counter!(crate::series::REFRESH_LEASE_LAPSES_TOTAL, "outcome" => outcome)
            .increment(0);
    }
    for outcome in [
        CONFIRMED,
        TokenError::ConfirmationNotFound.code(),
        TokenError::ConfirmationExpired.code(),
    ] {
        metrics::counter!(crate::series::CONFIRMATIONS_TOTAL, "outcome" => outcome).increment(0);
    }
    for reason in Discard::labels() {
        metrics::counter!(crate::series::HELD_GRANTS_DISCARDED_TOTAL, "reason" => reason)
            .increment(0);
    }
    for kind in [
        crate::callers::CallerKind::Iam,
        crate::callers::CallerKind::Oidc,
    ] {
        for outcome in crate::callers::CheckOutcome::labels() {
            metrics::counter!(crate::series::CALLER_CHECKS_TOTAL, "kind" => kind.label(), "outcome" => outcome)
                .increment(0);
        }
    }
    for outcome in CacheOutcome::labels() {
        metrics::counter!(crate::series::TOKEN_CACHE_TOTAL, "outcome" => outcome).increment(0);
        for operation in DataKeyUse::labels() {
            metrics::counter!(crate::series::DATA_KEY_CACHE_TOTAL, "operation" => operation, "outcome" => outcome)
                .increment(0);
        }
    }
    let store = match backend {
        Backend::Embedded => "embedded",
        Backend::Aws => "dynamodb",
    };
    metrics::counter!(crate::series::STORE_READS_TOTAL, "backend" => store).increment(0);
    metrics::counter!(crate::series::STORE_WRITES_TOTAL, "backend" => store).increment(0);
    if backend == Backend::Aws {
        for (service, operation) in AWS_CALLS {
            for outcome in std::iter::once(CALL_OK).chain(FailureKind::labels()) {
                metrics::counter!(crate::series::AWS_CALLS_TOTAL, "service" => service, "operation" => operation, "outcome" => outcome)
                    .increment(0);
            }
            metrics::counter!(crate::series::AWS_THROTTLES_TOTAL, "service" => service, "operation" => operation)
                .increment(0);
            metrics::counter!(crate::series::AWS_RETRIES_TOTAL, "service" => service, "operation" => operation)
                .increment(0);
        }
    }
    metrics::gauge!(crate::series::FLOW_LOG_QUEUE_DEPTH).increment(0.0);
    metrics::counter!(crate::series::FLOW_LOG_DROPPED_TOTAL).increment(0);
    metrics::counter!(crate::series::FLOW_LOG_WRITE_FAILURES_TOTAL).increment(0);
    metrics::counter!(crate::series::EVENTS_LATE_TOTAL).increment(0);
    metrics::counter!(crate::series::EVENTS_UNSETTLED_TOTAL).increment(0);
    metrics::gauge!(crate::series::EVENTS_SETTLING).increment(0.0);
    metrics::gauge!(crate::series::AUDIT_QUEUE_DEPTH).increment(0.0);
    metrics::gauge!(crate::series::AUDIT_QUEUE_OLDEST_SECONDS).increment(0.0);
    for outcome in AuditWait::labels() {
        metrics::counter!(crate::series::AUDIT_WAITS_TOTAL, "outcome" => outcome).increment(0);
    }
    metrics::counter!(crate::series::AUDIT_WRITE_FAILURES_TOTAL).increment(0);
    metrics::counter!(crate::series::AUDIT_LOST_TOTAL).increment(0);
    metrics::counter!(crate::series::AUDIT_FOLDED_TOTAL).increment(0);
}

fn describe() {
    for series in crate::series::ALL {
        let Series {
            name,
            kind,
            unit,
            help,
            ..
        } = series;
        match (kind, unit) {
            (Kind::Counter, Some(unit)) => describe_counter!(name, unit, help),
            (Kind::Counter, None) => describe_counter!(name, help),
            (Kind::Gauge, Some(unit)) => describe_gauge!(name, unit, help),
            (Kind::Gauge, None) => describe_gauge!(name, help),
            (Kind::Histogram, Some(unit)) => describe_histogram!(name, unit, help),
            (Kind::Histogram, None) => describe_histogram!(name, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// What start-up registers is the catalogue's: each sample a declared series, with
    /// exactly the label names the catalogue gives it.
    #[test]
    fn registered_series_carry_the_labels_the_catalogue_declares() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            register(Backend::Aws, &["google".to_string()]);
        });
        let text = handle.render();
        let mut seen = BTreeSet::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let head = line.rsplit_once(' ').map_or(line, |(head, _)| head);
            let (name, keys) = match head.split_once('{') {
                Some((name, pairs)) => (
                    name,
                    pairs
                        .trim_end_matches('}')
                        .split(',')
                        .filter_map(|pair| pair.split_once('=').map(|(key, _)| key))
                        .filter(|key| !["le", "quantile"].contains(key))
                        .collect::<BTreeSet<_>>(),
                ),
                None => (head, BTreeSet::new()),
            };
            let series = crate::series::ALL
                .iter()
                .find(|s| {
                    name == s.name
                        || (s.kind == Kind::Histogram
                            && ["_bucket", "_sum", "_count"]
                                .iter()
                                .any(|suffix| name.strip_suffix(suffix) == Some(s.name)))
                })
                .unwrap_or_else(|| panic!("{name} is not in the catalogue"));
            let declared: BTreeSet<&str> = series.labels.iter().copied().collect();
            assert_eq!(keys, declared, "{line}");
            seen.insert(series.name);
        }
        // The series without a label from configuration are all registered here.
        assert!(
            seen.len() >= 35,
            "{} series registered: {seen:?}",
            seen.len()
        );
    }
}
