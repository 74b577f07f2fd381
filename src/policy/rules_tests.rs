use super::*;

fn parse(text: &str) -> Result<Policy, String> {
    Policy::parse(text, Path::new("p.toml")).map_err(|e| e.to_string())
}

fn ctx() -> MessageContext {
    MessageContext {
        sender: "alice@clinic.example".into(),
        authenticated: Some("alice".into()),
        listener: Some("127.0.0.1:587".into()),
        client_ip: Some("10.1.2.3".parse().unwrap()),
        headers: vec![
            ("Subject".into(), "[SECURE] Lab results".into()),
            ("x-sealpost-sensitivity".into(), "  PHI ".into()),
        ],
        subject: Some("[SECURE] Lab results".into()),
    }
}

#[test]
fn issue_keys_parse() {
    let p = parse(
        r#"
[[rule]]
name = "phi-to-partners"
recipient_domains = ["partner.example"]
require = "encrypted"          # none | tls | verified-tls | encrypted
methods = ["pgp", "smime", "verified-tls"]   # preference order
on_unavailable = "bounce"      # bounce | defer
"#,
    )
    .unwrap();
    let r = &p.rules[0];
    assert_eq!(r.name, "phi-to-partners");
    assert_eq!(r.line, 3);
    assert_eq!(r.require, Requirement::Encrypted);
    assert_eq!(
        r.methods,
        [MethodName::Pgp, MethodName::Smime, MethodName::VerifiedTls]
    );
    assert_eq!(r.on_unavailable, OnUnavailable::Bounce);
}

#[test]
fn example_file_parses() {
    let text = include_str!("../../config/policy.example.toml");
    let p = Policy::parse(text, Path::new("example")).unwrap();
    assert!(p.rules.len() >= 4);
}

#[test]
fn defaults() {
    let p = parse("[[rule]]\nname = \"a\"\n[[rule]]\nname = \"b\"\nrequire = \"encrypted\"\n[[rule]]\nname = \"c\"\nrequire = \"verified-tls\"\n").unwrap();
    assert_eq!(p.rules[0].require, Requirement::None);
    assert!(p.rules[0].methods.is_empty());
    assert_eq!(p.rules[0].on_unavailable, OnUnavailable::Defer);
    assert_eq!(p.rules[1].methods, [MethodName::Pgp, MethodName::Smime]);
    assert_eq!(p.rules[2].methods, [MethodName::VerifiedTls]);
}

#[test]
fn bad_files_are_located() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[[rule]]\nname = \"a\"\nmethods = [\"pgp\", \"gpg\"]\n",
            "p.toml:3:",
            "gpg",
        ),
        (
            "[[rule]]\nname = \"a\"\nrequire = \"encrypted\"\nmethods = []\n",
            "p.toml:3:",
            "at least one method",
        ),
        (
            "[[rule]]\nname = \"a\"\nrequire = \"verified-tls\"\nmethods = [\"tls\"]\n",
            "p.toml:4:",
            "weaker",
        ),
        (
            "[[rule]]\nname = \"a\"\nrequire = \"encrypted\"\nmethods = [\"pgp\", \"tls\"]\n",
            "p.toml:4:",
            "weaker",
        ),
        (
            "[[rule]]\nname = \"a\"\nmethods = [\"pgp\", \"pgp\"]\n",
            "p.toml:3:",
            "twice",
        ),
        (
            "[[rule]]\nname = \"a\"\nrequire = \"secret\"\n",
            "p.toml:3:",
            "secret",
        ),
        (
            "[[rule]]\nname = \"a\"\nrecipient_domain = [\"x\"]\n",
            "p.toml:3:",
            "recipient_domain",
        ),
        ("[[rule]]\nrequire = \"tls\"\n", "p.toml:1:", "name"),
        (
            "[[rule]]\nname = \"a\"\n\n[[rule]]\nname = \"a\"\n",
            "p.toml:5:",
            "line 2",
        ),
        (
            "[[rule]]\nname = \"a\"\nsenders = []\n",
            "p.toml:3:",
            "empty list",
        ),
        (
            "[[rule]]\nname = \"a\"\nclient_networks = [\"10.0.0.0/40\"]\n",
            "p.toml:3:",
            "prefix",
        ),
        (
            "[[rule]]\nname = \"a\"\nlisteners = [\"smtp\"]\n",
            "p.toml:3:",
            "ip:port",
        ),
        (
            "[[rule]]\nname = \"a\"\nstrip_subject_tag = true\n",
            "p.toml:3:",
            "subject_tag",
        ),
        (
            "[[rule]]\nname = \"a\"\nheader = { name = \"X-A\" }\n",
            "p.toml:3:",
            "value",
        ),
        (
            "[[rule]]\nname = \"a\"\nheader = { name = \"X A\", value = \"b\" }\n",
            "p.toml:3:",
            "field name",
        ),
        (
            "[[rule]]\nname = \"a\"\non_unavailable = \"drop\"\n",
            "p.toml:3:",
            "drop",
        ),
        ("[rules]\nname = \"a\"\n", "p.toml:1:", "rules"),
        ("[[rule]]\nname = \"a\n", "p.toml:2:", ""),
    ];
    for (text, location, needle) in cases {
        let err = parse(text).expect_err(text);
        assert!(err.starts_with(location), "{text:?}: {err}");
        assert!(err.contains(needle), "{text:?}: {err}");
    }
}

#[test]
fn weaker_methods_are_allowed_below_their_level() {
    parse("[[rule]]\nname = \"a\"\nrequire = \"tls\"\nmethods = [\"pgp\", \"tls\"]\n").unwrap();
    parse("[[rule]]\nname = \"a\"\nmethods = [\"pgp\"]\n").unwrap();
    parse("[[rule]]\nname = \"a\"\nrequire = \"encrypted\"\nmethods = [\"verified-tls\"]\n")
        .unwrap();
}

#[test]
fn matching_table() {
    // (match keys, recipient, matches?)
    let cases: &[(&str, &str, bool)] = &[
        ("", "bob@anywhere.example", true),
        (
            "recipient_domains = [\"Partner.Example.\"]",
            "Bob@PARTNER.example",
            true,
        ),
        (
            "recipient_domains = [\"partner.example\"]",
            "bob@sub.partner.example",
            false,
        ),
        (
            "recipient_domains = [\"*.partner.example\"]",
            "bob@sub.partner.example",
            true,
        ),
        (
            "recipient_domains = [\"*.partner.example\"]",
            "bob@partner.example",
            false,
        ),
        (
            "recipients = [\"bob@partner.example\"]",
            "BOB@partner.example",
            true,
        ),
        (
            "recipients = [\"bob@partner.example\"]",
            "rob@partner.example",
            false,
        ),
        (
            "recipients = [\"@partner.example\"]",
            "rob@partner.example",
            true,
        ),
        ("senders = [\"alice@clinic.example\"]", "x@y.example", true),
        ("senders = [\"@clinic.example\"]", "x@y.example", true),
        ("senders = [\"@other.example\"]", "x@y.example", false),
        ("senders = [\"<>\"]", "x@y.example", false),
        ("authenticated_users = [\"ALICE\"]", "x@y.example", true),
        ("authenticated_users = [\"bob\"]", "x@y.example", false),
        ("listeners = [\"127.0.0.1:587\"]", "x@y.example", true),
        ("listeners = [\"127.0.0.1:25\"]", "x@y.example", false),
        ("client_networks = [\"10.0.0.0/8\"]", "x@y.example", true),
        (
            "client_networks = [\"192.168.0.0/16\"]",
            "x@y.example",
            false,
        ),
        (
            "header = { name = \"X-Sealpost-Sensitivity\", value = \"phi\" }",
            "x@y.example",
            true,
        ),
        (
            "header = { name = \"X-Sealpost-Sensitivity\", value = \"pii\" }",
            "x@y.example",
            false,
        ),
        (
            "header = { name = \"X-Other\", value = \"phi\" }",
            "x@y.example",
            false,
        ),
        ("subject_tag = \"[secure]\"", "x@y.example", true),
        ("subject_tag = \"[private]\"", "x@y.example", false),
        (
            "recipient_domains = [\"y.example\"]\nsubject_tag = \"[secure]\"",
            "x@y.example",
            true,
        ),
        (
            "recipient_domains = [\"y.example\"]\nsubject_tag = \"[private]\"",
            "x@y.example",
            false,
        ),
    ];
    for (keys, rcpt, want) in cases {
        let p = parse(&format!("[[rule]]\nname = \"r\"\n{keys}\n")).unwrap();
        assert_eq!(
            p.matching_rule(&ctx(), rcpt).is_some(),
            *want,
            "{keys} / {rcpt}"
        );
    }
}

#[test]
fn absent_context_fails_keys_that_need_it() {
    let api = MessageContext {
        sender: "".into(),
        ..MessageContext::default()
    };
    let cases: &[(&str, bool)] = &[
        ("authenticated_users = [\"alice\"]", false),
        ("listeners = [\"127.0.0.1:587\"]", false),
        ("client_networks = [\"0.0.0.0/0\"]", false),
        ("subject_tag = \"[secure]\"", false),
        ("senders = [\"<>\"]", true),
        ("senders = [\"@clinic.example\"]", false),
    ];
    for (keys, want) in cases {
        let p = parse(&format!("[[rule]]\nname = \"r\"\n{keys}\n")).unwrap();
        assert_eq!(p.matching_rule(&api, "x@y").is_some(), *want, "{keys}");
    }
}

#[test]
fn first_match_wins() {
    let p = parse(
        "[[rule]]\nname = \"one\"\nrecipient_domains = [\"a.example\"]\n\
         [[rule]]\nname = \"two\"\n[[rule]]\nname = \"three\"\n",
    )
    .unwrap();
    assert_eq!(p.matching_rule(&ctx(), "x@a.example").unwrap().name, "one");
    assert_eq!(p.matching_rule(&ctx(), "x@b.example").unwrap().name, "two");
    let empty = parse("").unwrap();
    assert!(empty.matching_rule(&ctx(), "x@a.example").is_none());
}

#[test]
fn subject_tag_stripping() {
    let p = parse(
        "[[rule]]\nname = \"r\"\nsubject_tag = \"[secure]\"\nstrip_subject_tag = true\n\
         [[rule]]\nname = \"k\"\nsubject_tag = \"[secure]\"\n",
    )
    .unwrap();
    let (strip, keep) = (&p.rules[0], &p.rules[1]);
    let cases = [
        ("[SECURE] Lab results", "Lab results"),
        ("Lab results [secure]", "Lab results"),
        ("Re: [Secure]  Lab", "Re: Lab"),
        ("no tag", "no tag"),
        ("ünïcode [secure] ok", "ünïcode ok"),
    ];
    for (input, want) in cases {
        assert_eq!(strip.delivered_subject(input), want, "{input}");
        assert_eq!(keep.delivered_subject(input), input);
    }
}
