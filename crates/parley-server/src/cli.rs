//! The operator commands of `parley`: keys, accounts, restores, receipts and jobs.

use std::io::Write;

use anyhow::{Context, bail};
use parley_domain::{ConversationId, Timestamp};
use parley_store::DeliveryFilter;
use rand::RngCore;

use crate::app::{create_key, open_store};
use crate::config::{AccountsCommand, ConversationsCommand, KeysCommand, StoreConfig, WebhooksCommand};

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
