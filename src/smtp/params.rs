//! MAIL and RCPT extension parameters (RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 6531 SMTPUTF8,
//! RFC 3461 DSN) and the xtext encoding they use.
//!
//! Every value is decoded strictly here so that what reaches the spool and later a DSN is
//! already known to be clean: no CR, LF or NUL can be smuggled through an ENVID or ORCPT.

use std::collections::HashSet;

/// Longest ENVID value, decoded (RFC 3461 §4.4).
const MAX_ENVID: usize = 100;
/// Longest ORCPT value, decoded (RFC 3461 §4.2).
const MAX_ORCPT: usize = 500;

/// Why a parameter list was refused. Each maps to one reply in [`super::command`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// A keyword we do not implement (555 5.5.4, RFC 5321 §4.1.1.11).
    #[error("unknown parameter {0}")]
    Unknown(String),
    /// A known keyword with a bad, missing or duplicated value (501 5.5.4).
    #[error("invalid value for {0}")]
    Invalid(&'static str),
    /// The same keyword twice (501 5.5.4).
    #[error("duplicate parameter {0}")]
    Duplicate(String),
}

/// BODY= values we advertise (7BIT and 8BITMIME; BINARYMIME is not offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Body {
    /// `BODY=7BIT`.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// DSN RET= (RFC 3461 §4.3): how much of the message a bounce should return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Ret {
    /// Return the whole message.
    Full,
    /// Return only the headers.
    Hdrs,
}

/// DSN NOTIFY= (RFC 3461 §4.1): `Never` is exclusive, so it is its own variant and the
/// "NEVER mixed with SUCCESS" state cannot be represented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Notify {
    /// `NOTIFY=NEVER`: no DSN of any kind for this recipient.
    Never,
    /// A non-empty combination of SUCCESS, FAILURE and DELAY.
    On {
        /// Report successful delivery.
        success: bool,
        /// Report permanent failure.
        failure: bool,
        /// Report delays.
        delay: bool,
    },
}

/// The accepted MAIL FROM parameters, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MailParams {
    /// Declared message size (RFC 1870), checked against the limit at MAIL.
    pub size: Option<u64>,
    /// Declared body type.
    pub body: Option<Body>,
    /// The transaction uses UTF-8 addresses/headers (RFC 6531).
    pub smtputf8: bool,
    /// DSN return type.
    pub ret: Option<Ret>,
    /// DSN envelope id, xtext-decoded.
    pub envid: Option<String>,
}

/// The accepted RCPT TO parameters, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RcptParams {
    /// DSN NOTIFY.
    pub notify: Option<Notify>,
    /// DSN ORCPT as (addr-type, xtext-decoded address).
    pub orcpt: Option<(String, String)>,
}

/// Parses the parameters after a MAIL FROM path (space separated `KEY[=VALUE]`).
pub fn parse_mail_params(s: &str) -> Result<MailParams, ParamError> {
    let mut p = MailParams::default();
    let mut seen = HashSet::new();
    for (key, value) in split_params(s, &mut seen)? {
        match key.as_str() {
            "SIZE" => {
                let v = value.ok_or(ParamError::Invalid("SIZE"))?;
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ParamError::Invalid("SIZE"));
                }
                p.size = Some(v.parse().map_err(|_| ParamError::Invalid("SIZE"))?);
            }
            "BODY" => {
                let v = value.ok_or(ParamError::Invalid("BODY"))?;
                p.body = Some(match v.to_ascii_uppercase().as_str() {
                    "7BIT" => Body::SevenBit,
                    "8BITMIME" => Body::EightBitMime,
                    _ => return Err(ParamError::Invalid("BODY")),
                });
            }
            "SMTPUTF8" => {
                if value.is_some() {
                    return Err(ParamError::Invalid("SMTPUTF8"));
                }
                p.smtputf8 = true;
            }
            "RET" => {
                let v = value.ok_or(ParamError::Invalid("RET"))?;
                p.ret = Some(match v.to_ascii_uppercase().as_str() {
                    "FULL" => Ret::Full,
                    "HDRS" => Ret::Hdrs,
                    _ => return Err(ParamError::Invalid("RET")),
                });
            }
            "ENVID" => {
                let v = xtext_decode(value.ok_or(ParamError::Invalid("ENVID"))?)
                    .ok_or(ParamError::Invalid("ENVID"))?;
                if v.is_empty() || v.len() > MAX_ENVID {
                    return Err(ParamError::Invalid("ENVID"));
                }
                p.envid = Some(v);
            }
            "AUTH" => {
                // RFC 4954 §5: submitters send AUTH=<> or AUTH=xtext. We trust only our own
                // SASL identity, so the value is checked for syntax and then ignored.
                let v = value.ok_or(ParamError::Invalid("AUTH"))?;
                if v != "<>" && xtext_decode(v).is_none() {
                    return Err(ParamError::Invalid("AUTH"));
                }
            }
            _ => return Err(ParamError::Unknown(key)),
        }
    }
    Ok(p)
}

/// Parses the parameters after a RCPT TO path.
pub fn parse_rcpt_params(s: &str) -> Result<RcptParams, ParamError> {
    let mut p = RcptParams::default();
    let mut seen = HashSet::new();
    for (key, value) in split_params(s, &mut seen)? {
        match key.as_str() {
            "NOTIFY" => {
                p.notify = Some(parse_notify(value.ok_or(ParamError::Invalid("NOTIFY"))?)?);
            }
            "ORCPT" => {
                let v = value.ok_or(ParamError::Invalid("ORCPT"))?;
                let (kind, addr) = v.split_once(';').ok_or(ParamError::Invalid("ORCPT"))?;
                if kind.is_empty() || !kind.bytes().all(is_atom_char) {
                    return Err(ParamError::Invalid("ORCPT"));
                }
                let addr = xtext_decode(addr).ok_or(ParamError::Invalid("ORCPT"))?;
                if addr.is_empty() || addr.len() > MAX_ORCPT {
                    return Err(ParamError::Invalid("ORCPT"));
                }
                p.orcpt = Some((kind.to_ascii_lowercase(), addr));
            }
            _ => return Err(ParamError::Unknown(key)),
        }
    }
    Ok(p)
}

/// Decodes RFC 3461 §4 xtext strictly: `+XX` with two uppercase hex digits, every other
/// character in 33..=126 except `+` and `=`. The decoded text may not contain control
/// characters (it ends up in DSN headers). `None` on any violation.
pub fn xtext_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'+' {
            let hi = hex_upper(*bytes.get(i + 1)?)?;
            let lo = hex_upper(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else if (33..=126).contains(&b) && b != b'=' {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    if out.iter().any(|&b| b < 32 || b == 127) {
        return None;
    }
    String::from_utf8(out).ok()
}

/// Encodes text as xtext, for writing DSN parameters back out on relay.
pub fn xtext_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

fn hex_upper(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_atom_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

fn parse_notify(v: &str) -> Result<Notify, ParamError> {
    let mut never = false;
    let (mut success, mut failure, mut delay) = (false, false, false);
    for item in v.split(',') {
        let flag = match item.to_ascii_uppercase().as_str() {
            "NEVER" => &mut never,
            "SUCCESS" => &mut success,
            "FAILURE" => &mut failure,
            "DELAY" => &mut delay,
            _ => return Err(ParamError::Invalid("NOTIFY")),
        };
        if *flag {
            return Err(ParamError::Invalid("NOTIFY"));
        }
        *flag = true;
    }
    match (never, success || failure || delay) {
        (true, false) => Ok(Notify::Never),
        (false, true) => Ok(Notify::On {
            success,
            failure,
            delay,
        }),
        _ => Err(ParamError::Invalid("NOTIFY")),
    }
}

/// Splits `KEY[=VALUE] KEY[=VALUE]`, uppercasing keys and refusing duplicates.
fn split_params<'a>(
    s: &'a str,
    seen: &mut HashSet<String>,
) -> Result<Vec<(String, Option<&'a str>)>, ParamError> {
    let mut out = Vec::new();
    for word in s.split(' ').filter(|w| !w.is_empty()) {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        let key_ok = key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !key_ok {
            return Err(ParamError::Invalid("parameter keyword"));
        }
        let key = key.to_ascii_uppercase();
        if !seen.insert(key.clone()) {
            return Err(ParamError::Duplicate(key));
        }
        out.push((key, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext_strict_decoding() {
        assert_eq!(xtext_decode("abc+2Bdef").as_deref(), Some("abc+def"));
        assert_eq!(xtext_decode("a+3Db").as_deref(), Some("a=b"));
        for bad in [
            "a+2b",     // lowercase hex
            "a+G0",     // not hex
            "a+2",      // truncated
            "a+",       // truncated
            "a=b",      // '=' must be encoded
            "a b",      // space
            "a\tb",     // control
            "a+0D+0Ab", // encoded CR LF
            "a+00",     // encoded NUL
            "a+7F",     // encoded DEL
            "é",        // non-ASCII
            "+FF",      // not UTF-8
        ] {
            assert_eq!(xtext_decode(bad), None, "{bad:?}");
        }
        assert_eq!(
            xtext_decode(&xtext_encode("a+b=c d")).as_deref(),
            Some("a+b=c d")
        );
    }

    #[test]
    fn mail_params() {
        let p =
            parse_mail_params(" SIZE=1000 body=8bitmime SMTPUTF8 RET=HDRS ENVID=QQ+2B1").unwrap();
        assert_eq!(p.size, Some(1000));
        assert_eq!(p.body, Some(Body::EightBitMime));
        assert!(p.smtputf8);
        assert_eq!(p.ret, Some(Ret::Hdrs));
        assert_eq!(p.envid.as_deref(), Some("QQ+1"));
        assert_eq!(parse_mail_params(""), Ok(MailParams::default()));
        assert!(parse_mail_params(" AUTH=<>").is_ok());
    }

    #[test]
    fn mail_param_errors() {
        for bad in [
            "SIZE=abc",
            "SIZE=",
            "SIZE",
            "SIZE=-1",
            "SIZE=99999999999999999999999",
            "BODY=BINARYMIME",
            "SMTPUTF8=yes",
            "RET=ALL",
            "ENVID=a+2b",
            "ENVID=a+0D+0A",
            "ENVID=",
            "SIZE=1 SIZE=2",
            "size=1 SIZE=1",
            "=x",
        ] {
            assert!(
                matches!(
                    parse_mail_params(bad),
                    Err(ParamError::Invalid(_) | ParamError::Duplicate(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            parse_mail_params("FOO=bar"),
            Err(ParamError::Unknown("FOO".into()))
        );
        assert!(matches!(
            parse_mail_params("NOTIFY=NEVER"),
            Err(ParamError::Unknown(_))
        ));
        assert!(parse_mail_params(&format!("ENVID={}", "a".repeat(101))).is_err());
    }

    #[test]
    fn rcpt_params() {
        let p = parse_rcpt_params("NOTIFY=success,DELAY ORCPT=rfc822;bob+40example.com").unwrap();
        assert_eq!(
            p.notify,
            Some(Notify::On {
                success: true,
                failure: false,
                delay: true
            })
        );
        assert_eq!(p.orcpt, Some(("rfc822".into(), "bob@example.com".into())));
        assert_eq!(
            parse_rcpt_params("NOTIFY=NEVER").unwrap().notify,
            Some(Notify::Never)
        );
        for bad in [
            "NOTIFY=NEVER,SUCCESS",
            "NOTIFY=",
            "NOTIFY=SUCCESS,SUCCESS",
            "NOTIFY=SOMETIMES",
            "ORCPT=bob@example.com",
            "ORCPT=;bob",
            "ORCPT=rfc822;",
            "ORCPT=rfc822;bob+40example.coM+0d",
            "ORCPT=rfc822;bob+0D+0Aevil",
            "ORCPT=rfc822;a=b",
            "ORCPT=rfc 822;a",
            "NOTIFY=NEVER NOTIFY=NEVER",
        ] {
            assert!(
                matches!(
                    parse_rcpt_params(bad),
                    Err(ParamError::Invalid(_) | ParamError::Duplicate(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_rcpt_params("SIZE=1"),
            Err(ParamError::Unknown(_))
        ));
    }
}
