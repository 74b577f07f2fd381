//! Message encryption: MIME helpers shared by the encryption formats, OpenPGP/MIME (RFC 3156)
//! with an on-disk keyring, and Web Key Directory lookups.
//!
//! Callers check [`mime::is_already_encrypted`] before encrypting; the encryptors refuse
//! already-encrypted input themselves too, so a message is never encrypted twice.

pub mod mime;
pub mod pgp;
pub mod wkd;
