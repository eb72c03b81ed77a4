//! Running `parley verify` on a state, and opening a state's stores as a stopped server left them,
//! to leave behind what a crash would.

use std::fmt;
use std::sync::Arc;

use parley_domain::{ConversationId, KeyOwner, Timestamp};
use parley_keys::KeyStore;
use parley_store::{ConversationStore, Job, JobKind};

use super::{Backing, parley};

/// What a `parley verify` run printed, and its exit status.
pub struct Verified {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Verified {
    /// The finding lines whose kind (first word) is `kind`.
    pub fn of(&self, kind: &str) -> Vec<&str> {
        self.findings()
            .into_iter()
            .filter(|l| l.split_whitespace().next() == Some(kind))
            .collect()
    }

    /// Every line but the summary.
    pub fn findings(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| !l.starts_with("summary "))
            .collect()
    }

    /// The summary's value of `name`.
    pub fn summary(&self, name: &str) -> String {
        let line = self
            .stdout
            .lines()
            .find(|l| l.starts_with("summary "))
            .unwrap_or_else(|| panic!("no summary line: {self}"));
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            .to_owned()
    }

    /// Asserts the exit status, showing the output when it is not.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "parley verify exited {}:\n{self}", self.code);
        self
    }
}

impl fmt::Display for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stdout:\n{}stderr:\n{}", self.stdout, self.stderr)
    }
}

impl Backing {
    /// `parley verify` on this state with extra flags.
    pub async fn verify(&self, extra: &[&str]) -> Verified {
        self.verify_with(self.serve_args(), extra).await
    }

    /// `parley verify` on this state's content and blobs, but another key store (under the same
    /// master key).
    pub async fn verify_on_key_store(&self, key_store: &str, extra: &[&str]) -> Verified {
        let mut args = self.serve_args();
        let at = args
            .iter()
            .position(|a| a == "--key-store")
            .expect("a --key-store flag");
        args[at + 1] = key_store.to_owned();
        self.verify_with(args, extra).await
    }

    async fn verify_with(&self, args: Vec<String>, extra: &[&str]) -> Verified {
        let mut command = parley();
        command.arg("verify").args(args).args(extra);
        let out = tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap()
            .expect("parley runs");
        Verified {
            code: out.status.code().expect("an exit status, not a signal"),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts that `parley verify` finds no problem, and returns what it printed.
    pub async fn assert_verifies_clean(&self) -> Verified {
        let verified = self.verify(&[]).await;
        verified.assert_code(0);
        assert_eq!(verified.summary("status"), "clean", "{verified}");
        verified
    }

    /// A key store of its own under this state's master key, holding one key of a conversation
    /// that is nowhere else; its `--key-store` value.
    pub async fn another_key_store(&self) -> String {
        let location = match &self.key_store {
            None => self.key_dir().join("another.slots").display().to_string(),
            Some(_) => super::create_database(&super::need("PARLEY_TEST_POSTGRES_URL"), "parley_keys").await,
        };
        let mut config = self.config().keys;
        config.key_store = location.clone();
        let keys = parley_server::app::open_keys(&config).await.unwrap().store;
        let stranger = KeyOwner::from(ConversationId::from_random(rand::random()));
        keys.create(&stranger, Timestamp::now().plus_secs(-3600))
            .await
            .unwrap();
        location
    }

    /// The content store alone, without the server's sealing: to leave what a crash leaves. Only
    /// while no server runs on an embedded state.
    pub async fn raw_store(&self) -> Arc<dyn ConversationStore> {
        parley_server::app::open_store(&self.config().store)
            .await
            .expect("the content store opens")
    }

    /// The key store, through its API. Only while no server runs on an embedded state (the slot
    /// file has one owner); dropped, it lets the next one open it.
    pub async fn key_store(&self) -> Arc<dyn KeyStore> {
        parley_server::app::open_keys(&self.config().keys)
            .await
            .expect("the key store opens")
            .store
    }
}

/// Claims the conversation's due job of `kind`, as a runner would; panics if any other job is
/// due, so a test never disturbs work it did not mean to.
pub async fn claim(store: &dyn ConversationStore, id: &str, kind: JobKind) -> Job {
    let now = Timestamp::now();
    let mut claimed = store.claim_due_jobs(now, now.plus_secs(60), 1000).await.unwrap();
    assert_eq!(claimed.len(), 1, "other jobs are due: {claimed:?}");
    let job = claimed.remove(0);
    assert_eq!((job.conversation_id.as_str(), job.kind), (id, kind));
    job
}
