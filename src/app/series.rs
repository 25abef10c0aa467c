//! Every metric series the service writes, described and registered at zero when it
//! starts, so `rate()` and `increase()` see the first event and an alert on a series
//! that has not happened yet has something to evaluate.
//!
//! Labels come from fixed sets (routes, outcomes, reasons, configured provider names),
//! never from a request: no user id, token or caller-chosen string is ever a label.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

use super::connections::CloseReason;
use crate::config::Backend;
use crate::connect::FLOW_FAILURE_REASONS;
use crate::http::{ROUTES, STATUSES_EVERY_ROUTE_CAN_ANSWER};
use crate::tokens::READ_OUTCOMES;
use crate::tokens::refresh::{LAPSE_OUTCOMES, REFRESH_OUTCOMES, SUPPRESSED_REASONS};

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

/// `axnt_aws_calls_total`'s outcomes: success, then each kind of failure.
const AWS_OUTCOMES: [&str; 8] = [
    "ok",
    "access_denied",
    "not_found",
    "throttled",
    "timeout",
    "unavailable",
    "condition_failed",
    "rejected",
];

/// Describes every series and registers each label set at zero.
pub(super) fn register(backend: Backend, providers: &[String]) {
    describe();
    for (method, route, ok) in ROUTES {
        for status in std::iter::once(ok).chain(STATUSES_EVERY_ROUTE_CAN_ANSWER) {
            metrics::counter!("axnt_http_requests_total", "method" => method, "route" => route, "status" => status.to_string())
                .increment(0);
        }
        // Registered, a histogram shows its buckets at zero.
        let _ = metrics::histogram!("axnt_http_request_duration_seconds", "method" => method, "route" => route);
    }
    for listener in ["public", "admin"] {
        metrics::gauge!("axnt_http_connections_open", "listener" => listener).increment(0.0);
        for reason in CloseReason::ALL {
            metrics::counter!("axnt_http_connections_closed_total", "listener" => listener, "reason" => reason.label())
                .increment(0);
        }
    }
    for provider in providers {
        let provider = provider.as_str();
        for name in ["axnt_flows_started_total", "axnt_flows_completed_total"] {
            metrics::counter!(name, "provider" => provider.to_string()).increment(0);
        }
        for reason in FLOW_FAILURE_REASONS {
            metrics::counter!("axnt_flows_failed_total", "provider" => provider.to_string(), "reason" => reason)
                .increment(0);
        }
        for outcome in READ_OUTCOMES {
            metrics::counter!("axnt_token_reads_total", "provider" => provider.to_string(), "outcome" => outcome)
                .increment(0);
        }
        for outcome in REFRESH_OUTCOMES {
            metrics::counter!("axnt_token_refreshes_total", "provider" => provider.to_string(), "outcome" => outcome)
                .increment(0);
        }
        for outcome in crate::tokens::REVOCATION_OUTCOMES {
            metrics::counter!("axnt_revocations_total", "provider" => provider.to_string(), "outcome" => outcome)
                .increment(0);
        }
        metrics::counter!("axnt_account_grant_limit_warnings_total", "provider" => provider.to_string())
            .increment(0);
        for cause in crate::oauth::grant::Cause::ALL {
            metrics::counter!("axnt_grants_ended_total", "provider" => provider.to_string(), "cause" => cause.code())
                .increment(0);
        }
        for reason in SUPPRESSED_REASONS {
            metrics::counter!("axnt_token_refresh_suppressed_total", "provider" => provider.to_string(), "reason" => reason)
                .increment(0);
        }
        for outcome in crate::tokens::SECURITY_EVENT_OUTCOMES {
            metrics::counter!("axnt_security_events_total", "provider" => provider.to_string(), "outcome" => outcome)
                .increment(0);
        }
        metrics::counter!("axnt_security_event_rows_scanned_total", "provider" => provider.to_string())
            .increment(0);
    }
    metrics::counter!("axnt_token_reads_total", "provider" => "unknown", "outcome" => "unknown_provider")
        .increment(0);
    for outcome in LAPSE_OUTCOMES {
        metrics::counter!("axnt_refresh_lease_lapses_total", "outcome" => outcome).increment(0);
    }
    for outcome in [
        "confirmed",
        "confirmation_not_found",
        "confirmation_expired",
    ] {
        metrics::counter!("axnt_confirmations_total", "outcome" => outcome).increment(0);
    }
    for reason in crate::tokens::Discard::ALL {
        metrics::counter!("axnt_held_grants_discarded_total", "reason" => reason.label())
            .increment(0);
    }
    for outcome in ["hit", "miss"] {
        metrics::counter!("axnt_token_cache_total", "outcome" => outcome).increment(0);
        for operation in ["seal", "open"] {
            metrics::counter!("axnt_data_key_cache_total", "operation" => operation, "outcome" => outcome)
                .increment(0);
        }
    }
    let store = match backend {
        Backend::Embedded => "embedded",
        Backend::Aws => "dynamodb",
    };
    metrics::counter!("axnt_store_reads_total", "backend" => store).increment(0);
    metrics::counter!("axnt_store_writes_total", "backend" => store).increment(0);
    if backend == Backend::Aws {
        for (service, operation) in AWS_CALLS {
            for outcome in AWS_OUTCOMES {
                metrics::counter!("axnt_aws_calls_total", "service" => service, "operation" => operation, "outcome" => outcome)
                    .increment(0);
            }
            metrics::counter!("axnt_aws_throttles_total", "service" => service, "operation" => operation)
                .increment(0);
            metrics::counter!("axnt_aws_retries_total", "service" => service, "operation" => operation)
                .increment(0);
        }
    }
    metrics::gauge!("axnt_flow_log_queue_depth").increment(0.0);
    metrics::counter!("axnt_flow_log_dropped_total").increment(0);
    metrics::counter!("axnt_flow_log_write_failures_total").increment(0);
    metrics::counter!("axnt_events_late_total").increment(0);
    metrics::counter!("axnt_events_unsettled_total").increment(0);
    metrics::gauge!("axnt_events_settling").increment(0.0);
    metrics::gauge!("axnt_audit_queue_depth").increment(0.0);
    metrics::gauge!("axnt_audit_queue_oldest_seconds").increment(0.0);
    for outcome in ["waited", "timed_out"] {
        metrics::counter!("axnt_audit_waits_total", "outcome" => outcome).increment(0);
    }
    metrics::counter!("axnt_audit_write_failures_total").increment(0);
    metrics::counter!("axnt_audit_lost_total").increment(0);
    metrics::counter!("axnt_audit_folded_total").increment(0);
}

fn describe() {
    describe_counter!(
        "axnt_http_requests_total",
        "HTTP requests answered on the public listener, by method, matched route and status"
    );
    describe_histogram!(
        "axnt_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request, by method and matched route"
    );
    describe_gauge!(
        "axnt_http_connections_open",
        "Client connections open, by listener (public, admin)"
    );
    describe_counter!(
        "axnt_http_connections_closed_total",
        "Connections the server closed, by listener and reason: first_request_timeout (nothing, only the HTTP/2 preface, or part of a head within the header-read timeout), head_timeout, idle_timeout, shed_cap and shed_client_cap (closed, holding no request, to let a newer one in at a cap), refused_cap (a new one closed: every connection had a request in progress)"
    );
    describe_counter!(
        "axnt_flows_started_total",
        "Connect flows sent to the provider"
    );
    describe_counter!(
        "axnt_flows_completed_total",
        "Connect flows that stored (or, in confirmation mode, confirmed) a grant"
    );
    describe_counter!(
        "axnt_flows_failed_total",
        "Connect flows that ended in an error, by reason (the problem code)"
    );
    describe_counter!(
        "axnt_confirmations_total",
        "Held grants confirmed or refused, by outcome"
    );
    describe_counter!(
        "axnt_held_grants_discarded_total",
        "Held grants discarded by a refused confirm, by reason (other_user, wrong_code, expired)"
    );
    describe_counter!(
        "axnt_token_reads_total",
        "Token reads by the API, by outcome: cache_hit, store_read, refreshed, not_found (404), reauthorization_required (409), unknown_provider, error"
    );
    describe_counter!(
        "axnt_token_cache_total",
        "Token cache lookups, by outcome (hit, miss)"
    );
    describe_counter!(
        "axnt_token_refreshes_total",
        "Refresh-token redemptions at the provider, by outcome"
    );
    describe_counter!(
        "axnt_account_grant_limit_warnings_total",
        "Grants stored for a Google account that nears Google's limit of live refresh tokens per client (from 90 %)"
    );
    describe_counter!(
        "axnt_revocations_total",
        "Revocations at the provider when connections are deleted, by outcome: revoked, pending (kept to retry), skipped (revoke=false), not_possible, revoked_on_retry, revocation_superseded, revocation_given_up"
    );
    describe_counter!(
        "axnt_grants_ended_total",
        "Grants found dead at a refresh (the connection went inactive), by cause: revoked_by_user, testing_mode_expired, idle_expired, time_limited_access_expired, admin_policy_enforced, session_reauth_required, refresh_outcome_unknown, no_refresh_token, unknown_invalid_grant, …"
    );
    describe_counter!(
        "axnt_token_refresh_suppressed_total",
        "Refreshes not attempted (cooldown after a failure, circuit open), by reason"
    );
    describe_counter!(
        "axnt_data_key_cache_total",
        "Data-key cache lookups: seal (a data key reused or generated) and open (an unwrapped key found or asked for), by outcome"
    );
    describe_counter!(
        "axnt_store_reads_total",
        "Read statements (embedded) or calls (DynamoDB) against the token and flow-log store"
    );
    describe_counter!(
        "axnt_store_writes_total",
        "Write statements (embedded) or calls (DynamoDB) against the token and flow-log store"
    );
    describe_counter!(
        "axnt_aws_calls_total",
        "AWS calls after the SDK's retries, by service, operation and outcome"
    );
    describe_counter!(
        "axnt_aws_throttles_total",
        "AWS calls still throttled after the SDK's retries, by service and operation"
    );
    describe_counter!(
        "axnt_aws_retries_total",
        "Attempts the AWS SDK made again after a failed or throttled attempt, by service and operation"
    );
    describe_gauge!(
        "axnt_flow_log_queue_depth",
        "Flow-log items waiting to be written"
    );
    describe_counter!(
        "axnt_flow_log_dropped_total",
        "Flow-log items dropped because the write queue was full"
    );
    describe_counter!(
        "axnt_flow_log_write_failures_total",
        "Flow-log writes that failed after their retries"
    );
    describe_gauge!(
        "axnt_audit_queue_depth",
        "Audit records (token reads) not yet written: waiting in the audit queue or being written"
    );
    describe_gauge!(
        "axnt_audit_queue_oldest_seconds",
        Unit::Seconds,
        "How long the oldest audit record not yet written has waited (0: none)"
    );
    describe_counter!(
        "axnt_audit_waits_total",
        "Token reads that found the audit queue, or their caller's share of it, full, by outcome: waited (then got room), timed_out (answered 503 audit_unavailable after AXNT_AUDIT_WAIT_MS)"
    );
    describe_counter!(
        "axnt_audit_write_failures_total",
        "Failed attempts to write an audit item (each is retried until stored)"
    );
    describe_counter!(
        "axnt_audit_folded_total",
        "Refused token reads folded into a caller's counted record (past its first refusals in a window), naming no user"
    );
    describe_counter!(
        "axnt_audit_lost_total",
        "Token reads whose audit record was never written: still queued at the drain deadline, or refused by the store as malformed"
    );
    describe_counter!(
        "axnt_events_late_total",
        "Lifecycle events whose write was found stored after the store's write bound (a cursor may have passed them, so they are written again under fresh ids naming them in data.originalId)"
    );
    describe_counter!(
        "axnt_events_unsettled_total",
        "Lifecycle events whose write could not be settled (its fence not written within 15 minutes, the settling queue full, or still settling at shutdown): they may be stored without every cursor reading them; the log names the events replay that sends them"
    );
    describe_gauge!(
        "axnt_events_settling",
        "Event writes (rounds) whose outcome this instance is still settling"
    );
    describe_counter!(
        "axnt_security_events_total",
        "Google security events (RISC) received and verified, by outcome: applied (grants ended), no_connection, recorded (nothing to change), unknown_type (a type Google does not document: recorded), duplicate (a replayed jti)"
    );
    describe_counter!(
        "axnt_security_event_rows_scanned_total",
        "Tokens-table rows read by the scans that find the grants a security event ends (one scan at a time per process, at most 1,000 rows a second)"
    );
    describe_counter!(
        "axnt_webhook_deliveries_total",
        "Webhook delivery attempts, by endpoint id and outcome: delivered, failed (a private address refused by the resolver included), given_up"
    );
    describe_gauge!(
        "axnt_webhook_lag_seconds",
        "Age of the oldest event still owed to a webhook endpoint (0: none owed), as its worker last saw it"
    );
}
