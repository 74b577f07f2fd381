//! The retry schedule: a pure function of the message's age, like chasquid's `nextDelay`.
//!
//! Young messages are retried soon (a greylisting server usually accepts after minutes); old
//! ones less often, up to the configured ceiling. Jitter spreads retries of a burst of
//! messages that failed together so they do not hit the remote in lockstep.

/// Seconds until the next attempt for a message of `age_secs`, before jitter: the delay grows
/// with age, from `min` to `max` (defaults 5 min and 1 h).
pub fn base_delay(age_secs: u64, min: u64, max: u64) -> u64 {
    let min = min.max(1);
    let max = max.max(min);
    // Half the age, so attempts thin out as the message gets older: 5, 5, 7.5, 11, 17, ... min.
    (age_secs / 2).clamp(min, max)
}

/// Applies +/-10% jitter given a random `unit` in [0, 1).
pub fn with_jitter(delay: u64, unit: f64) -> u64 {
    let spread = delay as f64 * 0.2;
    let jittered = delay as f64 - spread / 2.0 + spread * unit.clamp(0.0, 1.0);
    jittered.round().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_table() {
        let cases = [
            (0, 300),
            (60, 300),
            (600, 300),
            (900, 450),
            (3600, 1800),
            (7200, 3600),
            (5 * 86400, 3600),
        ];
        for (age, want) in cases {
            assert_eq!(base_delay(age, 300, 3600), want, "age {age}");
        }
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        assert_eq!(with_jitter(300, 0.0), 270);
        assert_eq!(with_jitter(300, 0.5), 300);
        assert_eq!(with_jitter(300, 0.999_999), 330);
        assert_eq!(with_jitter(1, 0.0), 1);
    }
}
