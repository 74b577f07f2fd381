//! Message content receivers for DATA (RFC 5321 §4.1.1.4) and BDAT (RFC 3030).
//!
//! Lines are split on CRLF only, and the same split drives end-of-data detection and
//! dot-unstuffing (aiosmtpd #561 shows what happens when they differ). A bare CR or LF anywhere
//! marks the message bad but reading continues to the real `CRLF.CRLF`, so a smuggled
//! `\n.\r\nMAIL FROM:...` (CVE-2023-51764) is swallowed as content and never runs.

/// Longest content line in octets, excluding CRLF (RFC 5322 §2.1.1, RFC 5321 §4.5.3.1.6).
pub const MAX_CONTENT_LINE: usize = 998;

/// How a message ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataOutcome {
    /// The unstuffed content, CRLF line ends.
    Complete(Vec<u8>),
    /// A bare CR or LF was seen: 550 5.6.0. We relay with DATA and must never emit one.
    BareLineEnding,
    /// A line passed 998 octets: 550 5.6.0.
    LineTooLong,
    /// The content passed the size limit: 552 5.3.4.
    TooLarge,
}

/// What one [`DataReceiver::feed`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input consumed; the rest belongs to the next command.
    pub consumed: usize,
    /// `Some` once end-of-data was seen.
    pub outcome: Option<DataOutcome>,
}

/// Where the DATA scanner is within the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Just after CRLF (or at the very start, right after the DATA command's CRLF).
    LineStart,
    /// The line so far is a single `.` (already dropped as a stuffing dot).
    Dot,
    /// The line so far is `.` CR: LF now ends the data.
    DotCr,
    /// Inside a line.
    InLine,
    /// Inside a line, just after a CR.
    Cr,
}

/// Shared bookkeeping for both receivers: size limit and content faults.
#[derive(Debug)]
struct Sink {
    body: Vec<u8>,
    max: u64,
    total: u64,
    too_large: bool,
    bare: bool,
    long_line: bool,
    line_len: usize,
}

impl Sink {
    fn new(max: u64) -> Self {
        Self {
            body: Vec::new(),
            max,
            total: 0,
            too_large: false,
            bare: false,
            long_line: false,
            line_len: 0,
        }
    }

    /// Stores bytes unless a fault already doomed the message (then only counts).
    fn push(&mut self, bytes: &[u8]) {
        self.total = self.total.saturating_add(bytes.len() as u64);
        if self.total > self.max {
            self.too_large = true;
        }
        if !(self.too_large || self.bare || self.long_line) {
            self.body.extend_from_slice(bytes);
        } else {
            self.body = Vec::new();
        }
    }

    fn line_octets(&mut self, n: usize) {
        self.line_len = self.line_len.saturating_add(n);
        if self.line_len > MAX_CONTENT_LINE {
            self.long_line = true;
        }
    }

    fn outcome(&mut self) -> DataOutcome {
        if self.bare {
            DataOutcome::BareLineEnding
        } else if self.too_large {
            DataOutcome::TooLarge
        } else if self.long_line {
            DataOutcome::LineTooLong
        } else {
            DataOutcome::Complete(std::mem::take(&mut self.body))
        }
    }
}

/// Receives DATA content up to `CRLF.CRLF`, unstuffing dots, across any feed boundaries.
#[derive(Debug)]
pub struct DataReceiver {
    scan: Scan,
    sink: Sink,
    done: bool,
}

impl DataReceiver {
    /// A receiver positioned right after the DATA command's CRLF; `max_size` bounds the
    /// stored (unstuffed) content.
    pub fn new(max_size: u64) -> Self {
        Self {
            scan: Scan::LineStart,
            sink: Sink::new(max_size),
            done: false,
        }
    }

    /// Consumes bytes up to and including the end-of-data marker.
    pub fn feed(&mut self, input: &[u8]) -> Progress {
        let mut i = 0;
        while i < input.len() && !self.done {
            if self.scan == Scan::InLine {
                // Fast path: copy the run of ordinary bytes in one go.
                let run = input[i..]
                    .iter()
                    .position(|&b| b == b'\r' || b == b'\n')
                    .unwrap_or(input.len() - i);
                if run > 0 {
                    self.sink.line_octets(run);
                    self.sink.push(&input[i..i + run]);
                    i += run;
                    continue;
                }
            }
            self.step(input[i]);
            i += 1;
        }
        Progress {
            consumed: i,
            outcome: if self.done {
                Some(self.sink.outcome())
            } else {
                None
            },
        }
    }

    fn step(&mut self, b: u8) {
        self.scan = match (self.scan, b) {
            (Scan::LineStart, b'.') => {
                self.sink.line_octets(1);
                Scan::Dot
            }
            (Scan::Dot, b'\r') => Scan::DotCr,
            (Scan::DotCr, b'\n') => {
                self.done = true;
                Scan::LineStart
            }
            // `.` CR followed by anything else: that CR is bare.
            (Scan::DotCr, _) => {
                self.sink.bare = true;
                self.sink.push(b"\r");
                self.in_line(b)
            }
            (Scan::LineStart | Scan::Dot | Scan::InLine, _) => self.in_line(b),
            (Scan::Cr, b'\n') => {
                self.sink.push(b"\r\n");
                self.sink.line_len = 0;
                Scan::LineStart
            }
            (Scan::Cr, _) => {
                self.sink.bare = true;
                self.sink.push(b"\r");
                self.in_line(b)
            }
        };
    }

    /// One byte inside a line: CR waits for its LF, a lone LF is a fault.
    fn in_line(&mut self, b: u8) -> Scan {
        match b {
            b'\r' => Scan::Cr,
            b'\n' => {
                self.sink.bare = true;
                self.sink.push(b"\n");
                Scan::InLine
            }
            _ => {
                self.sink.line_octets(1);
                self.sink.push(&[b]);
                Scan::InLine
            }
        }
    }
}

/// Accumulates BDAT chunks (no dot-stuffing) until the LAST one.
///
/// The session tells it how many octets each chunk has and feeds exactly those octets.
#[derive(Debug)]
pub struct BdatReceiver {
    sink: Sink,
    prev_cr: bool,
}

impl BdatReceiver {
    /// An empty message with a `max_size` limit over all chunks.
    pub fn new(max_size: u64) -> Self {
        Self {
            sink: Sink::new(max_size),
            prev_cr: false,
        }
    }

    /// Adds chunk octets; CRLF may straddle two feeds or two chunks.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.prev_cr && b != b'\n' {
                self.sink.bare = true;
            }
            match b {
                b'\n' if !self.prev_cr => self.sink.bare = true,
                b'\n' => self.sink.line_len = 0,
                b'\r' => {}
                _ => self.sink.line_octets(1),
            }
            self.prev_cr = b == b'\r';
        }
        self.sink.push(bytes);
    }

    /// True once the content is known to be refused (the session may answer early).
    pub fn failed(&self) -> Option<DataOutcome> {
        if self.sink.bare {
            Some(DataOutcome::BareLineEnding)
        } else if self.sink.too_large {
            Some(DataOutcome::TooLarge)
        } else if self.sink.long_line {
            Some(DataOutcome::LineTooLong)
        } else {
            None
        }
    }

    /// Ends the message after the LAST chunk.
    pub fn finish(mut self) -> DataOutcome {
        if self.prev_cr {
            self.sink.bare = true;
        }
        self.sink.outcome()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8], max: u64) -> (usize, Option<DataOutcome>) {
        let mut r = DataReceiver::new(max);
        let p = r.feed(input);
        (p.consumed, p.outcome)
    }

    /// Feeds `input` split at every possible point and checks the result is the same.
    fn every_split(input: &[u8], max: u64) -> (usize, Option<DataOutcome>) {
        let whole = run(input, max);
        for cut in 0..=input.len() {
            let mut r = DataReceiver::new(max);
            let a = r.feed(&input[..cut]);
            let (consumed, outcome) = if a.outcome.is_some() {
                (a.consumed, a.outcome)
            } else {
                let b = r.feed(&input[cut..]);
                (a.consumed + b.consumed, b.outcome)
            };
            assert_eq!((consumed, outcome), whole, "split at {cut} of {input:?}");
        }
        // Byte by byte too.
        let mut r = DataReceiver::new(max);
        let mut consumed = 0;
        let mut outcome = None;
        for &b in input {
            let p = r.feed(&[b]);
            consumed += p.consumed;
            if p.outcome.is_some() {
                outcome = p.outcome;
                break;
            }
        }
        assert_eq!((consumed, outcome), whole);
        whole
    }

    fn complete(s: &[u8]) -> Option<DataOutcome> {
        Some(DataOutcome::Complete(s.to_vec()))
    }

    #[test]
    fn empty_and_plain_messages() {
        // C05 d: empty message right after DATA.
        assert_eq!(every_split(b"\r\n.\r\n", 100), (5, complete(b"\r\n")));
        assert_eq!(every_split(b".\r\n", 100), (3, complete(b"")));
        // C05 c.
        assert_eq!(
            every_split(b"Subject: t\r\n\r\nhello\r\n.\r\nQUIT\r\n", 100),
            (24, complete(b"Subject: t\r\n\r\nhello\r\n"))
        );
    }

    #[test]
    fn dot_unstuffing() {
        // C05 a.
        assert_eq!(
            every_split(b"..test\r\n.\r\n", 100).1,
            complete(b".test\r\n")
        );
        assert_eq!(
            every_split(b"a\r\n..\r\n...\r\n.x\r\n.\r\n", 100).1,
            complete(b"a\r\n.\r\n..\r\nx\r\n")
        );
        // A dot not at line start stays.
        assert_eq!(every_split(b"a.b\r\n.\r\n", 100).1, complete(b"a.b\r\n"));
    }

    #[test]
    fn smuggling_c01_is_one_bad_message() {
        let msg = b"From: alice@example.net\r\nSubject: one\r\n\r\nhello\n.\r\nMAIL FROM:<ceo@example.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\nFrom: ceo@example.com\r\n\r\nplease pay\r\n.\r\nNOOP\r\n";
        let (consumed, outcome) = every_split(msg, 10_000);
        assert_eq!(consumed, msg.len() - 6);
        assert_eq!(outcome, Some(DataOutcome::BareLineEnding));
    }

    #[test]
    fn every_ambiguous_end_spelling_is_content() {
        let spellings: [&[u8]; 10] = [
            b"\n.\r\n",
            b"\r.\r\n",
            b"\n.\n",
            b"\r\n.\n",
            b"\r\n.\r",
            b"\r.\r",
            b"\n.\r",
            b"\r\n.\r\r\n",
            b"\r\n \r\n",
            b"\r\n.\n\r\n",
        ];
        for s in spellings {
            let mut input = b"hello".to_vec();
            input.extend_from_slice(s);
            input.extend_from_slice(b"MAIL FROM:<x@y.example>\r\n");
            // Without the real terminator nothing ends.
            let (consumed, outcome) = every_split(&input, 10_000);
            assert_eq!((consumed, outcome), (input.len(), None), "{s:?}");
            input.extend_from_slice(b"\r\n.\r\n");
            let (consumed, outcome) = every_split(&input, 10_000);
            assert_eq!(consumed, input.len(), "{s:?}");
            if s == b"\r\n \r\n" {
                assert!(matches!(outcome, Some(DataOutcome::Complete(_))));
            } else {
                assert_eq!(outcome, Some(DataOutcome::BareLineEnding), "{s:?}");
            }
        }
    }

    #[test]
    fn c03_bare_lf_stuffed_line_is_rejected_not_stored() {
        assert_eq!(
            every_split(b"this is a test of dot\n...\n\r\n.\r\n", 1000).1,
            Some(DataOutcome::BareLineEnding)
        );
    }

    #[test]
    fn size_limit_keeps_scanning() {
        let mut input = vec![b'a'; 50];
        input.extend_from_slice(b"\r\n.\r\nRSET\r\n");
        assert_eq!(run(&input, 51), (55, Some(DataOutcome::TooLarge)));
        assert_eq!(run(&input, 52).1, complete(&input[..52]));
        assert_eq!(every_split(&input, 10).1, Some(DataOutcome::TooLarge));
    }

    #[test]
    fn line_length_limit() {
        let mut ok = vec![b'a'; 998];
        ok.extend_from_slice(b"\r\n.\r\n");
        assert!(matches!(run(&ok, 10_000).1, Some(DataOutcome::Complete(_))));
        let mut long = vec![b'a'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(run(&long, 10_000).1, Some(DataOutcome::LineTooLong));
        // The stuffing dot counts: it is on the wire.
        let mut stuffed = vec![b'.'; 999];
        stuffed.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(run(&stuffed, 10_000).1, Some(DataOutcome::LineTooLong));
    }

    #[test]
    fn bdat_checks_line_endings_across_chunks() {
        let mut r = BdatReceiver::new(100);
        r.feed(b"a\r");
        r.feed(b"\nb\r\n");
        assert_eq!(r.failed(), None);
        assert_eq!(r.finish(), DataOutcome::Complete(b"a\r\nb\r\n".to_vec()));
        for bad in [&b"a\nb"[..], b"a\rb", b"a\r", b"\n"] {
            let mut r = BdatReceiver::new(100);
            r.feed(bad);
            assert_eq!(r.finish(), DataOutcome::BareLineEnding, "{bad:?}");
        }
        // No unstuffing in BDAT.
        let mut r = BdatReceiver::new(100);
        r.feed(b"..x\r\n.\r\n");
        assert_eq!(r.finish(), DataOutcome::Complete(b"..x\r\n.\r\n".to_vec()));
    }

    #[test]
    fn bdat_size_is_cumulative() {
        let mut r = BdatReceiver::new(10);
        r.feed(b"12345\r\n");
        assert_eq!(r.failed(), None);
        r.feed(b"1234\r\n");
        assert_eq!(r.failed(), Some(DataOutcome::TooLarge));
        assert_eq!(r.finish(), DataOutcome::TooLarge);
    }
}
