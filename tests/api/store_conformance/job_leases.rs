//! Job leases.

use super::*;

/// A job lease is held by one holder at a time, renewed by it, taken over only once
/// it lapsed, and given back only by its holder.
async fn a_job_lease_has_one_holder(tokens: Arc<dyn TokenStore>, _log: Arc<dyn FlowLog>) {
    let job = format!("job-{}", user());
    let t = now().timestamp_millis();
    assert!(
        tokens
            .take_job_lease(&job, "a", t + 1_000, t)
            .await
            .expect("a takes")
    );
    assert!(
        !tokens
            .take_job_lease(&job, "b", t + 1_000, t)
            .await
            .expect("b waits")
    );
    assert!(
        tokens
            .take_job_lease(&job, "a", t + 5_000, t + 500)
            .await
            .expect("a renews")
    );
    assert!(
        !tokens
            .take_job_lease(&job, "b", t + 9_000, t + 2_000)
            .await
            .expect("still a's"),
        "renewed past b's now"
    );
    assert!(
        tokens
            .take_job_lease(&job, "b", t + 9_000, t + 6_000)
            .await
            .expect("lapsed"),
        "a lapsed lease is taken over"
    );
    tokens.drop_job_lease(&job, "a").await.expect("a's drop");
    assert!(
        !tokens
            .take_job_lease(&job, "a", t + 9_000, t + 6_000)
            .await
            .expect("b's")
    );
    tokens.drop_job_lease(&job, "b").await.expect("b's drop");
    assert!(
        tokens
            .take_job_lease(&job, "a", t + 9_000, t + 6_000)
            .await
            .expect("free")
    );
    let (scanned, _) = scan_all(tokens.as_ref(), 1000).await;
    assert!(
        scanned.iter().all(|r| !r.user_id.contains(&job)),
        "no connection"
    );
}

every_backend!(a_job_lease_has_one_holder,);
