//! The `sealpost` command line: a thin layer over the library.
#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sealpost::admin::{self, Request, Response};
use sealpost::config::Config;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Sealpost: an SMTP mail transfer agent with policy-driven, per-recipient encryption.
#[derive(Parser)]
#[command(name = "sealpost", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the MTA (embedded default config when --config is not given).
    Serve {
        /// Configuration file (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and exit 0 if it is valid.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Inspect and manage the queue (works while the server runs).
    Queue {
        #[command(subcommand)]
        action: QueueAction,
        /// Configuration file whose spool_dir holds the queue (default: the embedded config).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Manage SMTP AUTH users.
    Users {
        #[command(subcommand)]
        action: UsersAction,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// List queued messages and their recipients' status.
    List,
    /// Show one message's envelope.
    Show {
        /// Queue id.
        id: String,
    },
    /// Retry a message now.
    Retry {
        /// Queue id.
        id: String,
    },
    /// Delete a message (no delivery, no bounce).
    Delete {
        /// Queue id.
        id: String,
    },
}

#[derive(Subcommand)]
enum UsersAction {
    /// Read a password from stdin and print its argon2 hash for a [[user]] entry.
    Hash,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sealpost: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes joined with ": ", skipping a cause whose text is already said
/// (io errors wrapped with their own message would otherwise print twice).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { config } => {
            let c = Config::load(&config)?;
            println!(
                "{}: OK ({} listener(s), {} local domain(s), {} route(s))",
                config.display(),
                c.listener.len(),
                c.relay.local_domains.len(),
                c.route.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue {
            action,
            config,
            json,
        } => queue(action, config.as_deref(), json),
        Command::Users {
            action: UsersAction::Hash,
        } => {
            let mut password = String::new();
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprint!("Password: ");
            }
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!password.is_empty(), "empty password");
            let hash = sealpost::inbound::hash_password(password)
                .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))?;
            println!("{hash}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load(config: Option<&Path>) -> Result<Config> {
    Ok(match config {
        Some(p) => Config::load(p)?,
        None => Config::embedded()?,
    })
}

fn serve(config: Option<PathBuf>) -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = load(config.as_deref())?;
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    rt.block_on(async {
        let running = sealpost::server::start(cfg, Arc::new(sealpost::queue::SystemClock))
            .await
            .context("starting the server")?;
        running
            .run_until_signal()
            .await
            .context("waiting for signals")
    })?;
    Ok(ExitCode::SUCCESS)
}

fn queue(action: QueueAction, config: Option<&Path>, json: bool) -> Result<ExitCode> {
    let cfg = load(config)?;
    if let QueueAction::Show { id } | QueueAction::Retry { id } | QueueAction::Delete { id } =
        &action
        && !sealpost::spool::is_queue_id(id)
    {
        eprintln!("sealpost: {id:?} is not a queue id (20 hex digits, as printed by `queue list`)");
        return Ok(ExitCode::from(1));
    }
    let req = match action {
        QueueAction::List => Request::List,
        QueueAction::Show { id } => Request::Show { id },
        QueueAction::Retry { id } => Request::Retry { id },
        QueueAction::Delete { id } => Request::Delete { id },
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let resp = rt.block_on(admin::request(&cfg.server.spool_dir, req))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
    }
    match resp {
        Response::Envelopes { messages } => {
            if !json {
                print_envelopes(&messages);
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Done { id } => {
            if !json {
                println!("{id}: done");
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::NotFound { id } => {
            eprintln!("sealpost: {id}: no such message in the queue");
            Ok(ExitCode::from(1))
        }
        Response::Error { message } => {
            eprintln!("sealpost: {message}");
            Ok(ExitCode::from(1))
        }
    }
}

fn print_envelopes(messages: &[sealpost::spool::Envelope]) {
    if messages.is_empty() {
        println!("Mail queue is empty");
        return;
    }
    for m in messages {
        let from = if m.mail_from.is_empty() {
            "<>"
        } else {
            &m.mail_from
        };
        println!(
            "{}  {:>8}  {}  {}{}",
            m.id,
            m.size,
            sealpost::queue::clock::rfc5322_date(m.created),
            from,
            if m.is_dsn { "  (DSN)" } else { "" }
        );
        for r in &m.recipients {
            let detail = match &r.status {
                sealpost::spool::RcptStatus::Queued => String::new(),
                sealpost::spool::RcptStatus::Deferred { reply }
                | sealpost::spool::RcptStatus::Delivered { reply }
                | sealpost::spool::RcptStatus::Failed { reply } => format!("  ({reply})"),
            };
            println!("    {:<9} {}{}", r.status.name(), r.address, detail);
        }
    }
    println!("-- {} message(s)", messages.len());
}
