//! The `parley` command.

use anyhow::Context;
use clap::Parser;
use parley_server::cli;
use parley_server::config::{Cli, Command, ServeConfig};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(config) => serve(*config).await,
        Command::Keys(c) => cli::keys(c).await,
        Command::Accounts(c) => cli::accounts(c).await,
        Command::Conversations(c) => cli::conversations(c).await,
        Command::Webhooks(c) => cli::webhooks(c).await,
        Command::MigrateStore(c) => parley_server::migrate::migrate_store(c).await,
        Command::RotateMasterKey(c) => cli::rotate_master_key(c).await,
        Command::EncryptStore(c) => {
            // What it logs (a master key made, what was sealed) is for the operator running it.
            tracing_subscriber::fmt()
                .with_env_filter(EnvFilter::new("info"))
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            parley_server::upgrade::encrypt_store(c).await
        }
        Command::Receipts { store, account } => cli::receipts(store, account).await,
        Command::Jobs { store } => cli::jobs(store).await,
        Command::Verify(c) => {
            // Its own exit codes: 1 means findings remain, so an error that stopped the check is 2.
            let code = match parley_server::verify::verify(c).await {
                Ok(report) if report.clean() => 0,
                Ok(_) => 1,
                Err(e) => {
                    eprintln!("Error: {e:?}");
                    2
                }
            };
            std::process::exit(code);
        }
    }
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.log).context("parsing --log")?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_format == "json" {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let data_dir = config.store.data_dir.clone();
    let server = parley_server::start(config).await?;
    if let Some(path) = &server.new_master_key {
        eprintln!(
            "parley: made a master key in {} (back it up apart from the data and the key store, never beside them; see docs/KEYS.md)",
            path.display()
        );
    }
    if let Some(key) = &server.initial_key {
        eprintln!(
            "parley: created account \"default\" with API key {key} (shown once; send it as x-api-key; more: parley keys create --account NAME)"
        );
    }
    eprintln!(
        "parley: listening on http://{} (data in {})",
        server.addr,
        data_dir.display()
    );
    parley_server::app::stop_signal().await;
    tracing::info!("shutting down: finishing in-flight requests and jobs");
    server.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}
