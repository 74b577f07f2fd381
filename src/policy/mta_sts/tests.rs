use super::*;

/// C27 P1: LF, trailing whitespace, no final newline, an unknown key and an IP mx.
pub(crate) const P1: &str = "version: STSv1\nmode: enforce  \nmx: mail.example.com\nmx: *.example.net\nmx: 192.0.2.56\nfoo: bar\nmax_age: 604800";
/// C27 P2: CRLF, `nmx` typo, so no mx at all.
pub(crate) const P2: &str =
    "version: STSv1\r\nmode: enforce\r\nnmx: mx0.example.org\r\nmax_age: 604800\r\n";

#[test]
fn txt_table() {
    let ok: &[(&str, &str)] = &[
        ("v=STSv1; id=20160831085700Z;", "20160831085700Z"),
        ("v=STSv1;id=abc", "abc"),
        ("v=STSv1 ;\tid=abc ; ", "abc"),
        ("v=STSv1; ext=val; id=A1", "A1"),
        (
            "v=STSv1; id=abcdefghijklmnopqrstuvwxyz012345;",
            "abcdefghijklmnopqrstuvwxyz012345",
        ),
    ];
    for (record, id) in ok {
        assert_eq!(parse_txt(record).unwrap().id, *id, "{record}");
    }
    let bad = [
        "",
        "id=abc; v=STSv1",
        "v=STSv2; id=abc",
        "v=stsv1; id=abc",
        " v=STSv1; id=abc",
        "v=STSv1",
        "v=STSv1;",
        "v=STSv1; id=",
        "v=STSv1; id=abc-def",
        "v=STSv1; id=abcdefghijklmnopqrstuvwxyz0123456",
        "v=STSv1; id=abc; id=def",
        "v=STSv1;; id=abc",
        "v=STSv1; junk; id=abc",
        "v=STSv1; id=abc; =x",
        "v=STSv1; id=ab c",
        "v=STSv1; id=äbc",
    ];
    for record in bad {
        let err = parse_txt(record).expect_err(record);
        assert_eq!(err.report_code(), "sts-policy-invalid");
    }
}

#[test]
fn txt_record_selection() {
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(select_txt(&s(&[])).unwrap(), None);
    assert_eq!(
        select_txt(&s(&["google-site-verification=x"])).unwrap(),
        None
    );
    assert_eq!(
        select_txt(&s(&["spf", "v=STSv1; id=a;"])).unwrap(),
        Some(StsTxt { id: "a".into() })
    );
    assert!(select_txt(&s(&["v=STSv1; id=a;", "v=STSv1; id=b;"])).is_err());
    assert!(select_txt(&s(&["v=STSv1; id=a;", "v=STSv1; id=a;"])).is_err());
    assert!(select_txt(&s(&["v=STSv1; id=!"])).is_err());
}

#[test]
fn c27_p1_is_valid() {
    let p = parse_policy(P1).unwrap();
    assert_eq!(p.mode, StsMode::Enforce);
    assert_eq!(p.mx, ["mail.example.com", "*.example.net"]);
    assert_eq!(p.ignored_mx, ["192.0.2.56"]);
    assert_eq!(p.max_age, 604_800);
    // Same body with CRLF and a final newline parses the same.
    let crlf = format!("{}\r\n", P1.replace('\n', "\r\n"));
    assert_eq!(parse_policy(&crlf).unwrap(), p);
    assert!(!p.mx_allowed("192.0.2.56"));
    assert!(p.mx_allowed("MX1.Example.NET."));
    assert!(!p.mx_allowed("example.net"));
    assert!(!p.mx_allowed("a.b.example.net"));
}

#[test]
fn c27_p2_has_no_mx() {
    let err = parse_policy(P2).unwrap_err();
    assert_eq!(err.report_code(), "sts-policy-invalid");
    assert!(err.to_string().starts_with("sts-policy-invalid"), "{err}");
}

#[test]
fn c27_p3_testing() {
    let p = parse_policy(&P1.replace("mode: enforce", "mode: testing")).unwrap();
    assert_eq!(p.mode, StsMode::Testing);
}

#[test]
fn c27_p4_max_age() {
    let cases: &[(&str, Option<u64>)] = &[
        ("99999999999", None),
        ("31557601", None),
        ("31557600", Some(31_557_600)),
        ("0604800", Some(604_800)),
        ("0", Some(0)),
        ("", None),
        ("-1", None),
        ("+5", None),
        ("1e6", None),
        ("18446744073709551616", None),
        ("9999999999", None),
    ];
    for (value, want) in cases {
        let body = P1.replace("max_age: 604800", &format!("max_age: {value}"));
        assert_eq!(
            parse_policy(&body).ok().map(|p| p.max_age),
            *want,
            "{value}"
        );
    }
}

#[test]
fn policy_table() {
    let base = "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 86400\n";
    let ok: &[&str] = &[
        base,
        "mode: enforce\nmax_age: 86400\nmx: mx.example.com\nversion: STSv1",
        "version: STSv1\nmode: none\nmax_age: 86400\n",
        "version: STSv1\nmode: none\nmx: 10.0.0.1\nmax_age: 86400\n",
        "version: STSv1\n\nmode: enforce\nmx:mx.example.com\nmax_age:86400\n",
        "version: STSv1\nmode: enforce\nmode: none\nmx: MX.Example.COM.\nmax_age: 86400\n",
    ];
    for body in ok {
        let p = parse_policy(body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
        if p.mode == StsMode::Enforce {
            assert_eq!(p.mx, ["mx.example.com"], "{body:?}");
        }
    }
    let bad: &[&str] = &[
        "",
        "version: STSv2\nmode: enforce\nmx: mx.example.com\nmax_age: 86400\n",
        "mode: enforce\nmx: mx.example.com\nmax_age: 86400\n",
        "version: STSv1\nmode: Enforce\nmx: mx.example.com\nmax_age: 86400\n",
        "version: STSv1\nmode: strict\nmx: mx.example.com\nmax_age: 86400\n",
        "version: STSv1\nmx: mx.example.com\nmax_age: 86400\n",
        "version: STSv1\nmode: enforce\nmx: mx.example.com\n",
        "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 1 day\n",
        "version: STSv1\nmode: testing\nmax_age: 86400\n",
        "version: STSv1\nmode: enforce\nmx: 192.0.2.1\nmx: [2001:db8::1]\nmax_age: 86400\n",
        "version: STSv1\nmode: enforce\nmx: *\nmx: mx..example.com\nmx: -a.example\nmax_age: 86400\n",
        "<html><body>captive portal</body></html>",
    ];
    for body in bad {
        let err = parse_policy(body).expect_err(body);
        assert_eq!(err.report_code(), "sts-policy-invalid", "{body:?}");
    }
}

#[test]
fn mx_matching_table() {
    let cases: &[(&str, &str, bool)] = &[
        ("mail.example.com", "mail.example.com", true),
        ("mail.example.com", "MAIL.EXAMPLE.COM.", true),
        ("Mail.Example.Com.", "mail.example.com", true),
        ("mail.example.com", "mail2.example.com", false),
        ("mail.example.com", "x.mail.example.com", false),
        ("*.example.net", "mx1.example.net", true),
        ("*.example.net", "MX1.example.net.", true),
        ("*.example.net", "example.net", false),
        ("*.example.net", "a.b.example.net", false),
        ("*.example.net", ".example.net", false),
        ("*.example.net", "mx1.example.net.evil", false),
        ("*.example.net", "mx1example.net", false),
        ("192.0.2.56", "192.0.2.56", false),
        ("[192.0.2.56]", "192.0.2.56", false),
        ("*", "anything.example", false),
        ("", "", false),
    ];
    for (pattern, host, want) in cases {
        assert_eq!(mx_matches(pattern, host), *want, "{pattern} vs {host}");
    }
}
