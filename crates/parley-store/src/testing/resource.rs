//! Contract tests for resources: personas, replicas, documents, guardrails and objectives.

use parley_domain::{ResourceKind, random_id};

use super::{T0, TestStore, at, finish};
use crate::{Resource, StoreError};

/// A `kind` resource of `account` with wire id `id`, created at `created_at`, status `ready`.
pub fn resource(
    account: &str,
    kind: ResourceKind,
    id: &str,
    created_at: parley_domain::Timestamp,
) -> Resource {
    Resource {
        row_id: random_id(parley_domain::resource::ROW_ID_PREFIX, rand::random()),
        account: account.to_owned(),
        kind,
        id: id.to_owned(),
        status: "ready".into(),
        body: format!("{{\"name\": \"{id}\", \"note\": \"café ☕\"}}"),
        version: 1,
        blob_key: None,
        created_at,
        updated_at: created_at,
        deleted_at: None,
        work_at: None,
        locked_until: None,
        attempts: 0,
    }
}

/// Creates the accounts, then the resources.
pub async fn seed_resources(store: &dyn crate::ConversationStore, resources: &[&Resource]) {
    for r in resources {
        store.ensure_account(&r.account, T0).await.expect("account");
        store.create_resource(r).await.expect("create resource");
    }
}

/// `create_resource` and the reads: every field back as written; a wire id once per account and kind.
pub async fn a_created_resource_reads_back_exactly_and_its_id_is_unique_per_account_and_kind<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let mut p = resource("acme", ResourceKind::Document, "d0123456789", T0);
    p.blob_key = Some(format!("resources/{}/content", p.row_id));
    p.status = "processing".into();
    p.work_at = Some(at(5));
    p.attempts = 2;
    seed_resources(&*store, &[&p]).await;

    let got = store
        .get_resource("acme", ResourceKind::Document, "d0123456789")
        .await
        .unwrap();
    assert_eq!(got.as_ref(), Some(&p));
    assert_eq!(store.load_resource(&p.row_id).await.unwrap().as_ref(), Some(&p));
    // Another account, another kind, another id: none of them is this resource.
    assert_eq!(
        store
            .get_resource("other", ResourceKind::Document, "d0123456789")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .get_resource("acme", ResourceKind::Persona, "d0123456789")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .get_resource("acme", ResourceKind::Document, "d01234567")
            .await
            .unwrap(),
        None
    );

    let again = resource("acme", ResourceKind::Document, "d0123456789", at(1));
    let clash = store.create_resource(&again).await;
    assert!(matches!(clash, Err(StoreError::Conflict(_))), "{clash:?}");
    // The same wire id is free in another account and as another kind.
    let theirs = resource("other", ResourceKind::Document, "d0123456789", at(1));
    let persona = resource("acme", ResourceKind::Persona, "d0123456789", at(1));
    seed_resources(&*store, &[&theirs, &persona]).await;
    assert_eq!(
        store
            .get_resource("acme", ResourceKind::Document, "d0123456789")
            .await
            .unwrap()
            .as_ref(),
        Some(&p),
        "the refused create changed nothing"
    );
    finish(t, &[]).await;
}

/// `list_resources`: newest first, one account and kind, soft-deleted left out, paged, with the total.
pub async fn resources_are_listed_newest_first_a_page_at_a_time_with_their_total<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let ours: Vec<Resource> = (0..5)
        .map(|i| resource("acme", ResourceKind::Guardrail, &format!("g00000{i}"), at(i)))
        .collect();
    let theirs = resource("other", ResourceKind::Guardrail, "g999999", at(9));
    let objective = resource("acme", ResourceKind::Objective, "o999999", at(9));
    let mut all: Vec<&Resource> = ours.iter().collect();
    all.extend([&theirs, &objective]);
    seed_resources(&*store, &all).await;
    assert!(
        store
            .soft_delete_resource("acme", ResourceKind::Guardrail, "g000003", at(10))
            .await
            .unwrap()
    );

    let ids = |page: &[Resource]| page.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    let (first, total) = store
        .list_resources("acme", ResourceKind::Guardrail, 2, 0)
        .await
        .unwrap();
    assert_eq!(
        (ids(&first), total),
        (vec!["g000004".into(), "g000002".into()], 4)
    );
    let (second, _) = store
        .list_resources("acme", ResourceKind::Guardrail, 2, 2)
        .await
        .unwrap();
    assert_eq!(ids(&second), ["g000001", "g000000"]);
    let (past, total) = store
        .list_resources("acme", ResourceKind::Guardrail, 2, 10)
        .await
        .unwrap();
    assert_eq!((past.len(), total), (0, 4));
    assert_eq!(first[0], ours[4], "listed rows carry every field");
    finish(t, &[]).await;
}

/// `update_resource`: writes over the version it read, once; a stale or deleted row is left alone.
pub async fn an_update_writes_only_over_the_version_it_read<T: TestStore>(fresh: impl AsyncFn() -> T) {
    let t = fresh().await;
    let store = t.store();
    let p = resource("acme", ResourceKind::Persona, "p0123456", T0);
    seed_resources(&*store, &[&p]).await;

    let mut first = p.clone();
    first.body = "{\"name\": \"first\"}".into();
    first.status = "training".into();
    first.blob_key = Some("resources/x/content".into());
    first.updated_at = at(1);
    first.work_at = Some(at(2));
    first.locked_until = Some(at(3));
    first.attempts = 1;
    let mut second = p.clone();
    second.body = "{\"name\": \"second\"}".into();
    assert!(store.update_resource(&first).await.unwrap());
    assert!(
        !store.update_resource(&second).await.unwrap(),
        "read the old version"
    );

    let got = store
        .get_resource("acme", ResourceKind::Persona, "p0123456")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        Resource {
            version: 2,
            ..first.clone()
        }
    );
    // A write over what was read just now goes through.
    second.version = got.version;
    assert!(store.update_resource(&second).await.unwrap());
    let got = store.load_resource(&p.row_id).await.unwrap().unwrap();
    assert_eq!((got.body.as_str(), got.version), ("{\"name\": \"second\"}", 3));

    assert!(
        store
            .soft_delete_resource("acme", ResourceKind::Persona, "p0123456", at(5))
            .await
            .unwrap()
    );
    let hidden = store.load_resource(&p.row_id).await.unwrap().unwrap();
    let mut late = hidden.clone();
    late.body = "{}".into();
    assert!(
        !store.update_resource(&late).await.unwrap(),
        "a soft-deleted resource is not written"
    );
    finish(t, &[]).await;
}

/// `soft_delete_resource`: hidden from get and list, kept, its id still taken; once only.
pub async fn a_soft_deleted_resource_is_hidden_kept_and_keeps_its_id<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let mut r = resource("acme", ResourceKind::Document, "d0000001", T0);
    r.work_at = Some(at(1));
    seed_resources(&*store, &[&r]).await;

    assert!(
        !store
            .soft_delete_resource("other", ResourceKind::Document, "d0000001", at(2))
            .await
            .unwrap()
    );
    assert!(
        store
            .soft_delete_resource("acme", ResourceKind::Document, "d0000001", at(2))
            .await
            .unwrap()
    );
    assert!(
        !store
            .soft_delete_resource("acme", ResourceKind::Document, "d0000001", at(3))
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .get_resource("acme", ResourceKind::Document, "d0000001")
            .await
            .unwrap(),
        None
    );
    let kept = store.load_resource(&r.row_id).await.unwrap().expect("kept");
    assert_eq!(
        (kept.deleted_at, kept.work_at, kept.body.as_str()),
        (Some(at(2)), None, r.body.as_str())
    );
    assert!(
        store
            .claim_resource_work(at(10), at(20), 10)
            .await
            .unwrap()
            .is_empty(),
        "its work stopped"
    );
    let again = resource("acme", ResourceKind::Document, "d0000001", at(4));
    assert!(matches!(
        store.create_resource(&again).await,
        Err(StoreError::Conflict(_))
    ));
    finish(t, &[]).await;
}

/// `hard_delete_resource`: the row goes, in any state, with a purge left until it is finished.
pub async fn a_hard_delete_removes_the_row_and_leaves_its_purge_until_finished<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let live = resource("acme", ResourceKind::Replica, "r0000001", T0);
    let hidden = resource("acme", ResourceKind::Replica, "r0000002", at(1));
    let theirs = resource("other", ResourceKind::Replica, "r0000001", at(2));
    seed_resources(&*store, &[&live, &hidden, &theirs]).await;
    assert!(
        store
            .soft_delete_resource("acme", ResourceKind::Replica, "r0000002", at(3))
            .await
            .unwrap()
    );

    let k = ResourceKind::Replica;
    assert_eq!(
        store
            .hard_delete_resource("acme", k, "r0000001", at(4))
            .await
            .unwrap(),
        Some(live.row_id.clone())
    );
    assert_eq!(
        store
            .hard_delete_resource("acme", k, "r0000002", at(5))
            .await
            .unwrap(),
        Some(hidden.row_id.clone())
    );
    assert_eq!(
        store
            .hard_delete_resource("acme", k, "r0000001", at(6))
            .await
            .unwrap(),
        None,
        "already gone"
    );
    assert_eq!(
        store
            .hard_delete_resource("acme", k, "r0000009", at(6))
            .await
            .unwrap(),
        None,
        "never was"
    );
    for gone in [&live, &hidden] {
        assert_eq!(store.load_resource(&gone.row_id).await.unwrap(), None);
    }
    assert_eq!(
        store.load_resource(&theirs.row_id).await.unwrap().as_ref(),
        Some(&theirs),
        "another account's twin"
    );
    assert_eq!(
        store.pending_resource_purges(10).await.unwrap(),
        [live.row_id.clone(), hidden.row_id.clone()],
        "oldest first"
    );
    assert_eq!(
        store.pending_resource_purges(1).await.unwrap(),
        vec![live.row_id.clone()]
    );
    store.finish_resource_purge(&live.row_id).await.unwrap();
    store.finish_resource_purge(&live.row_id).await.unwrap();
    assert_eq!(
        store.pending_resource_purges(10).await.unwrap(),
        vec![hidden.row_id.clone()]
    );
    // The id is free again: a pinned id used after a hard delete makes a new resource.
    let reborn = resource("acme", k, "r0000001", at(7));
    store.create_resource(&reborn).await.unwrap();
    finish(t, &[]).await;
}

/// `claim_resource_work`: due, unleased work only, in due order, each claim moving the version on.
pub async fn due_resource_work_is_claimed_once_under_a_lease<T: TestStore>(fresh: impl AsyncFn() -> T) {
    let t = fresh().await;
    let store = t.store();
    let mut early = resource("acme", ResourceKind::Document, "d0000001", T0);
    early.work_at = Some(at(1));
    let mut late = resource("acme", ResourceKind::Document, "d0000002", T0);
    late.work_at = Some(at(2));
    let mut future = resource("acme", ResourceKind::Document, "d0000003", T0);
    future.work_at = Some(at(100));
    let idle = resource("acme", ResourceKind::Document, "d0000004", T0);
    seed_resources(&*store, &[&late, &future, &idle, &early]).await;

    let claimed = store.claim_resource_work(at(10), at(40), 10).await.unwrap();
    let got: Vec<_> = claimed
        .iter()
        .map(|r| (r.id.as_str(), r.attempts, r.version, r.locked_until))
        .collect();
    assert_eq!(
        got,
        [("d0000001", 1, 2, Some(at(40))), ("d0000002", 1, 2, Some(at(40)))]
    );
    assert!(
        store
            .claim_resource_work(at(20), at(50), 10)
            .await
            .unwrap()
            .is_empty(),
        "leased"
    );
    // The holder finishes one; the stale view of the other can no longer write.
    let mut done = claimed[0].clone();
    done.status = "ready".into();
    done.work_at = None;
    done.locked_until = None;
    assert!(store.update_resource(&done).await.unwrap());
    // The other's lease runs out and it is claimed again.
    let again = store.claim_resource_work(at(41), at(80), 10).await.unwrap();
    assert_eq!(
        again
            .iter()
            .map(|r| (r.id.as_str(), r.attempts))
            .collect::<Vec<_>>(),
        [("d0000002", 2)]
    );
    assert!(
        !store.update_resource(&claimed[1]).await.unwrap(),
        "the first claim is stale"
    );
    finish(t, &[]).await;
}
