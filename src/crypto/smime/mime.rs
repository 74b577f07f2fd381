//! The MIME side of S/MIME: splitting the original message into the outer header and the inner
//! entity, recognising input that is already encrypted, and writing the outer message.
//!
//! Everything here works on bytes: header fields are copied as they came, never re-encoded, so
//! the inner entity decrypts to exactly the original's content header fields and body.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::SmimeError;

/// Header fields S/MIME adds to the outer message after the original's non-content fields.
const OUTER_CONTENT_FIELDS: &[u8] =
    b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=\"smime.p7m\"\r\n\
Content-Transfer-Encoding: base64\r\n\
Content-Disposition: attachment; filename=\"smime.p7m\"\r\n\
Content-Description: S/MIME Encrypted Message\r\n";

/// Base64 line length on the outer body (RFC 2045 §6.8 maximum).
const BASE64_LINE: usize = 76;

/// Longest masked Subject we accept, in bytes, so the field stays far below the 998-octet
/// line limit even before folding.
const MAX_MASK_LEN: usize = 256;

/// One header field as it appeared in the original, folded lines and line ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeaderField<'a> {
    /// The field name, without the colon or any whitespace before it.
    pub(crate) name: &'a [u8],
    /// The whole field: name, colon, value, every continuation line and their line ends.
    pub(crate) raw: &'a [u8],
}

impl HeaderField<'_> {
    /// True for `Content-*` fields, which travel inside the encrypted entity.
    pub(crate) fn is_content(&self) -> bool {
        self.name.len() >= 8 && self.name[..8].eq_ignore_ascii_case(b"content-")
    }

    fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }

    /// The unfolded value: everything after the colon with line ends removed.
    fn value(&self) -> String {
        let colon = self
            .raw
            .iter()
            .position(|&b| b == b':')
            .unwrap_or(self.raw.len());
        let rest = self.raw.get(colon + 1..).unwrap_or_default();
        let unfolded: Vec<u8> = rest
            .iter()
            .copied()
            .filter(|&b| b != b'\r' && b != b'\n')
            .collect();
        String::from_utf8_lossy(&unfolded).trim().to_string()
    }
}

/// A message cut into its header fields, the empty line that ended them, and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SplitMessage<'a> {
    /// Header fields in their original order.
    pub(crate) fields: Vec<HeaderField<'a>>,
    /// The empty line ending the header (`\r\n` or `\n`), or empty if the header ran to the
    /// end of the input or stopped at a line that is not a header field.
    pub(crate) separator: &'a [u8],
    /// Everything after the header section, byte-exact.
    pub(crate) body: &'a [u8],
}

/// Splits a message into header fields and body.
///
/// Lines end at LF (with or without a CR before it). The header ends at the first empty line;
/// it also ends, without a separator, at the first line that is neither a field (`name:`, where
/// obsolete whitespace before the colon is tolerated) nor a continuation of one (leading space
/// or tab): that line and everything after it are the body, so no byte of the input is lost.
pub(crate) fn split_message(message: &[u8]) -> SplitMessage<'_> {
    let mut fields: Vec<HeaderField<'_>> = Vec::new();
    let mut pos = 0;
    while pos < message.len() {
        let rest = &message[pos..];
        let line_len = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let line = &rest[..line_len];
        if line == b"\r\n" || line == b"\n" {
            return SplitMessage {
                fields,
                separator: line,
                body: &rest[line_len..],
            };
        }
        let continues = matches!(line.first(), Some(b' ' | b'\t'));
        if continues && let Some(last) = fields.last_mut() {
            // Fields are contiguous: the last one ends where this line starts.
            let start = pos - last.raw.len();
            last.raw = &message[start..pos + line_len];
        } else if let Some(name) = field_name(line).filter(|_| !continues) {
            fields.push(HeaderField { name, raw: line });
        } else {
            return SplitMessage {
                fields,
                separator: b"",
                body: rest,
            };
        }
        pos += line_len;
    }
    SplitMessage {
        fields,
        separator: b"",
        body: b"",
    }
}

/// The field name of a line that starts a header field, if it does.
fn field_name(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = line[..colon].trim_ascii_end();
    let printable = |b: &u8| (33..=126).contains(b) && *b != b':';
    (!name.is_empty() && name.iter().all(printable)).then_some(name)
}

impl SplitMessage<'_> {
    /// The entity that gets encrypted: the `Content-*` fields byte-exact in their original
    /// order, the original empty line (CRLF if there was none), then the body byte-exact.
    ///
    /// A message without `Content-*` fields yields an entity that starts with the empty line,
    /// which MIME reads as `text/plain; charset=us-ascii`, as it would have read the original.
    /// With `with_subject` (the outer Subject is masked) the original `Subject` field(s) come
    /// first, line ends made CRLF, so the real Subject survives inside the encryption.
    pub(crate) fn inner_entity(&self, with_subject: bool) -> Vec<u8> {
        let mut inner = Vec::with_capacity(self.body.len() + 512);
        if with_subject {
            for field in self.fields.iter().filter(|f| f.is("subject")) {
                push_crlf_lines(&mut inner, field.raw);
            }
        }
        for field in self.fields.iter().filter(|f| f.is_content()) {
            inner.extend_from_slice(field.raw);
            if !field.raw.ends_with(b"\n") {
                inner.extend_from_slice(b"\r\n");
            }
        }
        if self.separator.is_empty() {
            inner.extend_from_slice(b"\r\n");
        } else {
            inner.extend_from_slice(self.separator);
        }
        inner.extend_from_slice(self.body);
        inner
    }

    /// True if the message is already S/MIME enveloped or `multipart/encrypted`, judged by
    /// its first Content-Type field.
    pub(crate) fn is_already_encrypted(&self) -> bool {
        let Some(field) = self.fields.iter().find(|f| f.is("content-type")) else {
            return false;
        };
        let value = strip_comments(&field.value());
        let mut parts = value.split(';');
        let media_type = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        match media_type.as_str() {
            "multipart/encrypted" => true,
            "application/pkcs7-mime" | "application/x-pkcs7-mime" => parts.any(|param| {
                let Some((name, value)) = param.split_once('=') else {
                    return false;
                };
                let value = value.trim().trim_matches('"').to_ascii_lowercase();
                name.trim().eq_ignore_ascii_case("smime-type")
                    && (value == "enveloped-data" || value == "authenveloped-data")
            }),
            _ => false,
        }
    }

    /// The outer message: the original's non-content fields in order with line ends made CRLF
    /// (one MIME-Version kept, `MIME-Version: 1.0` added if there was none, Subject replaced by
    /// `masked_subject` when given), the S/MIME content fields, an empty line and `der` as
    /// base64 in 76-character CRLF lines.
    pub(crate) fn outer_message(&self, masked_subject: Option<&str>, der: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(der.len() * 4 / 3 + 2048);
        let mut mime_version_seen = false;
        let mut subject_written = false;
        for field in self.fields.iter().filter(|f| !f.is_content()) {
            if field.is("mime-version") {
                if mime_version_seen {
                    continue;
                }
                mime_version_seen = true;
            }
            if let Some(subject) = masked_subject.filter(|_| field.is("subject")) {
                if !subject_written {
                    out.extend_from_slice(b"Subject: ");
                    out.extend_from_slice(subject.as_bytes());
                    out.extend_from_slice(b"\r\n");
                    subject_written = true;
                }
                continue;
            }
            push_crlf_lines(&mut out, field.raw);
        }
        if !mime_version_seen {
            out.extend_from_slice(b"MIME-Version: 1.0\r\n");
        }
        out.extend_from_slice(OUTER_CONTENT_FIELDS);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&base64_lines(der));
        out
    }
}

/// Appends `raw` with every line end (LF or CRLF, or none at the very end) written as CRLF.
fn push_crlf_lines(out: &mut Vec<u8>, raw: &[u8]) {
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
}

/// Removes RFC 5322 comments (parenthesised, possibly nested) outside quoted strings.
fn strip_comments(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let (mut depth, mut quoted, mut escaped) = (0usize, false, false);
    for c in value.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                out.push(c);
            }
            continue;
        }
        match c {
            '\\' => {
                escaped = true;
                if depth == 0 {
                    out.push(c);
                }
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// Base64 of `data` in lines of at most 76 characters, each ending in CRLF.
pub(crate) fn base64_lines(data: &[u8]) -> Vec<u8> {
    let encoded = STANDARD.encode(data);
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / BASE64_LINE * 2 + 2);
    for chunk in encoded.as_bytes().chunks(BASE64_LINE) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The value for a masked Subject: printable ASCII as is, anything else as RFC 2047
/// encoded-words (UTF-8, base64) folded onto continuation lines, so the header stays 7-bit.
///
/// Control characters (CR and LF above all: header injection) and over-long masks are refused.
pub(crate) fn encode_subject(mask: &str) -> Result<String, SmimeError> {
    if mask.len() > MAX_MASK_LEN || mask.chars().any(char::is_control) {
        return Err(SmimeError::InvalidMaskSubject);
    }
    if mask.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(mask.to_string());
    }
    // 45 bytes of UTF-8 become 60 base64 characters: 72 with the `=?UTF-8?B?` and `?=`
    // delimiters, under the 75-character encoded-word limit (RFC 2047 §2).
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in mask.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            words.push(format!("=?UTF-8?B?{}?=", STANDARD.encode(&chunk)));
            chunk.clear();
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(format!("=?UTF-8?B?{}?=", STANDARD.encode(&chunk)));
    }
    Ok(words.join("\r\n "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<'a>(split: &'a SplitMessage<'_>) -> Vec<&'a [u8]> {
        split.fields.iter().map(|f| f.name).collect()
    }

    #[test]
    fn splits_folded_fields_and_body() {
        let msg = b"From: a@example.net\r\nContent-Type: multipart/mixed;\r\n\tboundary=x\r\n\r\nbody\r\n";
        let split = split_message(msg);
        assert_eq!(names(&split), vec![&b"From"[..], b"Content-Type"]);
        assert_eq!(
            split.fields[1].raw,
            b"Content-Type: multipart/mixed;\r\n\tboundary=x\r\n"
        );
        assert_eq!(split.separator, b"\r\n");
        assert_eq!(split.body, b"body\r\n");
    }

    #[test]
    fn whitespace_only_line_continues_the_field() {
        let msg = b"Content-Type: text/plain;\r\n\t\r\n charset=x\r\n\r\nb";
        let split = split_message(msg);
        assert_eq!(split.fields.len(), 1);
        assert_eq!(split.body, b"b");
    }

    #[test]
    fn header_without_body() {
        let split = split_message(b"Subject: x\r\nTo: y\r\n");
        assert_eq!(split.fields.len(), 2);
        assert_eq!(split.separator, b"");
        assert_eq!(split.body, b"");
        assert_eq!(split.inner_entity(false), b"\r\n");
    }

    #[test]
    fn non_field_line_starts_the_body() {
        let msg = b"Subject: x\r\nthis is not a field\r\nContent-Type: text/html\r\n\r\nz";
        let split = split_message(msg);
        assert_eq!(names(&split), vec![&b"Subject"[..]]);
        assert_eq!(split.separator, b"");
        assert_eq!(split.body, &msg[12..]);
        assert_eq!(
            split.inner_entity(false),
            [&b"\r\n"[..], &msg[12..]].concat()
        );
    }

    #[test]
    fn leading_continuation_line_is_body() {
        let split = split_message(b" indented\r\n\r\nrest");
        assert!(split.fields.is_empty());
        assert_eq!(split.body, b" indented\r\n\r\nrest");
    }

    #[test]
    fn obsolete_space_before_colon_is_a_field() {
        let split = split_message(b"Fro :x\r\nSubject : y\r\n\r\n");
        assert_eq!(names(&split), vec![&b"Fro"[..], b"Subject"]);
    }

    #[test]
    fn inner_entity_keeps_content_fields_in_order() {
        let msg =
            b"Content-Type: text/plain\r\nFrom: a\r\ncontent-transfer-encoding: 7bit\r\n\r\nhi\r\n";
        let inner = split_message(msg).inner_entity(false);
        assert_eq!(
            inner,
            b"Content-Type: text/plain\r\ncontent-transfer-encoding: 7bit\r\n\r\nhi\r\n"
        );
    }

    #[test]
    fn inner_entity_for_a_masked_subject_leads_with_the_real_subject() {
        let msg = b"Subject: Q3\n numbers\r\nContent-Type: text/plain\r\nFrom: a\r\n\r\nhi\r\n";
        let inner = split_message(msg).inner_entity(true);
        assert_eq!(
            inner,
            b"Subject: Q3\r\n numbers\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
        );
    }

    #[test]
    fn inner_entity_without_content_fields_starts_with_empty_line() {
        let inner = split_message(b"From: a\r\n\r\nhi\r\n").inner_entity(false);
        assert_eq!(inner, b"\r\nhi\r\n");
    }

    #[test]
    fn detects_already_encrypted_messages() {
        let cases: &[(&str, bool)] = &[
            (
                "multipart/encrypted; protocol=\"application/pgp-encrypted\"",
                true,
            ),
            ("Multipart/Encrypted (pgp); boundary=x", true),
            ("application/pkcs7-mime; smime-type=enveloped-data", true),
            (
                "application/x-pkcs7-mime; smime-type=\"enveloped-data\"",
                true,
            ),
            (
                "application/pkcs7-mime;\r\n smime-type=authEnveloped-data",
                true,
            ),
            ("application/pkcs7-mime; smime-type=signed-data", false),
            ("application/pkcs7-mime; name=smime.p7m", false),
            (
                "multipart/signed; protocol=\"application/pkcs7-signature\"",
                false,
            ),
            ("text/plain; note=\"smime-type=enveloped-data\"", false),
            ("text/plain", false),
        ];
        for (content_type, expected) in cases {
            let msg = format!("From: a\r\nContent-Type: {content_type}\r\n\r\nx");
            let split = split_message(msg.as_bytes());
            assert_eq!(split.is_already_encrypted(), *expected, "{content_type}");
        }
        assert!(!split_message(b"From: a\r\n\r\nx").is_already_encrypted());
    }

    #[test]
    fn outer_message_layout() {
        let msg = b"From: a\nMIME-Version: 1.0\nSubject: s\n x\nContent-Type: text/plain\nMime-Version: 1.0\n\nbody\n";
        let out = split_message(msg).outer_message(None, b"\x01\x02");
        let expected = [
            &b"From: a\r\nMIME-Version: 1.0\r\nSubject: s\r\n x\r\n"[..],
            OUTER_CONTENT_FIELDS,
            b"\r\nAQI=\r\n",
        ]
        .concat();
        assert_eq!(out, expected);
    }

    #[test]
    fn outer_message_adds_mime_version_and_masks_subject() {
        let msg = b"Subject: secret\r\nFrom: a\r\nSubject: again\r\n\r\nbody";
        let out = split_message(msg).outer_message(Some("..."), b"");
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("Subject: ...\r\nFrom: a\r\nMIME-Version: 1.0\r\nContent-Type: "));
        assert!(!text.contains("secret") && !text.contains("again"));
    }

    #[test]
    fn base64_lines_are_76_chars_crlf() {
        let data = vec![0xa5u8; 200];
        let out = base64_lines(&data);
        let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').collect();
        assert_eq!(lines[0].len(), 77);
        assert!(lines[..lines.len() - 1].iter().all(|l| l.ends_with(b"\r")));
        assert_eq!(lines.last(), Some(&&b""[..]));
        let joined: Vec<u8> = out
            .iter()
            .copied()
            .filter(|b| !b"\r\n".contains(b))
            .collect();
        assert_eq!(STANDARD.decode(joined).ok(), Some(data));
    }

    #[test]
    fn subject_mask_encoding() {
        assert_eq!(encode_subject("...").ok(), Some("...".to_string()));
        assert!(matches!(
            encode_subject("x\r\nBcc: evil@example.com"),
            Err(SmimeError::InvalidMaskSubject)
        ));
        assert!(encode_subject(&"a".repeat(300)).is_err());
        let encoded = encode_subject(&"verschlüsselt ".repeat(6)).unwrap_or_default();
        assert!(encoded.is_ascii());
        assert!(
            encoded
                .split("\r\n ")
                .all(|w| w.len() <= 75 && w.starts_with("=?UTF-8?B?"))
        );
        assert_eq!(encoded.split("\r\n ").count(), 2);
    }
}
