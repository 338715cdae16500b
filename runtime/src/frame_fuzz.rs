//! Property tests of the frame scanner on hostile buffers: valid frames with corruptions between
//! and inside them (flipped bits, torn frames, length fields rewritten, junk rich in magic
//! prefixes), and arbitrary bytes. Whatever the buffer, the scanner never panics, every step
//! moves forward, it never invents a frame, and it finds every frame whose bytes are intact, at
//! its offset, whether the buffer is scanned whole or chunk by chunk as the spool reads it.

use super::*;
use proptest::prelude::*;

/// What happens to one frame of the generated log.
#[derive(Debug, Clone)]
enum Damage {
    /// Left intact.
    None,
    /// One bit flipped somewhere in the frame (header or body).
    FlipBit(usize),
    /// Only the first `n` bytes (modulo the frame's length) were written: a torn write.
    Torn(usize),
    /// The length field rewritten, often to point past the end of the buffer.
    Length(u32),
    /// Junk written before the (intact) frame.
    JunkBefore(Vec<u8>),
}

/// Bytes that make magics and magic prefixes likely, so resynchronisation is exercised.
fn junk() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            Just(b'S'),
            Just(b'H'),
            Just(b'1'),
            Just(0u8),
            Just(0xFFu8),
            any::<u8>()
        ],
        1..40,
    )
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => Just(Damage::None),
        1 => any::<usize>().prop_map(Damage::FlipBit),
        1 => any::<usize>().prop_map(Damage::Torn),
        1 => prop_oneof![
            any::<u32>(),
            (0u32..64),
            Just(MAX_BODY_LEN as u32),
            Just(u32::MAX)
        ]
        .prop_map(Damage::Length),
        1 => junk().prop_map(Damage::JunkBefore),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct Original {
    appended_ms: i64,
    key: String,
    wire: Vec<u8>,
}

fn original() -> impl Strategy<Value = Original> {
    (
        any::<i64>(),
        "[a-z0-9/-]{0,24}",
        proptest::collection::vec(any::<u8>(), 0..96),
    )
        .prop_map(|(appended_ms, key, wire)| Original {
            appended_ms,
            key,
            wire,
        })
}

/// A log of damaged frames, and the offsets of the frames left intact.
fn build(frames: &[(Original, Damage)]) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut buf = Vec::new();
    let mut intact = Vec::new();
    for (i, (o, d)) in frames.iter().enumerate() {
        let mut f = encode(o.appended_ms, &o.key, &o.wire);
        match d {
            Damage::None => intact.push((buf.len(), i)),
            Damage::FlipBit(at) => {
                let at = at % (f.len() * 8);
                f[at / 8] ^= 1u8 << (at % 8);
            }
            Damage::Torn(n) => f.truncate(n % f.len()),
            Damage::Length(len) => {
                if u32::from_le_bytes([f[4], f[5], f[6], f[7]]) == *len {
                    // Unchanged: still a valid frame.
                    intact.push((buf.len(), i));
                }
                f[4..8].copy_from_slice(&len.to_le_bytes());
            }
            Damage::JunkBefore(j) => {
                buf.extend_from_slice(j);
                intact.push((buf.len(), i));
            }
        }
        buf.extend_from_slice(&f);
    }
    (buf, intact)
}

/// One step of a scan, checked: it starts where asked and moves forward.
fn step(s: &Scanned<'_>, pos: usize, buf_len: usize) -> Option<usize> {
    match s {
        Scanned::Frame(f) => {
            assert_eq!(f.offset, pos);
            assert!(f.len >= HEADER_LEN + BODY_FIXED_LEN && pos + f.len <= buf_len);
            Some(pos + f.len)
        }
        Scanned::Corrupt { offset, len } => {
            assert_eq!(*offset, pos);
            assert!(*len >= 1 && pos + len <= buf_len, "no progress at {pos}");
            Some(pos + len)
        }
        Scanned::Incomplete { offset } => {
            assert_eq!(*offset, pos);
            None
        }
    }
}

/// Frames found scanning `buf` whole with [`scan_complete`]: (offset, contents).
fn scan_whole(buf: &[u8]) -> Vec<(usize, Original)> {
    let mut found = Vec::new();
    let mut pos = 0;
    let mut steps = 0;
    while pos < buf.len() {
        steps += 1;
        assert!(steps <= buf.len(), "more steps than bytes");
        let s = scan_complete(buf, pos);
        if let Scanned::Frame(f) = &s {
            found.push((pos, contents(f)));
        }
        match step(&s, pos, buf.len()) {
            Some(next) => pos = next,
            None => {
                // A torn tail: no magic anywhere after it.
                assert!(find_magic(buf, pos + 1).is_none(), "gave up at {pos}");
                break;
            }
        }
    }
    found
}

/// Frames found reading `buf` in chunks of `chunk` bytes as the spool's reader does: a chunk
/// is scanned with [`scan_at`], the last one with [`scan_complete`]; a frame longer than the
/// chunk makes it read a longer chunk from that frame on.
fn scan_chunked(buf: &[u8], chunk: usize) -> Vec<(usize, Original)> {
    let mut found = Vec::new();
    let mut base = 0;
    let mut len = chunk;
    while base < buf.len() {
        let end = (base + len).min(buf.len());
        let part = &buf[base..end];
        let last = end == buf.len();
        let mut pos = 0;
        let mut grow = false;
        while pos < part.len() {
            let s = if last {
                scan_complete(part, pos)
            } else {
                scan_at(part, pos)
            };
            if let Scanned::Frame(f) = &s {
                found.push((base + pos, contents(f)));
            }
            match step(&s, pos, part.len()) {
                Some(next) => pos = next,
                None if last => return found,
                None => {
                    grow = pos == 0;
                    break;
                }
            }
        }
        base += pos;
        len = if grow { len * 2 } else { chunk };
    }
    found
}

fn contents(f: &Frame<'_>) -> Original {
    Original {
        appended_ms: f.appended_ms,
        key: f.key.to_owned(),
        wire: f.wire.to_vec(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_intact_frame_is_found_after_any_damage(
        frames in proptest::collection::vec((original(), damage()), 1..12),
        chunk in 1usize..400,
    ) {
        let (buf, intact) = build(&frames);
        let whole = scan_whole(&buf);
        for (offset, i) in &intact {
            let want = &frames[*i].0;
            prop_assert!(
                whole.iter().any(|(o, f)| o == offset && f == want),
                "intact frame {i} at {offset} not found; found {:?}",
                whole.iter().map(|(o, _)| *o).collect::<Vec<_>>()
            );
        }
        // Nothing invented: every frame found is one that was written.
        for (offset, f) in &whole {
            prop_assert!(frames.iter().any(|(o, _)| o == f), "phantom frame at {offset}");
        }
        // Chunk by chunk, the same frames.
        prop_assert_eq!(scan_chunked(&buf, chunk), whole);
    }

    #[test]
    fn arbitrary_bytes_never_stall_the_scanner(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        seeds in proptest::collection::vec((any::<usize>(), 1usize..=4), 0..6),
    ) {
        // Sprinkle magics and magic prefixes over random bytes.
        let mut buf = bytes;
        for (at, n) in seeds {
            let at = at % (buf.len() + 1);
            buf.splice(at..at, MAGIC[..n].iter().copied());
        }
        scan_whole(&buf);
        scan_chunked(&buf, 7);
        let mut pos = 0;
        while pos < buf.len() {
            match step(&scan_at(&buf, pos), pos, buf.len()) {
                Some(next) => pos = next,
                None => break,
            }
        }
    }
}

#[test]
fn a_length_pointing_past_the_end_hides_no_later_frame() {
    let mut buf = encode(1, "a", b"first");
    buf[4..8].copy_from_slice(&(MAX_BODY_LEN as u32).to_le_bytes());
    let second_at = buf.len();
    buf.extend(encode(2, "b", b"second"));
    // A chunk reader cannot tell it from a long frame...
    assert_eq!(scan_at(&buf, 0), Scanned::Incomplete { offset: 0 });
    // ...but at the end of the log it is corruption, and the next frame is found.
    assert_eq!(
        scan_complete(&buf, 0),
        Scanned::Corrupt {
            offset: 0,
            len: second_at
        }
    );
    assert!(matches!(scan_complete(&buf, second_at), Scanned::Frame(f) if f.wire == b"second"));
    // A torn tail with nothing after it is still torn.
    let torn = &buf[second_at..buf.len() - 1];
    assert_eq!(scan_complete(torn, 0), Scanned::Incomplete { offset: 0 });
}

#[test]
fn a_magic_cut_by_the_end_of_a_chunk_is_not_skipped() {
    let mut buf = vec![0xAB; 10];
    buf.extend(encode(3, "k", b"after junk"));
    for cut in 11..14 {
        // The chunk ends inside the frame's magic: the junk is skipped, the magic's start kept.
        assert_eq!(
            scan_at(&buf[..cut], 0),
            Scanned::Corrupt { offset: 0, len: 10 },
            "cut at {cut}"
        );
    }
}
