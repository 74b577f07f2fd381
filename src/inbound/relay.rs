//! Relay control: who may send to which recipient. A pure function of the recipient's
//! domain and what we know of the client, tested as a table.

use crate::smtp::reply::{EnhancedStatus, Reply};

/// What the server knows about the client when a RCPT arrives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientTrust {
    /// The client IP is in `relay.trusted_networks`.
    pub trusted_network: bool,
    /// The client presented a TLS certificate whose fingerprint is pinned.
    pub pinned_certificate: bool,
    /// The client authenticated with SMTP AUTH.
    pub authenticated: bool,
}

/// Decides whether a recipient at `domain` is accepted: local domains from anyone, any other
/// domain only for trusted clients. `%`, `!` and source routes play no part: the domain is
/// the one after the last `@`, already parsed.
pub fn check(domain_is_local: bool, trust: ClientTrust) -> Result<(), Reply> {
    if domain_is_local || trust.trusted_network || trust.pinned_certificate || trust.authenticated {
        Ok(())
    } else {
        Err(Reply::new(
            550,
            EnhancedStatus::new(5, 7, 1),
            "Relay access denied",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_table() {
        let none = ClientTrust::default();
        let cases = [
            (true, none, true),
            (false, none, false),
            (
                false,
                ClientTrust {
                    trusted_network: true,
                    ..none
                },
                true,
            ),
            (
                false,
                ClientTrust {
                    pinned_certificate: true,
                    ..none
                },
                true,
            ),
            (
                false,
                ClientTrust {
                    authenticated: true,
                    ..none
                },
                true,
            ),
        ];
        for (local, trust, ok) in cases {
            let r = check(local, trust);
            assert_eq!(r.is_ok(), ok, "{local} {trust:?}");
            if let Err(reply) = r {
                assert_eq!(reply.code, 550);
                assert_eq!(reply.status, Some(EnhancedStatus::new(5, 7, 1)));
            }
        }
    }
}
