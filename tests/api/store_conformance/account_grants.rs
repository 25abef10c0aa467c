//! Mint records per account.

use super::*;

/// An account's mint record is created once, then written only at the version read,
/// and is no connection.
async fn account_grants_are_written_conditionally(
    tokens: Arc<dyn TokenStore>,
    _log: Arc<dyn FlowLog>,
) {
    let sub = format!("sub-{}", user());
    assert_eq!(
        tokens.account_grants("google", &sub).await.expect("get"),
        None
    );
    let first = AccountGrants {
        provider: "google".into(),
        sub: sub.clone(),
        mints: vec![1_800_000_000],
        version: 1,
    };
    tokens
        .put_account_grants(&first, None)
        .await
        .expect("create");
    assert!(matches!(
        tokens.put_account_grants(&first, None).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        tokens.account_grants("google", &sub).await.expect("get"),
        Some(first.clone())
    );
    let second = AccountGrants {
        mints: vec![1_800_000_000, 1_800_000_005],
        version: 2,
        ..first.clone()
    };
    tokens
        .put_account_grants(&second, Some(1))
        .await
        .expect("update");
    assert!(matches!(
        tokens.put_account_grants(&second, Some(1)).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        tokens.account_grants("google", &sub).await.expect("get"),
        Some(second)
    );
    assert_eq!(
        tokens.account_grants("other", &sub).await.expect("get"),
        None
    );
    let (scanned, _) = scan_all(tokens.as_ref(), 1000).await;
    assert!(
        scanned.iter().all(|r| !r.user_id.contains(&sub)),
        "no connection"
    );
}

every_backend!(account_grants_are_written_conditionally,);
