//! The flow log: steps in order, paged, and flushed.

use super::*;

async fn flow_log_orders_steps_of_one_instant(_tokens: Arc<dyn TokenStore>, log: Arc<dyn FlowLog>) {
    let u = user();
    let clock = SortKeyClock::default();
    let at = Utc::now();
    let entries: Vec<FlowLogEntry> = (0..40).map(|i| entry(&clock, &u, at, i)).collect();
    for e in &entries {
        log.append(e).await.expect("append");
    }
    log.append(&entry(&clock, &user(), at, 0))
        .await
        .expect("another user");
    log.flush().await.expect("flush");
    let listed = log.list(&u, 100, None).await.expect("list");
    let mut newest_first = entries.clone();
    newest_first.reverse();
    assert_eq!(
        listed, newest_first,
        "every step, newest first, none overwritten"
    );
}

async fn flow_log_pages_with_before(_tokens: Arc<dyn TokenStore>, log: Arc<dyn FlowLog>) {
    let u = user();
    let clock = SortKeyClock::default();
    let entries: Vec<FlowLogEntry> = (0..25).map(|i| entry(&clock, &u, Utc::now(), i)).collect();
    for e in &entries {
        log.append(e).await.expect("append");
    }
    let mut pages = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = log.list(&u, 10, before.as_deref()).await.expect("page");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        before = page.last().map(|e| e.timestamp.clone());
        pages.push(page);
    }
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![10, 10, 5]
    );
    let mut newest_first = entries;
    newest_first.reverse();
    assert_eq!(pages.concat(), newest_first);
    assert!(log.list(&u, 0, None).await.expect("limit 0").is_empty());
}

async fn flush_writes_everything_queued(_tokens: Arc<dyn TokenStore>, log: Arc<dyn FlowLog>) {
    let u = user();
    let clock = SortKeyClock::default();
    let entries: Vec<FlowLogEntry> = (0..12).map(|i| entry(&clock, &u, Utc::now(), i)).collect();
    for e in &entries {
        log.append(e).await.expect("append");
    }
    log.flush().await.expect("flush");
    assert_eq!(
        log.list(&u, 100, None).await.expect("list").len(),
        entries.len()
    );
    // Reading right after a write sees it, flush or not.
    let last = entry(&clock, &u, Utc::now(), 99);
    log.append(&last).await.expect("append");
    let listed = log.list(&u, 1, None).await.expect("list");
    assert_eq!(listed, vec![last]);
}

async fn entries_appended_together_are_all_kept(
    _tokens: Arc<dyn TokenStore>,
    log: Arc<dyn FlowLog>,
) {
    let (u, other) = (user(), user());
    let clock = SortKeyClock::default();
    let at = Utc::now();
    let mixed: Vec<FlowLogEntry> = (0..30)
        .map(|i| entry(&clock, if i % 3 == 0 { &other } else { &u }, at, i))
        .collect();
    log.append_all(&mixed).await.expect("append together");
    log.append_all(&[]).await.expect("nothing to append");
    log.flush().await.expect("flush");
    for who in [&u, &other] {
        let mut want: Vec<FlowLogEntry> = mixed
            .iter()
            .filter(|e| &e.user_id == who)
            .cloned()
            .collect();
        want.reverse();
        assert_eq!(log.list(who, 100, None).await.expect("list"), want, "{who}");
    }
}

every_backend!(
    entries_appended_together_are_all_kept,
    flow_log_orders_steps_of_one_instant,
    flow_log_pages_with_before,
    flush_writes_everything_queued,
);
