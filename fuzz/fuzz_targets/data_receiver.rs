//! DATA and BDAT content receivers, plus the outbound DotStuffer they must agree with.
//!
//! Input layout: byte 0 picks the size limit, byte 1 (mod 5) the number of cut points, then
//! two bytes per cut point (little endian, mod body length + 1); the rest is the content.
//!
//! Invariants checked:
//! * split invariance: feeding the content in pieces (and byte by byte) gives the same
//!   `consumed` and outcome as one feed; `consumed` never exceeds what was fed and is all of
//!   it while the message is still open;
//! * the outcome equals a small reference model (end of data is the first `\r\n.\r\n`, or
//!   `.\r\n` at the very start; lines split on CRLF only; a leading dot is removed);
//! * a Complete body has no bare CR or LF, ends with CRLF (or is empty), fits the limit, and
//!   survives DotStuffer + a fresh DataReceiver unchanged;
//! * BdatReceiver: same chunks give the same result, `failed()` never goes back to None and
//!   agrees with `finish()`, and the result matches the reference model without unstuffing;
//! * DotStuffer on the raw content: split invariant, no bare CR/LF on the wire, and the wire
//!   read back by a DataReceiver yields the content with line ends normalised to CRLF.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sealpost::outbound::DotStuffer;
use sealpost::smtp::data::{BdatReceiver, DataOutcome, DataReceiver, MAX_CONTENT_LINE};

const LIMITS: [u64; 8] = [0, 1, 3, 10, 64, 1000, 10_000, u64::MAX];

fn no_bare_line_ends(b: &[u8]) -> bool {
    b.iter().enumerate().all(|(i, &c)| match c {
        b'\r' => b.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && b[i - 1] == b'\r',
        _ => true,
    })
}

/// Splits `content` on CRLF (the last piece may be unterminated).
fn crlf_lines(content: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < content.len() {
        if content[i] == b'\r' && content[i + 1] == b'\n' {
            out.push(&content[start..i]);
            i += 2;
            start = i;
        } else {
            i += 1;
        }
    }
    if start < content.len() {
        out.push(&content[start..]);
    }
    out
}

fn line_too_long(content: &[u8]) -> bool {
    crlf_lines(content)
        .iter()
        .any(|l| l.iter().filter(|&&b| b != b'\r' && b != b'\n').count() > MAX_CONTENT_LINE)
}

fn judge(stored: Vec<u8>, wire: &[u8], max: u64) -> DataOutcome {
    if !no_bare_line_ends(wire) {
        DataOutcome::BareLineEnding
    } else if stored.len() as u64 > max {
        DataOutcome::TooLarge
    } else if line_too_long(wire) {
        DataOutcome::LineTooLong
    } else {
        DataOutcome::Complete(stored)
    }
}

/// Reference model of DataReceiver fed `input` in one go.
fn reference_data(input: &[u8], max: u64) -> (usize, Option<DataOutcome>) {
    let end = if input.starts_with(b".\r\n") {
        Some((0, 3))
    } else {
        input
            .windows(5)
            .position(|w| w == b"\r\n.\r\n")
            .map(|p| (p + 2, p + 5))
    };
    let Some((content_end, consumed)) = end else {
        return (input.len(), None);
    };
    let content = &input[..content_end];
    let mut stored = Vec::new();
    let mut start = 0;
    // Unstuff: drop one leading dot of each CRLF-delimited line.
    while start < content.len() {
        let line_end = content[start..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(content.len(), |p| start + p + 2);
        let line = &content[start..line_end];
        stored.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        start = line_end;
    }
    (consumed, Some(judge(stored, content, max)))
}

fn feed_data(chunks: &[&[u8]], max: u64) -> (usize, Option<DataOutcome>) {
    let mut rx = DataReceiver::new(max);
    let mut consumed = 0;
    for chunk in chunks {
        let p = rx.feed(chunk);
        assert!(p.consumed <= chunk.len(), "consumed {} of {}", p.consumed, chunk.len());
        consumed += p.consumed;
        if p.outcome.is_some() {
            return (consumed, p.outcome);
        }
        assert_eq!(p.consumed, chunk.len(), "open message left bytes unconsumed");
    }
    (consumed, None)
}

fn feed_bdat(chunks: &[&[u8]], max: u64) -> DataOutcome {
    let mut rx = BdatReceiver::new(max);
    let mut failed = false;
    for chunk in chunks {
        rx.feed(chunk);
        let now = rx.failed().is_some();
        assert!(!failed || now, "BdatReceiver::failed went back to None");
        failed = now;
    }
    let f = rx.failed();
    let out = rx.finish();
    if let Some(f) = f {
        // BareLineEnding outranks the others; a trailing CR can only add it.
        assert!(out == f || out == DataOutcome::BareLineEnding, "{f:?} then {out:?}");
    }
    out
}

/// What DotStuffer should put on the wire's content part: every CRLF, lone CR and lone LF
/// becomes CRLF, and a non-empty unterminated last line gets CRLF.
fn normalise(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\r' if input.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn stuff_chunks(chunks: &[&[u8]]) -> Vec<u8> {
    let mut s = DotStuffer::new();
    let mut out = Vec::new();
    for c in chunks {
        s.push(c, &mut out);
    }
    s.finish(&mut out);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&limit, rest)) = data.split_first() else {
        return;
    };
    let max = LIMITS[(limit & 7) as usize];
    let Some((&ncuts, rest)) = rest.split_first() else {
        return;
    };
    let ncuts = (ncuts % 5) as usize;
    if rest.len() < 2 * ncuts {
        return;
    }
    let (cut_bytes, body) = rest.split_at(2 * ncuts);
    let mut cuts: Vec<usize> = cut_bytes
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as usize % (body.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    for &c in &cuts {
        chunks.push(&body[start..c]);
        start = c;
    }
    chunks.push(&body[start..]);

    // DATA.
    let whole = feed_data(&[body], max);
    assert!(whole.0 <= body.len());
    assert_eq!(feed_data(&chunks, max), whole, "split at {cuts:?} differs");
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(feed_data(&bytes, max), whole, "byte-by-byte feed differs");
    assert_eq!(reference_data(body, max), whole, "differs from the reference model");
    if let (consumed, Some(DataOutcome::Complete(stored))) = &whole {
        assert!(no_bare_line_ends(stored), "bare CR/LF in stored body");
        assert!(stored.is_empty() || stored.ends_with(b"\r\n"));
        assert!(stored.len() as u64 <= max);
        assert!(body[..*consumed].ends_with(b".\r\n"));
        let wire = DotStuffer::stuff_all(stored);
        let again = feed_data(&[&wire], max);
        assert_eq!(
            again,
            (wire.len(), Some(DataOutcome::Complete(stored.clone()))),
            "restuffed body does not read back the same"
        );
    }

    // BDAT: the cut points are chunk boundaries, the whole body is the message.
    let bdat = feed_bdat(&chunks, max);
    assert_eq!(feed_bdat(&[body], max), bdat, "BDAT chunking changes the outcome");
    assert_eq!(bdat, judge(body.to_vec(), body, max), "BDAT differs from the reference");

    // DotStuffer on the raw content (the client side).
    let wire = stuff_chunks(&chunks);
    assert_eq!(wire, DotStuffer::stuff_all(body), "DotStuffer split at {cuts:?} differs");
    assert!(no_bare_line_ends(&wire), "DotStuffer emitted a bare CR/LF");
    assert!(wire.ends_with(b".\r\n"));
    let (consumed, outcome) = feed_data(&[&wire], u64::MAX);
    assert_eq!(consumed, wire.len(), "stuffed wire ended early or late");
    match outcome {
        Some(DataOutcome::Complete(got)) => assert_eq!(got, normalise(body)),
        Some(DataOutcome::LineTooLong) => assert!(line_too_long(&wire)),
        other => panic!("stuffed wire read back as {other:?}"),
    }
});
