//! The on-disk framing of one logged record, and the scanner that finds frames in a segment: the
//! format of the agent's spool and of the aggregator's ingest log, so both recover from a torn
//! or corrupt write the same way.
//!
//! A frame is `magic (4) | body length u32 LE | CRC32 u32 LE | body`, the CRC covering the length
//! and the body. The body is `appended_ms i64 LE | key length u16 LE | partition key | wire record`.
//! The magic lets the scanner resynchronise after a corrupt frame (bit rot, a torn write) instead
//! of trusting a length that may itself be garbage: every byte offset is tried at most once, so a
//! scan is linear and cannot loop.

/// Marks the start of every frame.
pub const MAGIC: [u8; 4] = *b"SHS1";
/// magic + length + CRC.
pub const HEADER_LEN: usize = 12;
/// Fixed part of the body: append time + key length.
const BODY_FIXED_LEN: usize = 10;
/// Largest wire record plus partition key a frame may hold: Kinesis' 1 MiB record limit, which
/// counts the partition key too.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Largest body a frame may declare; anything longer is corruption.
pub const MAX_BODY_LEN: usize = MAX_RECORD_BYTES + BODY_FIXED_LEN;

/// Encodes one frame.
pub fn encode(appended_ms: i64, key: &str, wire: &[u8]) -> Vec<u8> {
    let body_len = BODY_FIXED_LEN + key.len() + wire.len();
    let mut out = Vec::with_capacity(HEADER_LEN + body_len);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&appended_ms.to_le_bytes());
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(wire);
    let crc = checksum(&out[4..8], &out[HEADER_LEN..]);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    out
}

fn checksum(len: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(body);
    h.finalize()
}

/// One record found by the scanner, borrowing from the scanned buffer.
#[derive(Debug, PartialEq)]
pub struct Frame<'a> {
    /// Offset of the frame in the scanned buffer.
    pub offset: usize,
    /// Total frame length (header + body).
    pub len: usize,
    /// When the record was spooled, unix milliseconds.
    pub appended_ms: i64,
    /// The partition key.
    pub key: &'a str,
    /// The wire record.
    pub wire: &'a [u8],
}

/// What the scanner found at one position.
#[derive(Debug, PartialEq)]
pub enum Scanned<'a> {
    /// A valid frame.
    Frame(Frame<'a>),
    /// Bytes `[offset, offset + len)` are not a valid frame and were skipped up to the next magic
    /// (or to the end of the buffer when none follows).
    Corrupt {
        /// Where the bad bytes start.
        offset: usize,
        /// How many bytes were skipped.
        len: usize,
    },
    /// A frame starts at `offset` but the buffer ends before it does: a torn tail if this is the
    /// end of the file, or simply the end of a read chunk.
    Incomplete {
        /// Where the partial frame starts.
        offset: usize,
    },
}

/// Parses the frame at `pos`, resynchronising on the next magic when it is corrupt.
pub fn scan_at(buf: &[u8], pos: usize) -> Scanned<'_> {
    match parse_at(buf, pos) {
        Parsed::Ok(f) => Scanned::Frame(f),
        Parsed::Incomplete => Scanned::Incomplete { offset: pos },
        Parsed::Bad => Scanned::Corrupt {
            offset: pos,
            len: resync_from(buf, pos) - pos,
        },
    }
}

/// Where scanning resumes after bad bytes at `pos`: the next magic, else the start of a magic
/// prefix the buffer ends in, else the end. Never skipping such a tail matters to a reader that
/// scans a log chunk by chunk: a magic cut by the chunk's end starts the next chunk's frame.
fn resync_from(buf: &[u8], pos: usize) -> usize {
    find_magic(buf, pos + 1).unwrap_or_else(|| {
        let from = (pos + 1).max(buf.len().saturating_sub(MAGIC.len() - 1));
        (from..buf.len())
            .find(|&i| MAGIC.starts_with(&buf[i..]))
            .unwrap_or(buf.len())
    })
}

/// [`scan_at`] for a buffer that holds the log up to its end, such as a whole segment file read
/// at recovery: there a frame running past the end is a torn tail only when no magic follows it.
/// A length field corrupted to point past the end would otherwise pass for a torn tail and hide
/// every later frame; here it is skipped up to the next magic like any other bad frame. A chunked
/// reader uses it on its last chunk only: in an earlier one, a frame running past the chunk's
/// end is simply longer than the chunk.
pub fn scan_complete(buf: &[u8], pos: usize) -> Scanned<'_> {
    match scan_at(buf, pos) {
        Scanned::Incomplete { offset } => match find_magic(buf, offset.saturating_add(1)) {
            Some(next) => Scanned::Corrupt {
                offset,
                len: next - offset,
            },
            None => Scanned::Incomplete { offset },
        },
        other => other,
    }
}

enum Parsed<'a> {
    Ok(Frame<'a>),
    Incomplete,
    Bad,
}

fn parse_at(buf: &[u8], pos: usize) -> Parsed<'_> {
    let rest = &buf[pos.min(buf.len())..];
    if rest.len() < HEADER_LEN {
        // A short prefix that could still become a frame is incomplete; anything else is junk.
        return if MAGIC.starts_with(&rest[..rest.len().min(4)]) {
            Parsed::Incomplete
        } else {
            Parsed::Bad
        };
    }
    if rest[..4] != MAGIC {
        return Parsed::Bad;
    }
    let body_len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
    if !(BODY_FIXED_LEN..=MAX_BODY_LEN).contains(&body_len) {
        return Parsed::Bad;
    }
    let Some(body) = rest.get(HEADER_LEN..HEADER_LEN + body_len) else {
        return Parsed::Incomplete;
    };
    let crc = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]);
    if checksum(&rest[4..8], body) != crc {
        return Parsed::Bad;
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&body[..8]);
    let key_len = u16::from_le_bytes([body[8], body[9]]) as usize;
    let Some(key) = body.get(BODY_FIXED_LEN..BODY_FIXED_LEN + key_len) else {
        return Parsed::Bad;
    };
    let Ok(key) = std::str::from_utf8(key) else {
        return Parsed::Bad;
    };
    Parsed::Ok(Frame {
        offset: pos,
        len: HEADER_LEN + body_len,
        appended_ms: i64::from_le_bytes(ts),
        key,
        wire: &body[BODY_FIXED_LEN + key_len..],
    })
}

fn find_magic(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(MAGIC.len())
        .position(|w| w == MAGIC)
        .map(|p| p + from)
}

#[cfg(test)]
#[path = "frame_fuzz.rs"]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(buf: &[u8]) -> Vec<Scanned<'_>> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < buf.len() {
            let s = scan_at(buf, pos);
            pos = match &s {
                Scanned::Frame(f) => f.offset + f.len,
                Scanned::Corrupt { offset, len } => offset + len,
                Scanned::Incomplete { .. } => buf.len(),
            };
            out.push(s);
        }
        out
    }

    #[test]
    fn round_trips_key_and_record() {
        let f = encode(42, "ns/Deployment/web", b"wire-bytes");
        match scan_at(&f, 0) {
            Scanned::Frame(fr) => {
                assert_eq!(fr.appended_ms, 42);
                assert_eq!(fr.key, "ns/Deployment/web");
                assert_eq!(fr.wire, b"wire-bytes");
                assert_eq!(fr.len, f.len());
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn flipped_bit_is_skipped_and_the_next_frame_is_found() {
        let mut buf = encode(1, "a", b"first");
        let second_at = buf.len();
        buf.extend(encode(2, "b", b"second"));
        buf[HEADER_LEN + 12] ^= 0x10; // inside the first record's body
        let got = frames(&buf);
        assert_eq!(
            got[0],
            Scanned::Corrupt {
                offset: 0,
                len: second_at
            }
        );
        assert!(matches!(&got[1], Scanned::Frame(f) if f.wire == b"second"));
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn torn_tail_is_incomplete_not_corrupt() {
        let mut buf = encode(1, "a", b"whole");
        let whole = buf.len();
        let second = encode(2, "a", b"torn in half");
        buf.extend_from_slice(&second[..second.len() / 2]);
        let got = frames(&buf);
        assert!(matches!(got[0], Scanned::Frame(_)));
        assert_eq!(got[1], Scanned::Incomplete { offset: whole });
        // Even a tail shorter than the header is a torn frame, not junk.
        assert_eq!(scan_at(&second[..3], 0), Scanned::Incomplete { offset: 0 });
    }

    #[test]
    fn absurd_length_is_corrupt_and_junk_is_skipped_to_the_end() {
        let mut f = encode(1, "a", b"x");
        f[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            scan_at(&f, 0),
            Scanned::Corrupt {
                offset: 0,
                len: f.len()
            }
        );
        let junk = vec![0xAB; 100];
        assert_eq!(
            frames(&junk),
            vec![Scanned::Corrupt {
                offset: 0,
                len: 100
            }]
        );
    }
}
