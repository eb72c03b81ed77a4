//! Contract tests for accounts, their limits, and API keys.

use super::{TestStore, at, finish};
use crate::{Account, StoreError};

/// `has_accounts`, `ensure_account`, `set_account_limits` and `list_accounts`.
pub async fn accounts_are_created_once_and_carry_their_limits<T: TestStore>(fresh: impl AsyncFn() -> T) {
    let t = fresh().await;
    let store = t.store();
    assert!(!store.has_accounts().await.expect("has accounts"));
    assert!(store.ensure_account("default", at(0)).await.expect("ensure"));
    assert!(
        !store
            .ensure_account("default", at(1))
            .await
            .expect("ensure twice")
    );
    assert!(store.ensure_account("acme", at(2)).await.expect("ensure"));
    assert!(store.has_accounts().await.expect("has accounts"));

    // Above i32::MAX, so a backend with signed integers must not truncate it.
    let set = store.set_account_limits("acme", Some(4_000_000_000), Some(7));
    assert!(set.await.expect("limits"));
    assert!(
        !store
            .set_account_limits("nobody", Some(1), None)
            .await
            .expect("limits of an unknown account")
    );
    let account = |name: &str, max_concurrent, retention_days| Account {
        name: name.to_owned(),
        max_concurrent,
        retention_days,
    };
    // Oldest first; setting limits never creates an account.
    assert_eq!(
        store.list_accounts().await.expect("accounts"),
        [
            account("default", None, None),
            account("acme", Some(4_000_000_000), Some(7))
        ]
    );
    // `None` goes back to the server's default.
    assert!(
        store
            .set_account_limits("acme", None, Some(30))
            .await
            .expect("limits")
    );
    assert_eq!(
        store.list_accounts().await.expect("accounts"),
        [account("default", None, None), account("acme", None, Some(30))]
    );
    finish(t, &[]).await;
}

/// `insert_key`, `list_keys`, `account_for_key` and `revoke_key`.
pub async fn keys_authenticate_their_account_until_revoked<T: TestStore>(fresh: impl AsyncFn() -> T) {
    let t = fresh().await;
    let store = t.store();
    store.ensure_account("default", at(0)).await.expect("account");
    store.ensure_account("acme", at(0)).await.expect("account");
    store
        .set_account_limits("acme", Some(3), Some(7))
        .await
        .expect("limits");
    store
        .insert_key("k2", "acme", "hash-b", at(3))
        .await
        .expect("key");
    store
        .insert_key("k1", "acme", "hash-a", at(3))
        .await
        .expect("key");
    store
        .insert_key("k0", "default", "hash-c", at(4))
        .await
        .expect("key");

    // A hash or an id is never stored twice, and a key needs its account.
    let same_hash = store.insert_key("k3", "acme", "hash-a", at(5)).await;
    assert!(matches!(same_hash, Err(StoreError::Conflict(_))), "{same_hash:?}");
    let same_id = store.insert_key("k1", "acme", "hash-d", at(5)).await;
    assert!(matches!(same_id, Err(StoreError::Conflict(_))), "{same_id:?}");
    let orphan = store.insert_key("k4", "nobody", "hash-e", at(5)).await;
    assert!(orphan.is_err(), "a key of an unknown account was stored");

    // Oldest first, ties in id order.
    let keys = store.list_keys().await.expect("keys");
    let listed: Vec<_> = keys
        .iter()
        .map(|k| (k.key_id.as_str(), k.account.as_str(), k.created_at, k.revoked_at))
        .collect();
    assert_eq!(
        listed,
        [
            ("k1", "acme", at(3), None),
            ("k2", "acme", at(3), None),
            ("k0", "default", at(4), None)
        ]
    );
    let found = store.account_for_key("hash-a").await.expect("auth");
    assert_eq!(
        found,
        Some(Account {
            name: "acme".into(),
            max_concurrent: Some(3),
            retention_days: Some(7)
        })
    );
    assert_eq!(store.account_for_key("hash-x").await.expect("auth"), None);

    assert!(store.revoke_key("k1", at(6)).await.expect("revoke"));
    assert!(!store.revoke_key("k1", at(7)).await.expect("revoke twice"));
    assert!(
        !store
            .revoke_key("k9", at(7))
            .await
            .expect("revoke an unknown key")
    );
    assert_eq!(store.account_for_key("hash-a").await.expect("auth"), None);
    // The account's other key still works, and the revoked one is still listed, with when.
    let other = store.account_for_key("hash-b").await.expect("auth");
    assert_eq!(other.map(|a| a.name), Some("acme".to_owned()));
    let revoked: Vec<_> = store
        .list_keys()
        .await
        .expect("keys")
        .into_iter()
        .map(|k| (k.key_id, k.revoked_at))
        .collect();
    assert_eq!(
        revoked,
        [
            ("k1".to_owned(), Some(at(6))),
            ("k2".to_owned(), None),
            ("k0".to_owned(), None)
        ]
    );
    finish(t, &[]).await;
}
