//! MIME plumbing for the encryptors: header/body split, header field classification,
//! line-end canonicalisation, the inner entity that gets encrypted, and detection of messages
//! that are already encrypted (PGP/MIME, S/MIME, Exchange's "mixed-up" PGP/MIME, inline PGP).
//!
//! The parser here is deliberately small and byte-oriented: the encryptors must copy header
//! fields byte-exact, which a decoding parser cannot promise. It never fails: malformed input
//! yields a best-effort split (a missing blank line means "all header, empty body").

use std::borrow::Cow;

use base64::Engine as _;

/// The implied header of an entity without any `Content-*` field (RFC 2045 §5.2), written out
/// explicitly in the inner entity so that MIME readers need not guess.
pub const IMPLIED_CONTENT_TYPE: &[u8] = b"Content-Type: text/plain; charset=us-ascii\r\n";

/// One header field as it appears in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderField<'a> {
    /// The field name with surrounding whitespace removed (may be empty for a malformed line).
    pub name: &'a [u8],
    /// The whole field, byte-exact: name, colon, value, continuation lines and line ends.
    pub raw: &'a [u8],
}

impl HeaderField<'_> {
    /// True if the field name equals `name`, ignoring ASCII case.
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }

    /// The unfolded value: everything after the first colon, line ends removed, trimmed.
    pub fn value(&self) -> String {
        let after = match self.raw.iter().position(|&b| b == b':') {
            Some(i) => &self.raw[i + 1..],
            None => &[][..],
        };
        let unfolded: Vec<u8> = after
            .iter()
            .copied()
            .filter(|&b| b != b'\r' && b != b'\n')
            .collect();
        String::from_utf8_lossy(&unfolded).trim().to_string()
    }
}

/// Where a top-level header field goes when the message is wrapped for encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldClass {
    /// Stays in the outer (cleartext) header, byte-exact, in original order.
    Outer,
    /// A `Content-*` field: moves into the encrypted inner entity.
    Content,
    /// `MIME-Version`: replaced by exactly one `MIME-Version: 1.0` in the outer header.
    MimeVersion,
    /// `DKIM-Signature`: dropped, since encryption invalidates its body hash (sign after
    /// encrypting instead).
    Dropped,
}

/// The top-level header split for encryption (see [`split_fields`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SplitHeader<'a> {
    /// Fields kept in the outer header, in original order.
    pub outer: Vec<HeaderField<'a>>,
    /// `Content-*` fields, in original order; they start the inner entity.
    pub content: Vec<HeaderField<'a>>,
    /// Fields replaced (`MIME-Version`) or dropped (`DKIM-Signature`).
    pub removed: Vec<HeaderField<'a>>,
}

/// Splits a message into its header (all field lines, without the blank separator line) and
/// its body (everything after the blank line). Accepts CRLF or LF line ends. Without a blank
/// line the whole message is header and the body is empty.
pub fn split_header_body(message: &[u8]) -> (&[u8], &[u8]) {
    let mut pos = 0;
    while pos < message.len() {
        let end = match message[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => pos + i + 1,
            None => message.len(),
        };
        let line = &message[pos..end];
        if line == b"\n" || line == b"\r\n" {
            return (&message[..pos], &message[end..]);
        }
        pos = end;
    }
    (message, &[])
}

/// Splits a header block into fields. A line starting with space or tab continues the previous
/// field; a line without a colon becomes a field of its own (name = the trimmed line).
pub fn header_fields(header: &[u8]) -> Vec<HeaderField<'_>> {
    let mut fields: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0;
    while pos < header.len() {
        let end = match header[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => pos + i + 1,
            None => header.len(),
        };
        let continuation = matches!(header[pos], b' ' | b'\t');
        match fields.last_mut() {
            Some(last) if continuation => last.1 = end,
            _ => fields.push((pos, end)),
        }
        pos = end;
    }
    fields
        .into_iter()
        .map(|(start, end)| {
            let raw = &header[start..end];
            let name_end = raw.iter().position(|&b| b == b':').unwrap_or(raw.len());
            HeaderField {
                name: raw[..name_end].trim_ascii(),
                raw,
            }
        })
        .collect()
}

/// Classifies a top-level header field name for encryption.
pub fn classify(name: &[u8]) -> FieldClass {
    if name.len() >= 8 && name[..8].eq_ignore_ascii_case(b"content-") {
        FieldClass::Content
    } else if name.eq_ignore_ascii_case(b"mime-version") {
        FieldClass::MimeVersion
    } else if name.eq_ignore_ascii_case(b"dkim-signature") {
        FieldClass::Dropped
    } else {
        FieldClass::Outer
    }
}

/// Splits a top-level header into the outer fields to keep (From, To, Cc, Date, Message-ID,
/// Subject, Reply-To, References, Received, List-*, … — every non-`Content-*` field), the
/// `Content-*` fields that belong to the inner entity, and the removed ones (see [`FieldClass`]).
pub fn split_fields(header: &[u8]) -> SplitHeader<'_> {
    let mut split = SplitHeader::default();
    for field in header_fields(header) {
        match classify(field.name) {
            FieldClass::Outer => split.outer.push(field),
            FieldClass::Content => split.content.push(field),
            FieldClass::MimeVersion | FieldClass::Dropped => split.removed.push(field),
        }
    }
    split
}

/// Canonicalises line ends: every CRLF, bare LF and bare CR becomes CRLF. Borrows when the
/// input is already canonical.
pub fn normalize_crlf(data: &[u8]) -> Cow<'_, [u8]> {
    let Some(first_bad) = first_bare_line_end(data) else {
        return Cow::Borrowed(data);
    };
    let mut out = Vec::with_capacity(data.len() + data.len() / 16);
    out.extend_from_slice(&data[..first_bad]);
    let mut rest = &data[first_bad..];
    while let Some(i) = memchr::memchr2(b'\r', b'\n', rest) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(b"\r\n");
        let pair = rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n');
        rest = &rest[i + if pair { 2 } else { 1 }..];
    }
    out.extend_from_slice(rest);
    Cow::Owned(out)
}

/// Where the first CR without LF or LF without CR is; None when every line end is CRLF.
fn first_bare_line_end(data: &[u8]) -> Option<usize> {
    let mut pos = 0;
    while let Some(i) = memchr::memchr2(b'\r', b'\n', &data[pos..]) {
        let at = pos + i;
        if data[at] == b'\n' || data.get(at + 1) != Some(&b'\n') {
            return Some(at);
        }
        pos = at + 2;
    }
    None
}

/// The MIME entity that gets encrypted: the message's top-level `Content-*` fields byte-exact
/// and in order (or [`IMPLIED_CONTENT_TYPE`] when there are none), a CRLF, then the body
/// byte-exact. The message is canonicalised with [`normalize_crlf`] first, so the entity always
/// has CRLF line ends; a last header field without a line end gets one.
pub fn inner_entity(message: &[u8]) -> Vec<u8> {
    let message = normalize_crlf(message);
    let (header, body) = split_header_body(&message);
    let split = split_fields(header);
    let mut out = Vec::with_capacity(message.len());
    if split.content.is_empty() {
        out.extend_from_slice(IMPLIED_CONTENT_TYPE);
    }
    for field in &split.content {
        push_line(&mut out, field.raw);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Appends `line`, adding a CRLF if it does not end in one.
pub(crate) fn push_line(out: &mut Vec<u8>, line: &[u8]) {
    out.extend_from_slice(line);
    if !line.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
}

/// True if the message is already end-to-end encrypted and must not be encrypted again:
/// - top-level `multipart/encrypted` (any protocol);
/// - `application/pkcs7-mime` or `application/x-pkcs7-mime` with `smime-type` enveloped-data
///   or authEnveloped-data, or without `smime-type` but named `smime.p7m`;
/// - Exchange's "mixed-up" PGP/MIME: `multipart/mixed` with exactly an empty `text/plain`, an
///   `application/pgp-encrypted` and an `application/octet-stream` part;
/// - inline PGP: a single `text/plain` part whose body is an armored `PGP MESSAGE`.
pub fn is_already_encrypted(message: &[u8]) -> bool {
    let (header, body) = split_header_body(message);
    let fields = header_fields(header);
    let content_type = fields
        .iter()
        .find(|f| f.is("content-type"))
        .map(|f| ContentType::parse(&f.value()));
    let Some(ct) = content_type else {
        // No Content-Type: text/plain by default.
        return is_inline_pgp(body, transfer_encoding(&fields).as_deref());
    };
    match (ct.mime_type.as_str(), ct.subtype.as_str()) {
        ("multipart", "encrypted") => true,
        ("application", "pkcs7-mime" | "x-pkcs7-mime") => is_smime_enveloped(&ct, &fields),
        ("multipart", "mixed") => ct
            .param("boundary")
            .is_some_and(|b| is_mixed_up_pgp(body, b)),
        ("text", "plain") => is_inline_pgp(body, transfer_encoding(&fields).as_deref()),
        _ => false,
    }
}

fn transfer_encoding(fields: &[HeaderField<'_>]) -> Option<String> {
    fields
        .iter()
        .find(|f| f.is("content-transfer-encoding"))
        .map(|f| f.value().to_ascii_lowercase())
}

fn is_smime_enveloped(ct: &ContentType, fields: &[HeaderField<'_>]) -> bool {
    if let Some(kind) = ct.param("smime-type") {
        return kind.eq_ignore_ascii_case("enveloped-data")
            || kind.eq_ignore_ascii_case("authenveloped-data");
    }
    let named_p7m = |v: Option<&str>| v.is_some_and(|n| n.eq_ignore_ascii_case("smime.p7m"));
    if named_p7m(ct.param("name")) {
        return true;
    }
    fields
        .iter()
        .filter(|f| f.is("content-disposition"))
        .any(|f| named_p7m(ContentType::parse(&f.value()).param("filename")))
}

fn is_mixed_up_pgp(body: &[u8], boundary: &str) -> bool {
    let parts = multipart_parts(body, boundary.as_bytes());
    let [plain, control, data] = parts.as_slice() else {
        return false;
    };
    fn part_type(part: &[u8]) -> ((String, String), &[u8]) {
        let (header, body) = split_header_body(part);
        let ct = header_fields(header)
            .iter()
            .find(|f| f.is("content-type"))
            .map(|f| ContentType::parse(&f.value()));
        let t = ct.map_or(("text".to_string(), "plain".to_string()), |c| {
            (c.mime_type, c.subtype)
        });
        (t, body)
    }
    let ((plain_type, plain_body), (control_type, _), (data_type, _)) =
        (part_type(plain), part_type(control), part_type(data));
    plain_type == ("text".into(), "plain".into())
        && plain_body.trim_ascii().is_empty()
        && control_type == ("application".into(), "pgp-encrypted".into())
        && data_type == ("application".into(), "octet-stream".into())
}

fn is_inline_pgp(body: &[u8], encoding: Option<&str>) -> bool {
    let decoded: Cow<'_, [u8]> = if encoding == Some("base64") {
        let clean: Vec<u8> = body
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        match base64::engine::general_purpose::STANDARD.decode(clean) {
            Ok(d) => Cow::Owned(d),
            Err(_) => return false,
        }
    } else {
        Cow::Borrowed(body)
    };
    let text = decoded.trim_ascii();
    text.starts_with(b"-----BEGIN PGP MESSAGE-----")
        && text
            .windows(b"-----END PGP MESSAGE-----".len())
            .any(|w| w == b"-----END PGP MESSAGE-----")
}

/// The parts of a multipart body: the bytes between delimiter lines (`--boundary`), excluding
/// the line end before each delimiter. Stops at the close delimiter or the end of the body.
fn multipart_parts<'a>(body: &'a [u8], boundary: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut pos = 0;
    while pos < body.len() {
        let end = match body[pos..].iter().position(|&b| b == b'\n') {
            Some(i) => pos + i + 1,
            None => body.len(),
        };
        let line = body[pos..end].trim_ascii_end();
        if let Some(rest) = line
            .strip_prefix(b"--")
            .and_then(|l| l.strip_prefix(boundary))
        {
            let closing = rest == b"--";
            if rest.is_empty() || closing {
                if let Some(s) = start {
                    let mut part_end = pos.max(s);
                    if body[..part_end].ends_with(b"\r\n") && part_end - 2 >= s {
                        part_end -= 2;
                    } else if body[..part_end].ends_with(b"\n") && part_end > s {
                        part_end -= 1;
                    }
                    parts.push(&body[s..part_end]);
                }
                if closing {
                    return parts;
                }
                start = Some(end);
            }
        }
        pos = end;
    }
    if let Some(s) = start {
        parts.push(&body[s..]);
    }
    parts
}

/// A parsed `Content-Type` (or `Content-Disposition`) value: lowercased type and subtype,
/// parameters with lowercased names and unquoted values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContentType {
    /// The top-level type, lowercased (`text`, `multipart`, …); for a disposition, its kind.
    pub mime_type: String,
    /// The subtype, lowercased (empty if missing).
    pub subtype: String,
    /// Parameters in order: (lowercased name, value). RFC 2231 continuations are joined and
    /// `name*` values percent-decoded (charset ignored).
    pub params: Vec<(String, String)>,
}

impl ContentType {
    /// Parses an unfolded header value. Comments in parentheses are skipped; never fails.
    pub fn parse(value: &str) -> ContentType {
        let cleaned = strip_comments(value);
        let mut rest = cleaned.as_str();
        let head_end = rest.find(';').unwrap_or(rest.len());
        let head = rest[..head_end].trim();
        rest = &rest[head_end..];
        let (mime_type, subtype) = match head.split_once('/') {
            Some((t, s)) => (t.trim(), s.trim()),
            None => (head, ""),
        };
        let mut raw_params: Vec<(String, String)> = Vec::new();
        while let Some(r) = rest.strip_prefix(';') {
            let r = r.trim_start();
            let Some(eq) = r.find('=') else {
                rest = r.find(';').map_or("", |i| &r[i..]);
                continue;
            };
            let name = r[..eq].trim().to_ascii_lowercase();
            let after = r[eq + 1..].trim_start();
            let (val, remaining) = if let Some(q) = after.strip_prefix('"') {
                parse_quoted(q)
            } else {
                let end = after.find(';').unwrap_or(after.len());
                (after[..end].trim().to_string(), &after[end..])
            };
            if !name.is_empty() {
                raw_params.push((name, val));
            }
            rest = remaining.trim_start();
            if !rest.starts_with(';') {
                rest = rest.find(';').map_or("", |i| &rest[i..]);
            }
        }
        ContentType {
            mime_type: mime_type.to_ascii_lowercase(),
            subtype: subtype.to_ascii_lowercase(),
            params: join_rfc2231(raw_params),
        }
    }

    /// The first parameter named `name` (lowercase), if any.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Returns the unescaped content of a quoted string (after the opening quote) and the rest.
fn parse_quoted(s: &str) -> (String, &str) {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                if let Some((_, n)) = chars.next() {
                    out.push(n);
                }
            }
            '"' => return (out, &s[i + 1..]),
            _ => out.push(c),
        }
    }
    (out, "")
}

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
            '\\' if quoted || depth > 0 => {
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

/// Joins RFC 2231 `name*0`, `name*1*`, … continuations and decodes `name*` values.
fn join_rfc2231(raw: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, value) in raw {
        let (base, encoded) = match name.strip_suffix('*') {
            Some(b) => (b.to_string(), true),
            None => (name.clone(), false),
        };
        let (base, section) = match base.rsplit_once('*') {
            Some((b, n)) if n.chars().all(|c| c.is_ascii_digit()) => {
                (b.to_string(), n.parse::<u32>().ok())
            }
            _ => (base, None),
        };
        let mut value = value;
        if encoded {
            // The first (or only) encoded section carries charset'language'.
            if section.unwrap_or(0) == 0 {
                let mut pieces = value.splitn(3, '\'');
                if let (Some(_), Some(_), Some(v)) = (pieces.next(), pieces.next(), pieces.next()) {
                    value = v.to_string();
                }
            }
            value = percent_decode(&value);
        }
        match (section, out.iter_mut().find(|(n, _)| *n == base)) {
            (Some(s), Some(existing)) if s > 0 => existing.1.push_str(&value),
            (_, Some(_)) => {}
            (_, None) => out.push((base, value)),
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(&String::from_utf8_lossy(hex), 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const C25: &[u8] = b"MIME-Version: 1.0\r\nFrom: alice@example.net\r\nTo: bob@example.com\r\n\
Subject: Q3 numbers\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsecret\r\n";

    fn msg(header: &str, body: &str) -> Vec<u8> {
        format!("From: a@example.net\r\nTo: b@example.com\r\n{header}\r\n{body}").into_bytes()
    }

    #[test]
    fn split_crlf_lf_and_no_blank_line() {
        assert_eq!(
            split_header_body(b"A: 1\r\nB: 2\r\n\r\nbody\r\n"),
            (&b"A: 1\r\nB: 2\r\n"[..], &b"body\r\n"[..])
        );
        assert_eq!(
            split_header_body(b"A: 1\nB: 2\n\nbody\n"),
            (&b"A: 1\nB: 2\n"[..], &b"body\n"[..])
        );
        assert_eq!(split_header_body(b"A: 1\r\n"), (&b"A: 1\r\n"[..], &b""[..]));
        assert_eq!(split_header_body(b"\r\nbody"), (&b""[..], &b"body"[..]));
        assert_eq!(split_header_body(b""), (&b""[..], &b""[..]));
    }

    #[test]
    fn folded_fields_stay_whole() {
        let h = b"Subject: a\r\n b\r\nContent-Type: multipart/mixed;\r\n\tboundary=x\r\nFro :x\r\n";
        let f = header_fields(h);
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].raw, b"Subject: a\r\n b\r\n");
        assert_eq!(f[1].name, b"Content-Type");
        assert_eq!(f[1].value(), "multipart/mixed;\tboundary=x");
        assert_eq!(f[2].name, b"Fro");
    }

    #[test]
    fn classification() {
        let h = b"Received: x\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\nX-Mailer: m\r\n\
DKIM-Signature: v=1\r\nCONTENT-transfer-encoding: 7bit\r\nList-Id: <l>\r\n";
        let s = split_fields(h);
        let names = |v: &[HeaderField<'_>]| v.iter().map(|f| f.name.to_vec()).collect::<Vec<_>>();
        assert_eq!(
            names(&s.outer),
            vec![
                b"Received".to_vec(),
                b"X-Mailer".to_vec(),
                b"List-Id".to_vec()
            ]
        );
        assert_eq!(
            names(&s.content),
            vec![
                b"Content-Type".to_vec(),
                b"CONTENT-transfer-encoding".to_vec()
            ]
        );
        assert_eq!(
            names(&s.removed),
            vec![b"MIME-Version".to_vec(), b"DKIM-Signature".to_vec()]
        );
    }

    #[test]
    fn normalize_all_line_ends() {
        assert_eq!(&*normalize_crlf(b"a\nb\rc\r\nd"), b"a\r\nb\r\nc\r\nd");
        assert!(matches!(normalize_crlf(b"a\r\nb"), Cow::Borrowed(_)));
        assert_eq!(&*normalize_crlf(b"\r\r\n\n"), b"\r\n\r\n\r\n");
        // Against the byte-at-a-time definition, on every string up to 8 bytes over a
        // line-end-heavy alphabet: borrowed exactly when nothing changes.
        let reference = |d: &[u8]| {
            let (mut out, mut i) = (Vec::new(), 0);
            while i < d.len() {
                match d[i] {
                    b'\r' => {
                        out.extend_from_slice(b"\r\n");
                        i += usize::from(d.get(i + 1) == Some(&b'\n'));
                    }
                    b'\n' => out.extend_from_slice(b"\r\n"),
                    b => out.push(b),
                }
                i += 1;
            }
            out
        };
        for len in 0..=8u32 {
            for code in 0..3usize.pow(len) {
                let d: Vec<u8> = (0..len)
                    .map(|k| b"\r\nx"[code / 3usize.pow(k) % 3])
                    .collect();
                let got = normalize_crlf(&d);
                let want = reference(&d);
                assert_eq!(&*got, &want[..], "{d:?}");
                assert_eq!(matches!(got, Cow::Borrowed(_)), want == d, "{d:?}");
            }
        }
    }

    #[test]
    fn inner_entity_c25_and_implied() {
        assert_eq!(
            inner_entity(C25),
            b"Content-Type: text/plain; charset=utf-8\r\n\r\nsecret\r\n"
        );
        assert_eq!(
            inner_entity(b"Subject: x\n\nhi\n"),
            b"Content-Type: text/plain; charset=us-ascii\r\n\r\nhi\r\n"
        );
        assert_eq!(
            inner_entity(b"Content-Type: text/plain"),
            b"Content-Type: text/plain\r\n\r\n"
        );
    }

    #[test]
    fn content_type_parameters() {
        let ct = ContentType::parse(
            "Multipart/Encrypted (c) ; PROTOCOL=\"application/pgp-encrypted\";\tboundary=\"a\\\"b;c\"",
        );
        assert_eq!(
            (ct.mime_type.as_str(), ct.subtype.as_str()),
            ("multipart", "encrypted")
        );
        assert_eq!(ct.param("protocol"), Some("application/pgp-encrypted"));
        assert_eq!(ct.param("boundary"), Some("a\"b;c"));
        let ct = ContentType::parse("application/pkcs7-mime; name*0=smime; name*1=.p7m");
        assert_eq!(ct.param("name"), Some("smime.p7m"));
        let ct = ContentType::parse("application/pkcs7-mime; name*=utf-8''smime%2Ep7m");
        assert_eq!(ct.param("name"), Some("smime.p7m"));
    }

    #[test]
    fn detects_every_encrypted_form() {
        let yes: Vec<Vec<u8>> = vec![
            msg(
                "Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=b\r\n",
                "--b\r\n",
            ),
            msg(
                "content-type: MULTIPART/ENCRYPTED;\r\n protocol=\"application/pkcs7-mime\"; boundary=b\r\n",
                "",
            ),
            msg("Content-Type: multipart/encrypted\r\n", ""),
            msg(
                "Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n",
                "MIAG",
            ),
            msg(
                "Content-Type: application/x-pkcs7-mime;\r\n\tsmime-type=\"Enveloped-Data\"\r\n",
                "MIAG",
            ),
            msg(
                "Content-Type: application/pkcs7-mime; smime-type=authEnveloped-data\r\n",
                "MIAG",
            ),
            msg(
                "Content-Type: application/pkcs7-mime; name=\"SMIME.P7M\"\r\n",
                "MIAG",
            ),
            msg(
                "Content-Type: application/pkcs7-mime\r\nContent-Disposition: attachment; filename=smime.p7m\r\n",
                "MIAG",
            ),
            msg(
                "Content-Type: text/plain\r\n",
                "-----BEGIN PGP MESSAGE-----\r\n\r\nhQ\r\n-----END PGP MESSAGE-----\r\n",
            ),
            msg(
                "",
                "\r\n  -----BEGIN PGP MESSAGE-----\nhQ\n-----END PGP MESSAGE-----\n",
            ),
            msg(
                "Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n",
                "LS0tLS1CRUdJTiBQR1AgTUVTU0FHRS0tLS0tCmhRCi0tLS0tRU5EIFBHUCBNRVNTQUdFLS0tLS0K\r\n",
            ),
            msg(
                "Content-Type: multipart/mixed; boundary=\"X\"\r\n",
                "--X\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\r\n--X\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--X\r\nContent-Type: application/octet-stream; name=encrypted.asc\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n-----END PGP MESSAGE-----\r\n--X--\r\n",
            ),
        ];
        for m in &yes {
            assert!(is_already_encrypted(m), "{}", String::from_utf8_lossy(m));
            let lf = String::from_utf8_lossy(m).replace("\r\n", "\n");
            assert!(is_already_encrypted(lf.as_bytes()), "LF: {lf}");
        }
    }

    #[test]
    fn look_alikes_are_not_encrypted() {
        let no: Vec<Vec<u8>> = vec![
            msg("Content-Type: text/plain; charset=utf-8\r\n", "secret\r\n"),
            msg(
                "Content-Type: multipart/signed; protocol=\"application/pgp-signature\"; boundary=b\r\n",
                "--b\r\n",
            ),
            msg(
                "Content-Type: application/pkcs7-mime; smime-type=signed-data; name=smime.p7m\r\n",
                "MIAG",
            ),
            msg(
                "Content-Type: application/pkcs7-mime; name=smime.p7s\r\n",
                "MIAG",
            ),
            msg(
                "Content-Type: application/pgp-encrypted\r\n",
                "Version: 1\r\n",
            ),
            msg(
                "Content-Type: text/plain\r\n",
                "Hi,\r\n-----BEGIN PGP MESSAGE-----\r\n-----END PGP MESSAGE-----\r\n",
            ),
            msg(
                "Content-Type: text/plain\r\n",
                "-----BEGIN PGP SIGNED MESSAGE-----\r\nhi\r\n",
            ),
            msg(
                "Content-Type: text/plain\r\n",
                "-----BEGIN PGP MESSAGE-----\r\ntruncated",
            ),
            msg(
                "Content-Type: text/html\r\n",
                "-----BEGIN PGP MESSAGE-----\r\n-----END PGP MESSAGE-----\r\n",
            ),
            msg("X-Content-Type: multipart/encrypted\r\n", "x"),
            msg(
                "Subject: multipart/encrypted\r\n",
                "Content-Type: multipart/encrypted\r\n",
            ),
            // Mixed-up look-alikes: non-empty text, wrong order, extra part.
            msg(
                "Content-Type: multipart/mixed; boundary=X\r\n",
                "--X\r\nContent-Type: text/plain\r\n\r\nhello\r\n--X\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--X\r\nContent-Type: application/octet-stream\r\n\r\nx\r\n--X--\r\n",
            ),
            msg(
                "Content-Type: multipart/mixed; boundary=X\r\n",
                "--X\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--X\r\nContent-Type: text/plain\r\n\r\n\r\n--X\r\nContent-Type: application/octet-stream\r\n\r\nx\r\n--X--\r\n",
            ),
            msg(
                "Content-Type: multipart/mixed; boundary=X\r\n",
                "--X\r\nContent-Type: text/plain\r\n\r\n\r\n--X\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n--X\r\nContent-Type: application/octet-stream\r\n\r\nx\r\n--X\r\nContent-Type: image/png\r\n\r\nx\r\n--X--\r\n",
            ),
            b"".to_vec(),
            b"garbage without header".to_vec(),
        ];
        for m in &no {
            assert!(!is_already_encrypted(m), "{}", String::from_utf8_lossy(m));
        }
    }
}
