//! The `sealpost` command line: a thin layer over the library.
#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sealpost::admin::{self, Request, Response};
use sealpost::config::Config;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// `println!` that ends the program quietly when stdout is a closed pipe (`... | head -1`)
/// instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// The allocator: mimalloc instead of glibc malloc. With glibc, a queue of a million messages
/// left the server holding one 64 MB malloc arena per busy thread (830 MB RSS, mostly freed
/// but never returned), and malloc/free were ~7% of a relay's CPU profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod audit_cli;
mod ops_cli;
use audit_cli::{AuditAction, audit, open_audit};
use ops_cli::{
    ApiClientsAction, DkimAction, SuppressionAction, api_clients, dkim_keygen, mailbox, suppression,
};

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
    /// Manage recipient keys (OpenPGP certificates, S/MIME certificates) in the config's key
    /// directory; works while the server runs (keys are read at lookup time).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Inspect and reload the encryption policy.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// DKIM signing keys.
    Dkim {
        #[command(subcommand)]
        action: DkimAction,
    },
    /// The suppression list: addresses not sent to again after hard bounces and complaints
    /// (works while the server runs).
    Suppression {
        #[command(subcommand)]
        action: SuppressionAction,
        /// Configuration file whose spool_dir holds the list (default: the embedded config).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
    },
    /// The hash-chained audit log of who did what ([audit] in the config): `verify` checks
    /// it (exit 0 intact, 1 damaged, naming the first bad line), `export --since --until
    /// --format csv|jsonl` prints records (exit 2 for bad arguments).
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Clients of the HTTP API ([api] in the config): add, list, remove (works while the
    /// server runs).
    ApiClients {
        #[command(subcommand)]
        action: ApiClientsAction,
        /// Configuration file whose spool_dir holds the clients (default: the embedded
        /// config).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Import OpenPGP certificates (armored or binary) or X.509 certificates (PEM or DER).
    /// Secret key material in the file is ignored.
    Import {
        /// The key or certificate file.
        file: PathBuf,
        /// Configuration file (its [keys] dir, default spool_dir/keys).
        #[arg(long)]
        config: PathBuf,
    },
    /// List the stored keys.
    List {
        /// Configuration file (its [keys] dir, default spool_dir/keys).
        #[arg(long)]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove keys by fingerprint or e-mail address (from both stores).
    Remove {
        /// OpenPGP fingerprint, S/MIME certificate SHA-256, or an e-mail address.
        selector: String,
        /// Configuration file (its [keys] dir, default spool_dir/keys).
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyAction {
    /// Show, for each recipient, the matching rule, the probes (MX, keys, MTA-STS, TLS history)
    /// and the decision with its reasons.
    Explain {
        /// Configuration file ([policy] file, [keys] dir, [dns], [[route]]).
        #[arg(long)]
        config: PathBuf,
        /// Envelope sender (MAIL FROM) of the hypothetical message.
        #[arg(long, value_name = "ADDR")]
        from: Option<String>,
        /// A top-level header field of the message, "Name: value" (repeatable); a Subject
        /// header also sets the subject that `subject_tag` rules look at.
        #[arg(long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// The SMTP AUTH user the message was submitted by.
        #[arg(long, value_name = "USER")]
        auth_user: Option<String>,
        /// The client IP address the message came from.
        #[arg(long, value_name = "IP")]
        client_ip: Option<std::net::IpAddr>,
        /// The listener address the message arrived on ("127.0.0.1:587").
        #[arg(long, value_name = "ADDR:PORT")]
        listener: Option<String>,
        /// Print a JSON array (one object per recipient) instead of text.
        #[arg(long)]
        json: bool,
        /// Recipient addresses.
        #[arg(required = true, value_name = "RCPT")]
        recipients: Vec<String>,
    },
    /// Ask the running server to re-read its policy file. A bad file is refused with
    /// file:line and the old policy stays in force.
    Reload {
        /// Configuration file of the running server.
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// List queued messages and their recipients' status.
    List,
    /// Make every queued message due now (like Postfix's `postqueue -f`).
    Flush,
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
            let base = c.base_dir.clone().unwrap_or_else(|| PathBuf::from("."));
            sealpost::crypto::dkim::DkimSigners::load(&c.dkim, &base).context("[[dkim]] key")?;
            for w in c.warnings() {
                eprintln!("sealpost: warning: {}: {w}", config.display());
            }
            out!(
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
            out!("{hash}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { action } => keys(action),
        Command::Policy { action } => policy(action),
        Command::Dkim {
            action:
                DkimAction::Keygen {
                    domain,
                    selector,
                    algorithm,
                    out,
                },
        } => dkim_keygen(&domain, &selector, algorithm == "ed25519", out),
        Command::Suppression {
            action,
            config,
            json,
        } => suppression(action, config.as_deref(), json),
        Command::ApiClients {
            action,
            config,
            json,
        } => api_clients(action, config.as_deref(), json),
        Command::Audit { action } => audit(action),
    }
}

/// Loads a configuration without checking its policy file (keys and reload must work while
/// the policy file is being edited).
fn load_unchecked(path: &Path) -> Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut cfg = Config::parse(&text, path)?;
    cfg.base_dir = Some(match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    });
    Ok(cfg)
}

fn keys(action: KeysAction) -> Result<ExitCode> {
    use sealpost::audit::{Action, current_admin};
    use sealpost::crypto::keys::KeyStores;
    let open = |config: &Path| -> Result<KeyStores> {
        let cfg = load_unchecked(config)?;
        let dir = cfg.keys_dir();
        KeyStores::open(&dir).with_context(|| format!("opening key stores in {}", dir.display()))
    };
    match action {
        KeysAction::Import { file, config } => {
            let stores = open(&config)?;
            let audit = open_audit(&load_unchecked(&config)?)?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let imported = stores
                .import(&bytes)
                .with_context(|| format!("importing {}", file.display()))?;
            if imported.is_empty() {
                eprintln!("sealpost: {}: no keys found", file.display());
                return Ok(ExitCode::from(1));
            }
            for k in &imported {
                audit
                    .record_blocking(
                        current_admin(),
                        Action::KeyImported,
                        serde_json::json!({
                            "kind": k.kind.to_string(),
                            "fingerprint": k.fingerprint,
                            "emails": k.emails,
                            "file": file.display().to_string(),
                        }),
                    )
                    .context("audit log")?;
                out!(
                    "imported {} {} {}",
                    k.kind,
                    k.fingerprint,
                    emails(&k.emails)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysAction::List { config, json } => {
            let entries = open(&config)?.list()?;
            if json {
                out!("{}", serde_json::to_string_pretty(&entries)?);
            } else if entries.is_empty() {
                out!("no keys");
            } else {
                for k in &entries {
                    let expires = match k.expires {
                        Some(t) => format!("expires {}", sealpost::queue::clock::rfc5322_date(t)),
                        None => "no expiry".into(),
                    };
                    out!(
                        "{:<5}  {}  {}  ({expires})",
                        k.kind,
                        k.fingerprint,
                        emails(&k.emails)
                    );
                }
                out!("-- {} key(s)", entries.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysAction::Remove { selector, config } => {
            let audit = open_audit(&load_unchecked(&config)?)?;
            let n = open(&config)?.remove(&selector)?;
            if n == 0 {
                eprintln!("sealpost: no key matches {selector:?}");
                return Ok(ExitCode::from(1));
            }
            audit
                .record_blocking(
                    current_admin(),
                    Action::KeyRemoved,
                    serde_json::json!({"selector": selector, "count": n}),
                )
                .context("audit log")?;
            out!("removed {n} key(s) matching {selector}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn emails(list: &[String]) -> String {
    if list.is_empty() {
        "(no address)".into()
    } else {
        list.join(", ")
    }
}

fn policy(action: PolicyAction) -> Result<ExitCode> {
    match action {
        PolicyAction::Explain {
            config,
            from,
            headers,
            auth_user,
            client_ip,
            listener,
            json,
            recipients,
        } => {
            let mut fields = Vec::with_capacity(headers.len());
            for h in &headers {
                match h.split_once(':') {
                    Some((name, value))
                        if !name.trim().is_empty() && !name.contains(char::is_whitespace) =>
                    {
                        fields.push((name.to_string(), value.trim().to_string()));
                    }
                    _ => {
                        eprintln!("sealpost: --header {h:?}: expected \"Name: value\"");
                        return Ok(ExitCode::from(2));
                    }
                }
            }
            let subject = fields
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("subject"))
                .map(|(_, v)| v.clone());
            let mut rcpts = Vec::with_capacity(recipients.len());
            for r in &recipients {
                match mailbox(r) {
                    Ok(a) => rcpts.push(a),
                    Err(e) => {
                        eprintln!("sealpost: recipient {r:?}: {e}");
                        return Ok(ExitCode::from(2));
                    }
                }
            }
            let from = match from.as_deref().map(mailbox) {
                None => None,
                Some(Ok(a)) => Some(a),
                Some(Err(e)) => {
                    eprintln!("sealpost: --from {:?}: {e}", from.unwrap_or_default());
                    return Ok(ExitCode::from(2));
                }
            };
            let ctx = sealpost::policy::MessageContext {
                sender: from.unwrap_or_default(),
                authenticated: auth_user,
                listener,
                client_ip,
                headers: fields,
                subject,
            };
            let cfg = Config::load(&config)?;
            let _ = rustls::crypto::ring::default_provider().install_default();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let out = rt.block_on(async {
                let resolver = Arc::new(
                    sealpost::dns::build_resolver(&cfg.dns.nameservers)
                        .map_err(|e| anyhow::anyhow!("DNS resolver: {e}"))?,
                );
                let engine = sealpost::server::policy_engine(&cfg, resolver, None)?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let mut text = Vec::new();
                let mut values = Vec::new();
                for rcpt in &rcpts {
                    let plan = engine.plan(&ctx, rcpt, now).await;
                    if json {
                        values.push(sealpost::policy::explain::explanation(
                            rcpt,
                            plan.rule.as_ref(),
                            &plan.probes,
                            &plan.decision,
                        ));
                    } else {
                        text.push(sealpost::policy::explain_text(
                            rcpt,
                            plan.rule.as_ref(),
                            &plan.probes,
                            &plan.decision,
                        ));
                    }
                }
                anyhow::Ok(if json {
                    serde_json::to_string_pretty(&values)?
                } else {
                    text.join("\n").trim_end().to_string()
                })
            })?;
            out!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        PolicyAction::Reload { config } => {
            let cfg = load_unchecked(&config)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let resp = rt.block_on(admin::request_server(
                &cfg.server.spool_dir,
                &Request::ReloadPolicy,
            ))?;
            match resp {
                Some(Response::Reloaded { rules }) => {
                    out!("policy reloaded: {rules} rule(s) in force");
                    Ok(ExitCode::SUCCESS)
                }
                Some(Response::Error { message }) => {
                    eprintln!(
                        "sealpost: reload refused, the previous policy stays in force: {message}"
                    );
                    Ok(ExitCode::from(1))
                }
                Some(other) => {
                    eprintln!(
                        "sealpost: unexpected answer from the server: {}",
                        serde_json::to_string(&other)?
                    );
                    Ok(ExitCode::from(1))
                }
                None => {
                    match cfg.policy_file() {
                        None => eprintln!(
                            "sealpost: {}: no [policy] file configured",
                            config.display()
                        ),
                        Some(file) => match sealpost::policy::Policy::load(&file) {
                            Ok(p) => eprintln!(
                                "sealpost: {}: OK ({} rule(s))",
                                file.display(),
                                p.rules.len()
                            ),
                            Err(e) => eprintln!("sealpost: {e}"),
                        },
                    }
                    eprintln!(
                        "sealpost: the server is not running (no answer on {}); nothing reloaded",
                        admin::socket_path(&cfg.server.spool_dir).display()
                    );
                    Ok(ExitCode::from(1))
                }
            }
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
        QueueAction::Flush => Request::Flush,
        QueueAction::Show { id } => Request::Show { id },
        QueueAction::Retry { id } => Request::Retry { id },
        QueueAction::Delete { id } => Request::Delete { id },
    };
    let resp = ops_cli::admin_request(&cfg, req)?;
    if json {
        out!("{}", serde_json::to_string_pretty(&resp)?);
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
                out!("{id}: done");
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
        Response::Flushed { count } => {
            if !json {
                out!("{count} message(s) made due now");
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Reloaded { .. }
        | Response::Suppressions { .. }
        | Response::Removed { .. }
        | Response::ApiClients { .. }
        | Response::ApiClientAdded { .. } => {
            eprintln!("sealpost: unexpected answer from the server");
            Ok(ExitCode::from(1))
        }
    }
}

fn print_envelopes(messages: &[sealpost::spool::Envelope]) {
    if messages.is_empty() {
        out!("Mail queue is empty");
        return;
    }
    for m in messages {
        let from = if m.mail_from.is_empty() {
            "<>"
        } else {
            &m.mail_from
        };
        out!(
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
            out!("    {:<9} {}{}", r.status.name(), r.address, detail);
            if let Some(method) = &r.method {
                let tls = match (&r.tls, r.tls_verified) {
                    (Some(t), Some(true)) => format!(", {t}, certificate verified"),
                    (Some(t), _) => format!(", {t}, certificate not verified"),
                    (None, _) => ", no TLS".to_string(),
                };
                out!("              method: {method}{tls}");
            }
        }
    }
    out!("-- {} message(s)", messages.len());
}
