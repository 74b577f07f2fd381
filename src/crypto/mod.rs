//! Message encryption for delivery: S/MIME (RFC 8551) enveloped-data.
//!
//! Each submodule turns a message in SMTP wire form into its encrypted form for one set of
//! recipients and owns the recipients' key material lookup (certificate store).

pub mod smime;
