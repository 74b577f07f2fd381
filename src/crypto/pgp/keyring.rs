//! The on-disk OpenPGP keyring: one armored public certificate per file, `<FINGERPRINT>.pgp`.
//!
//! The directory is listed at every lookup, so `sealpost keys import` in another process takes
//! effect without restarting the server; writes go through a temporary file and a rename, so
//! a reader never sees half a certificate. Parsed certificates are cached by file, keyed by
//! modification time and length, with their self-signatures already verified: verifying them
//! (RSA in pure Rust) for every recipient cost more than the encryption itself.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sequoia_openpgp as openpgp;

use openpgp::Cert;
use openpgp::cert::amalgamation::ValidAmalgamation as _;
use openpgp::cert::{CertParser, ValidCert};
use openpgp::parse::Parse as _;
use openpgp::policy::{Policy, StandardPolicy};
use openpgp::serialize::SerializeInto as _;
use openpgp::types::RevocationStatus;

use super::PgpError;

/// A directory of OpenPGP certificates, one armored `<FINGERPRINT>.pgp` file each.
#[derive(Debug, Clone)]
pub struct PgpKeyring {
    dir: PathBuf,
    /// Parsed certificates by file, with the (mtime, length) they were parsed at.
    cache: Arc<Mutex<HashMap<PathBuf, CachedCert>>>,
}

/// A parsed certificate with the file's (modification time, length) when it was read.
type CachedCert = (Option<SystemTime>, u64, Cert);

/// What [`PgpKeyring::import`] stored for one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedKey {
    /// Uppercase hex fingerprint (also the file stem).
    pub fingerprint: String,
    /// Email addresses of the certificate's valid User IDs.
    pub emails: Vec<String>,
    /// True if the input held secret key material, which was stripped (never stored).
    pub secret_stripped: bool,
    /// True if a certificate with this fingerprint was already stored and was merged.
    pub updated: bool,
}

/// A stored certificate, as [`PgpKeyring::list`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Uppercase hex fingerprint.
    pub fingerprint: String,
    /// Email addresses of the User IDs (valid ones if the certificate is valid now, else all).
    pub emails: Vec<String>,
    /// Creation time of the primary key.
    pub created: SystemTime,
    /// Expiration time of the primary key, if any.
    pub expires: Option<SystemTime>,
    /// True if the certificate is valid now and has a usable encryption subkey.
    pub usable: bool,
}

impl PgpKeyring {
    /// Opens (creating if needed) the keyring directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<PgpKeyring, PgpError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| PgpError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(PgpKeyring {
            dir,
            cache: Arc::default(),
        })
    }

    /// The keyring directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Imports one or many certificates (armored or binary). Secret key material is stripped;
    /// only public certificates are stored. A certificate that is revoked, expired, invalid
    /// under the standard policy or without a usable encryption subkey is refused, and then
    /// nothing from this input is stored — except that a revocation of an already stored
    /// certificate is still merged into its file, so it stops being used.
    pub fn import(&self, bytes: &[u8]) -> Result<Vec<ImportedKey>, PgpError> {
        let policy = StandardPolicy::new();
        let now = SystemTime::now();
        let mut staged = Vec::new();
        for parsed in CertParser::from_bytes(bytes).map_err(|e| PgpError::Parse(e.to_string()))? {
            let cert = parsed.map_err(|e| PgpError::Parse(e.to_string()))?;
            let secret_stripped = cert.is_tsk();
            let cert = cert.strip_secret_key_material();
            let path = self.path_for(&fingerprint_of(&cert));
            let existing = read_cert(&path)?;
            let updated = existing.is_some();
            let merged = match existing {
                Some(old) => old
                    .merge_public(cert)
                    .map_err(|e| PgpError::Parse(e.to_string()))?,
                None => cert,
            };
            let verdict = check_usable(&merged, &policy, now).map(|vc| valid_emails(&vc));
            staged.push((path, merged, verdict, secret_stripped, updated));
        }
        if staged.is_empty() {
            return Err(PgpError::NoCertificate);
        }
        let mut first_error = None;
        for (path, cert, verdict, _, updated) in &mut staged {
            if let Err(e) = verdict {
                if *updated && matches!(e, PgpError::Revoked { .. }) {
                    write_cert(path, cert)?;
                }
                if first_error.is_none() {
                    first_error = Some(std::mem::replace(e, PgpError::NoCertificate));
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let mut imported = Vec::with_capacity(staged.len());
        for (path, cert, verdict, secret_stripped, updated) in staged {
            write_cert(&path, &cert)?;
            imported.push(ImportedKey {
                fingerprint: fingerprint_of(&cert),
                emails: verdict.unwrap_or_default(),
                secret_stripped,
                updated,
            });
        }
        Ok(imported)
    }

    /// Lists the stored certificates, sorted by fingerprint. Unreadable files are skipped.
    pub fn list(&self) -> Result<Vec<KeyInfo>, PgpError> {
        let policy = StandardPolicy::new();
        let now = SystemTime::now();
        let mut infos: Vec<KeyInfo> = self
            .certs()?
            .into_iter()
            .map(|(_, cert)| {
                let usable = check_usable(&cert, &policy, now);
                let primary = cert.primary_key().key();
                let (emails, expires) = match &usable {
                    Ok(vc) => (valid_emails(vc), vc.primary_key().key_expiration_time()),
                    Err(_) => (all_emails(&cert), None),
                };
                KeyInfo {
                    fingerprint: fingerprint_of(&cert),
                    emails,
                    created: primary.creation_time(),
                    expires,
                    usable: usable.is_ok(),
                }
            })
            .collect();
        infos.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
        Ok(infos)
    }

    /// Removes the certificate with this fingerprint (hex, spaces allowed), or every
    /// certificate with a User ID for this email address. Returns how many were removed.
    pub fn remove(&self, fingerprint_or_email: &str) -> Result<usize, PgpError> {
        let compact: String = fingerprint_or_email
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let is_fingerprint =
            matches!(compact.len(), 40 | 64) && compact.chars().all(|c| c.is_ascii_hexdigit());
        let mut removed = 0;
        for (path, cert) in self.certs()? {
            let hit = if is_fingerprint {
                fingerprint_of(&cert).eq_ignore_ascii_case(&compact)
            } else {
                all_emails(&cert)
                    .iter()
                    .any(|e| email_matches(e, fingerprint_or_email))
            };
            if hit {
                fs::remove_file(&path).map_err(|source| PgpError::Io { path, source })?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The certificate to encrypt to for `email`: a stored certificate valid under the standard
    /// policy now, with a valid User ID whose email matches case-insensitively
    /// and a usable encryption subkey. If several match, the most recently created wins.
    pub fn find(&self, email: &str) -> Result<Option<Cert>, PgpError> {
        let policy = StandardPolicy::new();
        let now = SystemTime::now();
        let mut best: Option<Cert> = None;
        for (_, cert) in self.certs()? {
            let Ok(vc) = check_usable(&cert, &policy, now) else {
                continue;
            };
            if !valid_emails(&vc).iter().any(|e| email_matches(e, email)) {
                continue;
            }
            let created = cert.primary_key().key().creation_time();
            if best
                .as_ref()
                .is_none_or(|b| b.primary_key().key().creation_time() < created)
            {
                best = Some(cert);
            }
        }
        Ok(best)
    }

    fn path_for(&self, fingerprint: &str) -> PathBuf {
        self.dir.join(format!("{fingerprint}.pgp"))
    }

    /// Every parseable `*.pgp` file with its certificate.
    fn certs(&self) -> Result<Vec<(PathBuf, Cert)>, PgpError> {
        let io = |source| PgpError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut out = Vec::new();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen = std::collections::HashSet::new();
        for entry in fs::read_dir(&self.dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_none_or(|e| e != "pgp") {
                continue;
            }
            let Ok(meta) = fs::metadata(&path) else {
                continue; // removed meanwhile
            };
            let stamp = (meta.modified().ok(), meta.len());
            seen.insert(path.clone());
            if let Some((m, l, cert)) = cache.get(&path)
                && (*m, *l) == stamp
            {
                out.push((path, cert.clone()));
                continue;
            }
            match read_cert(&path) {
                Ok(Some(cert)) => {
                    // Sequoia verifies self-signatures lazily and remembers the results in
                    // the certificate (clones keep them): verify once here, so every
                    // lookup and encryption that clones the cached copy skips the RSA work.
                    if let Ok(vc) = check_usable(&cert, &StandardPolicy::new(), SystemTime::now()) {
                        let _ = valid_emails(&vc);
                    }
                    cache.insert(path.clone(), (stamp.0, stamp.1, cert.clone()));
                    out.push((path, cert));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping keyring file")
                }
            }
        }
        cache.retain(|p, _| seen.contains(p));
        Ok(out)
    }
}

/// Checks that `cert` can be encrypted to now: valid under `policy`, not revoked, alive, with
/// at least one supported, alive, unrevoked transport- or storage-encryption subkey.
pub(crate) fn check_usable<'a>(
    cert: &'a Cert,
    policy: &'a dyn Policy,
    now: SystemTime,
) -> Result<ValidCert<'a>, PgpError> {
    let fingerprint = fingerprint_of(cert);
    let vc = cert
        .with_policy(policy, now)
        .map_err(|e| PgpError::Invalid {
            fingerprint: fingerprint.clone(),
            reason: e.to_string(),
        })?;
    if let RevocationStatus::Revoked(_) = vc.revocation_status() {
        return Err(PgpError::Revoked { fingerprint });
    }
    if let Err(e) = vc.alive() {
        return Err(PgpError::Invalid {
            fingerprint,
            reason: format!("expired or not yet valid: {e}"),
        });
    }
    let has_key = vc
        .keys()
        .supported()
        .alive()
        .revoked(false)
        .for_transport_encryption()
        .for_storage_encryption()
        .next()
        .is_some();
    if !has_key {
        return Err(PgpError::NoEncryptionKey { fingerprint });
    }
    Ok(vc)
}

/// Emails of the valid, unrevoked User IDs.
pub(crate) fn valid_emails(vc: &ValidCert<'_>) -> Vec<String> {
    vc.userids()
        .filter(|ua| !matches!(ua.revocation_status(), RevocationStatus::Revoked(_)))
        .filter_map(|ua| ua.userid().email().ok().flatten().map(str::to_string))
        .collect()
}

fn all_emails(cert: &Cert) -> Vec<String> {
    cert.userids()
        .filter_map(|ua| ua.userid().email().ok().flatten().map(str::to_string))
        .collect()
}

/// Case-insensitive match of both parts. RFC 5321 lets the receiving host treat local-part
/// case as significant, but no real mail system does, and senders write `Bob@` for `bob@`:
/// an exact match would bounce (policy: no key) mail that the key's owner expects. The
/// S/MIME store and the suppression list compare the same way.
pub(crate) fn email_matches(uid_email: &str, wanted: &str) -> bool {
    match (uid_email.rsplit_once('@'), wanted.rsplit_once('@')) {
        (Some((l1, d1)), Some((l2, d2))) => {
            l1.to_lowercase() == l2.to_lowercase() && d1.eq_ignore_ascii_case(d2)
        }
        _ => false,
    }
}

fn fingerprint_of(cert: &Cert) -> String {
    cert.fingerprint().to_hex()
}

fn read_cert(path: &Path) -> Result<Option<Cert>, PgpError> {
    match fs::read(path) {
        Ok(bytes) => Cert::from_bytes(&bytes)
            .map(Some)
            .map_err(|e| PgpError::Parse(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PgpError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes the armored public certificate through a temporary file and a rename.
fn write_cert(path: &Path, cert: &Cert) -> Result<(), PgpError> {
    let armored = cert
        .armored()
        .to_vec()
        .map_err(|e| PgpError::Crypto(e.to_string()))?;
    let tmp = path.with_extension(format!("tmp{}", rand::random::<u64>()));
    let io = |source| PgpError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::File::create(&tmp).map_err(io)?;
    file.write_all(&armored).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openpgp::cert::CertBuilder;
    use openpgp::cert::CertRevocationBuilder;
    use openpgp::serialize::Serialize as _;
    use openpgp::types::ReasonForRevocation;
    use std::time::Duration;

    fn tsk(uid: &str) -> Cert {
        CertBuilder::general_purpose(Some(uid))
            .generate()
            .map(|(c, _)| c)
            .unwrap_or_else(|e| panic!("generate: {e}"))
    }

    fn keyring() -> (tempfile::TempDir, PgpKeyring) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let ring = PgpKeyring::open(dir.path().join("pgp")).unwrap_or_else(|e| panic!("open: {e}"));
        (dir, ring)
    }

    fn armored_public(cert: &Cert) -> Vec<u8> {
        cert.armored().to_vec().unwrap_or_default()
    }

    #[test]
    fn import_strips_secrets_and_finds_by_email() {
        let (_d, ring) = keyring();
        let bob = tsk("Bob <bob@Example.COM>");
        let mut binary = Vec::new();
        bob.as_tsk()
            .serialize(&mut binary)
            .unwrap_or_else(|e| panic!("{e}"));
        let imported = ring
            .import(&binary)
            .unwrap_or_else(|e| panic!("import: {e}"));
        assert_eq!(imported.len(), 1);
        assert!(imported[0].secret_stripped && !imported[0].updated);
        assert_eq!(imported[0].emails, vec!["bob@Example.COM".to_string()]);
        let file = ring
            .dir()
            .join(format!("{}.pgp", bob.fingerprint().to_hex()));
        let stored = fs::read_to_string(&file).unwrap_or_default();
        assert!(stored.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"));
        assert!(
            !Cert::from_bytes(stored.as_bytes())
                .map(|c| c.is_tsk())
                .unwrap_or(true)
        );

        let found = ring.find("bob@example.com").unwrap_or_default();
        assert_eq!(found.map(|c| c.fingerprint()), Some(bob.fingerprint()));
        // Case does not matter (a sender's "BOB@Example.COM" is Bob).
        let upper = ring.find("BOB@Example.COM").unwrap_or_default();
        assert_eq!(upper.map(|c| c.fingerprint()), Some(bob.fingerprint()));
        assert!(ring.find("bob@example.org").unwrap_or_default().is_none());
        // Re-import merges.
        let again = ring.import(&armored_public(&bob)).unwrap_or_default();
        assert!(again[0].updated && !again[0].secret_stripped);
    }

    #[test]
    fn import_many_list_and_remove() {
        let (_d, ring) = keyring();
        let (a, b) = (tsk("A <a@example.com>"), tsk("B <b@example.com>"));
        let mut both = armored_public(&a);
        both.extend(armored_public(&b));
        assert_eq!(ring.import(&both).map(|v| v.len()).unwrap_or(0), 2);
        let list = ring.list().unwrap_or_default();
        assert_eq!(list.len(), 2);
        assert!(
            list.iter()
                .all(|k| k.usable && k.expires.is_some_and(|e| e > k.created))
        );
        assert_eq!(ring.remove("c@example.com").unwrap_or(9), 0);
        // Case-insensitive, like lookup.
        assert_eq!(ring.remove("A@EXAMPLE.com").unwrap_or(0), 1);
        let spaced: String = b.fingerprint().to_spaced_hex();
        assert_eq!(ring.remove(&spaced.to_lowercase()).unwrap_or(0), 1);
        assert!(ring.list().unwrap_or_default().is_empty());
    }

    #[test]
    fn refuses_unusable_certificates() {
        let (_d, ring) = keyring();
        // No encryption subkey.
        let (signing_only, _) = CertBuilder::new()
            .add_userid("S <s@example.com>")
            .add_signing_subkey()
            .generate()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            ring.import(&armored_public(&signing_only)),
            Err(PgpError::NoEncryptionKey { .. })
        ));
        // Expired.
        let (expired, _) = CertBuilder::general_purpose(Some("E <e@example.com>"))
            .set_creation_time(SystemTime::now() - Duration::from_secs(7200))
            .set_validity_period(Duration::from_secs(3600))
            .generate()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            ring.import(&armored_public(&expired)),
            Err(PgpError::Invalid { .. })
        ));
        // Garbage and empty input.
        assert!(ring.import(b"not a key").is_err());
        assert!(ring.import(b"").is_err());
        assert!(ring.list().unwrap_or_default().is_empty());
    }

    #[test]
    fn revocation_of_stored_certificate_is_recorded() {
        let (_d, ring) = keyring();
        let bob = tsk("Bob <bob@example.com>");
        assert!(ring.import(&armored_public(&bob)).is_ok());
        let mut signer = bob
            .primary_key()
            .key()
            .clone()
            .parts_into_secret()
            .and_then(|k| k.into_keypair())
            .unwrap_or_else(|e| panic!("{e}"));
        let rev = CertRevocationBuilder::new()
            .set_reason_for_revocation(ReasonForRevocation::KeyCompromised, b"lost")
            .and_then(|b| b.build(&mut signer, &bob, None))
            .unwrap_or_else(|e| panic!("{e}"));
        let revoked = bob
            .clone()
            .insert_packets(rev)
            .map(|(c, _)| c)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            ring.import(&armored_public(&revoked)),
            Err(PgpError::Revoked { .. })
        ));
        assert!(ring.find("bob@example.com").unwrap_or_default().is_none());
        // A fresh keyring refuses it and stores nothing.
        let (_d2, ring2) = keyring();
        assert!(ring2.import(&armored_public(&revoked)).is_err());
        assert!(ring2.list().unwrap_or_default().is_empty());
    }
}
