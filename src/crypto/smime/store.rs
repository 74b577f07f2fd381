//! Recipient certificates on disk: one `<sha256-hex>.pem` file per certificate.
//!
//! Nothing is cached: every lookup reads the directory, so a certificate imported by the CLI
//! is used by a running server for the next message. Files are written to a temporary name
//! and renamed, so a reader never sees half a certificate.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use der::pem::LineEnding;
use x509_cert::Certificate;

use super::cert::{self, LoadedCert};
use super::{CertInfo, SmimeError};

/// Store file extension.
const EXTENSION: &str = "pem";

/// A directory of recipient certificates for S/MIME encryption.
#[derive(Debug, Clone)]
pub struct SmimeStore {
    dir: PathBuf,
}

impl SmimeStore {
    /// Opens the store at `dir`, creating the directory if it does not exist.
    ///
    /// # Errors
    /// [`SmimeError::Io`] if the directory cannot be created.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, SmimeError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| SmimeError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// The directory the store reads and writes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Imports every certificate in `bytes` (PEM with one or several `CERTIFICATE` blocks, or
    /// DER certificates back to back) and returns what was stored.
    ///
    /// Private keys in a PEM bundle are skipped without being decoded; only certificates are
    /// written. The import is all-or-nothing: if any certificate is unusable (not RSA, expired
    /// or not yet valid, KeyUsage without keyEncipherment, ExtendedKeyUsage without
    /// emailProtection, no e-mail address), nothing is stored and the error names it.
    /// Importing a certificate already in the store rewrites the same file.
    ///
    /// # Errors
    /// [`SmimeError::NoCertificate`], [`SmimeError::BadPem`], [`SmimeError::Der`],
    /// [`SmimeError::UnusableCertificate`], [`SmimeError::Io`].
    pub fn import(&self, bytes: &[u8]) -> Result<Vec<CertInfo>, SmimeError> {
        self.import_at(bytes, SystemTime::now())
    }

    /// [`Self::import`] with the validity check done at `now`.
    fn import_at(&self, bytes: &[u8], now: SystemTime) -> Result<Vec<CertInfo>, SmimeError> {
        let certs = cert::load_certificates(bytes)?;
        for (i, loaded) in certs.iter().enumerate() {
            cert::check_usable(&loaded.cert, now).map_err(|problem| {
                SmimeError::UnusableCertificate {
                    index: i + 1,
                    subject: loaded.cert.tbs_certificate.subject.to_string(),
                    problem,
                }
            })?;
        }
        let mut imported = Vec::with_capacity(certs.len());
        for loaded in &certs {
            let info = cert::info(loaded);
            self.write(&info.fingerprint_sha256, &loaded.der)?;
            imported.push(info);
        }
        Ok(imported)
    }

    /// Every certificate in the store, usable now or not, sorted by first e-mail address
    /// then fingerprint. Files that do not parse are skipped with a warning.
    ///
    /// # Errors
    /// [`SmimeError::Io`] if the directory cannot be read.
    pub fn list(&self) -> Result<Vec<CertInfo>, SmimeError> {
        let mut infos: Vec<CertInfo> = self
            .load_all()?
            .iter()
            .map(|(_, c)| cert::info(c))
            .collect();
        infos.sort_by(|a, b| {
            (a.emails.first(), &a.fingerprint_sha256)
                .cmp(&(b.emails.first(), &b.fingerprint_sha256))
        });
        Ok(infos)
    }

    /// Removes the certificate with this SHA-256 fingerprint (64 hex digits, any case), or
    /// every certificate naming this e-mail address (case-insensitive). Returns how many
    /// files were removed.
    ///
    /// # Errors
    /// [`SmimeError::BadSelector`] if the argument is neither a fingerprint nor an address,
    /// [`SmimeError::Io`] if the directory cannot be read or a file cannot be removed.
    pub fn remove(&self, fingerprint_or_email: &str) -> Result<usize, SmimeError> {
        let selector = fingerprint_or_email.trim();
        let victims: Vec<PathBuf> = if is_fingerprint(selector) {
            vec![self.path_for(&selector.to_ascii_lowercase())]
        } else if selector.contains('@') {
            let wanted = selector.to_lowercase();
            self.load_all()?
                .into_iter()
                .filter(|(_, c)| {
                    cert::emails(&c.cert)
                        .iter()
                        .any(|e| e.to_lowercase() == wanted)
                })
                .map(|(path, _)| path)
                .collect()
        } else {
            return Err(SmimeError::BadSelector(selector.to_string()));
        };
        let mut removed = 0;
        for path in &victims {
            match std::fs::remove_file(path) {
                Ok(()) => removed += 1,
                // Not there (never was, or removed by someone else meanwhile): not counted.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(SmimeError::Io {
                        path: path.clone(),
                        source,
                    });
                }
            }
        }
        Ok(removed)
    }

    /// The certificate to encrypt to for `email` (case-insensitive), among those usable now;
    /// if several are, the one that stays valid longest.
    ///
    /// # Errors
    /// [`SmimeError::Io`] if the directory cannot be read: the caller must not mistake an
    /// unreadable store for a recipient without a certificate.
    pub fn find(&self, email: &str) -> Result<Option<Certificate>, SmimeError> {
        self.find_at(email, SystemTime::now())
    }

    /// [`Self::find`] with the validity check done at `now`.
    fn find_at(&self, email: &str, now: SystemTime) -> Result<Option<Certificate>, SmimeError> {
        let wanted = email.trim().to_lowercase();
        let best = self
            .load_all()?
            .into_iter()
            .map(|(_, loaded)| loaded.cert)
            .filter(|c| cert::emails(c).iter().any(|e| e.to_lowercase() == wanted))
            .filter(|c| cert::check_usable(c, now).is_ok())
            .max_by_key(|c| c.tbs_certificate.validity.not_after.to_system_time());
        Ok(best)
    }

    /// Every parseable certificate file with its path.
    fn load_all(&self) -> Result<Vec<(PathBuf, LoadedCert)>, SmimeError> {
        let io_error = |source| SmimeError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_error)? {
            let path = entry.map_err(io_error)?.path();
            let is_cert_file = path.extension().is_some_and(|e| e == EXTENSION)
                && path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .is_some_and(is_fingerprint);
            if !is_cert_file {
                continue;
            }
            // A file removed between read_dir and here is simply gone; anything else that
            // makes one file unreadable must not hide the rest of the store.
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable S/MIME certificate");
                    continue;
                }
            };
            match cert::load_certificates(&bytes) {
                Ok(certs) => found.extend(certs.into_iter().map(|c| (path.clone(), c))),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unparseable S/MIME certificate");
                }
            }
        }
        Ok(found)
    }

    fn path_for(&self, fingerprint: &str) -> PathBuf {
        self.dir.join(format!("{fingerprint}.{EXTENSION}"))
    }

    /// Writes `der` as PEM under its fingerprint via a temporary file and a rename.
    fn write(&self, fingerprint: &str, der: &[u8]) -> Result<(), SmimeError> {
        let pem = der::pem::encode_string("CERTIFICATE", LineEnding::LF, der)
            .map_err(|e| SmimeError::Der(e.into()))?;
        let final_path = self.path_for(fingerprint);
        let tmp_path = self
            .dir
            .join(format!(".{fingerprint}.{:016x}.tmp", rand::random::<u64>()));
        std::fs::write(&tmp_path, pem).map_err(|source| SmimeError::Io {
            path: tmp_path.clone(),
            source,
        })?;
        std::fs::rename(&tmp_path, &final_path).map_err(|source| {
            let _ = std::fs::remove_file(&tmp_path);
            SmimeError::Io {
                path: final_path.clone(),
                source,
            }
        })
    }
}

/// 64 hex digits: a SHA-256 fingerprint.
fn is_fingerprint(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}
