//! The operator commands of `parley`: keys, accounts, restores, receipts, jobs and master key rotation.

use std::io::Write;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use parley_domain::{ConversationId, Timestamp};
use parley_keys::{KeyError, MasterKey, MasterKeyId, RotationPhase, RotationProgress, UnfinishedRotation};
use parley_store::DeliveryFilter;
use rand::RngCore;

use crate::app::{
    MASTER_KEY_VAR, OpenKeysError, create_key, load_master_key, open_existing_keys, open_store,
    stop_requested,
};
use crate::config::{
    AccountsCommand, ConversationsCommand, KeyConfig, KeysCommand, RotateConfig, StoreConfig, WebhooksCommand,
};
use crate::progress::Progress;

/// `parley keys …`
pub async fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create { store, account } => {
            let account = account.trim();
            if account.is_empty() {
                bail!("--account must not be empty");
            }
            let db = open_store(&store).await?;
            let (key_id, key) = create_key(db.as_ref(), account).await?;
            db.close().await;
            // The key alone on stdout, so `KEY=$(parley keys create …)` works; the rest on stderr.
            println!("{key}");
            eprintln!("created key {key_id} for account {account:?}; it is not shown again");
        }
        KeysCommand::List { store } => {
            let db = open_store(&store).await?;
            let keys = db.list_keys().await?;
            db.close().await;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<14} {:<20} {:<28} REVOKED",
                "KEY_ID", "ACCOUNT", "CREATED"
            )?;
            for k in keys {
                let revoked = k.revoked_at.map_or_else(|| "-".to_owned(), |t| t.to_string());
                writeln!(
                    out,
                    "{:<14} {:<20} {:<28} {revoked}",
                    k.key_id,
                    k.account,
                    k.created_at.to_string()
                )?;
            }
        }
        KeysCommand::Revoke { store, key_id } => {
            let db = open_store(&store).await?;
            let revoked = db.revoke_key(&key_id, Timestamp::now()).await?;
            db.close().await;
            if !revoked {
                bail!("no active key with id {key_id:?}");
            }
            eprintln!("revoked key {key_id}");
        }
    }
    Ok(())
}

/// `parley accounts …`
pub async fn accounts(command: AccountsCommand) -> anyhow::Result<()> {
    match command {
        AccountsCommand::List { store } => {
            let db = open_store(&store).await?;
            let accounts = db.list_accounts().await?;
            db.close().await;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{:<20} {:<16} RETENTION_DAYS", "ACCOUNT", "MAX_CONCURRENT")?;
            let show = |v: Option<u32>| v.map_or_else(|| "default".to_owned(), |n| n.to_string());
            for a in accounts {
                writeln!(
                    out,
                    "{:<20} {:<16} {}",
                    a.name,
                    show(a.max_concurrent),
                    show(a.retention_days)
                )?;
            }
        }
        AccountsCommand::Set {
            store,
            name,
            max_concurrent,
            retention_days,
        } => {
            let db = open_store(&store).await?;
            let found = db
                .set_account_limits(&name, max_concurrent, retention_days)
                .await?;
            db.close().await;
            if !found {
                bail!("no account named {name:?}");
            }
            eprintln!("updated account {name:?}");
        }
    }
    Ok(())
}

/// `parley conversations …`
pub async fn conversations(command: ConversationsCommand) -> anyhow::Result<()> {
    match command {
        ConversationsCommand::Restore {
            store,
            conversation_id,
        } => {
            let id = ConversationId::parse(&conversation_id).context("not a conversation id")?;
            let db = open_store(&store).await?;
            let restored = db.restore(&id, Timestamp::now()).await?;
            db.close().await;
            if !restored {
                bail!("{id} is not a soft-deleted conversation (hard-deleted ones cannot come back)");
            }
            eprintln!("restored {id}");
        }
    }
    Ok(())
}

/// `parley webhooks …`
pub async fn webhooks(command: WebhooksCommand) -> anyhow::Result<()> {
    match command {
        WebhooksCommand::List {
            store,
            conversation,
            failed,
        } => {
            let db = open_store(&store).await?;
            let filter = DeliveryFilter {
                conversation_id: conversation.as_deref(),
                failed_only: failed,
            };
            let deliveries = db.list_deliveries(filter).await?;
            db.close().await;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<18} {:<19} {:<32} {:<10} {:>8} {:<28} LAST_ERROR",
                "DELIVERY_ID", "CONVERSATION_ID", "EVENT_TYPE", "STATUS", "ATTEMPTS", "NEXT_ATTEMPT_AT"
            )?;
            for d in deliveries {
                // A pending delivery whose last attempt failed is what an operator looks for
                // while a receiver is down: it gets its own word.
                let status = match (d.status.as_str(), &d.last_error) {
                    ("pending", Some(_)) => "retrying",
                    (status, _) => status,
                };
                let next = if d.status == "pending" {
                    d.next_attempt_at.to_string()
                } else {
                    "-".into()
                };
                writeln!(
                    out,
                    "{:<18} {:<19} {:<32} {:<10} {:>8} {:<28} {}",
                    d.id,
                    d.conversation_id,
                    d.event_type,
                    status,
                    d.attempts,
                    next,
                    d.last_error.unwrap_or_default()
                )?;
            }
        }
        WebhooksCommand::Retry { store, delivery_id } => {
            let db = open_store(&store).await?;
            let found = db.retry_delivery(&delivery_id, Timestamp::now()).await?;
            db.close().await;
            if !found {
                bail!("no delivery with id {delivery_id:?}");
            }
            eprintln!("queued {delivery_id} again");
        }
        WebhooksCommand::Secret {
            store,
            account,
            clear,
        } => {
            let db = open_store(&store).await?;
            let secret = (!clear).then(|| {
                let mut bytes = [0u8; 32];
                rand::rng().fill_bytes(&mut bytes);
                format!("whsec_{}", hex::encode(bytes))
            });
            let found = db.set_webhook_secret(&account, secret.as_deref()).await?;
            db.close().await;
            if !found {
                bail!("no account named {account:?}");
            }
            match secret {
                Some(secret) => {
                    println!("{secret}");
                    eprintln!("deliveries for {account:?} are now signed (X-Parley-Signature)");
                }
                None => eprintln!("deliveries for {account:?} are no longer signed"),
            }
        }
    }
    Ok(())
}

/// `parley receipts`
pub async fn receipts(store: StoreConfig, account: Option<String>) -> anyhow::Result<()> {
    let db = open_store(&store).await?;
    let receipts = db.list_receipts(account.as_deref()).await?;
    db.close().await;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<34} {:<16} {:<28} {:<18} {:>6} {:>6} {:>12} {:<18} KEY_DESTROYED_AT",
        "CONVERSATION_ID", "ACCOUNT", "ERASED_AT", "REASON", "EVENTS", "ASSETS", "ASSET_BYTES", "KEY_ID"
    )?;
    for r in receipts {
        // A key destroyed before the receipt could name it (or a store from before keys) shows `-`.
        writeln!(
            out,
            "{:<34} {:<16} {:<28} {:<18} {:>6} {:>6} {:>12} {:<18} {}",
            r.conversation_id.as_str(),
            r.account,
            r.erased_at.to_string(),
            r.reason,
            r.events,
            r.assets,
            r.asset_bytes,
            r.key_id.as_deref().unwrap_or("-"),
            r.key_destroyed_at
                .map_or_else(|| "-".to_owned(), |t| t.to_string()),
        )?;
    }
    Ok(())
}

/// `parley jobs`
pub async fn jobs(store: StoreConfig) -> anyhow::Result<()> {
    let db = open_store(&store).await?;
    let jobs = db.list_jobs().await?;
    db.close().await;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<8} {:<16} {:<34} {:<28} {:>8} LAST_ERROR",
        "JOB_ID", "KIND", "CONVERSATION_ID", "RUN_AT", "ATTEMPTS"
    )?;
    for j in jobs {
        writeln!(
            out,
            "{:<8} {:<16} {:<34} {:<28} {:>8} {}",
            j.id,
            j.kind,
            j.conversation_id,
            j.run_at.to_string(),
            j.attempts,
            j.last_error.unwrap_or_default()
        )?;
    }
    Ok(())
}

/// `parley rotate-master-key`: rewraps every data key under a new master key (docs/KEYS.md,
/// "Rotation"); content is not touched.
///
/// Resumable wherever it stopped (a crash, a kill, Ctrl-C): the same command again finishes it.
/// Before the switch the store opens with the old key and the rotation goes on from there; after
/// it only the new key opens the store, so the command opens it with that one and finishes the
/// retire pass.
pub async fn rotate_master_key(c: RotateConfig) -> anyhow::Result<()> {
    let new = new_master_key(&c)?;
    let old = load_master_key(&c.keys)?.with_context(|| {
        format!(
            "the key store's current master key is needed: set {MASTER_KEY_VAR} or --master-key-file \
             (now {}, which does not exist)",
            c.keys.master_key_file.display()
        )
    })?;
    let old_name = master_key_source(&c.keys);
    let keys = match open_existing_keys(&c.keys, old.clone()).await {
        Ok(keys) => keys,
        Err(e) if matches!(e.source, KeyError::RotatedOut { current, .. } if current == new.id()) => {
            eprintln!(
                "the key store has switched over to master key {} already: finishing with it",
                new.id()
            );
            open_existing_keys(&c.keys, new.clone()).await?
        }
        Err(e) => return Err(explain_open_error(e, &new)),
    };
    let status = keys.status().await.context("reading the key store's status")?;
    match status.unfinished_rotation {
        None if status.master_key_id == new.id() => {
            eprintln!(
                "the key store's {} keys are wrapped under master key {} already: nothing to rotate",
                status.keys,
                new.id()
            );
            print_next_steps(old.id(), &old_name, &new, &c);
            keys.close().await;
            return Ok(());
        }
        None => eprintln!(
            "rotating the {} keys of the key store from master key {} to {}",
            status.keys,
            status.master_key_id,
            new.id()
        ),
        Some(UnfinishedRotation::Rewrapping { from, to }) if to == new.id() => {
            eprintln!("resuming the rotation from master key {from} to {to}")
        }
        Some(UnfinishedRotation::Rewrapping { to, .. }) => eprintln!(
            "a rotation to master key {to} was left unfinished: it is abandoned, and every key is \
             rewrapped under {} instead",
            new.id()
        ),
        Some(UnfinishedRotation::Retiring { from, to }) => {
            eprintln!(
                "resuming the rotation from master key {from} to {to}: removing the copies wrapped under {from}"
            )
        }
    }

    // Ctrl-C and SIGTERM stop the rotation at the next durable batch, as a crash would, but
    // with a word on how to resume.
    let stop = Arc::new(AtomicBool::new(false));
    let signal = stop_requested().context("taking over Ctrl-C")?;
    let watcher = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            signal.await;
            stop.store(true, Ordering::SeqCst);
            eprintln!("stopping after the batch under way…");
        }
    });
    let progress = Progress::new(status.keys);
    let phase = Mutex::new(None);
    let report = |p: RotationProgress| {
        let mut seen = phase.lock().expect("phase lock");
        if *seen == Some(p.phase) {
            progress.set(p.done, p.total);
        } else {
            *seen = Some(p.phase);
            let label = match p.phase {
                RotationPhase::Rewrap => "rewrap",
                RotationPhase::Retire => "retire",
            };
            progress.pass(label, p.done, p.total);
        }
        if stop.load(Ordering::SeqCst) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let rotated = keys.rotate(new.clone(), &report).await;
    progress.finish();
    watcher.abort();
    let status = keys.status().await;
    keys.close().await;
    match rotated {
        Ok(()) => {}
        Err(e) => {
            // Which side of the switch it stopped on decides which key opens the store now.
            let switched = status.is_ok_and(|s| s.master_key_id == new.id());
            let now = if switched {
                format!(
                    "it had switched over: the key store now opens only with master key {} (and the \
                     servers too)",
                    new.id()
                )
            } else {
                format!(
                    "it had not switched over: the key store still uses master key {}, and servers \
                     can start with it",
                    old.id()
                )
            };
            let what = match e {
                KeyError::RotationInterrupted => "the rotation was stopped".to_owned(),
                other => format!("the rotation failed: {other}"),
            };
            bail!("{what}; {now}. Run the same command again to resume it.");
        }
    }
    let status = status.context("reading the key store's status")?;
    eprintln!(
        "rotated: the key store's {} keys are wrapped under master key {} alone; master key {} \
         opens nothing in it any more",
        status.keys,
        new.id(),
        old.id()
    );
    print_next_steps(old.id(), &old_name, &new, &c);
    Ok(())
}

/// The master key to rotate to: its file, made first with `--generate`.
fn new_master_key(c: &RotateConfig) -> anyhow::Result<MasterKey> {
    let path = &c.new_master_key_file;
    if path.exists() {
        return Ok(MasterKey::load_file(path)?);
    }
    if !c.generate {
        bail!(
            "the new master key file {} does not exist: make it (openssl rand -base64 32 > FILE; \
             chmod 600 FILE), or add --generate to have parley make it there",
            path.display()
        );
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let key = MasterKey::generate_file(path)?;
    eprintln!(
        "made the new master key {} in {}: keep a copy apart from the data and the key store; once \
         the rotation switches over, losing it loses every conversation",
        key.id(),
        path.display()
    );
    Ok(key)
}

/// Where the current master key came from, as the operator names it.
fn master_key_source(config: &KeyConfig) -> String {
    if std::env::var_os(MASTER_KEY_VAR).is_some() {
        format!("the value of {MASTER_KEY_VAR}")
    } else {
        config.master_key_file.display().to_string()
    }
}

/// A key store that does not open for a rotation, with what to run instead.
fn explain_open_error(e: OpenKeysError, new: &MasterKey) -> anyhow::Error {
    let hint = match &e.source {
        KeyError::RotationUnfinished { from, to } if *to == new.id() => format!(
            "the rotation to master key {to} has not switched over yet, so the store still opens only \
             with master key {from}: give that one as --master-key-file (or {MASTER_KEY_VAR}) and \
             this new key as --new-master-key-file, and the rotation resumes"
        ),
        KeyError::RotationUnfinished { from, to } => format!(
            "a rotation from master key {from} to {to} is unfinished: give {from} as --master-key-file \
             (or {MASTER_KEY_VAR}) to resume or replace it"
        ),
        KeyError::RotatedOut { current, .. } => format!(
            "the key store uses master key {current} now: give that one as --master-key-file (or \
             {MASTER_KEY_VAR}) to rotate it"
        ),
        _ => return e.into(),
    };
    anyhow::Error::new(e).context(hint)
}

/// What an operator does once the keys are rewrapped.
fn print_next_steps(old: MasterKeyId, old_name: &str, new: &MasterKey, c: &RotateConfig) {
    let new_path = c.new_master_key_file.display();
    eprintln!(
        "next:\n  1. start every parley server with the new master key {new_id}: --master-key-file \
         {new_path} (or {MASTER_KEY_VAR} set to its contents). The old key is refused from now on.\n  \
         2. keep a copy of {new_path} apart from the data and the key store (a secret manager, an \
         offline copy).\n  3. destroy the old master key {old} ({old_name}) everywhere it was kept: \
         files, secret managers, password vaults and their backups. Until it is gone, copies of the \
         key store from before this rotation (backups, WAL archives, replicas) still open with it.",
        new_id = new.id(),
    );
}
