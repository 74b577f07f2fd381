//! Choosing a message's traffic class at accept time: a pure function of the configured
//! `[[class]]` rules and what is known about the submission.
//!
//! Order: the class header (`X-Sealpost-Class: marketing`) when the client may choose (it
//! may relay: trusted network, AUTH, pinned certificate) and the class exists; else the
//! first `[[class]]` whose listener, AUTH user or sender domain matches; else `default`.

use crate::config::{Class, DEFAULT_CLASS};

/// What the class rules look at.
#[derive(Debug, Clone, Copy, Default)]
pub struct Submission<'a> {
    /// The listener's local address, e.g. `127.0.0.1:587`.
    pub listener: Option<&'a str>,
    /// The AUTH identity (or API client).
    pub auth_user: Option<&'a str>,
    /// The envelope sender (empty for `<>`).
    pub sender: &'a str,
    /// The value of the class header, if the message has one.
    pub header_class: Option<&'a str>,
    /// The client may pick its class by header.
    pub may_choose: bool,
}

/// The class name for a submission (a configured name, or [`DEFAULT_CLASS`]).
pub fn assign(classes: &[Class], s: &Submission<'_>) -> String {
    if s.may_choose
        && let Some(wanted) = s.header_class.map(str::trim)
        && let Some(c) = classes.iter().find(|c| c.name.eq_ignore_ascii_case(wanted))
    {
        return c.name.clone();
    }
    let sender_domain = s.sender.rsplit_once('@').map(|(_, d)| d);
    classes
        .iter()
        .find(|c| {
            s.listener
                .is_some_and(|l| c.listeners.iter().any(|p| listener_matches(p, l)))
                || s.auth_user
                    .is_some_and(|u| c.auth_users.iter().any(|a| a.eq_ignore_ascii_case(u)))
                || sender_domain.is_some_and(|d| {
                    c.sender_domains
                        .iter()
                        .any(|sd| sd.trim_start_matches('@').eq_ignore_ascii_case(d))
                })
        })
        .map(|c| c.name.clone())
        .unwrap_or_else(|| DEFAULT_CLASS.to_string())
}

/// `127.0.0.1:587` matches itself; `*:587` matches that port on any address.
fn listener_matches(pattern: &str, listener: &str) -> bool {
    match pattern.strip_prefix("*:") {
        Some(port) => listener.rsplit_once(':').is_some_and(|(_, p)| p == port),
        None => pattern.eq_ignore_ascii_case(listener),
    }
}

/// The value of header field `name` in the message's top-level header, unfolded.
pub fn header_value(body: &[u8], name: &str) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    let (header, _) = crate::crypto::mime::split_header_body(body);
    crate::crypto::mime::header_fields(header)
        .iter()
        .find(|f| f.is(&name.to_ascii_lowercase()))
        .map(|f| f.value().trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Vec<Class> {
        #[derive(serde::Deserialize)]
        struct W {
            class: Vec<Class>,
        }
        toml::from_str::<W>(
            r#"
[[class]]
name = "transactional"
listeners = ["*:587"]
auth_users = ["billing-app"]
priority = 10
[[class]]
name = "marketing"
sender_domains = ["news.example.com"]
"#,
        )
        .unwrap()
        .class
    }

    #[test]
    fn class_table() {
        let c = classes();
        let s = |listener, user, sender, header, may_choose| Submission {
            listener,
            auth_user: user,
            sender,
            header_class: header,
            may_choose,
        };
        let cases = [
            (
                s(Some("127.0.0.1:587"), None, "a@example.com", None, false),
                "transactional",
            ),
            (
                s(Some("[::1]:587"), None, "a@example.com", None, false),
                "transactional",
            ),
            (
                s(
                    Some("127.0.0.1:25"),
                    Some("Billing-App"),
                    "a@x.test",
                    None,
                    true,
                ),
                "transactional",
            ),
            (
                s(Some("127.0.0.1:25"), None, "n@News.Example.com", None, true),
                "marketing",
            ),
            (
                s(Some("127.0.0.1:25"), None, "a@example.com", None, true),
                "default",
            ),
            (s(None, None, "", None, true), "default"),
            // The header wins when the client may choose and the class exists.
            (
                s(
                    Some("127.0.0.1:587"),
                    None,
                    "a@x.test",
                    Some(" Marketing "),
                    true,
                ),
                "marketing",
            ),
            // A stranger cannot pick a class; an unknown class falls through to the rules.
            (
                s(
                    Some("127.0.0.1:25"),
                    None,
                    "a@x.test",
                    Some("transactional"),
                    false,
                ),
                "default",
            ),
            (
                s(Some("127.0.0.1:587"), None, "a@x.test", Some("vip"), true),
                "transactional",
            ),
        ];
        for (sub, want) in cases {
            assert_eq!(assign(&c, &sub), want, "{sub:?}");
        }
    }

    #[test]
    fn header_value_is_read_unfolded() {
        let body =
            b"From: a@x.test\r\nX-Sealpost-Class:\r\n  marketing\r\n\r\nX-Sealpost-Class: no\r\n";
        assert_eq!(
            header_value(body, "X-Sealpost-Class").as_deref(),
            Some("marketing")
        );
        assert_eq!(header_value(body, "X-Other"), None);
        assert_eq!(header_value(body, ""), None);
    }
}
