//! One command line, as the session's line reader hands it to the parser (CRLF removed;
//! the reader splits on LF, so the content checks below apply to LF-free lines).
//!
//! Invariants: `parse` never panics; every error maps to a 5xx reply that serialises as one
//! well-formed line; a line with NUL or CR never parses; decoded values (HELO name, ENVID,
//! ORCPT) carry no CR/LF/NUL; an address prints back to text that parses to the same
//! address; xtext-decoded values re-encode and decode to themselves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpost::smtp::address::{Address, RcptPath};
use sealpost::smtp::command::{Command, parse};
use sealpost::smtp::params::{xtext_decode, xtext_encode};

fn no_ctl_bytes(s: &str) -> bool {
    !s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

fn check_address(a: &Address) {
    let printed = a.to_string();
    assert!(no_ctl_bytes(&printed), "address prints CR/LF/NUL: {printed:?}");
    let back = Address::parse(&printed, a.is_utf8())
        .unwrap_or_else(|e| panic!("address {a:?} prints as {printed:?}, which fails: {e}"));
    assert_eq!(&back, a, "address does not survive Display + parse: {printed:?}");
}

fn check_xtext(decoded: &str) {
    assert!(no_ctl_bytes(decoded), "xtext value with CR/LF/NUL: {decoded:?}");
    let enc = xtext_encode(decoded);
    assert_eq!(xtext_decode(&enc).as_deref(), Some(decoded), "xtext round trip via {enc:?}");
}

fn check_ok(line: &[u8], cmd: &Command) {
    let _ = format!("{cmd:?}");
    assert!(
        !line.iter().any(|&b| b == 0 || b == b'\r'),
        "line with NUL/CR parsed: {cmd:?}"
    );
    match cmd {
        Command::Ehlo(name) | Command::Helo(name) => {
            assert!(!name.is_empty());
            assert!(!name.chars().any(char::is_control), "{name:?}");
        }
        Command::Vrfy(arg) => assert!(!arg.is_empty() && no_ctl_bytes(arg)),
        Command::Mail { from, params } => {
            if let Some(a) = from {
                // A non-ASCII sender only parses together with SMTPUTF8.
                assert!(!a.is_utf8() || params.smtputf8, "UTF-8 sender without SMTPUTF8");
                check_address(a);
            }
            if let Some(envid) = &params.envid {
                check_xtext(envid);
            }
        }
        Command::Rcpt { to, params } => {
            match to {
                RcptPath::Mailbox(a) => check_address(a),
                // `<"">` is a valid empty quoted-string local part (RFC 5321 §4.1.2).
                RcptPath::Domainless(local) => assert!(no_ctl_bytes(local)),
            }
            if let Some((kind, addr)) = &params.orcpt {
                assert!(no_ctl_bytes(kind), "{kind:?}");
                check_xtext(addr);
            }
        }
        Command::Auth { mechanism, initial } => {
            assert!(!mechanism.is_empty());
            assert_eq!(mechanism, &mechanism.to_ascii_uppercase());
            if let Some(i) = initial {
                assert!(!i.is_empty() && no_ctl_bytes(i));
            }
        }
        Command::Bdat { .. }
        | Command::Data
        | Command::Rset
        | Command::Noop
        | Command::Quit
        | Command::Help
        | Command::Expn
        | Command::StartTls => {}
    }
}

fuzz_target!(|line: &[u8]| {
    for smtputf8 in [false, true] {
        match parse(line, smtputf8) {
            // The session's line reader splits on LF, so a real command line never holds
            // one; `parse` itself does not refuse LF (VRFY/NOOP/HELP keep it in their
            // argument), so the content checks only apply to LF-free lines.
            Ok(cmd) if !line.contains(&b'\n') => check_ok(line, &cmd),
            Ok(cmd) => {
                let _ = format!("{cmd:?}");
                assert!(!line.iter().any(|&b| b == 0 || b == b'\r'));
            }
            Err(e) => {
                let _ = format!("{e} {e:?}");
                let reply = e.reply();
                assert!(
                    (500..600).contains(&reply.code),
                    "error {e:?} maps to non-5xx reply {reply}"
                );
                let _ = reply.to_string();
                let bytes = reply.to_bytes();
                assert!(bytes.ends_with(b"\r\n"));
                let body = &bytes[..bytes.len() - 2];
                assert!(
                    !body.iter().any(|&b| b == b'\r' || b == b'\n'),
                    "error reply spans lines: {bytes:?}"
                );
            }
        }
    }
    // RCPT with SMTPUTF8 accepts a superset of RCPT without it.
    if parse(line, false).is_ok() {
        assert!(parse(line, true).is_ok(), "accepted without SMTPUTF8 but not with it");
    }
});
