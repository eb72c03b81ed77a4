//! Blob storage for conversation assets: every object path comes from `BlobKey`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ClientConfigKey, ObjectStore, RetryConfig};
use parley_domain::ConversationId;

/// Blob store failures.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob not found: {0}")]
    NotFound(String),
    /// A write failed because the filesystem holding the blobs is full.
    #[error("blob store: the disk is full")]
    DiskFull,
    #[error("blob store: {0}")]
    Store(#[from] object_store::Error),
    #[error("blob store setup: {0}")]
    Setup(String),
}

impl BlobError {
    /// Tells a full filesystem (ENOSPC, from the local store) apart from other store failures.
    fn from_write(e: object_store::Error) -> Self {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = cause {
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
            {
                return Self::DiskFull;
            }
            cause = err.source();
        }
        Self::Store(e)
    }
}

/// The one place object paths are made, so purging a conversation is deleting one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobKey {
    /// `conversations/{id}/assets/{asset}`.
    Asset {
        conversation: ConversationId,
        asset: String,
    },
    /// `resources/{row_id}/{name}`: a persona's, replica's or document's content (a fetched
    /// document, say), under the resource's internal row id.
    Resource { row_id: String, name: String },
    /// `write-probe`: a few bytes rewritten only after a full disk, to learn when writes work again.
    WriteProbe,
}

impl BlobKey {
    /// The object path.
    pub fn path(&self) -> String {
        match self {
            Self::Asset { conversation, asset } => format!("conversations/{conversation}/assets/{asset}"),
            Self::Resource { row_id, name } => format!("{}{row_id}/{name}", Self::RESOURCE_ROOT),
            Self::WriteProbe => "write-probe".to_owned(),
        }
    }

    /// The prefix holding every conversation's blobs: all that a store keeps.
    pub const ROOT: &str = "conversations/";

    /// The conversation whose prefix holds a blob, from the blob's key; `None` for a key outside
    /// every conversation's prefix (or under one whose id is malformed).
    pub fn conversation_of(key: &str) -> Option<ConversationId> {
        let (id, rest) = key.strip_prefix(Self::ROOT)?.split_once('/')?;
        if rest.is_empty() {
            return None;
        }
        ConversationId::parse(id).ok()
    }

    /// The prefix holding every resource's blobs.
    pub const RESOURCE_ROOT: &str = "resources/";

    /// The resource row whose prefix holds a blob, from the blob's key; `None` for a key outside
    /// every resource's prefix.
    pub fn resource_of(key: &str) -> Option<&str> {
        let (row_id, rest) = key.strip_prefix(Self::RESOURCE_ROOT)?.split_once('/')?;
        (!rest.is_empty() && !row_id.is_empty()).then_some(row_id)
    }

    /// The prefix holding every blob of a resource.
    pub fn resource_prefix(row_id: &str) -> String {
        format!("{}{row_id}/", Self::RESOURCE_ROOT)
    }

    /// The prefix holding every blob of a conversation.
    pub fn conversation_prefix(conversation: &ConversationId) -> String {
        format!("conversations/{conversation}/")
    }
}

/// A handle on the blob store.
#[derive(Clone, Debug)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
}

impl Blobs {
    /// Blobs in a local folder, created if missing; empty folders are removed after deletes.
    pub fn local(root: &Path) -> Result<Self, BlobError> {
        std::fs::create_dir_all(root)
            .map_err(|e| BlobError::Setup(format!("creating {}: {e}", root.display())))?;
        let fs = LocalFileSystem::new_with_prefix(root)?.with_automatic_cleanup(true);
        Ok(Self { store: Arc::new(fs) })
    }

    /// Blobs in an S3 bucket (or an S3-compatible server), under an optional key prefix.
    ///
    /// Credentials and defaults come from the usual `AWS_*` variables; `endpoint` and `region`
    /// override them. A plain-http endpoint is allowed, for local S3-compatible servers.
    pub fn s3(url: &str, endpoint: Option<&str>, region: Option<&str>) -> Result<Self, BlobError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| BlobError::Setup(format!("{url:?} is not an s3:// URL")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(BlobError::Setup(format!("{url:?} names no bucket")));
        }
        // A request answers or fails within seconds, so an object store that is down becomes a
        // 503 for the client instead of a hang (object_store's defaults retry for minutes).
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(10),
            ..RetryConfig::default()
        };
        // Set key by key: `with_client_options` would replace what `from_env` read, such as
        // `AWS_ALLOW_HTTP`.
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry);
        for (key, value) in [
            (ClientConfigKey::Timeout, "30s"),
            (ClientConfigKey::ConnectTimeout, "3s"),
        ] {
            let key = AmazonS3ConfigKey::Client(key);
            if builder.get_config_value(&key).is_none() {
                builder = builder.with_config(key, value);
            }
        }
        if let Some(endpoint) = endpoint {
            builder = builder
                .with_endpoint(endpoint)
                // S3-compatible servers rarely do virtual-hosted buckets.
                .with_virtual_hosted_style_request(false);
        }
        // A plain-http endpoint, from the flag or `AWS_ENDPOINT_URL`, is a local S3-compatible
        // server: allow it, as the endpoint itself says so.
        let endpoint = builder.get_config_value(&AmazonS3ConfigKey::Endpoint);
        if endpoint.is_some_and(|e| e.starts_with("http://")) {
            builder = builder.with_allow_http(true);
        }
        if let Some(region) = region {
            builder = builder.with_region(region);
        }
        let s3: Arc<dyn ObjectStore> = Arc::new(builder.build()?);
        let prefix = prefix.trim_matches('/');
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            s3
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        };
        Ok(Self { store })
    }

    /// Writes a blob whole.
    pub async fn put(&self, key: &BlobKey, bytes: Bytes) -> Result<(), BlobError> {
        self.store
            .put(&ObjectPath::from(key.path()), bytes.into())
            .await
            .map_err(BlobError::from_write)?;
        Ok(())
    }

    /// Rewrites the few bytes of [`BlobKey::WriteProbe`], to learn whether writes work again.
    pub async fn probe_write(&self) -> Result<(), BlobError> {
        self.put(&BlobKey::WriteProbe, Bytes::from_static(b"ok")).await
    }

    /// Reads a blob whole.
    pub async fn get(&self, key: &str) -> Result<Bytes, BlobError> {
        match self.store.get(&ObjectPath::from(key)).await {
            Ok(r) => Ok(r.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => Err(BlobError::NotFound(key.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes every blob of a conversation; returns how many were deleted. Safe to repeat.
    pub async fn delete_conversation(&self, conversation: &ConversationId) -> Result<usize, BlobError> {
        self.delete_prefix(&BlobKey::conversation_prefix(conversation))
            .await
    }

    /// Deletes every blob of a resource; returns how many were deleted. Safe to repeat.
    pub async fn delete_resource(&self, row_id: &str) -> Result<usize, BlobError> {
        self.delete_prefix(&BlobKey::resource_prefix(row_id)).await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<usize, BlobError> {
        let prefix = ObjectPath::from(prefix);
        let paths: Vec<ObjectPath> = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await?;
        let mut deleted = 0;
        for path in paths {
            match self.store.delete(&path).await {
                Ok(()) => deleted += 1,
                // Another purge got there first.
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(deleted)
    }

    /// Every blob under a prefix, with its size, in no particular order.
    pub async fn list_prefix(&self, prefix: &str) -> Result<Vec<(String, u64)>, BlobError> {
        let prefix = ObjectPath::from(prefix);
        Ok(self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| (meta.location.to_string(), meta.size))
            .try_collect()
            .await?)
    }

    /// Every blob under a prefix, with its size, one at a time: a bucket of millions is never held
    /// whole. The order is the store's (S3: by key; a folder: one directory after another).
    pub fn stream_prefix(&self, prefix: &str) -> BoxStream<'static, Result<(String, u64), BlobError>> {
        let prefix = ObjectPath::from(prefix);
        self.store
            .list(Some(&prefix))
            .map_ok(|meta| (meta.location.to_string(), meta.size))
            .map_err(BlobError::from)
            .boxed()
    }

    /// Writes a blob under a key as listed by [`Blobs::list_prefix`] (for copies between stores).
    pub async fn put_key(&self, key: &str, bytes: Bytes) -> Result<(), BlobError> {
        self.store
            .put(&ObjectPath::from(key), bytes.into())
            .await
            .map_err(BlobError::from_write)?;
        Ok(())
    }

    /// Keys of every blob of a conversation.
    pub async fn list_conversation(&self, conversation: &ConversationId) -> Result<Vec<String>, BlobError> {
        let prefix = ObjectPath::from(BlobKey::conversation_prefix(conversation));
        Ok(self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_that_ran_out_of_space_is_disk_full_and_other_failures_are_not() {
        // What the local store returns when `write_all` hits ENOSPC.
        let enospc = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::from_raw_os_error(28)), // ENOSPC
        };
        assert!(matches!(BlobError::from_write(enospc), BlobError::DiskFull));
        let denied = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
        };
        assert!(matches!(BlobError::from_write(denied), BlobError::Store(_)));
    }

    #[test]
    fn a_blob_key_names_its_conversation_only_when_it_is_under_a_valid_id() {
        let id = ConversationId::parse("c0123abcd").unwrap();
        let key = BlobKey::Asset {
            conversation: id.clone(),
            asset: "recording.wav".into(),
        };
        assert_eq!(BlobKey::conversation_of(&key.path()), Some(id));
        for stray in [
            "write-probe",
            "conversations/",
            "conversations/c0123abcd",
            "conversations/c0123abcd/",
            "conversations/NOT-AN-ID/assets/x",
            "elsewhere/c0123abcd/assets/x",
        ] {
            assert_eq!(BlobKey::conversation_of(stray), None, "{stray}");
        }
    }

    #[test]
    fn a_blob_key_names_its_resource_only_when_it_is_under_a_resource_prefix() {
        let key = BlobKey::Resource {
            row_id: "s0123456789abcdef".into(),
            name: "content".into(),
        };
        assert_eq!(key.path(), "resources/s0123456789abcdef/content");
        assert_eq!(BlobKey::resource_of(&key.path()), Some("s0123456789abcdef"));
        assert_eq!(BlobKey::conversation_of(&key.path()), None);
        for stray in [
            "resources/",
            "resources/s01",
            "resources/s01/",
            "resources//x",
            "conversations/c0123abcd/assets/x",
        ] {
            assert_eq!(BlobKey::resource_of(stray), None, "{stray}");
        }
    }

    #[tokio::test]
    async fn deleting_a_resource_removes_only_its_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::local(dir.path()).unwrap();
        let conversation = BlobKey::Asset {
            conversation: ConversationId::parse("c111111").unwrap(),
            asset: "recording.wav".into(),
        };
        blobs
            .put(&conversation, Bytes::from_static(b"RIFF"))
            .await
            .unwrap();
        for row_id in ["s1111111", "s11111112"] {
            let key = BlobKey::Resource {
                row_id: row_id.into(),
                name: "content".into(),
            };
            blobs.put(&key, Bytes::from_static(b"%PDF")).await.unwrap();
        }
        assert_eq!(blobs.delete_resource("s1111111").await.unwrap(), 1);
        assert_eq!(blobs.delete_resource("s1111111").await.unwrap(), 0);
        let left: Vec<String> = blobs
            .list_prefix("")
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(blobs.get(&conversation.path()).await.is_ok());
        assert!(blobs.get("resources/s11111112/content").await.is_ok());
    }

    #[tokio::test]
    async fn deleting_a_conversation_removes_only_its_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::local(dir.path()).unwrap();
        let a = ConversationId::parse("c111111").unwrap();
        let b = ConversationId::parse("c222222").unwrap();
        for c in [&a, &b] {
            let key = BlobKey::Asset {
                conversation: c.clone(),
                asset: "recording.wav".into(),
            };
            blobs.put(&key, Bytes::from_static(b"RIFF")).await.unwrap();
        }
        assert_eq!(blobs.delete_conversation(&a).await.unwrap(), 1);
        assert_eq!(blobs.delete_conversation(&a).await.unwrap(), 0);
        assert!(blobs.list_conversation(&a).await.unwrap().is_empty());
        assert_eq!(blobs.list_conversation(&b).await.unwrap().len(), 1);
        assert!(!dir.path().join("conversations/c111111").exists());
    }
}
