//! The `sealpost dkim` and `sealpost suppression` commands.

use super::load;
use anyhow::{Context, Result};
use clap::Subcommand;
use sealpost::admin::{self, Request, Response};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand)]
pub(crate) enum DkimAction {
    /// Make a signing key: writes the private key (PEM, mode 0600) and prints the DNS TXT
    /// record to publish at SELECTOR._domainkey.DOMAIN.
    Keygen {
        /// The signing domain, e.g. example.com.
        domain: String,
        /// The selector, e.g. s2026.
        selector: String,
        /// rsa (2048 bits, readable everywhere) or ed25519 (RFC 8463; sign with both for now).
        #[arg(long, default_value = "rsa", value_parser = ["rsa", "ed25519"])]
        algorithm: String,
        /// Where to write the private key (refuses to overwrite). Default SELECTOR.DOMAIN.pem.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub(crate) enum SuppressionAction {
    /// Every entry: address, class, source, date, reason.
    List,
    /// Suppress an address (for one class, or every class with the default `*`).
    Add {
        /// The address.
        address: String,
        /// Traffic class, e.g. `marketing`; `*` = every class.
        #[arg(long, default_value = "*")]
        class: String,
        /// Why; senders whose mail it stops see this.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Remove an address (from one class, or from every class when --class is not given).
    Remove {
        /// The address.
        address: String,
        /// Only this class.
        #[arg(long)]
        class: Option<String>,
    },
}

pub(crate) fn dkim_keygen(
    domain: &str,
    selector: &str,
    ed25519: bool,
    out: Option<PathBuf>,
) -> Result<ExitCode> {
    use sealpost::crypto::dkim::valid_dns_labels;
    if !valid_dns_labels(domain) || !valid_dns_labels(selector) {
        eprintln!(
            "sealpost: {domain:?} / {selector:?}: a domain and selector are dot-separated labels (1-63 letters, digits, - and _, not starting or ending with -)"
        );
        return Ok(ExitCode::from(2));
    }
    let path = out.unwrap_or_else(|| {
        PathBuf::from(format!("{selector}.{}.pem", domain.trim_end_matches('.')))
    });
    let (pem, txt) = sealpost::crypto::dkim::keygen(domain, selector, ed25519)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(&path)
        .with_context(|| format!("{} (not overwritten)", path.display()))?;
    std::io::Write::write_all(&mut f, pem.as_bytes())
        .with_context(|| path.display().to_string())?;
    out!("{txt}");
    eprintln!(
        "private key written to {}; publish the record above, then add to the config:\n[[dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nkey_file = \"{}\"",
        path.display(),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// A command-line address: `bob@example.test` or `<bob@example.test>`, checked against the
/// RFC 5321 mailbox grammar; the domain comes back lowercased.
/// One admin request as this OS user: through the running server's socket, or on the
/// spool directly (and audited here) when none runs.
pub(crate) fn admin_request(cfg: &sealpost::config::Config, req: Request) -> Result<Response> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let audit = crate::open_audit(cfg)?;
    Ok(rt.block_on(admin::request(
        &cfg.server.spool_dir,
        req,
        &audit,
        sealpost::audit::current_admin(),
    ))?)
}

pub(crate) fn mailbox(s: &str) -> std::result::Result<String, String> {
    let t = s.trim();
    let bare = t
        .strip_prefix('<')
        .and_then(|r| r.strip_suffix('>'))
        .unwrap_or(t);
    sealpost::smtp::address::Address::parse(bare, true)
        .map(|a| a.to_string())
        .map_err(|e| format!("not an email address ({e})"))
}

pub(crate) fn suppression(
    action: SuppressionAction,
    config: Option<&Path>,
    json: bool,
) -> Result<ExitCode> {
    let cfg = load(config)?;
    let address = match &action {
        SuppressionAction::List => None,
        SuppressionAction::Add { address, .. } | SuppressionAction::Remove { address, .. } => {
            Some(address.clone())
        }
    };
    if let Some(a) = address
        && let Err(e) = mailbox(&a)
    {
        eprintln!("sealpost: {a:?}: {e}");
        return Ok(ExitCode::from(2));
    }
    let class = match &action {
        SuppressionAction::Add { class, .. } => Some(class.as_str()),
        SuppressionAction::Remove { class, .. } => class.as_deref(),
        SuppressionAction::List => None,
    };
    if let Some(c) = class {
        let known = c == sealpost::suppression::ALL_CLASSES
            || c == sealpost::config::DEFAULT_CLASS
            || c == sealpost::config::BOUNCE_CLASS
            || cfg.class.iter().any(|k| k.name == c);
        if !known {
            eprintln!(
                "sealpost: --class {c:?}: no such traffic class in the config (use \"*\" for every class)"
            );
            return Ok(ExitCode::from(2));
        }
    }
    let req = match action {
        SuppressionAction::List => Request::SuppressionList,
        SuppressionAction::Add {
            address,
            class,
            reason,
        } => Request::SuppressionAdd {
            address,
            class,
            reason,
        },
        SuppressionAction::Remove { address, class } => {
            Request::SuppressionRemove { address, class }
        }
    };
    let resp = admin_request(&cfg, req)?;
    if json {
        out!("{}", serde_json::to_string_pretty(&resp)?);
    }
    match resp {
        Response::Suppressions { entries } => {
            if !json {
                if entries.is_empty() {
                    out!("The suppression list is empty");
                }
                for e in entries {
                    out!(
                        "{}  class={}  {:?}  {}  {}",
                        e.address,
                        e.class,
                        e.source,
                        sealpost::queue::clock::rfc5322_date(e.created),
                        e.reason
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Done { id } => {
            if !json {
                out!("{id}: suppressed");
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Removed { count: 0 } => {
            eprintln!("sealpost: no such entry on the suppression list");
            Ok(ExitCode::from(1))
        }
        Response::Removed { count } => {
            if !json {
                out!(
                    "removed {count} entr{}",
                    if count == 1 { "y" } else { "ies" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        other => Ok(refused(other)),
    }
}

#[derive(Subcommand)]
pub(crate) enum ApiClientsAction {
    /// Create a client for the HTTP API and print its client_id and client_secret. The
    /// secret is shown this once; only its hash is stored.
    Add {
        /// A unique name, e.g. billing-app (1-64 letters, digits, - _ . @). Mail the client
        /// submits is authenticated as this name.
        name: String,
        /// What it may do: send, read (status of its own messages), admin (status of any
        /// API message); comma-separated.
        #[arg(long, default_value = "send,read")]
        scopes: String,
    },
    /// Every client: id, name, scopes, date added.
    List,
    /// Remove a client by id or name; its tokens stop working at once.
    Remove {
        /// Client id or name.
        client: String,
    },
}

pub(crate) fn api_clients(
    action: ApiClientsAction,
    config: Option<&Path>,
    json: bool,
) -> Result<ExitCode> {
    let cfg = load(config)?;
    let req = match action {
        ApiClientsAction::Add { name, scopes } => {
            match sealpost::api::clients::Scope::parse_list(&scopes) {
                Ok(scopes) if !scopes.is_empty() => Request::ApiClientsAdd { name, scopes },
                Ok(_) => {
                    eprintln!("sealpost: --scopes: at least one of send, read, admin");
                    return Ok(ExitCode::from(2));
                }
                Err(e) => {
                    eprintln!("sealpost: --scopes: {e} (use send, read, admin)");
                    return Ok(ExitCode::from(2));
                }
            }
        }
        ApiClientsAction::List => Request::ApiClientsList,
        ApiClientsAction::Remove { client } => Request::ApiClientsRemove { client },
    };
    let resp = admin_request(&cfg, req)?;
    let scopes = |s: &[sealpost::api::clients::Scope]| {
        s.iter().map(|x| x.name()).collect::<Vec<_>>().join(",")
    };
    match resp {
        Response::ApiClientAdded {
            client,
            client_secret,
        } => {
            if json {
                out!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "client_id": client.client_id,
                        "client_secret": client_secret,
                        "name": client.name,
                        "scopes": client.scopes,
                    }))?
                );
            } else {
                out!("client_id: {}", client.client_id);
                out!("client_secret: {client_secret}");
                out!("name: {}", client.name);
                out!("scopes: {}", scopes(&client.scopes));
                eprintln!("The secret is shown only now; store it safely.");
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::ApiClients { clients } => {
            if json {
                out!("{}", serde_json::to_string_pretty(&clients)?);
            } else {
                if clients.is_empty() {
                    out!("No API clients");
                }
                for c in clients {
                    out!(
                        "{}  {}  scopes={}  {}",
                        c.client_id,
                        c.name,
                        scopes(&c.scopes),
                        sealpost::queue::clock::rfc5322_date(c.created)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Removed { count: 0 } => {
            eprintln!("sealpost: no such API client");
            Ok(ExitCode::from(1))
        }
        Response::Removed { .. } => {
            if json {
                out!("{}", serde_json::json!({"removed": true}));
            } else {
                out!("removed");
            }
            Ok(ExitCode::SUCCESS)
        }
        other => Ok(refused(other)),
    }
}

/// Exit status 1 for an admin answer the command did not ask for: the server's error message,
/// or a note that the answer was of the wrong kind.
fn refused(response: Response) -> ExitCode {
    match response {
        Response::Error { message } => eprintln!("sealpost: {message}"),
        _ => eprintln!("sealpost: unexpected answer from the server"),
    }
    ExitCode::from(1)
}
