//! Contract tests for durable jobs: claims, leases, fencing of stale claims, retries and release.

use std::collections::HashSet;
use std::sync::Arc;

use parley_domain::Event;
use tokio::task::JoinSet;

use super::{T0, TestStore, at, conversation, finish, jobs_of, seed, usual_jobs, with_callback};
use crate::{JobId, JobKind};

/// `claim_due_jobs`: due jobs only, in run order, `limit` at a time, each leased once.
pub async fn due_jobs_are_claimed_in_run_order_under_a_lease<T: TestStore>(fresh: impl AsyncFn() -> T) {
    let t = fresh().await;
    let store = t.store();
    store.ensure_account("acme", T0).await.expect("account");
    let c = conversation("acme", T0);
    let jobs = [
        (JobKind::MaxDurationTimer, at(30)),
        (JobKind::JoinReplica, at(0)),
        (JobKind::AbsentTimer, at(10)),
    ];
    store.create_conversation(&c, 10, &jobs).await.expect("create");

    let claimed = store.claim_due_jobs(at(5), at(65), 10).await.expect("claim");
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    let join = &claimed[0];
    assert_eq!(
        (join.kind, &join.conversation_id, join.not_before, join.attempts),
        (JobKind::JoinReplica, &c.id, None, 1)
    );
    assert_eq!(
        jobs_of(&*store, &c.id).await,
        [
            (JobKind::MaxDurationTimer, at(30), None, None, 0),
            (JobKind::JoinReplica, at(0), None, Some(at(65)), 1),
            (JobKind::AbsentTimer, at(10), None, None, 0),
        ]
    );
    // Leased: not handed out again while the lease lasts.
    assert!(
        store
            .claim_due_jobs(at(6), at(66), 10)
            .await
            .expect("claim")
            .is_empty()
    );

    let first = store.claim_due_jobs(at(40), at(100), 1).await.expect("claim");
    let second = store.claim_due_jobs(at(40), at(100), 1).await.expect("claim");
    let kinds: Vec<_> = first.iter().chain(&second).map(|j| j.kind).collect();
    assert_eq!(kinds, [JobKind::AbsentTimer, JobKind::MaxDurationTimer]);
    assert!(
        store
            .claim_due_jobs(at(40), at(100), 1)
            .await
            .expect("claim")
            .is_empty()
    );

    // A batch comes back in id order.
    let d = conversation("acme", T0);
    let same_time = [
        (JobKind::JoinReplica, at(50)),
        (JobKind::MaxDurationTimer, at(50)),
        (JobKind::AbsentTimer, at(50)),
    ];
    store
        .create_conversation(&d, 10, &same_time)
        .await
        .expect("create");
    let batch = store.claim_due_jobs(at(50), at(110), 10).await.expect("claim");
    let ids: Vec<JobId> = batch.iter().map(|j| j.id).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!((ids.len(), &ids), (3, &sorted));
    assert!(batch.iter().all(|j| j.conversation_id == d.id && j.attempts == 1));

    store.complete_job(join).await.expect("complete");
    let mut expected = vec![(JobKind::MaxDurationTimer, &c.id), (JobKind::AbsentTimer, &c.id)];
    expected.extend(usual_jobs(&d.id));
    finish(t, &expected).await;
}

/// Fencing: a runner whose lease expired and was claimed again cannot finish or fail the job.
pub async fn an_expired_lease_is_claimed_again_and_the_stale_claim_can_no_longer_finish_the_job<
    T: TestStore,
>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    store.ensure_account("acme", T0).await.expect("account");
    let c = conversation("acme", T0);
    let join = [(JobKind::JoinReplica, T0)];
    store.create_conversation(&c, 10, &join).await.expect("create");

    let first = store.claim_due_jobs(at(1), at(11), 10).await.expect("claim");
    assert_eq!(first.len(), 1);
    assert!(
        store
            .claim_due_jobs(at(10), at(20), 10)
            .await
            .expect("claim")
            .is_empty()
    );
    // The first runner died: once its lease is over another takes the job.
    let second = store.claim_due_jobs(at(11), at(21), 10).await.expect("claim");
    assert_eq!(second.len(), 1);
    assert_eq!((second[0].id, second[0].attempts), (first[0].id, 2));

    // The first runner wakes up late: its claim is stale, so it cannot undo the new one.
    store
        .fail_job(&first[0], "stale", at(12))
        .await
        .expect("stale fail");
    store.complete_job(&first[0]).await.expect("stale complete");
    let listed = store.list_jobs().await.expect("jobs");
    assert_eq!(
        (listed.len(), listed[0].last_error.as_deref()),
        (1, None),
        "the stale calls changed nothing"
    );
    assert_eq!(
        jobs_of(&*store, &c.id).await,
        [(JobKind::JoinReplica, T0, None, Some(at(21)), 2)]
    );
    // The current claim can.
    store.complete_job(&second[0]).await.expect("complete");
    finish(t, &[]).await;
}

/// `fail_job`: released to run again at `retry_at`, attempts kept, the error shown to operators.
pub async fn a_failed_job_runs_again_at_its_retry_time_with_its_error_recorded<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    store.ensure_account("acme", T0).await.expect("account");
    let c = conversation("acme", T0);
    let join = [(JobKind::JoinReplica, T0)];
    store.create_conversation(&c, 10, &join).await.expect("create");

    let first = store.claim_due_jobs(at(1), at(61), 10).await.expect("claim");
    store
        .fail_job(&first[0], "replica unavailable", at(30))
        .await
        .expect("fail");
    assert_eq!(
        jobs_of(&*store, &c.id).await,
        [(JobKind::JoinReplica, at(30), None, None, 1)]
    );
    let last_error = async || store.list_jobs().await.expect("jobs")[0].last_error.clone();
    assert_eq!(last_error().await.as_deref(), Some("replica unavailable"));
    assert!(
        store
            .claim_due_jobs(at(29), at(89), 10)
            .await
            .expect("claim")
            .is_empty()
    );
    let second = store.claim_due_jobs(at(30), at(90), 10).await.expect("claim");
    assert_eq!((second[0].id, second[0].attempts), (first[0].id, 2));
    // While it runs again, operators still see why it was retried.
    assert_eq!(last_error().await.as_deref(), Some("replica unavailable"));

    store
        .fail_job(&second[0], "still unavailable", at(60))
        .await
        .expect("fail");
    assert_eq!(last_error().await.as_deref(), Some("still unavailable"));
    let third = store.claim_due_jobs(at(60), at(120), 10).await.expect("claim");
    assert_eq!(third[0].attempts, 3);
    store.complete_job(&third[0]).await.expect("complete");
    finish(t, &[]).await;
}

/// `release_all_leases`: every job and delivery lease goes, and it says how many there were.
pub async fn releasing_all_leases_makes_every_claimed_job_and_delivery_claimable_at_once<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let c = with_callback(conversation("acme", T0));
    seed(&*store, &c).await;
    let joined = Event::replica_joined(at(1), &c.replica_id);
    store.record_join(&c.id, &joined).await.expect("join");

    // The join and the absent timer are due; the duration timer is not.
    let jobs = store.claim_due_jobs(at(400), at(1000), 10).await.expect("claim");
    let deliveries = store
        .claim_deliveries(at(400), at(1000), 10)
        .await
        .expect("claim");
    assert_eq!((jobs.len(), deliveries.len()), (2, 1));
    // A document being fetched holds a lease too.
    let mut doc = super::resource::resource("acme", parley_domain::ResourceKind::Document, "d0000001", T0);
    doc.work_at = Some(at(1));
    store.create_resource(&doc).await.expect("create resource");
    let fetching = store
        .claim_resource_work(at(400), at(1000), 10)
        .await
        .expect("claim");
    assert_eq!(fetching.len(), 1);
    assert_eq!(store.release_all_leases().await.expect("release"), 4);
    let again = store
        .claim_resource_work(at(401), at(1000), 10)
        .await
        .expect("claim");
    assert_eq!(
        again.iter().map(|r| r.attempts).collect::<Vec<_>>(),
        [2],
        "claimable at once"
    );
    let leases: Vec<_> = jobs_of(&*store, &c.id)
        .await
        .into_iter()
        .map(|j| (j.3, j.4))
        .collect();
    assert_eq!(leases, [(None, 1), (None, 0), (None, 1)]);

    let jobs = store.claim_due_jobs(at(401), at(1000), 10).await.expect("claim");
    let deliveries = store
        .claim_deliveries(at(401), at(1000), 10)
        .await
        .expect("claim");
    let attempts: Vec<_> = jobs.iter().map(|j| j.attempts).collect();
    assert_eq!((attempts, deliveries[0].attempts), (vec![2, 2], 2));
    assert_eq!(store.release_all_leases().await.expect("release"), 4);
    assert_eq!(store.release_all_leases().await.expect("release again"), 0);
    finish(t, &usual_jobs(&c.id)).await;
}

/// Racing claimers on one store: every due job is handed out exactly once.
pub async fn concurrent_claimers_never_get_the_same_job<T: TestStore>(fresh: impl AsyncFn() -> T) {
    let t = fresh().await;
    let store = t.store();
    let mut made = Vec::new();
    for i in 0..100 {
        // Made long enough ago that all three of its jobs are due.
        let c = conversation("acme", at(-4000 - i));
        seed(&*store, &c).await;
        made.push(c);
    }
    let all: HashSet<JobId> = store
        .list_jobs()
        .await
        .expect("jobs")
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(all.len(), 300);

    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let jobs = store.claim_due_jobs(T0, at(120), 7).await.expect("claim");
                if jobs.is_empty() {
                    return mine;
                }
                mine.extend(jobs.into_iter().map(|j| j.id));
            }
        });
    }
    let mut claimed = Vec::new();
    while let Some(done) = tasks.join_next().await {
        claimed.extend(done.expect("task"));
    }
    let unique: HashSet<JobId> = claimed.iter().copied().collect();
    assert_eq!(unique.len(), claimed.len(), "a job was claimed twice");
    assert_eq!(unique, all);
    let leases: HashSet<_> = store
        .list_jobs()
        .await
        .expect("jobs")
        .into_iter()
        .map(|j| (j.locked_until, j.attempts))
        .collect();
    assert_eq!(leases, HashSet::from([(Some(at(120)), 1)]));
    let expected: Vec<_> = made.iter().flat_map(|c| usual_jobs(&c.id)).collect();
    finish(t, &expected).await;
}
