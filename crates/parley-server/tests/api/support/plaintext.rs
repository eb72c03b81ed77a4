//! Making a state look as a parley from before sealing left it: content in plaintext and no key
//! store. Every sealed value is opened with the state's keys and written back as plaintext.

use parley_blobs::BlobKey;
use parley_domain::{ConversationId, KeyOwner};
use parley_keys::content_aad;
use serde_json::Value;
use sqlx::Row;

use super::Backing;

/// The sealed columns of a conversation row, in the order the queries below name them.
const FIELDS: [&str; 4] = [
    "conversation_name",
    "conversational_context",
    "custom_greeting",
    "request_json",
];

impl Backing {
    /// Puts the stopped state back as an older parley wrote it: every sealed field, event
    /// property, delivery body and blob replaced by its plaintext, then the key store (and the
    /// embedded store's master key) removed.
    pub async fn unseal(&self) {
        let keys = self.data_keys().await;
        let open = |id: &str, field: &str, sealed: &str| -> String {
            let cid = KeyOwner::from(ConversationId::parse(id).unwrap());
            keys[id]
                .key
                .open_text(&content_aad(&cid, field), sealed)
                .expect("a sealed value opens")
        };
        let db = self.db_writable().await;
        let rows = db
            .rows(
                "SELECT conversation_id, conversation_name, conversational_context, custom_greeting, \
                 request_json FROM conversation",
                &[],
            )
            .await;
        for row in rows {
            let id: String = row.get(0);
            let plain: Vec<Option<String>> = FIELDS
                .iter()
                .enumerate()
                .map(|(i, field)| {
                    let sealed: Option<String> = row.get(i + 1);
                    sealed.map(|v| open(&id, &format!("conversation.{field}"), &v))
                })
                .collect();
            db.execute(
                "UPDATE conversation SET conversation_name = ?, conversational_context = ?, \
                 custom_greeting = ?, request_json = ? WHERE conversation_id = ?",
                &[
                    plain[0].as_deref(),
                    plain[1].as_deref(),
                    plain[2].as_deref(),
                    plain[3].as_deref(),
                    Some(&id),
                ],
            )
            .await;
        }
        for row in db
            .rows("SELECT conversation_id, event_type, properties FROM event", &[])
            .await
        {
            let (id, event_type, properties): (String, String, String) = (row.get(0), row.get(1), row.get(2));
            let Value::String(sealed) = serde_json::from_str(&properties).unwrap() else {
                continue;
            };
            let plain = open(&id, &format!("event.{event_type}.properties"), &sealed);
            let changed = db
                .execute(
                    "UPDATE event SET properties = ? WHERE conversation_id = ? AND event_type = ?",
                    &[Some(&plain), Some(&id), Some(&event_type)],
                )
                .await;
            assert_eq!(changed, 1, "one {event_type} event");
        }
        for row in db
            .rows(
                "SELECT delivery_id, conversation_id, event_type, payload FROM delivery",
                &[],
            )
            .await
        {
            let (delivery, id, event_type): (String, String, String) = (row.get(0), row.get(1), row.get(2));
            let mut envelope: Value = serde_json::from_str(&row.get::<String, _>(3)).unwrap();
            let Some(sealed) = envelope["properties"].as_str() else {
                continue;
            };
            let plain = open(&id, &format!("event.{event_type}.properties"), sealed);
            envelope["properties"] = serde_json::from_str(&plain).unwrap();
            db.execute(
                "UPDATE delivery SET payload = ? WHERE delivery_id = ?",
                &[Some(&envelope.to_string()), Some(&delivery)],
            )
            .await;
        }
        db.close().await;
        let blobs = self.blobs();
        for (blob_key, _) in blobs.list_prefix(BlobKey::ROOT).await.unwrap() {
            let id = blob_key.split('/').nth(1).unwrap();
            let cid = KeyOwner::from(ConversationId::parse(id).unwrap());
            let sealed = blobs.get(&blob_key).await.unwrap();
            let plain = keys[id]
                .key
                .open(&content_aad(&cid, &format!("blob:{blob_key}")), &sealed)
                .expect("a sealed blob opens");
            blobs.put_key(&blob_key, plain.into()).await.unwrap();
        }
        self.forget_keys().await;
    }

    /// Removes the key store: an older parley had none.
    async fn forget_keys(&self) {
        match &self.key_store {
            None => {
                std::fs::remove_file(self.key_dir().join("keys.slots")).unwrap();
                std::fs::remove_file(self.config().keys.master_key_file).unwrap();
            }
            // The master key stays: a shared key store takes it from the operator.
            Some(url) => {
                let pool = sqlx::PgPool::connect(url).await.unwrap();
                sqlx::query("DROP TABLE data_key, key_store, _sqlx_migrations")
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
            }
        }
    }
}
