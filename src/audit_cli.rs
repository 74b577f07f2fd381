//! `sealpost audit verify` and `sealpost audit export`, and the audit log the other
//! commands record their changes in.

use super::load_unchecked;
use anyhow::{Context, Result};
use clap::Subcommand;
use sealpost::audit::{self, AuditLog, Format};
use sealpost::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Subcommand)]
pub(crate) enum AuditAction {
    /// Check the hash chain and the head file. Exit 0 and print the record count and the
    /// last hash when intact; exit 1 naming the first bad line and why (hash mismatch: a
    /// record was edited; prev mismatch: records deleted, inserted or reordered; seq gap;
    /// head mismatch: records deleted from the end).
    Verify {
        /// Configuration file ([audit] file, default spool_dir/audit.jsonl).
        #[arg(long)]
        config: PathBuf,
    },
    /// Print records to stdout, oldest first: JSON lines exactly as stored, or CSV with a
    /// header row (seq,time,actor_kind,actor_id,action,details,prev,hash; details as JSON).
    /// Exit 2 for a bad argument.
    Export {
        /// Configuration file ([audit] file, default spool_dir/audit.jsonl).
        #[arg(long)]
        config: PathBuf,
        /// Records at or after this time: RFC 3339 (2026-12-04T10:00:00Z) or a date
        /// (2026-12-04, from midnight UTC).
        #[arg(long, value_name = "TIME", value_parser = since)]
        since: Option<i64>,
        /// Records before this time: RFC 3339, or a date (2026-12-04 includes that whole
        /// day, UTC).
        #[arg(long, value_name = "TIME", value_parser = until)]
        until: Option<i64>,
        /// Output format.
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl", "csv"])]
        format: String,
    },
}

fn since(s: &str) -> Result<i64, String> {
    audit::parse_time(s, false)
}

fn until(s: &str) -> Result<i64, String> {
    audit::parse_time(s, true)
}

/// Opens the audit log a command records its changes in (a disabled one when
/// `[audit] enabled = false`).
pub(crate) fn open_audit(cfg: &Config) -> Result<Arc<AuditLog>> {
    match cfg.audit_file() {
        Some(path) => AuditLog::open(&path, Arc::new(sealpost::queue::SystemClock))
            .with_context(|| format!("audit log {}", path.display())),
        None => Ok(AuditLog::disabled()),
    }
}

pub(crate) fn audit(action: AuditAction) -> Result<ExitCode> {
    match action {
        AuditAction::Verify { config } => {
            let cfg = load_unchecked(&config)?;
            let Some(path) = cfg.audit_file() else {
                eprintln!(
                    "sealpost: {}: [audit] enabled = false, there is no audit log",
                    config.display()
                );
                return Ok(ExitCode::from(2));
            };
            match audit::verify(&path) {
                Ok(v) => {
                    for n in &v.notes {
                        eprintln!("sealpost: note: {n}");
                    }
                    out!(
                        "{}: OK, {} record(s), head {}",
                        path.display(),
                        v.count,
                        v.head_hash
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(p) => {
                    eprintln!("sealpost: {}: {p}", path.display());
                    Ok(ExitCode::from(1))
                }
            }
        }
        AuditAction::Export {
            config,
            since,
            until,
            format,
        } => {
            if let (Some(s), Some(u)) = (since, until)
                && s >= u
            {
                eprintln!("sealpost: --since must be before --until");
                return Ok(ExitCode::from(2));
            }
            let cfg = load_unchecked(&config)?;
            let Some(path) = cfg.audit_file() else {
                eprintln!(
                    "sealpost: {}: [audit] enabled = false, there is no audit log",
                    config.display()
                );
                return Ok(ExitCode::from(2));
            };
            let format = if format == "csv" {
                Format::Csv
            } else {
                Format::Jsonl
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            match audit::export(&path, since, until, format, &mut out) {
                Ok(_) => Ok(ExitCode::SUCCESS),
                Err(audit::ExportError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("sealpost: {}: {e}", path.display());
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}
