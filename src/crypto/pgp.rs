//! OpenPGP: placeholder.
