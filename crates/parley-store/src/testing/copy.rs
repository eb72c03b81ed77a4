//! Contract tests for copying a store (`parley migrate-store`): keyset-paged export, idempotent
//! import, and serial counters that follow the copied rows.

use std::collections::HashSet;

use parley_domain::{ConversationId, Event, ResourceKind};

use super::resource::{resource, seed_resources};
use super::{
    T0, TestStore, at, conversation, ended_call, finish, recording, seed, usual_jobs, with_callback,
};
use crate::table::{Row, Table, Value};
use crate::{ConversationStore, DeleteScope, JobKind, SoftDeleteOutcome};

/// A store with rows in every table and in most states a row can be in. Returns the job queue
/// it leaves, oldest first.
async fn populate(store: &dyn ConversationStore) -> Vec<(JobKind, ConversationId)> {
    store.ensure_account("acme", at(0)).await.expect("account");
    store
        .set_account_limits("acme", Some(5), Some(7))
        .await
        .expect("limits");
    store
        .set_webhook_secret("acme", Some("whsec_1"))
        .await
        .expect("secret");
    store.ensure_account("other", at(1)).await.expect("account");
    store
        .insert_key("k1", "acme", "hash-a", at(2))
        .await
        .expect("key");
    store
        .insert_key("k2", "other", "hash-b", at(3))
        .await
        .expect("key");
    store.revoke_key("k1", at(4)).await.expect("revoke");

    // Deliveries delivered, waiting to retry, and never tried.
    let done = ended_call(store, "acme", at(10)).await;
    let joined = store.claim_deliveries(at(20), at(80), 10).await.expect("claim");
    store.delivery_succeeded(&joined[0], at(21)).await.expect("sent");
    let shutdown = store.claim_deliveries(at(22), at(82), 10).await.expect("claim");
    let retry = Some(at(1000));
    let failed = store.delivery_failed(&shutdown[0], "503 Service Unavailable", retry, at(23));
    failed.await.expect("failed");
    // Soft-deleted, with its retention job.
    let hidden = ended_call(store, "acme", at(30)).await;
    let soft = store.soft_delete("acme", &hidden.id, at(40), at(1000)).await;
    assert_eq!(soft.expect("soft delete"), SoftDeleteOutcome::Deleted);
    // Live, with people in the room, one who left, and a left timer.
    let live = with_callback(conversation("acme", at(50)));
    seed(store, &live).await;
    for (who, secs) in [("p-live-1", 51), ("p-live-2", 51)] {
        store
            .participant_join(&live.id, who, at(secs))
            .await
            .expect("join");
    }
    for (who, secs) in [("p-live-1", 52), ("p-live-2", 53)] {
        store
            .participant_leave(&live.id, who, at(secs))
            .await
            .expect("leave");
    }
    store
        .participant_join(&live.id, "p-live-3", at(54))
        .await
        .expect("join");
    // Hard-deleted: a receipt, its owed deliveries, and a leased purge.
    let gone = ended_call(store, "other", at(60)).await;
    let scope = DeleteScope::Account("other");
    store
        .hard_delete(scope, &gone.id, at(70), Some(at(2000)))
        .await
        .expect("hard delete");
    let mut rehearsal = with_callback(conversation("other", at(75)));
    rehearsal.test_mode = true;
    store
        .create_conversation(&rehearsal, 5, &[])
        .await
        .expect("create");
    // A job that failed once and waits to run again.
    let claimed = store.claim_due_jobs(at(80), at(3000), 1).await.expect("claim");
    assert_eq!(
        (claimed[0].kind, &claimed[0].conversation_id),
        (JobKind::Finalize, &done.id)
    );
    store
        .fail_job(&claimed[0], "transcriber down", at(90))
        .await
        .expect("fail");

    // Resources: live, soft-deleted, with work under a lease, and one hard-deleted (its purge).
    let mut fetching = resource("acme", ResourceKind::Document, "d0000001", at(91));
    fetching.work_at = Some(at(92));
    fetching.blob_key = Some(format!("resources/{}/content", fetching.row_id));
    let persona = resource("acme", ResourceKind::Persona, "p0000001", at(93));
    let retired = resource("acme", ResourceKind::Replica, "r0000001", at(94));
    let dropped = resource("other", ResourceKind::Guardrail, "g0000001", at(95));
    seed_resources(store, &[&fetching, &persona, &retired, &dropped]).await;
    store
        .claim_resource_work(at(96), at(4000), 1)
        .await
        .expect("claim");
    let k = ResourceKind::Replica;
    assert!(
        store
            .soft_delete_resource("acme", k, "r0000001", at(97))
            .await
            .expect("soft delete")
    );
    let purged = store
        .hard_delete_resource("other", ResourceKind::Guardrail, "g0000001", at(98))
        .await;
    assert_eq!(purged.expect("hard delete"), Some(dropped.row_id));

    let mut jobs = vec![
        (JobKind::Finalize, done.id),
        (JobKind::Finalize, hidden.id.clone()),
        (JobKind::RetentionPurge, hidden.id),
    ];
    jobs.extend(usual_jobs(&live.id).map(|(kind, id)| (kind, id.clone())));
    jobs.extend([
        (JobKind::LeftTimer, live.id.clone()),
        (JobKind::Finalize, gone.id.clone()),
        (JobKind::Purge, gone.id),
    ]);
    jobs
}

/// Every row of a table, a page of `page` rows at a time.
async fn export_all(store: &dyn ConversationStore, table: Table, page: u32) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    loop {
        let next = store.export_rows(table, rows.last(), page).await.expect("export");
        assert!(next.len() <= page as usize, "a page longer than asked for");
        if next.is_empty() {
            return rows;
        }
        rows.extend(next);
    }
}

/// Copies every table, referenced ones first, a page at a time, as `migrate-store` does.
async fn copy_all(from: &dyn ConversationStore, to: &dyn ConversationStore, page: u32) {
    for table in Table::ALL {
        let mut after: Option<Row> = None;
        loop {
            let rows = from
                .export_rows(table, after.as_ref(), page)
                .await
                .expect("export");
            let Some(last) = rows.last().cloned() else {
                break;
            };
            to.import_rows(table, &rows).await.expect("import");
            after = Some(last);
        }
    }
}

/// Asserts that two stores hold the same rows, table by table, and say so through their reads too.
async fn assert_same_rows(from: &dyn ConversationStore, to: &dyn ConversationStore) {
    for table in Table::ALL {
        let (count, copied) = (
            from.count_rows(table).await.expect("count"),
            to.count_rows(table).await.expect("count"),
        );
        assert_eq!(copied, count, "rows in {}", table.name());
        assert!(count > 0, "the fixture leaves {} empty", table.name());
        assert_eq!(
            export_all(to, table, 1000).await,
            export_all(from, table, 1000).await,
            "{}",
            table.name()
        );
    }
    let debug = |items: &dyn std::fmt::Debug| format!("{items:#?}");
    assert_eq!(
        debug(&to.list_accounts().await.expect("accounts")),
        debug(&from.list_accounts().await.expect("accounts"))
    );
    assert_eq!(
        debug(&to.list_keys().await.expect("keys")),
        debug(&from.list_keys().await.expect("keys"))
    );
    assert_eq!(
        debug(&to.list_jobs().await.expect("jobs")),
        debug(&from.list_jobs().await.expect("jobs"))
    );
    assert_eq!(
        debug(&to.list_deliveries(Default::default()).await.expect("deliveries")),
        debug(
            &from
                .list_deliveries(Default::default())
                .await
                .expect("deliveries")
        )
    );
    assert_eq!(
        debug(&to.list_receipts(None).await.expect("receipts")),
        debug(&from.list_receipts(None).await.expect("receipts"))
    );
    for account in ["acme", "other"] {
        let (page, total) = from
            .list_conversations(account, None, 100, 0)
            .await
            .expect("list");
        assert_eq!(
            debug(&to.list_conversations(account, None, 100, 0).await.expect("list")),
            debug(&(&page, total))
        );
        for c in &page {
            assert_eq!(
                debug(&to.list_events(&c.id).await.expect("events")),
                debug(&from.list_events(&c.id).await.expect("events"))
            );
        }
    }
}

/// `export_rows` into `import_rows`, every table, then `count_rows` and every read agree.
pub async fn every_table_copies_into_a_fresh_store_row_for_row<T: TestStore>(fresh: impl AsyncFn() -> T) {
    let (source, target) = (fresh().await, fresh().await);
    let (from, to) = (source.store(), target.store());
    let jobs = populate(&*from).await;
    // Pages of 3: most tables take several, and some end on a full page.
    copy_all(&*from, &*to, 3).await;
    assert_same_rows(&*from, &*to).await;
    // The copy authenticates and serves like the original.
    let account = to.account_for_key("hash-b").await.expect("auth");
    assert_eq!(account.map(|a| a.name), Some("other".to_owned()));
    assert_eq!(to.account_for_key("hash-a").await.expect("auth"), None);

    let jobs: Vec<_> = jobs.iter().map(|(kind, id)| (*kind, id)).collect();
    finish(target, &jobs).await;
    finish(source, &jobs).await;
}

/// `export_rows`: key order, pages of any size, and a resume after a row deleted meanwhile.
pub async fn an_export_pages_by_key_and_visits_every_row_once<T: TestStore>(fresh: impl AsyncFn() -> T) {
    let t = fresh().await;
    let store = t.store();
    store.ensure_account("acme", T0).await.expect("account");
    for i in 0..7 {
        let c = with_callback(conversation("acme", at(i)));
        store.create_conversation(&c, 100, &[]).await.expect("create");
        let joined = Event::replica_joined(at(i), &c.replica_id);
        store.record_join(&c.id, &joined).await.expect("join");
        // Two assets each: the key is (conversation_id, name).
        let mut analysis = recording(&c.id, at(i));
        analysis.name = "perception.json".into();
        for asset in [recording(&c.id, at(i)), analysis] {
            let stored = store.store_call_results(&c.id, &[], Some(&asset)).await;
            assert!(stored.expect("asset"));
        }
    }
    for table in [Table::Conversation, Table::Event, Table::Asset, Table::Delivery] {
        let all = store.export_rows(table, None, 1000).await.expect("export");
        let count = store.count_rows(table).await.expect("count");
        assert_eq!(all.len() as u64, count, "{}", table.name());
        for page in [1, 2, 5] {
            assert_eq!(
                export_all(&*store, table, page).await,
                all,
                "{} by {page}",
                table.name()
            );
        }
        let keys: HashSet<String> = all.iter().map(|row| format!("{:?}", table.key_of(row))).collect();
        assert_eq!(keys.len(), all.len(), "a key seen twice in {}", table.name());
        let last = all.last().expect("rows");
        assert!(
            store
                .export_rows(table, Some(last), 10)
                .await
                .expect("export")
                .is_empty()
        );
    }
    // Serial keys count up.
    for table in [Table::Event, Table::Delivery] {
        let ids: Vec<i64> = store
            .export_rows(table, None, 1000)
            .await
            .expect("export")
            .iter()
            .map(|row| match table.key_of(row)[..] {
                [(_, _, Value::Int(id))] => *id,
                ref other => panic!("not a serial key: {other:?}"),
            })
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }

    // A copy resumes after the last row it took, even if that row is gone by then.
    let first = store
        .export_rows(Table::Conversation, None, 1)
        .await
        .expect("export");
    let Value::Text(id) = &first[0][0] else {
        panic!("conversation_id is text");
    };
    let id = ConversationId::parse(id).expect("an id");
    let gone = store
        .hard_delete(DeleteScope::Account("acme"), &id, at(100), None)
        .await
        .expect("hard delete");
    assert!(matches!(gone, crate::HardDeleteOutcome::Deleted { .. }));
    let rest = store
        .export_rows(Table::Conversation, first.last(), 1000)
        .await
        .expect("export");
    assert_eq!(rest.len(), 6);
    assert_eq!(rest, export_all(&*store, Table::Conversation, 1000).await);
    finish(t, &[(JobKind::Purge, &id)]).await;
}

/// `import_rows` skips rows whose key is there: a copy that stopped half way just runs again.
pub async fn an_import_rerun_after_a_partial_copy_completes_it<T: TestStore>(fresh: impl AsyncFn() -> T) {
    let (source, target) = (fresh().await, fresh().await);
    let (from, to) = (source.store(), target.store());
    let jobs = populate(&*from).await;
    // The first copy stops after the accounts, the keys and a page of conversations.
    for table in [Table::Account, Table::ApiKey] {
        to.import_rows(table, &export_all(&*from, table, 1000).await)
            .await
            .expect("import");
    }
    let page = from
        .export_rows(Table::Conversation, None, 2)
        .await
        .expect("export");
    to.import_rows(Table::Conversation, &page).await.expect("import");
    assert_eq!(to.count_rows(Table::Conversation).await.expect("count"), 2);

    copy_all(&*from, &*to, 4).await;
    assert_same_rows(&*from, &*to).await;
    // A row whose key is already there is skipped, not overwritten, even if it differs.
    let mut jobs_again = export_all(&*from, Table::Job, 1000).await;
    let attempts = Table::Job
        .columns()
        .iter()
        .position(|(column, _)| *column == "attempts")
        .expect("an attempts column");
    jobs_again[0][attempts] = Value::Int(99);
    to.import_rows(Table::Job, &jobs_again)
        .await
        .expect("import again");
    assert_same_rows(&*from, &*to).await;

    let jobs: Vec<_> = jobs.iter().map(|(kind, id)| (*kind, id)).collect();
    finish(target, &jobs).await;
    finish(source, &jobs).await;
}

/// After a copy, new events, deliveries and jobs get ids past the copied ones.
pub async fn a_copied_store_numbers_new_rows_after_the_copied_ones<T: TestStore>(fresh: impl AsyncFn() -> T) {
    let (source, target) = (fresh().await, fresh().await);
    let (from, to) = (source.store(), target.store());
    let mut jobs = populate(&*from).await;
    copy_all(&*from, &*to, 100).await;
    let copied = async |table| export_all(&*to, table, 1000).await;
    let (events, deliveries, queued) = (
        copied(Table::Event).await,
        copied(Table::Delivery).await,
        copied(Table::Job).await,
    );

    // Each of these writes draws from a serial: an id reused from the copy would be a conflict.
    let c = with_callback(conversation("acme", at(100)));
    seed(&*to, &c).await;
    let joined = Event::replica_joined(at(101), &c.replica_id);
    assert!(to.record_join(&c.id, &joined).await.expect("join"));
    for (table, before) in [
        (Table::Event, &events),
        (Table::Delivery, &deliveries),
        (Table::Job, &queued),
    ] {
        let new = to.export_rows(table, before.last(), 100).await.expect("export");
        let expected = if table == Table::Job { 3 } else { 1 };
        assert_eq!(new.len(), expected, "new rows in {}", table.name());
    }
    let sent = to.claim_deliveries(at(102), at(162), 100).await.expect("claim");
    assert!(
        sent.iter().any(|d| d.conversation_id == c.id.as_str()),
        "{sent:?}"
    );

    jobs.extend(usual_jobs(&c.id).map(|(kind, id)| (kind, id.clone())));
    let jobs: Vec<_> = jobs.iter().map(|(kind, id)| (*kind, id)).collect();
    finish(target, &jobs).await;
    finish(source, &jobs[..jobs.len() - 3]).await;
}
