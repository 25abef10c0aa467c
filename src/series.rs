//! Every metric series the service writes, declared once: its name, kind, unit and
//! what it counts. The code that counts names a series by its constant here; start-up
//! describes them all from [`ALL`] (`app::series`, which also registers their label
//! sets at zero). A leaf: any module may count.
//!
//! Labels come from fixed sets (routes, outcomes, reasons, configured provider names),
//! never from a request: no user id, token or caller-chosen string is ever a label.

use metrics::Unit;

/// The values one label takes: an enum whose variants are those values, each text
/// written once (strum's `IntoStaticStr`, from the variant's name or its
/// `#[strum(serialize)]`). Counting names a value with [`Label::label`]; start-up
/// registers every value at zero from [`Label::labels`].
pub(crate) trait Label: Copy + Into<&'static str> + strum::VariantArray + 'static {
    fn label(self) -> &'static str {
        self.into()
    }

    fn labels() -> impl Iterator<Item = &'static str> {
        Self::VARIANTS.iter().map(|v| (*v).into())
    }
}

impl<T: Copy + Into<&'static str> + strum::VariantArray + 'static> Label for T {}

/// A cache lookup's `outcome` (`axnt_token_cache_total`, `axnt_data_key_cache_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum CacheOutcome {
    Hit,
    Miss,
}

/// Handles of one series for a fixed set of label combinations, by index: each is
/// taken from the recorder the first time it is used and kept, so counting on a hot
/// path is one atomic operation, with no label text built and no registry lookup.
/// Taken lazily, so a handle always comes from the recorder installed by then.
pub(crate) struct Cells<T>(Box<[std::sync::OnceLock<T>]>);

impl<T> Cells<T> {
    pub(crate) fn new(len: usize) -> Self {
        Self((0..len).map(|_| std::sync::OnceLock::new()).collect())
    }

    /// The handle at `index`, made by `make` the first time; `None` past the end.
    pub(crate) fn at(&self, index: usize, make: impl FnOnce() -> T) -> Option<&T> {
        self.0.get(index).map(|cell| cell.get_or_init(make))
    }
}

/// A copy holds no handle yet: each takes its own from the recorder when first used.
impl<T> Clone for Cells<T> {
    fn clone(&self) -> Self {
        Self::new(self.0.len())
    }
}

/// Every copy is equal: the handles are a cache, not part of the value.
impl<T> PartialEq for Cells<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> Eq for Cells<T> {}

impl<T> std::fmt::Debug for Cells<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cells({})", self.0.len())
    }
}

/// Counter handles by index ([`Cells`]).
pub(crate) type CounterCells = Cells<metrics::Counter>;

/// What kind of series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One series as `/metrics` describes it, with the names of its labels (whose values
/// are each a [`Label`] enum, or a configured name: a provider, a caller, an endpoint).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Series {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) unit: Option<Unit>,
    pub(crate) help: &'static str,
    pub(crate) labels: &'static [&'static str],
}

pub(crate) const HTTP_REQUESTS_TOTAL: &str = "axnt_http_requests_total";
pub(crate) const HTTP_REQUEST_DURATION_SECONDS: &str = "axnt_http_request_duration_seconds";
pub(crate) const HTTP_CONNECTIONS_OPEN: &str = "axnt_http_connections_open";
pub(crate) const HTTP_CONNECTIONS_CLOSED_TOTAL: &str = "axnt_http_connections_closed_total";
pub(crate) const FLOWS_STARTED_TOTAL: &str = "axnt_flows_started_total";
pub(crate) const FLOWS_COMPLETED_TOTAL: &str = "axnt_flows_completed_total";
pub(crate) const FLOWS_FAILED_TOTAL: &str = "axnt_flows_failed_total";
pub(crate) const CONFIRMATIONS_TOTAL: &str = "axnt_confirmations_total";
pub(crate) const HELD_GRANTS_DISCARDED_TOTAL: &str = "axnt_held_grants_discarded_total";
pub(crate) const TOKEN_READS_TOTAL: &str = "axnt_token_reads_total";
pub(crate) const TOKEN_CACHE_TOTAL: &str = "axnt_token_cache_total";
pub(crate) const TOKEN_REFRESHES_TOTAL: &str = "axnt_token_refreshes_total";
pub(crate) const ACCOUNT_GRANT_LIMIT_WARNINGS_TOTAL: &str =
    "axnt_account_grant_limit_warnings_total";
pub(crate) const REVOCATIONS_TOTAL: &str = "axnt_revocations_total";
pub(crate) const GRANTS_ENDED_TOTAL: &str = "axnt_grants_ended_total";
pub(crate) const TOKEN_REFRESH_SUPPRESSED_TOTAL: &str = "axnt_token_refresh_suppressed_total";
pub(crate) const DATA_KEY_CACHE_TOTAL: &str = "axnt_data_key_cache_total";
pub(crate) const STORE_READS_TOTAL: &str = "axnt_store_reads_total";
pub(crate) const STORE_WRITES_TOTAL: &str = "axnt_store_writes_total";
pub(crate) const AWS_CALLS_TOTAL: &str = "axnt_aws_calls_total";
pub(crate) const AWS_THROTTLES_TOTAL: &str = "axnt_aws_throttles_total";
pub(crate) const AWS_RETRIES_TOTAL: &str = "axnt_aws_retries_total";
pub(crate) const FLOW_LOG_QUEUE_DEPTH: &str = "axnt_flow_log_queue_depth";
pub(crate) const FLOW_LOG_DROPPED_TOTAL: &str = "axnt_flow_log_dropped_total";
pub(crate) const FLOW_LOG_WRITE_FAILURES_TOTAL: &str = "axnt_flow_log_write_failures_total";
pub(crate) const AUDIT_QUEUE_DEPTH: &str = "axnt_audit_queue_depth";
pub(crate) const AUDIT_QUEUE_OLDEST_SECONDS: &str = "axnt_audit_queue_oldest_seconds";
pub(crate) const AUDIT_WAITS_TOTAL: &str = "axnt_audit_waits_total";
pub(crate) const AUDIT_WRITE_FAILURES_TOTAL: &str = "axnt_audit_write_failures_total";
pub(crate) const AUDIT_FOLDED_TOTAL: &str = "axnt_audit_folded_total";
pub(crate) const AUDIT_LOST_TOTAL: &str = "axnt_audit_lost_total";
pub(crate) const EVENTS_LATE_TOTAL: &str = "axnt_events_late_total";
pub(crate) const EVENTS_UNSETTLED_TOTAL: &str = "axnt_events_unsettled_total";
pub(crate) const EVENTS_SETTLING: &str = "axnt_events_settling";
pub(crate) const SECURITY_EVENTS_TOTAL: &str = "axnt_security_events_total";
pub(crate) const SECURITY_EVENT_ROWS_SCANNED_TOTAL: &str = "axnt_security_event_rows_scanned_total";
pub(crate) const WEBHOOK_DELIVERIES_TOTAL: &str = "axnt_webhook_deliveries_total";
pub(crate) const WEBHOOK_LAG_SECONDS: &str = "axnt_webhook_lag_seconds";
pub(crate) const API_CALLS_TOTAL: &str = "axnt_api_calls_total";
pub(crate) const CALLER_CHECKS_TOTAL: &str = "axnt_caller_checks_total";
pub(crate) const REFRESH_LEASE_LAPSES_TOTAL: &str = "axnt_refresh_lease_lapses_total";

/// At most three labels a series: each label multiplies its series, and every value of
/// every label is registered at start-up.
const _: () = {
    let mut i = 0;
    while i < ALL.len() {
        assert!(
            ALL[i].labels.len() <= 3,
            "a series has at most three labels"
        );
        i += 1;
    }
};

/// Every series, in the order `/metrics` describes them.
pub(crate) const ALL: [Series; 41] = [
    Series {
        name: HTTP_REQUESTS_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "HTTP requests answered on the public listener, by method, matched route and status",
        labels: &["method", "route", "status"],
    },
    Series {
        name: HTTP_REQUEST_DURATION_SECONDS,
        kind: Kind::Histogram,
        unit: Some(Unit::Seconds),
        help: "Time to answer an HTTP request, by method and matched route",
        labels: &["method", "route"],
    },
    Series {
        name: HTTP_CONNECTIONS_OPEN,
        kind: Kind::Gauge,
        unit: None,
        help: "Client connections open, by listener (public, admin)",
        labels: &["listener"],
    },
    Series {
        name: HTTP_CONNECTIONS_CLOSED_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Connections the server closed, by listener and reason: first_request_timeout (nothing, only the HTTP/2 preface, or part of a head within the header-read timeout), head_timeout, idle_timeout, shed_cap and shed_client_cap (closed, holding no request, to let a newer one in at a cap), refused_cap (a new one closed: every connection had a request in progress)",
        labels: &["listener", "reason"],
    },
    Series {
        name: FLOWS_STARTED_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Connect flows sent to the provider",
        labels: &["provider"],
    },
    Series {
        name: FLOWS_COMPLETED_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Connect flows that stored (or, in confirmation mode, confirmed) a grant",
        labels: &["provider"],
    },
    Series {
        name: FLOWS_FAILED_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Connect flows that ended in an error, by reason (the problem code)",
        labels: &["provider", "reason"],
    },
    Series {
        name: CONFIRMATIONS_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Held grants confirmed or refused, by outcome",
        labels: &["outcome"],
    },
    Series {
        name: HELD_GRANTS_DISCARDED_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Held grants discarded by a refused confirm, by reason (other_user, wrong_code, expired)",
        labels: &["reason"],
    },
    Series {
        name: TOKEN_READS_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Token reads by the API, by outcome: cache_hit, store_read, refreshed, not_found (404), reauthorization_required (409), unknown_provider, error",
        labels: &["provider", "outcome"],
    },
    Series {
        name: TOKEN_CACHE_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Token cache lookups, by outcome (hit, miss)",
        labels: &["outcome"],
    },
    Series {
        name: TOKEN_REFRESHES_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Refresh-token redemptions at the provider, by outcome",
        labels: &["provider", "outcome"],
    },
    Series {
        name: ACCOUNT_GRANT_LIMIT_WARNINGS_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Grants stored for a Google account that nears Google's limit of live refresh tokens per client (from 90 %)",
        labels: &["provider"],
    },
    Series {
        name: REVOCATIONS_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Revocations at the provider when connections are deleted, by outcome: revoked, pending (kept to retry), skipped (revoke=false), not_possible, revoked_on_retry, revocation_superseded, revocation_given_up",
        labels: &["provider", "outcome"],
    },
    Series {
        name: GRANTS_ENDED_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Grants found dead at a refresh (the connection went inactive), by cause: revoked_by_user, testing_mode_expired, idle_expired, time_limited_access_expired, admin_policy_enforced, session_reauth_required, refresh_outcome_unknown, no_refresh_token, unknown_invalid_grant, …",
        labels: &["provider", "cause"],
    },
    Series {
        name: TOKEN_REFRESH_SUPPRESSED_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Refreshes not attempted (cooldown after a failure, circuit open), by reason",
        labels: &["provider", "reason"],
    },
    Series {
        name: DATA_KEY_CACHE_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Data-key cache lookups: seal (a data key reused or generated) and open (an unwrapped key found or asked for), by outcome",
        labels: &["operation", "outcome"],
    },
    Series {
        name: STORE_READS_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Read statements (embedded) or calls (DynamoDB) against the token and flow-log store",
        labels: &["backend"],
    },
    Series {
        name: STORE_WRITES_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Write statements (embedded) or calls (DynamoDB) against the token and flow-log store",
        labels: &["backend"],
    },
    Series {
        name: AWS_CALLS_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "AWS calls after the SDK's retries, by service, operation and outcome",
        labels: &["service", "operation", "outcome"],
    },
    Series {
        name: AWS_THROTTLES_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "AWS calls still throttled after the SDK's retries, by service and operation",
        labels: &["service", "operation"],
    },
    Series {
        name: AWS_RETRIES_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Attempts the AWS SDK made again after a failed or throttled attempt, by service and operation",
        labels: &["service", "operation"],
    },
    Series {
        name: FLOW_LOG_QUEUE_DEPTH,
        kind: Kind::Gauge,
        unit: None,
        help: "Flow-log items waiting to be written",
        labels: &[],
    },
    Series {
        name: FLOW_LOG_DROPPED_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Flow-log items dropped because the write queue was full",
        labels: &[],
    },
    Series {
        name: FLOW_LOG_WRITE_FAILURES_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Flow-log writes that failed after their retries",
        labels: &[],
    },
    Series {
        name: AUDIT_QUEUE_DEPTH,
        kind: Kind::Gauge,
        unit: None,
        help: "Audit records (token reads) not yet written: waiting in the audit queue or being written",
        labels: &[],
    },
    Series {
        name: AUDIT_QUEUE_OLDEST_SECONDS,
        kind: Kind::Gauge,
        unit: Some(Unit::Seconds),
        help: "How long the oldest audit record not yet written has waited (0: none)",
        labels: &[],
    },
    Series {
        name: AUDIT_WAITS_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Token reads that found the audit queue, or their caller's share of it, full, by outcome: waited (then got room), timed_out (answered 503 audit_unavailable after AXNT_AUDIT_WAIT_MS)",
        labels: &["outcome"],
    },
    Series {
        name: AUDIT_WRITE_FAILURES_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Failed attempts to write an audit item (each is retried until stored)",
        labels: &[],
    },
    Series {
        name: AUDIT_FOLDED_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Refused token reads folded into a caller's counted record (past its first refusals in a window), naming no user",
        labels: &[],
    },
    Series {
        name: AUDIT_LOST_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Token reads whose audit record was never written: still queued at the drain deadline, or refused by the store as malformed",
        labels: &[],
    },
    Series {
        name: EVENTS_LATE_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Lifecycle events whose write was found stored after the store's write bound (a cursor may have passed them, so they are written again under fresh ids naming them in data.originalId)",
        labels: &[],
    },
    Series {
        name: EVENTS_UNSETTLED_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Lifecycle events whose write could not be settled (its fence not written within 15 minutes, the settling queue full, or still settling at shutdown): they may be stored without every cursor reading them; the log names the events replay that sends them",
        labels: &[],
    },
    Series {
        name: EVENTS_SETTLING,
        kind: Kind::Gauge,
        unit: None,
        help: "Event writes (rounds) whose outcome this instance is still settling",
        labels: &[],
    },
    Series {
        name: SECURITY_EVENTS_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Google security events (RISC) received and verified, by outcome: applied (grants ended), no_connection, recorded (nothing to change), unknown_type (a type Google does not document: recorded), duplicate (a replayed jti)",
        labels: &["provider", "outcome"],
    },
    Series {
        name: SECURITY_EVENT_ROWS_SCANNED_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Tokens-table rows read by the scans that find the grants a security event ends (one scan at a time per process, at most 1,000 rows a second)",
        labels: &["provider"],
    },
    Series {
        name: WEBHOOK_DELIVERIES_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Webhook delivery attempts, by endpoint id and outcome: delivered, failed (a private address refused by the resolver included), given_up",
        labels: &["endpoint", "outcome"],
    },
    Series {
        name: WEBHOOK_LAG_SECONDS,
        kind: Kind::Gauge,
        unit: None,
        help: "Age of the oldest event still owed to a webhook endpoint (0: none owed), as its worker last saw it",
        labels: &["endpoint"],
    },
    Series {
        name: API_CALLS_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Internal-API calls made with a valid key, by caller (the key's id) and the operation its route needs",
        labels: &["caller", "operation"],
    },
    Series {
        name: CALLER_CHECKS_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Credentials of callers that are not keys checked, by kind (iam, oidc) and outcome (verified: asked STS or checked a token; cached: an identity STS proved within the minute; refused; unavailable: STS or the issuer could not be asked)",
        labels: &["kind", "outcome"],
    },
    Series {
        name: REFRESH_LEASE_LAPSES_TOTAL,
        kind: Kind::Counter,
        unit: None,
        help: "Refresh leases found lapsed with no result stored nor the lease given back, by outcome: held (for its holder, whose refresh has an unknown outcome), taken_over (after the hold ended)",
        labels: &["outcome"],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_series_is_declared_once_under_the_prefix_with_its_help() {
        let mut names: Vec<&str> = ALL.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "a name declared twice");
        for series in ALL {
            assert!(series.name.starts_with("axnt_"), "{}", series.name);
            assert!(!series.help.is_empty(), "{}", series.name);
            assert_eq!(
                series.kind == Kind::Counter,
                series.name.ends_with("_total"),
                "a counter's name ends in _total, and only a counter's: {}",
                series.name
            );
        }
    }
}
