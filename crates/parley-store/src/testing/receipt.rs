//! Contract tests for erasure receipts: what remains of a hard-deleted conversation.

use super::{T0, TestStore, at, conversation, ended_call, finish, hard_delete, seed};
use crate::{DeleteScope, ErasureReceipt, HardDeleteOutcome, JobKind, SoftDeleteOutcome};

/// `list_receipts`: every field, newest first, for one account or all.
pub async fn erasure_receipts_say_who_when_and_how_much_newest_first_per_account<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let a = ended_call(&*store, "acme", T0).await;
    let theirs = ended_call(&*store, "other", T0).await;
    let expiring = ended_call(&*store, "acme", T0).await;
    let live = conversation("acme", T0);
    seed(&*store, &live).await;

    let (ra, _) = hard_delete(&*store, &a, at(10)).await;
    let (rt, _) = hard_delete(&*store, &theirs, at(20)).await;
    let soft = store.soft_delete("acme", &expiring.id, at(25), at(30)).await;
    assert_eq!(soft.expect("soft delete"), SoftDeleteOutcome::Deleted);
    let retention = DeleteScope::RetentionExpired { deleted_at: at(25) };
    let outcome = store.hard_delete(retention, &expiring.id, at(30), None).await;
    let Ok(HardDeleteOutcome::Deleted { receipt: re, .. }) = outcome else {
        panic!("not deleted: {outcome:?}");
    };
    let (rl, _) = hard_delete(&*store, &live, at(40)).await;

    let row = |r: &ErasureReceipt| {
        (
            r.conversation_id.to_string(),
            r.account.clone(),
            r.erased_at,
            r.reason.clone(),
            r.events,
            r.assets,
            r.asset_bytes,
        )
    };
    let expect =
        |id: &parley_domain::ConversationId, account: &str, secs, reason: &str, counts: (u64, u64, u64)| {
            (
                id.to_string(),
                account.to_owned(),
                at(secs),
                reason.to_owned(),
                counts.0,
                counts.1,
                counts.2,
            )
        };
    // What hard_delete returned is what is kept.
    for (returned, expected) in [
        (&ra, expect(&a.id, "acme", 10, "hard_delete", (4, 1, 48_044))),
        (
            &rt,
            expect(&theirs.id, "other", 20, "hard_delete", (4, 1, 48_044)),
        ),
        (
            &re,
            expect(&expiring.id, "acme", 30, "retention_expired", (4, 1, 48_044)),
        ),
        // A live call: only the shutdown its delete wrote, and no asset.
        (&rl, expect(&live.id, "acme", 40, "hard_delete", (1, 0, 0))),
    ] {
        assert_eq!(row(returned), expected);
    }
    let listed = async |account| {
        let receipts = store.list_receipts(account).await.expect("receipts");
        receipts.iter().map(row).collect::<Vec<_>>()
    };
    assert_eq!(listed(None).await, [row(&rl), row(&re), row(&rt), row(&ra)]);
    assert_eq!(listed(Some("acme")).await, [row(&rl), row(&re), row(&ra)]);
    assert_eq!(listed(Some("other")).await, [row(&rt)]);
    assert!(listed(Some("nobody")).await.is_empty());

    finish(
        t,
        &[
            (JobKind::Finalize, &a.id),
            (JobKind::Finalize, &theirs.id),
            (JobKind::Finalize, &expiring.id),
            (JobKind::Purge, &a.id),
            (JobKind::Purge, &theirs.id),
            (JobKind::Purge, &expiring.id),
            (JobKind::Purge, &live.id),
        ],
    )
    .await;
}

/// `record_key_destroyed`: the key id is written first and the time once the key is gone; what is
/// recorded stays, and a conversation without a receipt records nothing.
pub async fn a_receipt_records_its_destroyed_key_once<T: TestStore>(fresh: impl AsyncFn() -> T) {
    let t = fresh().await;
    let store = t.store();
    let c = ended_call(&*store, "acme", T0).await;
    let (receipt, _) = hard_delete(&*store, &c, at(10)).await;
    assert_eq!((receipt.key_id, receipt.key_destroyed_at), (None, None));
    let recorded = async || {
        let receipts = store.list_receipts(None).await.expect("receipts");
        let r = &receipts[0];
        (r.key_id.clone(), r.key_destroyed_at)
    };

    let first = store
        .record_key_destroyed(&c.id, Some("k0011223344556677"), None)
        .await;
    assert!(first.expect("record the key id"));
    assert_eq!(recorded().await, (Some("k0011223344556677".into()), None));
    let done = store.record_key_destroyed(&c.id, None, Some(at(11))).await;
    assert!(done.expect("record the time"));
    assert_eq!(recorded().await, (Some("k0011223344556677".into()), Some(at(11))));
    // A second purge run changes nothing that was recorded.
    let again = store
        .record_key_destroyed(&c.id, Some("k8899aabbccddeeff"), Some(at(20)))
        .await;
    assert!(again.expect("record again"));
    assert_eq!(recorded().await, (Some("k0011223344556677".into()), Some(at(11))));

    let live = conversation("acme", T0);
    seed(&*store, &live).await;
    let none = store
        .record_key_destroyed(&live.id, Some("k0011223344556677"), Some(at(12)))
        .await;
    assert!(!none.expect("no receipt"));
    assert_eq!(store.list_receipts(None).await.expect("receipts").len(), 1);

    finish(
        t,
        &[
            (JobKind::Finalize, &c.id),
            (JobKind::Purge, &c.id),
            (JobKind::JoinReplica, &live.id),
            (JobKind::MaxDurationTimer, &live.id),
            (JobKind::AbsentTimer, &live.id),
        ],
    )
    .await;
}
