//! Message encryption for delivery: MIME helpers shared by the formats, OpenPGP/MIME
//! (RFC 3156) with an on-disk keyring and Web Key Directory lookups, and S/MIME (RFC 8551)
//! enveloped-data with an on-disk certificate store. Keys stay behind this module.
//!
//! Callers check [`mime::is_already_encrypted`] before encrypting; the encryptors refuse
//! already-encrypted input themselves too, so a message is never encrypted twice.

pub mod dkim;
pub mod keys;
pub mod mime;
pub mod pgp;
pub mod rsa_public;
pub mod smime;
pub mod wkd;
