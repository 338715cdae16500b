//! Property tests of the batch framing on hostile bodies: arbitrary bytes, valid bodies edited
//! (bytes changed, cut, length prefixes rewritten), and bodies of real wire records whose
//! records are then decoded. The splitter never panics; what it accepts accounts for every byte
//! of the body, in order; what it refuses names the offset of a frame boundary; and it never
//! returns more records than four bytes of body each can pay for.

use super::*;
use crate::schema::{Envelope, Payload, Record, RecordId, Subject, decode_wire, encode_wire};
use proptest::prelude::*;

/// Checks the splitter's contract on `body`.
fn split_checked(body: &[u8]) -> Result<Vec<&[u8]>, BatchDecodeError> {
    let got = decode_batch(body);
    match &got {
        Ok(records) => {
            assert!(records.len() <= body.len() / FRAME_OVERHEAD_BYTES);
            // The records tile the body: each after its own length prefix, nothing left over.
            let mut at = 0;
            for r in records {
                let len = u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
                assert_eq!(len as usize, r.len());
                assert_eq!(&body[at + 4..at + 4 + r.len()], *r);
                at += FRAME_OVERHEAD_BYTES + r.len();
            }
            assert_eq!(at, body.len());
        }
        Err(e) => {
            // The error is at a frame boundary: everything before it splits.
            assert!(e.offset < body.len());
            assert!(decode_batch(&body[..e.offset]).is_ok());
        }
    }
    got
}

fn records() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..12)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn bodies_round_trip(recs in records()) {
        let body = encode_batch(recs.iter().map(Vec::as_slice)).expect("encode");
        let back = split_checked(&body).expect("a valid body splits");
        prop_assert_eq!(back, recs.iter().map(Vec::as_slice).collect::<Vec<_>>());
    }

    #[test]
    fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = split_checked(&body);
    }

    #[test]
    fn edited_bodies_split_or_fail_at_a_boundary(
        recs in records(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let mut body = encode_batch(recs.iter().map(Vec::as_slice)).expect("encode");
        for (at, byte, kind) in edits {
            if body.is_empty() {
                break;
            }
            let at = at % body.len();
            match kind {
                0 => body[at] = byte,
                1 => body.truncate(at),
                // A length prefix, or any 4 bytes, rewritten to a large value.
                _ => {
                    let end = (at + 4).min(body.len());
                    body[at..end].fill(0xFF);
                }
            }
        }
        let _ = split_checked(&body);
    }

    /// Real wire records framed, the body edited, then every record decoded: the two layers
    /// together never panic.
    #[test]
    fn framed_wire_records_survive_edits(
        ts in proptest::collection::vec(any::<i64>(), 1..6),
        at in any::<usize>(),
        byte in any::<u8>(),
    ) {
        let wires: Vec<Vec<u8>> = ts
            .iter()
            .map(|&ts_ms| {
                let record = Record {
                    id: RecordId::from_u128(ts_ms as u128),
                    ts_ms,
                    node: "node-a".into(),
                    subject: Subject::Node,
                    family: crate::Family::Cpu,
                    values: Default::default(),
                };
                encode_wire(&Envelope::new(Payload::Sample { record, inclusion_probability: 1.0 }))
                    .expect("encode")
            })
            .collect();
        let mut body = encode_batch(wires.iter().map(Vec::as_slice)).expect("encode");
        let at = at % body.len();
        body[at] = byte;
        if let Ok(recs) = split_checked(&body) {
            for r in recs {
                let _ = decode_wire(r);
            }
        }
    }
}

#[test]
fn a_length_prefix_of_u32_max_claims_nothing() {
    for tail in [0usize, 1, 3, 4, 100] {
        let mut body = u32::MAX.to_le_bytes().to_vec();
        body.extend(std::iter::repeat_n(0u8, tail));
        assert_eq!(
            split_checked(&body).expect_err("runs past the end"),
            BatchDecodeError { offset: 0 }
        );
    }
}
