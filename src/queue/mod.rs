//! The queue: schedules delivery attempts for spooled messages, records per-recipient
//! results, retries by age with jitter, expires old mail and generates DSNs.

pub mod clock;
pub mod dsn;
pub mod retry;
mod scheduler;

pub use clock::{Clock, ManualClock, SystemClock};
pub use scheduler::{Queue, QueueSettings};

/// Encodes a value as RFC 3461 xtext: `+XX` for `+`, `=` and anything outside 33..=126.
pub fn xtext_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn xtext_encodes_specials() {
        assert_eq!(super::xtext_encode("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(super::xtext_encode("bob@example.com"), "bob@example.com");
    }
}
