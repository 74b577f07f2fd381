//! WKD: placeholder.
