//! DATA transparency for the client (RFC 5321 §4.5.2), without I/O.
//!
//! [`DotStuffer`] turns message bytes, fed in chunks of any size, into the exact bytes to put
//! on the wire after `354`: every line that starts with `.` gets a second dot, every lone CR
//! or LF becomes CRLF (so this MTA can never be the sending half of an SMTP smuggling pair,
//! C01), and [`DotStuffer::finish`] ends the body with exactly one CRLF before `.\r\n` (C05 e).
//! State carries across chunk boundaries, so a dot or a CR at the edge of a buffer is handled
//! the same as anywhere else (C05 f).

/// Incremental dot-stuffer and line-end normaliser; see the module docs for why.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    /// True when the next byte starts a line (initially, and after each emitted CRLF).
    at_line_start: bool,
    /// True when the previous chunk ended with a CR whose meaning depends on the next byte.
    pending_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    /// A stuffer positioned at the start of the body.
    pub fn new() -> Self {
        Self {
            at_line_start: true,
            pending_cr: false,
        }
    }

    /// Appends the wire form of `input` to `out`.
    ///
    /// Runs of bytes between line ends are copied whole; only line starts and line ends are
    /// looked at one by one, which keeps this off the profile of a busy relay.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 64 + 4);
        while let Some(&first) = input.first() {
            if self.pending_cr {
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.at_line_start = true;
                if first == b'\n' {
                    input = &input[1..];
                    continue;
                }
            }
            if self.at_line_start && first == b'.' {
                out.push(b'.');
            }
            let Some(end) = memchr::memchr2(b'\r', b'\n', input) else {
                out.extend_from_slice(input);
                self.at_line_start = false;
                return;
            };
            out.extend_from_slice(&input[..end]);
            if end > 0 {
                self.at_line_start = false;
            }
            if input[end] == b'\r' {
                self.pending_cr = true;
            } else {
                out.extend_from_slice(b"\r\n");
                self.at_line_start = true;
            }
            input = &input[end + 1..];
        }
    }

    /// Ends the body: completes a trailing CR or an unterminated last line with CRLF, then
    /// appends the end-of-data marker `.\r\n`.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.pending_cr || !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }

    /// The whole wire form of `body` in one call, for small messages and tests.
    pub fn stuff_all(body: &[u8]) -> Vec<u8> {
        let mut s = Self::new();
        let mut out = Vec::with_capacity(body.len() + 8);
        s.push(body, &mut out);
        s.finish(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CASES: &[(&[u8], &[u8])] = &[
        (b"hello\r\n.\r\nworld\r\n", b"hello\r\n..\r\nworld\r\n.\r\n"),
        (b"hello", b"hello\r\n.\r\n"),
        (b"hello\r\n", b"hello\r\n.\r\n"),
        (b"", b".\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b"..x\r\n", b"...x\r\n.\r\n"),
        (b"a\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\r.\rb\r", b"a\r\n..\r\nb\r\n.\r\n"),
        (
            b"x\n.\r\nMAIL FROM:<a@b>\r\n",
            b"x\r\n..\r\nMAIL FROM:<a@b>\r\n.\r\n",
        ),
        (b"a.b\r\n .c\r\n", b"a.b\r\n .c\r\n.\r\n"),
        (b"\r\n\r\n", b"\r\n\r\n.\r\n"),
    ];

    #[test]
    fn one_shot_cases() {
        for (input, want) in CASES {
            assert_eq!(
                DotStuffer::stuff_all(input),
                want.to_vec(),
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn every_split_gives_the_same_bytes() {
        for (input, want) in CASES {
            for i in 0..=input.len() {
                for j in i..=input.len() {
                    let mut s = DotStuffer::new();
                    let mut out = Vec::new();
                    s.push(&input[..i], &mut out);
                    s.push(&input[i..j], &mut out);
                    s.push(&input[j..], &mut out);
                    s.finish(&mut out);
                    assert_eq!(&out, want, "split at {i},{j} of {input:?}");
                }
            }
        }
    }

    /// The byte-at-a-time definition the run-copying `push` must equal.
    fn reference(input: &[u8]) -> Vec<u8> {
        let (mut out, mut at_start, mut cr) = (Vec::new(), true, false);
        for &b in input {
            if cr {
                cr = false;
                out.extend_from_slice(b"\r\n");
                at_start = true;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => cr = true,
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    at_start = true;
                }
                _ => {
                    if at_start && b == b'.' {
                        out.push(b'.');
                    }
                    out.push(b);
                    at_start = false;
                }
            }
        }
        if cr || !at_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    #[test]
    fn equals_the_bytewise_definition_on_every_short_input_and_split() {
        const ALPHABET: &[u8] = b".\r\na";
        for len in 0..=7u32 {
            for code in 0..4usize.pow(len) {
                let input: Vec<u8> = (0..len)
                    .map(|k| ALPHABET[code / 4usize.pow(k) % 4])
                    .collect();
                let want = reference(&input);
                assert_eq!(DotStuffer::stuff_all(&input), want, "{input:?}");
                for cut in 0..=input.len() {
                    let mut s = DotStuffer::new();
                    let mut out = Vec::new();
                    s.push(&input[..cut], &mut out);
                    s.push(&input[cut..], &mut out);
                    s.finish(&mut out);
                    assert_eq!(out, want, "{input:?} cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn output_never_has_bare_cr_or_lf() {
        let input = b"\r\r\n\n\r.\n.\r\r\n.";
        let out = DotStuffer::stuff_all(input);
        for (k, &b) in out.iter().enumerate() {
            if b == b'\r' {
                assert_eq!(out.get(k + 1), Some(&b'\n'));
            }
            if b == b'\n' {
                assert_eq!(out[k - 1], b'\r');
            }
        }
    }
}
