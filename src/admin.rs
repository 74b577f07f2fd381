//! The admin interface: `sealpost queue ...` talks to a running server over a Unix socket in
//! the spool directory (sled allows one process per database), or opens the spool directly
//! when no server runs. One JSON request line, one JSON response line. `sealpost policy
//! reload` also goes through this socket: only the running server holds the policy engine.

use crate::api::clients::{self, ApiClient, ClientStore, Scope};
use crate::audit::{Action, Actor, AuditLog};
use crate::policy::engine::PolicyEngine;
use crate::queue::Clock;
use crate::queue::Queue;
use crate::spool::{Envelope, Spool, is_queue_id};
use crate::suppression::{Suppression, SuppressionList, SuppressionSource};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

/// A request to the admin interface.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// Every queued message.
    List,
    /// One message's envelope.
    Show {
        /// Queue id.
        id: String,
    },
    /// Make a message due now.
    Retry {
        /// Queue id.
        id: String,
    },
    /// Make every queued message due now.
    Flush,
    /// Remove a message without delivering or bouncing it.
    Delete {
        /// Queue id.
        id: String,
    },
    /// Re-read the policy file (the running server only); a bad file is refused and the old
    /// policy stays in force.
    #[serde(rename = "reload-policy")]
    ReloadPolicy,
    /// Every suppression list entry.
    #[serde(rename = "suppression-list")]
    SuppressionList,
    /// Put an address on the suppression list.
    #[serde(rename = "suppression-add")]
    SuppressionAdd {
        /// The address.
        address: String,
        /// The class, or `*` for all.
        class: String,
        /// Why (shown to senders whose mail it stops).
        reason: String,
    },
    /// Take an address off the list (one class, or all when `class` is absent).
    #[serde(rename = "suppression-remove")]
    SuppressionRemove {
        /// The address.
        address: String,
        /// The class; absent = every class.
        class: Option<String>,
    },
    /// Every HTTP API client (without secrets).
    #[serde(rename = "api-clients-list")]
    ApiClientsList,
    /// Create an HTTP API client; the answer carries its secret, once.
    #[serde(rename = "api-clients-add")]
    ApiClientsAdd {
        /// The client's unique name.
        name: String,
        /// What it may do.
        scopes: Vec<Scope>,
    },
    /// Remove an HTTP API client by id or name; its tokens stop working.
    #[serde(rename = "api-clients-remove")]
    ApiClientsRemove {
        /// Client id or name.
        client: String,
    },
}

/// An API client as listed: everything but the secret's hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The client id.
    pub client_id: String,
    /// The admin's name for it.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// Unix seconds when it was added.
    pub created: u64,
}

impl From<&ApiClient> for ClientInfo {
    fn from(c: &ApiClient) -> Self {
        Self {
            client_id: c.id.clone(),
            name: c.name.clone(),
            scopes: c.scopes.clone(),
            created: c.created,
        }
    }
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Response {
    /// Envelopes for list/show.
    Envelopes {
        /// The messages.
        messages: Vec<Envelope>,
    },
    /// Retry/delete done.
    Done {
        /// Queue id acted on.
        id: String,
    },
    /// Messages made due by a flush.
    Flushed {
        /// How many.
        count: usize,
    },
    /// The policy file was reloaded.
    Reloaded {
        /// Rules now in force.
        rules: usize,
    },
    /// Suppression list entries.
    Suppressions {
        /// The entries.
        entries: Vec<Suppression>,
    },
    /// API clients.
    #[serde(rename = "api-clients")]
    ApiClients {
        /// The clients.
        clients: Vec<ClientInfo>,
    },
    /// A new API client with its secret (shown this once; only a hash is kept).
    #[serde(rename = "api-client-added")]
    ApiClientAdded {
        /// The client.
        client: ClientInfo,
        /// The secret.
        client_secret: String,
    },
    /// Suppression entries (or API clients) removed.
    Removed {
        /// How many.
        count: usize,
    },
    /// No such message.
    NotFound {
        /// Queue id asked for.
        id: String,
    },
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

/// Path of the admin socket for a spool directory.
pub fn socket_path(spool_dir: &Path) -> PathBuf {
    spool_dir.join("admin.sock")
}

/// Binds the admin socket, replacing a stale one left by a crashed server.
pub fn bind(spool_dir: &Path) -> std::io::Result<UnixListener> {
    let path = socket_path(spool_dir);
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves admin requests until shutdown. `engine` is the policy engine the queue delivers
/// with; `reload-policy` requests reload it. Changes are recorded in `audit` with the OS
/// user on the other end of the socket as the actor.
pub async fn serve(
    listener: UnixListener,
    queue: Arc<Queue>,
    engine: Arc<PolicyEngine>,
    audit: Arc<AuditLog>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
            _ = shutdown.changed() => if *shutdown.borrow() { break } else { continue },
        };
        let q = queue.clone();
        let engine = engine.clone();
        let audit = audit.clone();
        tokio::spawn(async move {
            let actor = match stream.peer_cred() {
                Ok(c) => Actor::admin(&crate::audit::user_name(c.uid())),
                Err(_) => Actor::admin("unknown"),
            };
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(r).read_line(&mut line).await.is_err() {
                return;
            }
            let req = serde_json::from_str::<Request>(&line);
            let resp = match &req {
                Ok(Request::Retry { id }) if is_queue_id(id) => match q.retry_now(id).await {
                    Ok(true) => Response::Done { id: id.clone() },
                    Ok(false) => Response::NotFound { id: id.clone() },
                    Err(e) => Response::Error {
                        message: e.to_string(),
                    },
                },
                Ok(Request::ReloadPolicy) => reload_policy(&engine, &audit, actor.clone()).await,
                Ok(Request::Flush) => match q.flush_all().await {
                    Ok(count) => Response::Flushed { count },
                    Err(e) => Response::Error {
                        message: e.to_string(),
                    },
                },
                Ok(req) => execute(q.spool().as_ref(), req.clone()),
                Err(e) => Response::Error {
                    message: format!("bad request: {e}"),
                },
            };
            if let Ok(req) = &req
                && let Some((action, details)) = audit_entry(req, &resp)
            {
                audit.record_synced(actor, action, details).await;
            }
            let mut out = serde_json::to_vec(&resp).unwrap_or_default();
            out.push(b'\n');
            let _ = w.write_all(&out).await;
        });
    }
    drop(listener);
}

/// Reloads the engine's policy file and logs and audits the outcome (admin request and
/// SIGHUP, told apart by `actor`).
pub async fn reload_policy(engine: &PolicyEngine, audit: &AuditLog, actor: Actor) -> Response {
    match engine.reload() {
        Ok(rules) => {
            tracing::info!(rules, "policy reloaded");
            audit
                .record_synced(
                    actor,
                    Action::PolicyReloaded,
                    serde_json::json!({"rules": rules}),
                )
                .await;
            Response::Reloaded { rules }
        }
        Err(e) => {
            tracing::warn!(error = %e, "policy reload refused; the previous policy stays in force");
            audit
                .record_synced(
                    actor,
                    Action::PolicyReloadFailed,
                    serde_json::json!({"error": e.to_string()}),
                )
                .await;
            Response::Error {
                message: e.to_string(),
            }
        }
    }
}

/// The audit record for a request that changed something, from the request and its answer;
/// None for reads and refusals. (Policy reloads are recorded by [`reload_policy`].) Never
/// holds a client secret.
pub fn audit_entry(req: &Request, resp: &Response) -> Option<(Action, serde_json::Value)> {
    use serde_json::json;
    match (req, resp) {
        (Request::Retry { id }, Response::Done { .. }) => {
            Some((Action::MessageRetried, json!({"queue_id": id})))
        }
        (Request::Delete { id }, Response::Done { .. }) => {
            Some((Action::MessageDeleted, json!({"queue_id": id})))
        }
        (Request::Flush, Response::Flushed { count }) => {
            Some((Action::QueueFlushed, json!({"count": count})))
        }
        (
            Request::SuppressionAdd {
                address,
                class,
                reason,
            },
            Response::Done { .. },
        ) => Some((
            Action::SuppressionAdded,
            json!({"address": address, "class": class, "reason": reason}),
        )),
        (Request::SuppressionRemove { address, class }, Response::Removed { count })
            if *count > 0 =>
        {
            Some((
                Action::SuppressionRemoved,
                json!({"address": address, "class": class, "count": count}),
            ))
        }
        (Request::ApiClientsAdd { .. }, Response::ApiClientAdded { client, .. }) => Some((
            Action::ApiClientAdded,
            json!({"client_id": client.client_id, "name": client.name, "scopes": client.scopes}),
        )),
        (Request::ApiClientsRemove { client }, Response::Removed { count }) if *count > 0 => {
            Some((Action::ApiClientRemoved, json!({"client": client})))
        }
        _ => None,
    }
}

/// Executes a request directly against a spool (offline, or list/show/delete online).
pub fn execute(spool: &dyn Spool, req: Request) -> Response {
    let id_ok = |id: &str| is_queue_id(id);
    let result = match req {
        Request::List => spool
            .list()
            .map(|messages| Response::Envelopes { messages }),
        Request::Show { id } if id_ok(&id) => spool.envelope(&id).map(|e| match e {
            Some(e) => Response::Envelopes { messages: vec![e] },
            None => Response::NotFound { id },
        }),
        Request::Retry { id } if id_ok(&id) => spool.envelope(&id).and_then(|e| match e {
            Some(mut e) => {
                e.next_due = 0;
                spool.update(&e)?;
                spool.flush()?;
                Ok(Response::Done { id })
            }
            None => Ok(Response::NotFound { id }),
        }),
        Request::Delete { id } if id_ok(&id) => spool.envelope(&id).and_then(|e| match e {
            Some(_) => {
                spool.remove(&id)?;
                spool.flush()?;
                tracing::info!(queue_id = %id, "deleted by admin");
                Ok(Response::Done { id })
            }
            None => Ok(Response::NotFound { id }),
        }),
        Request::Show { id } | Request::Retry { id } | Request::Delete { id } => {
            Ok(Response::NotFound { id })
        }
        Request::ReloadPolicy => Ok(not_running()),
        Request::Flush => spool.list().and_then(|envs| {
            // Offline: the server is stopped, and starting it delivers everything due.
            let mut count = 0;
            for mut e in envs {
                e.next_due = 0;
                if spool.update(&e)? {
                    count += 1;
                }
            }
            spool.flush()?;
            Ok(Response::Flushed { count })
        }),
        Request::SuppressionList => suppressions(spool)
            .and_then(|l| l.list())
            .map(|entries| Response::Suppressions { entries }),
        Request::SuppressionAdd {
            address,
            class,
            reason,
        } => {
            if !address.contains('@')
                || address.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Response::Error {
                    message: format!("{address:?} is not an email address"),
                };
            }
            suppressions(spool)
                .and_then(|l| {
                    l.add(Suppression {
                        address: address.clone(),
                        class,
                        source: SuppressionSource::Admin,
                        // One line: it goes into logs, listings and DSN diagnostics.
                        reason: reason
                            .chars()
                            .map(|c| if c.is_control() { ' ' } else { c })
                            .collect::<String>()
                            .trim()
                            .to_string(),
                        created: crate::queue::SystemClock.now(),
                    })
                })
                .and_then(|()| spool.flush())
                .map(|()| Response::Done { id: address })
        }
        Request::SuppressionRemove { address, class } => suppressions(spool)
            .and_then(|l| l.remove(&address, class.as_deref()))
            .and_then(|count| spool.flush().map(|()| Response::Removed { count })),
        Request::ApiClientsList => {
            api_clients(spool)
                .and_then(|s| s.list())
                .map(|list| Response::ApiClients {
                    clients: list.iter().map(ClientInfo::from).collect(),
                })
        }
        Request::ApiClientsAdd { name, scopes } => {
            let store = match api_clients(spool) {
                Ok(s) => s,
                Err(e) => {
                    return Response::Error {
                        message: e.to_string(),
                    };
                }
            };
            match store.add(&name, &scopes, crate::queue::SystemClock.now()) {
                Ok(new) => spool.flush().map(|()| Response::ApiClientAdded {
                    client: ClientInfo::from(&new.client),
                    client_secret: new.secret,
                }),
                Err(e) => {
                    return Response::Error {
                        message: e.to_string(),
                    };
                }
            }
        }
        Request::ApiClientsRemove { client } => api_clients(spool)
            .and_then(|s| s.remove(&client))
            .and_then(|gone| {
                spool.flush().map(|()| Response::Removed {
                    count: usize::from(gone),
                })
            }),
    };
    result.unwrap_or_else(|e| Response::Error {
        message: e.to_string(),
    })
}

/// Why the admin client could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Neither the socket nor the spool could be reached.
    #[error("{0}")]
    Unreachable(String),
}

fn suppressions(spool: &dyn Spool) -> Result<SuppressionList, crate::spool::SpoolError> {
    spool.tree("suppression").map(SuppressionList::new)
}

fn api_clients(spool: &dyn Spool) -> Result<ClientStore, crate::spool::SpoolError> {
    spool.tree(clients::TREE).map(ClientStore::new)
}

fn not_running() -> Response {
    Response::Error {
        message: "the server is not running".into(),
    }
}

/// Sends a request to the running server only: `Ok(None)` when no server listens on the
/// admin socket.
pub async fn request_server(
    spool_dir: &Path,
    req: &Request,
) -> Result<Option<Response>, AdminError> {
    let path = socket_path(spool_dir);
    match UnixStream::connect(&path).await {
        Ok(stream) => {
            let (r, mut w) = stream.into_split();
            let mut line =
                serde_json::to_vec(req).map_err(|e| AdminError::Unreachable(e.to_string()))?;
            line.push(b'\n');
            w.write_all(&line)
                .await
                .map_err(|e| AdminError::Unreachable(format!("{}: {e}", path.display())))?;
            let mut resp = String::new();
            BufReader::new(r)
                .read_line(&mut resp)
                .await
                .map_err(|e| AdminError::Unreachable(format!("{}: {e}", path.display())))?;
            serde_json::from_str(&resp)
                .map(Some)
                .map_err(|e| AdminError::Unreachable(format!("bad answer from server: {e}")))
        }
        Err(_) => Ok(None),
    }
}

/// Sends a request to the running server (which audits it), or runs it on the spool when
/// none is running and records changes in `audit` as `actor`.
pub async fn request(
    spool_dir: &Path,
    req: Request,
    audit: &AuditLog,
    actor: Actor,
) -> Result<Response, AdminError> {
    if let Some(resp) = request_server(spool_dir, &req).await? {
        return Ok(resp);
    }
    let resp = request_offline(spool_dir, req.clone())?;
    if let Some((action, details)) = audit_entry(&req, &resp) {
        audit
            .record_durable(actor, action, details)
            .await
            .map_err(|e| AdminError::Unreachable(format!("audit log: {e}")))?;
    }
    Ok(resp)
}

/// Runs a request on the spool directly (no server running).
fn request_offline(spool_dir: &Path, req: Request) -> Result<Response, AdminError> {
    if !spool_dir.join("spool.sled").exists() {
        // No spool yet: nothing was ever queued here.
        return Ok(match req {
            Request::List => Response::Envelopes { messages: vec![] },
            Request::Show { id } | Request::Retry { id } | Request::Delete { id } => {
                Response::NotFound { id }
            }
            Request::ReloadPolicy => not_running(),
            Request::Flush => Response::Flushed { count: 0 },
            Request::SuppressionList => Response::Suppressions { entries: vec![] },
            Request::SuppressionRemove { .. } | Request::ApiClientsRemove { .. } => {
                Response::Removed { count: 0 }
            }
            Request::ApiClientsList => Response::ApiClients { clients: vec![] },
            Request::SuppressionAdd { .. } | Request::ApiClientsAdd { .. } => {
                // First use: create the spool so the entry has a home.
                std::fs::create_dir_all(spool_dir)
                    .map_err(|e| AdminError::Unreachable(e.to_string()))?;
                let spool = crate::spool::SledSpool::open(spool_dir)
                    .map_err(|e| AdminError::Unreachable(e.to_string()))?;
                return Ok(execute(&spool, req));
            }
        });
    }
    let spool = crate::spool::SledSpool::open(spool_dir)
        .map_err(|e| AdminError::Unreachable(e.to_string()))?;
    Ok(execute(&spool, req))
}
