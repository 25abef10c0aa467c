//! Embedded mode deletes what has expired by itself, as DynamoDB's TTL does in aws mode.

use std::time::{Duration, Instant};

use crate::support::fake_provider::RefreshBehaviour;
use crate::support::{Backend, FakeProvider, TestApp, assert_problem};

/// An inactive row past its retention and flow-log items past theirs disappear; an
/// active row stays.
#[tokio::test]
async fn expired_rows_and_flow_log_items_are_purged() {
    let provider = FakeProvider::start().await;
    provider.set_access_token_ttl(0);
    let settings = [
        ("AXNT_INACTIVE_RETENTION_DAYS", "0"),
        ("AXNT_FLOW_LOG_RETENTION_DAYS", "0"),
        ("AXNT_PURGE_INTERVAL_SECS", "1"),
    ];
    let app = TestApp::on(Backend::Embedded, &provider, &settings).await;
    for user in ["gone", "kept"] {
        assert!(app.connect(user).await.status().is_success());
    }
    provider.refresh_failure([RefreshBehaviour::InvalidGrant]);
    assert_problem(app.token("gone").await, 409, "reauthorization_required").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.stored_row("gone").await.is_some() {
        assert!(
            Instant::now() < deadline,
            "the expired inactive row was purged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        app.stored_row("kept").await.is_some(),
        "an active row stays"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !app.flow_log("kept").await.is_empty() || !app.flow_log("gone").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "expired flow-log items were purged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
