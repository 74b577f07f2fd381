//! Reading the log: `verify` walks the chain and compares its end with the head file;
//! `export` selects records by time as JSON lines or CSV.

use super::record::{Action, GENESIS, Record, canonical};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// The head file: the last record's seq and hash, rewritten after every append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// Seq of the last record (0 before the first).
    pub seq: u64,
    /// Hash of the last record ([`GENESIS`] before the first).
    pub hash: String,
}

/// The head file that belongs to a log: `FILE.head`.
pub fn head_path(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_os_string();
    s.push(".head");
    PathBuf::from(s)
}

/// Reads a head file; `Ok(None)` when it does not exist.
pub fn read_head(path: &Path) -> std::io::Result<Option<Head>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("head file: {e}"))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The head file's size: its JSON padded with spaces, so each update overwrites the same
/// bytes of one disk sector.
const HEAD_LEN: usize = 128;

/// Overwrites a head file in place (created the first time) and `fsync`s it. In place rather
/// than a new file renamed over the old one: that allocated an inode per batch, which was a
/// fifth of the server's CPU under load. One sector-sized write is not torn in practice, and
/// a head left behind by a crash is one `verify` accepts. Callers hold the log's lock.
pub fn write_head(path: &Path, head: &Head) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut text = canonical(&serde_json::to_value(head).unwrap_or_default()).into_bytes();
    if text.len() + 1 < HEAD_LEN {
        text.resize(HEAD_LEN - 1, b' ');
    }
    text.push(b'\n');
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    f.write_all_at(&text, 0)?;
    if f.metadata()?.len() != text.len() as u64 {
        f.set_len(text.len() as u64)?;
    }
    f.sync_data()
}

/// An intact log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records in the log.
    pub count: u64,
    /// Hash of the last record ([`GENESIS`] when empty).
    pub head_hash: String,
    /// Harmless things a writer noted in the chain (an incomplete line from a crash that it
    /// removed), as `line N: ...`.
    pub notes: Vec<String>,
}

/// The first thing wrong with a log, at a 1-based line (one past the last line for damage
/// at the end).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The file could not be read.
    #[error("cannot read the log: {0}")]
    Unreadable(String),
    /// The line is not a record.
    #[error("line {line}: not an audit record ({why})")]
    Malformed {
        /// Line number.
        line: u64,
        /// Parser message.
        why: String,
    },
    /// The record parses but its bytes are not the canonical form the writer produces:
    /// something was changed by hand.
    #[error("line {line}: not in canonical form (the line was edited)")]
    NotCanonical {
        /// Line number.
        line: u64,
    },
    /// The stored hash does not match the record's content.
    #[error("line {line}: hash mismatch (the record was edited)")]
    HashMismatch {
        /// Line number.
        line: u64,
    },
    /// `prev` is not the previous line's hash.
    #[error(
        "line {line}: prev does not match the previous record's hash (a record was deleted, inserted or moved here)"
    )]
    PrevMismatch {
        /// Line number.
        line: u64,
    },
    /// `seq` is not one more than the previous record's.
    #[error("line {line}: seq {found}, expected {expected} (gap or out of order)")]
    SeqMismatch {
        /// Line number.
        line: u64,
        /// What the chain requires.
        expected: u64,
        /// What the record says.
        found: u64,
    },
    /// The last line has no newline: a write was cut short.
    #[error("line {line}: incomplete last line (a write was cut short)")]
    IncompleteLine {
        /// Line number.
        line: u64,
    },
    /// The head file names a record the log does not end with: records were deleted from
    /// the end (or the head file was changed).
    #[error(
        "line {line}: the head file names seq {head_seq} ({head_hash}) but the log has {count} record(s){detail}"
    )]
    Truncated {
        /// One past the last line, or the record whose hash differs.
        line: u64,
        /// Seq in the head file.
        head_seq: u64,
        /// Hash in the head file.
        head_hash: String,
        /// Records found.
        count: u64,
        /// The rest of the explanation, starting with ", " or ": ".
        detail: String,
    },
    /// The head file is missing or unreadable while the log has records.
    #[error("line {line}: head file {path}: {why}")]
    HeadMissing {
        /// One past the last line.
        line: u64,
        /// The head file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// A writer found records missing at the end (or the head file gone) and recorded it
    /// at this line: the damage happened before it.
    #[error("line {line}: a writer found the log damaged and recorded {action}: {details}")]
    Recorded {
        /// Line number of the writer's record.
        line: u64,
        /// `audit.head_mismatch`.
        action: String,
        /// Its details.
        details: String,
    },
}

/// Walks the whole chain and checks its end against the head file. Reads under a shared
/// lock, so a writer's half-written batch is never seen.
pub fn verify(path: &Path) -> Result<Verified, Problem> {
    let head_file = head_path(path);
    let file = match File::open(path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Problem::Unreadable(format!("{}: {e}", path.display()))),
    };
    if let Some(f) = &file {
        f.lock_shared()
            .map_err(|e| Problem::Unreadable(format!("{}: {e}", path.display())))?;
    }
    // Read the head while holding the lock: it then matches the log's last batch.
    let head = read_head(&head_file);
    let Some(file) = file else {
        return match head {
            Ok(Some(h)) if h.seq > 0 => Err(Problem::Truncated {
                line: 1,
                head_seq: h.seq,
                head_hash: h.hash,
                count: 0,
                detail: ", the log file is missing: records were deleted from the end".into(),
            }),
            _ => Ok(Verified {
                count: 0,
                head_hash: GENESIS.into(),
                notes: Vec::new(),
            }),
        };
    };
    let head = head.map_err(|e| e.to_string());
    let head_seq = match &head {
        Ok(Some(h)) => Some(h.seq),
        _ => None,
    };
    let mut reader = BufReader::new(&file);
    let mut prev = GENESIS.to_string();
    let mut count = 0u64;
    let mut hash_at_head: Option<String> = None;
    let mut notes = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| Problem::Unreadable(e.to_string()))?;
        if n == 0 {
            break;
        }
        let no = count + 1;
        let Some(body) = line.strip_suffix(b"\n") else {
            return Err(Problem::IncompleteLine { line: no });
        };
        let r = check_line(body, no, &prev)?;
        if r.action == Action::PartialLineRemoved.name() {
            notes.push(format!(
                "line {no}: a writer removed an incomplete line left by a crash: {}",
                canonical(&r.details)
            ));
        }
        if Some(r.seq) == head_seq {
            hash_at_head = Some(r.hash.clone());
        }
        prev = r.hash;
        count = no;
    }
    let end = count + 1;
    match head {
        Err(why) => Err(Problem::HeadMissing {
            line: end,
            path: head_file.display().to_string(),
            why,
        }),
        Ok(None) if count > 0 => Err(Problem::HeadMissing {
            line: end,
            path: head_file.display().to_string(),
            why: "missing (it is created with the log, so it was deleted)".into(),
        }),
        Ok(None) => Ok(Verified {
            count,
            head_hash: prev,
            notes,
        }),
        // A head behind the log is a crash between the log's fsync and the head's rename.
        Ok(Some(h))
            if h.seq <= count && (h.seq == 0 || hash_at_head.as_deref() == Some(&h.hash)) =>
        {
            Ok(Verified {
                count,
                head_hash: prev,
                notes,
            })
        }
        Ok(Some(h)) => Err(Problem::Truncated {
            line: if h.seq <= count { h.seq } else { end },
            detail: if h.seq <= count {
                format!(
                    ", and record {} has another hash: the head file or that record was changed",
                    h.seq
                )
            } else {
                ": records were deleted from the end".into()
            },
            head_seq: h.seq,
            head_hash: h.hash,
            count,
        }),
    }
}

/// Checks one line against the chain so far.
fn check_line(body: &[u8], no: u64, prev: &str) -> Result<Record, Problem> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| Problem::Malformed {
            line: no,
            why: e.to_string(),
        })?;
    let r: Record = serde_json::from_value(value.clone()).map_err(|e| Problem::Malformed {
        line: no,
        why: e.to_string(),
    })?;
    if r.compute_hash() != r.hash {
        return Err(Problem::HashMismatch { line: no });
    }
    if canonical(&value).as_bytes() != body {
        return Err(Problem::NotCanonical { line: no });
    }
    if r.prev != prev {
        return Err(Problem::PrevMismatch { line: no });
    }
    if r.seq != no {
        return Err(Problem::SeqMismatch {
            line: no,
            expected: no,
            found: r.seq,
        });
    }
    if r.action == Action::HeadMismatch.name() {
        return Err(Problem::Recorded {
            line: no,
            action: r.action.clone(),
            details: canonical(&r.details),
        });
    }
    Ok(r)
}

/// Output format of `export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The selected lines exactly as stored (their hashes can still be checked).
    Jsonl,
    /// RFC 4180 CSV with a header row: seq, time, actor_kind, actor_id, action, details
    /// (canonical JSON), prev, hash.
    Csv,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the log or writing the output failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A line is not a record.
    #[error("line {line}: not an audit record ({why})")]
    Malformed {
        /// Line number.
        line: u64,
        /// Parser message.
        why: String,
    },
}

/// Writes the records with `since <= time < until` (Unix milliseconds; either bound
/// optional) to `out`. A missing log exports nothing (CSV: the header only).
pub fn export(
    path: &Path,
    since: Option<i64>,
    until: Option<i64>,
    format: Format,
    out: &mut dyn Write,
) -> Result<u64, ExportError> {
    if format == Format::Csv {
        out.write_all(b"seq,time,actor_kind,actor_id,action,details,prev,hash\r\n")?;
    }
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    file.lock_shared()?;
    let mut written = 0;
    for (i, line) in BufReader::new(&file).split(b'\n').enumerate() {
        let line = line?;
        let no = i as u64 + 1;
        let r: Record = serde_json::from_slice(&line).map_err(|e| ExportError::Malformed {
            line: no,
            why: e.to_string(),
        })?;
        let t = chrono::DateTime::parse_from_rfc3339(&r.time)
            .map_err(|e| ExportError::Malformed {
                line: no,
                why: format!("time: {e}"),
            })?
            .timestamp_millis();
        if since.is_some_and(|s| t < s) || until.is_some_and(|u| t >= u) {
            continue;
        }
        match format {
            Format::Jsonl => {
                out.write_all(&line)?;
                out.write_all(b"\n")?;
            }
            Format::Csv => {
                let fields = [
                    r.seq.to_string(),
                    r.time.clone(),
                    r.actor.kind_name().to_string(),
                    r.actor.id.clone(),
                    r.action.clone(),
                    canonical(&r.details),
                    r.prev.clone(),
                    r.hash.clone(),
                ];
                let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                out.write_all(row.join(",").as_bytes())?;
                out.write_all(b"\r\n")?;
            }
        }
        written += 1;
    }
    out.flush()?;
    Ok(written)
}

/// One CSV field (RFC 4180): quoted when it holds a comma, quote, CR or LF, with quotes
/// doubled.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Parses an export bound: RFC 3339 (`2026-12-04T10:00:00Z`) or a date (`2026-12-04`,
/// midnight UTC; with `end_of_day`, the following midnight, so `--until 2026-12-04`
/// includes that whole day). Unix milliseconds.
pub fn parse_time(s: &str, end_of_day: bool) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    match chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        Ok(d) => {
            let d = if end_of_day {
                d.succ_opt()
                    .ok_or_else(|| format!("{s:?}: date out of range"))?
            } else {
                d
            };
            Ok(d.and_time(chrono::NaiveTime::MIN)
                .and_utc()
                .timestamp_millis())
        }
        Err(_) => Err(format!(
            "{s:?}: expected RFC 3339 (2026-12-04T10:00:00Z) or a date (2026-12-04)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting_and_time_bounds() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field(r#"{"a":"b,c"}"#), r#""{""a"":""b,c""}""#);
        assert_eq!(csv_field("x\ny"), "\"x\ny\"");
        let day = parse_time("2023-11-14", false).unwrap_or_default();
        assert_eq!(day, 1_699_920_000_000);
        assert_eq!(
            parse_time("2023-11-14", true).unwrap_or_default(),
            day + 86_400_000
        );
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z", false).unwrap_or_default(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_time("2023-11-14T23:13:20+01:00", true).unwrap_or_default(),
            1_700_000_000_000
        );
        assert!(parse_time("yesterday", false).is_err());
        assert!(parse_time("2023-13-01", false).is_err());
    }
}
