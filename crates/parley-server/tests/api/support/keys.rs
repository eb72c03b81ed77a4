//! Reading a state's key store and sealed content from their bytes, as an operator holding the
//! master key could: to prove what opens and what no longer does.

use std::collections::HashMap;

use parley_domain::{ConversationId, KeyOwner};
use parley_keys::{DataKey, KeyId, MasterKey, content_aad};
use sqlx::Row;

use super::Backing;

/// The slot file's layout (docs/KEYS.md): two 512-byte header copies, then 256-byte slots.
const FIRST_SLOT: usize = 1024;
const SLOT: usize = 256;

/// A data key found in the key store.
pub struct FoundKey {
    pub key_id: String,
    pub key: DataKey,
}

impl Backing {
    /// The master key that the state's servers use.
    pub fn master_key(&self) -> MasterKey {
        MasterKey::load_file(&self.config().keys.master_key_file).expect("the master key file")
    }

    /// Every data key the key store holds, by owner (a conversation's id), read from the store's bytes (the
    /// slot file, without its lock; or the key database's rows) and unwrapped with the master key.
    pub async fn data_keys(&self) -> HashMap<String, FoundKey> {
        self.data_keys_under(&self.master_key()).await
    }

    /// Every data key of the key store's bytes that `master` unwraps, by owner: after a
    /// rotation, none for the old master key.
    pub async fn data_keys_under(&self, master: &MasterKey) -> HashMap<String, FoundKey> {
        let mut found = HashMap::new();
        let add = |found: &mut HashMap<String, FoundKey>, owner: &str, key_id: KeyId, wrapped: &[u8]| {
            let id = KeyOwner::parse(owner).expect("a key owner");
            if let Ok(key) = master.unwrap_key(&id, key_id, wrapped) {
                found.insert(
                    owner.to_owned(),
                    FoundKey {
                        key_id: key_id.to_string(),
                        key,
                    },
                );
            }
        };
        match &self.key_store {
            None => {
                let bytes = std::fs::read(self.key_dir().join("keys.slots")).unwrap_or_default();
                for slot in bytes.get(FIRST_SLOT..).unwrap_or_default().chunks_exact(SLOT) {
                    if slot[0] == 0 {
                        continue;
                    }
                    let len = usize::from(slot[1]).min(33);
                    let Ok(conversation) = std::str::from_utf8(&slot[2..2 + len]) else {
                        continue;
                    };
                    let key_id = KeyId::from_bytes(slot[35..43].try_into().unwrap());
                    // Either wrapped copy may be under the current master key mid-rotation.
                    add(&mut found, conversation, key_id, &slot[59..132]);
                    if slot[0] == 2 && !found.contains_key(conversation) {
                        add(&mut found, conversation, key_id, &slot[140..213]);
                    }
                }
            }
            Some(url) => {
                let pool = sqlx::PgPool::connect(url).await.unwrap();
                let rows =
                    sqlx::query("SELECT conversation_id, data_key_id, wrapped, other_wrapped FROM data_key")
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                for row in rows {
                    let conversation: String = row.get(0);
                    let key_id = KeyId::parse(&row.get::<String, _>(1)).unwrap();
                    add(&mut found, &conversation, key_id, &row.get::<Vec<u8>, _>(2));
                    if let Some(other) = row.get::<Option<Vec<u8>>, _>(3)
                        && !found.contains_key(&conversation)
                    {
                        add(&mut found, &conversation, key_id, &other);
                    }
                }
                pool.close().await;
            }
        }
        found
    }

    /// How many keys the key store holds now, from its bytes or rows: 0 before it exists.
    pub async fn key_count(&self) -> usize {
        match &self.key_store {
            None => {
                let bytes = std::fs::read(self.key_dir().join("keys.slots")).unwrap_or_default();
                let slots = bytes.get(FIRST_SLOT..).unwrap_or_default().chunks_exact(SLOT);
                slots.filter(|slot| slot[0] != 0).count()
            }
            Some(url) => {
                let pool = sqlx::PgPool::connect(url).await.unwrap();
                // The table is made by the first process that opens the key store.
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM data_key")
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(0);
                pool.close().await;
                n as usize
            }
        }
    }

    /// Whether the key store's bytes hold the key id anywhere (a destroyed key must leave none).
    pub async fn key_store_mentions(&self, key_id: &str) -> bool {
        match &self.key_store {
            None => {
                let raw = KeyId::parse(key_id).unwrap().to_bytes();
                let bytes = std::fs::read(self.key_dir().join("keys.slots")).unwrap_or_default();
                bytes.windows(raw.len()).any(|w| w == raw)
            }
            Some(url) => {
                let pool = sqlx::PgPool::connect(url).await.unwrap();
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM data_key WHERE data_key_id = $1")
                    .bind(key_id)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                n > 0
            }
        }
    }

    /// Those of `key_ids` that the key store's bytes hold anywhere: [`Backing::key_store_mentions`]
    /// for many keys, with one read of the store.
    pub async fn key_store_mentioning(&self, key_ids: &[&str]) -> Vec<String> {
        match &self.key_store {
            None => {
                let bytes = std::fs::read(self.key_dir().join("keys.slots")).unwrap_or_default();
                let present: std::collections::HashSet<&[u8]> = bytes.windows(8).collect();
                key_ids
                    .iter()
                    .filter(|k| present.contains(&KeyId::parse(k).unwrap().to_bytes()[..]))
                    .map(|k| (*k).to_owned())
                    .collect()
            }
            Some(url) => {
                let pool = sqlx::PgPool::connect(url).await.unwrap();
                let ids: Vec<String> = key_ids.iter().map(|k| (*k).to_owned()).collect();
                let found: Vec<String> =
                    sqlx::query_scalar("SELECT data_key_id FROM data_key WHERE data_key_id = ANY($1)")
                        .bind(ids)
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                pool.close().await;
                found
            }
        }
    }

    /// Everything of a conversation that opens with the keys the key store holds now, from the
    /// content store's rows and the blob store: its sealed fields, event properties, delivery
    /// bodies and blobs. Empty when its key is gone.
    pub async fn readable_content(&self, id: &str) -> Vec<Vec<u8>> {
        let keys = self.data_keys().await;
        let Some(found) = keys.get(id) else {
            return Vec::new();
        };
        let cid = KeyOwner::from(ConversationId::parse(id).unwrap());
        let open = |field: &str, sealed: &str| {
            found
                .key
                .open_text(&content_aad(&cid, field), sealed)
                .ok()
                .map(String::into_bytes)
        };
        let mut out = Vec::new();
        let db = self.db().await;
        for row in db
            .rows(
                "SELECT conversation_name, conversational_context, custom_greeting, request_json \
                 FROM conversation WHERE conversation_id = ?",
                &[id],
            )
            .await
        {
            let fields = [
                "conversation.conversation_name",
                "conversation.conversational_context",
                "conversation.custom_greeting",
                "conversation.request_json",
            ];
            for (i, field) in fields.into_iter().enumerate() {
                if let Some(sealed) = row.get::<Option<String>, _>(i) {
                    out.extend(open(field, &sealed));
                }
            }
        }
        for row in db
            .rows(
                "SELECT event_type, properties FROM event WHERE conversation_id = ?",
                &[id],
            )
            .await
        {
            let event_type: String = row.get(0);
            if let Ok(serde_json::Value::String(sealed)) = serde_json::from_str(&row.get::<String, _>(1)) {
                out.extend(open(&format!("event.{event_type}.properties"), &sealed));
            }
        }
        for row in db
            .rows(
                "SELECT event_type, payload FROM delivery WHERE conversation_id = ?",
                &[id],
            )
            .await
        {
            let event_type: String = row.get(0);
            let payload: serde_json::Value = serde_json::from_str(&row.get::<String, _>(1)).unwrap();
            if let Some(sealed) = payload["properties"].as_str() {
                out.extend(open(&format!("event.{event_type}.properties"), sealed));
            }
        }
        db.close().await;
        let blobs = self.blobs();
        for key in self.blob_keys(id).await {
            let bytes = blobs.get(&key).await.unwrap();
            if let Ok(plain) = found.key.open(&content_aad(&cid, &format!("blob:{key}")), &bytes) {
                out.push(plain);
            }
        }
        out
    }

    /// Every run of `prefix` and the word characters after it (letters, digits, `-`) in plaintext
    /// anywhere: every file of an embedded state, or every row of a shared one. One pass, for
    /// checks of many markers that share a prefix.
    pub async fn plaintext_words(&self, prefix: &str) -> std::collections::HashSet<String> {
        let word = |text: &[u8], at: usize| {
            let end = text[at..]
                .iter()
                .position(|b| !(b.is_ascii_alphanumeric() || *b == b'-'))
                .map_or(text.len(), |n| at + n);
            String::from_utf8_lossy(&text[at..end]).into_owned()
        };
        let needle = prefix.as_bytes();
        let mut found = std::collections::HashSet::new();
        let mut scan = |text: &[u8]| {
            for at in 0..text.len().saturating_sub(needle.len() - 1) {
                if text[at..].starts_with(needle) {
                    found.insert(word(text, at));
                }
            }
        };
        if self.is_sqlite() {
            let mut stack = vec![self.data_dir().to_owned()];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir).unwrap() {
                    let path = entry.unwrap().path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if let Ok(bytes) = std::fs::read(&path) {
                        scan(&bytes);
                    }
                }
            }
        } else {
            let db = self.db().await;
            for text in db.rows_text_mentioning(prefix).await {
                scan(text.as_bytes());
            }
            db.close().await;
        }
        found
    }

    /// [`Backing::readable`] for many conversations at once, whose markers all start with
    /// `prefix`: the ids whose marker can be read.
    pub async fn readable_among(&self, prefix: &str, wanted: &[(&str, &str)]) -> Vec<String> {
        let plaintext = self.plaintext_words(prefix).await;
        let keys = self.data_keys().await;
        let mut readable = Vec::new();
        for &(id, marker) in wanted {
            assert!(marker.starts_with(prefix));
            let sealed = keys.contains_key(id)
                && self
                    .readable_content(id)
                    .await
                    .iter()
                    .any(|c| c.windows(marker.len()).any(|w| w == marker.as_bytes()));
            if sealed || plaintext.iter().any(|w| w.contains(marker)) {
                readable.push(id.to_owned());
            }
        }
        readable
    }

    /// Whether `marker` can be read from the stored state by any means short of a key store
    /// copy: in plaintext anywhere (every file, or every row), or in the conversation's sealed
    /// content under a key the key store still holds.
    pub async fn readable(&self, id: &str, marker: &str) -> bool {
        let needle = marker.as_bytes();
        self.holds(marker).await
            || self
                .readable_content(id)
                .await
                .iter()
                .any(|c| c.windows(needle.len()).any(|w| w == needle))
    }
}
