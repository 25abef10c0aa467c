//! Connection rows: written whole on `version`, read, listed, touched and scanned.

use super::*;

async fn create_then_read(tokens: Arc<dyn TokenStore>, _log: Arc<dyn FlowLog>) {
    let u = user();
    assert_eq!(tokens.get(&u, "google").await.expect("get"), None);
    let r = row(&u, "google", 1, "a");
    tokens.put(&r, None, &[]).await.expect("create");
    assert_eq!(tokens.get(&u, "google").await.expect("get"), Some(r));
    assert_eq!(tokens.get(&u, "github").await.expect("get"), None);
}

async fn conditional_update_wins_and_loses(tokens: Arc<dyn TokenStore>, _log: Arc<dyn FlowLog>) {
    let u = user();
    tokens
        .put(&row(&u, "google", 1, "a"), None, &[])
        .await
        .expect("create");
    let v2 = row(&u, "google", 2, "b");
    tokens
        .put(&v2, Some(1), &[])
        .await
        .expect("update at the read version wins");
    let stale = Connection {
        is_active: false,
        ..row(&u, "google", 2, "c")
    };
    let lost = tokens.put(&stale, Some(1), &[]).await;
    assert!(
        matches!(lost, Err(StoreError::Conflict)),
        "stale write loses: {lost:?}"
    );
    assert_eq!(
        tokens.get(&u, "google").await.expect("get"),
        Some(v2),
        "a lost write leaves the row as it was"
    );
    let missing = tokens.put(&row(&u, "github", 2, "d"), Some(1), &[]).await;
    assert!(
        matches!(missing, Err(StoreError::Conflict)),
        "an update of a missing row loses: {missing:?}"
    );
    assert_eq!(tokens.get(&u, "github").await.expect("get"), None);
}

async fn create_when_exists_loses(tokens: Arc<dyn TokenStore>, _log: Arc<dyn FlowLog>) {
    let u = user();
    let first = row(&u, "google", 1, "a");
    tokens.put(&first, None, &[]).await.expect("create");
    let second = tokens.put(&row(&u, "google", 1, "b"), None, &[]).await;
    assert!(matches!(second, Err(StoreError::Conflict)), "{second:?}");
    assert_eq!(tokens.get(&u, "google").await.expect("get"), Some(first));
}

async fn delete_is_conditional(tokens: Arc<dyn TokenStore>, _log: Arc<dyn FlowLog>) {
    let u = user();
    tokens
        .put(&row(&u, "google", 1, "a"), None, &[])
        .await
        .expect("create");
    tokens
        .put(&row(&u, "google", 2, "b"), Some(1), &[])
        .await
        .expect("update");
    let wrong = tokens.delete(&u, "google", 1, &[]).await;
    assert!(matches!(wrong, Err(StoreError::Conflict)), "{wrong:?}");
    assert!(
        tokens.get(&u, "google").await.expect("get").is_some(),
        "still there"
    );
    assert!(
        tokens.delete(&u, "google", 2, &[]).await.expect("delete"),
        "removed"
    );
    assert_eq!(tokens.get(&u, "google").await.expect("get"), None);
    assert!(
        !tokens
            .delete(&u, "google", 2, &[])
            .await
            .expect("delete missing"),
        "nothing to remove"
    );
}

async fn list_by_user(tokens: Arc<dyn TokenStore>, _log: Arc<dyn FlowLog>) {
    let (alice, bob) = (user(), user());
    let a_google = row(&alice, "google", 1, "a");
    let a_github = row(&alice, "github", 1, "b");
    tokens.put(&a_google, None, &[]).await.expect("put");
    tokens.put(&a_github, None, &[]).await.expect("put");
    tokens
        .put(&row(&bob, "google", 1, "c"), None, &[])
        .await
        .expect("put");
    let listed = tokens.list(&alice).await.expect("list");
    assert_eq!(
        listed,
        vec![a_github, a_google],
        "only alice's rows, by provider"
    );
    assert!(tokens.list(&user()).await.expect("list").is_empty());
}

/// `lastUsed` moves without touching the tokens, the version or a lease, and never
/// revives an inactive row's purge time or creates a row.
async fn touch_is_a_partial_update(tokens: Arc<dyn TokenStore>, _log: Arc<dyn FlowLog>) {
    let u = user();
    let r = row(&u, "google", 1, "a");
    tokens.put(&r, None, &[]).await.expect("create");
    let now = 1_800_000_000_000;
    tokens
        .acquire_lease(&u, "google", 1, &lease("a1", now + 1_000), now)
        .await
        .expect("lease");
    let used = r.last_used + chrono::Duration::minutes(5);
    tokens
        .touch(&u, "google", used, r.expires_at + 300)
        .await
        .expect("touch");
    let stored = tokens.get(&u, "google").await.expect("get").expect("row");
    assert_eq!(stored.last_used, used);
    assert_eq!(stored.expires_at, r.expires_at + 300);
    assert_eq!(stored.version, 1, "no version bump");
    assert_eq!(
        stored.refresh.lease,
        Some(lease("a1", now + 1_000)),
        "lease kept"
    );
    assert_eq!(stored.encrypted_tokens, r.encrypted_tokens);
    tokens
        .put_as_holder(&row(&u, "google", 2, "b"), "a1", &[])
        .await
        .expect("the holder's write still lands after a touch");

    let inactive = Connection {
        is_active: false,
        ..row(&user(), "google", 1, "c")
    };
    tokens.put(&inactive, None, &[]).await.expect("create");
    tokens
        .touch(&inactive.user_id, "google", used, inactive.expires_at + 999)
        .await
        .expect("touch of an inactive row is a no-op");
    assert_eq!(
        tokens.get(&inactive.user_id, "google").await.expect("get"),
        Some(inactive)
    );
    let nobody = user();
    tokens
        .touch(&nobody, "google", used, 1)
        .await
        .expect("touch of no row is a no-op");
    assert_eq!(tokens.get(&nobody, "google").await.expect("get"), None);
}

async fn a_replaced_account_is_kept_on_the_row(
    tokens: Arc<dyn TokenStore>,
    _log: Arc<dyn FlowLog>,
) {
    let u = user();
    let r = Connection {
        replaced_account: Some(ReplacedAccount {
            sub: "before".into(),
            email: Some("before@example.com".into()),
            replaced_at: "2026-01-02T03:04:05.678Z".into(),
        }),
        ..row(&u, "google", 1, "r")
    };
    tokens.put(&r, None, &[]).await.expect("create");
    assert_eq!(
        tokens.get(&u, "google").await.expect("get"),
        Some(r.clone())
    );
    assert_eq!(tokens.list(&u).await.expect("list"), vec![r]);
}

/// The scope ledger and grant clocks survive every whole-row write (create, versioned
/// update, the lease holder's write) and every read (get, list, scan), and a partial
/// update (`touch`) leaves them as they were.
async fn the_grant_ledger_is_kept_on_the_row(tokens: Arc<dyn TokenStore>, _log: Arc<dyn FlowLog>) {
    let u = user();
    let at = |text: &str| {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .with_timezone(&Utc)
    };
    let ledger = GrantLedger {
        requested_scopes: vec![
            "openid".into(),
            "email".into(),
            "https://x.test/drive".into(),
        ],
        granted_scopes: vec!["openid".into(), "email".into()],
        requested_changed_at: Some(at("2026-01-02T03:04:05.678Z")),
        scopes_changed_at: Some(at("2026-01-02T03:04:06.001Z")),
        consented_at: Some(at("2026-01-02T03:04:05.678Z")),
        last_refreshed_at: Some(at("2026-01-03T00:00:00Z")),
        refresh_token_expires_at: Some(1_800_000_000),
        expiry_notice_for: Some(1_800_000_100),
        refresh_token_hash: Some("aGFzaA==".into()),
        refresh_token_prefix_hash: Some("cHJlZml4".into()),
        client_id: Some("client-1.apps.example".into()),
        imported_at: Some(at("2026-01-01T00:00:00Z")),
        unverified: true,
        verifying: true,
    };
    let first = Connection {
        grant: ledger.clone(),
        ..row(&u, "google", 1, "r")
    };
    tokens.put(&first, None, &[]).await.expect("create");
    assert_eq!(
        tokens.get(&u, "google").await.expect("get"),
        Some(first.clone())
    );
    assert_eq!(tokens.list(&u).await.expect("list"), vec![first.clone()]);
    let (scanned, _) = scan_all(tokens.as_ref(), 1000).await;
    assert!(scanned.contains(&first), "a scan reads the ledger too");

    let later = at("2026-02-01T00:00:00Z");
    tokens
        .touch(&u, "google", later, 2_000_000_000)
        .await
        .expect("touch");
    let touched = tokens.get(&u, "google").await.expect("get").expect("row");
    assert_eq!(touched.grant, ledger, "touch leaves the ledger alone");

    let second = Connection {
        grant: GrantLedger {
            granted_scopes: ledger.requested_scopes.clone(),
            scopes_changed_at: Some(later),
            ..ledger.clone()
        },
        version: touched.version + 1,
        ..touched.clone()
    };
    tokens
        .put(&second, Some(touched.version), &[])
        .await
        .expect("update");
    assert_eq!(
        tokens.get(&u, "google").await.expect("get"),
        Some(second.clone())
    );

    let attempt = lease("ledger", Utc::now().timestamp_millis() + 60_000);
    tokens
        .acquire_lease(
            &u,
            "google",
            second.version,
            &attempt,
            Utc::now().timestamp_millis(),
        )
        .await
        .expect("lease");
    let third = Connection {
        grant: GrantLedger {
            last_refreshed_at: Some(later),
            ..GrantLedger::default()
        },
        version: second.version + 1,
        refresh: RefreshState::default(),
        ..second.clone()
    };
    tokens
        .put_as_holder(&third, &attempt.attempt, &[])
        .await
        .expect("holder write");
    assert_eq!(
        tokens
            .get(&u, "google")
            .await
            .expect("get")
            .map(|r| r.grant),
        Some(third.grant),
        "emptied fields read back empty"
    );
}

async fn a_scan_pages_through_every_row_once_and_no_flow_item(
    tokens: Arc<dyn TokenStore>,
    _log: Arc<dyn FlowLog>,
) {
    let mut written = Vec::new();
    for i in 0..7 {
        let r = row(
            &user(),
            if i % 2 == 0 { "google" } else { "github" },
            1,
            "s",
        );
        tokens.put(&r, None, &[]).await.expect("create");
        written.push(r);
    }
    let flow = aws::unique("flow");
    tokens
        .mark_once(&flow, "a1", now().timestamp() + 600)
        .await
        .expect("mark");
    tokens
        .put_pending(&pending(&flow, &user(), "p"))
        .await
        .expect("pending");
    let (rows, pages) = scan_all(tokens.as_ref(), 3).await;
    assert!(pages >= 3, "7 rows at 3 a page: {pages} pages");
    let mut seen: Vec<_> = rows
        .iter()
        .map(|r| (r.user_id.clone(), r.provider.clone()))
        .collect();
    seen.sort();
    let total = seen.len();
    seen.dedup();
    assert_eq!(seen.len(), total, "no row twice");
    assert!(
        rows.iter()
            .all(|r| !r.provider.starts_with('#') && !r.user_id.starts_with('#')),
        "no flow item"
    );
    for r in &written {
        assert!(rows.contains(r), "{} is scanned whole", r.user_id);
    }
    assert_eq!(rows.len(), written.len(), "only the rows written");
}

every_backend!(
    create_then_read,
    conditional_update_wins_and_loses,
    create_when_exists_loses,
    delete_is_conditional,
    list_by_user,
    touch_is_a_partial_update,
    a_replaced_account_is_kept_on_the_row,
    the_grant_ledger_is_kept_on_the_row,
    a_scan_pages_through_every_row_once_and_no_flow_item,
);
