//! Property tests that reach past the wire header: a random byte string passes the four-byte
//! magic and version check about once in 2^32, so these build a valid header and then feed the
//! postcard decoder arbitrary envelopes, mutated encodings, token soups that look like postcard,
//! and length prefixes of 2^64 - 1 at every offset. The decoder must never panic, never allocate
//! more than its input justifies (a huge length prefix would abort the test process), and what
//! it accepts must re-encode to no more bytes than it was given.

use super::*;
use crate::family::{Family, Metric};
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,16}"
}

fn f64_any() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(-0.0),
        -1e6f64..1e6
    ]
}

fn subject() -> impl Strategy<Value = Subject> {
    let owner =
        proptest::option::of((text(), text()).prop_map(|(kind, name)| OwnerRef { kind, name }));
    let qos = proptest::option::of(prop_oneof![
        Just(QosClass::Guaranteed),
        Just(QosClass::Burstable),
        Just(QosClass::BestEffort)
    ]);
    prop_oneof![
        Just(Subject::Node),
        (
            text(),
            proptest::option::of(text()),
            proptest::option::of(text()),
            owner,
            qos
        )
            .prop_map(|(uid, namespace, name, owner, qos)| Subject::Pod(PodRef {
                uid,
                namespace,
                name,
                owner,
                qos
            })),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    (
        any::<u128>(),
        any::<i64>(),
        text(),
        subject(),
        0..Family::ALL.len(),
        proptest::collection::btree_map(0..Metric::ALL.len(), f64_any(), 0..6),
    )
        .prop_map(|(id, ts_ms, node, subject, fam, vals)| Record {
            id: RecordId::from_u128(id),
            ts_ms,
            node,
            subject,
            family: Family::ALL[fam],
            values: vals.into_iter().map(|(i, v)| (Metric::ALL[i], v)).collect(),
        })
}

fn envelope() -> impl Strategy<Value = Envelope> {
    let sample = (record(), f64_any()).prop_map(|(record, p)| Payload::Sample {
        record,
        inclusion_probability: p,
    });
    let anomaly = (
        record(),
        f64_any(),
        f64_any(),
        text(),
        proptest::collection::vec(f64_any(), 0..8),
        proptest::collection::vec((text(), f64_any()), 0..4),
        proptest::collection::vec(record(), 0..3),
    )
        .prop_map(
            |(record, score, threshold, model_version, features, top_features, window)| {
                Payload::Anomaly(Anomaly {
                    record,
                    score,
                    threshold,
                    model_version,
                    features,
                    top_features,
                    window,
                })
            },
        );
    prop_oneof![sample, anomaly].prop_map(Envelope::new)
}

fn header() -> Vec<u8> {
    let mut h = WIRE_MAGIC.to_vec();
    h.extend_from_slice(&SCHEMA_VERSION.to_le_bytes());
    h
}

/// The largest postcard varint: u64::MAX, a length no input can back.
const HUGE_VARINT: [u8; 10] = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];

/// Decodes `bytes` and checks what the decoder accepted: it re-encodes to at most as many
/// bytes as it came from (so what it built is bounded by its input), and decoding that again
/// gives the same bytes.
fn decode_checked(bytes: &[u8]) -> Option<Envelope> {
    let env = decode_wire(bytes).ok()?;
    let again = encode_wire(&env).expect("an accepted envelope encodes");
    assert!(
        again.len() <= bytes.len(),
        "accepted {} bytes that re-encode to {}",
        bytes.len(),
        again.len()
    );
    let back = decode_wire(&again).expect("a re-encoded envelope decodes");
    assert_eq!(encode_wire(&back).expect("encode"), again);
    Some(env)
}

/// One edit of an encoding, always after the header so that the payload decoder runs.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    HugeLength(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<usize>(), 0u8..8).prop_map(|(i, b)| Edit::Flip(i, b)),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..12)
        )
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Edit::Delete(i, n)),
        any::<usize>().prop_map(Edit::Truncate),
        any::<usize>().prop_map(Edit::HugeLength),
    ]
}

fn apply(bytes: &mut Vec<u8>, e: &Edit) {
    const H: usize = 4;
    let at = |i: usize, len: usize| H + i % (len - H + 1);
    match e {
        Edit::Set(i, b) if bytes.len() > H => {
            let i = H + i % (bytes.len() - H);
            bytes[i] = *b;
        }
        Edit::Flip(i, bit) if bytes.len() > H => {
            let i = H + i % (bytes.len() - H);
            bytes[i] ^= 1u8 << *bit;
        }
        Edit::Insert(i, b) => {
            let i = at(*i, bytes.len());
            bytes.splice(i..i, b.iter().copied());
        }
        Edit::Delete(i, n) if bytes.len() > H => {
            let i = H + i % (bytes.len() - H);
            let end = (i + n).min(bytes.len());
            bytes.drain(i..end);
        }
        Edit::Truncate(n) => bytes.truncate(at(*n, bytes.len())),
        Edit::HugeLength(i) => {
            let i = at(*i, bytes.len());
            bytes.splice(i..i, HUGE_VARINT);
        }
        _ => {}
    }
}

/// Pieces that look like postcard: small varints (enum tags, option flags, short lengths),
/// huge ones, strings and floats, so random payloads get deep into the envelope.
fn token() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (0u8..4).prop_map(|b| vec![b]),
        (0u8..0x80).prop_map(|b| vec![b]),
        Just(HUGE_VARINT.to_vec()),
        Just(vec![
            0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01
        ]),
        "\\PC{0,8}".prop_map(|s| {
            let mut v = vec![s.len() as u8];
            v.extend_from_slice(s.as_bytes());
            v
        }),
        any::<f64>().prop_map(|f| f.to_le_bytes().to_vec()),
        proptest::collection::vec(any::<u8>(), 1..16),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every envelope, NaN and infinities included, survives the wire bit for bit.
    #[test]
    fn every_envelope_round_trips(env in envelope()) {
        let bytes = encode_wire(&env).expect("encode");
        prop_assert_eq!(wire_len(&env).expect("size"), bytes.len());
        let back = decode_checked(&bytes).expect("a valid encoding decodes");
        prop_assert_eq!(encode_wire(&back).expect("encode"), bytes);
    }

    /// Valid encodings edited after the header: decoded or refused, never a panic.
    #[test]
    fn edited_encodings_are_decoded_or_refused(
        env in envelope(),
        edits in proptest::collection::vec(edit(), 1..4),
    ) {
        let mut bytes = encode_wire(&env).expect("encode");
        for e in &edits {
            apply(&mut bytes, e);
        }
        prop_assert_eq!(&bytes[..4], &header()[..]);
        match decode_wire(&bytes) {
            Ok(_) => { decode_checked(&bytes); }
            Err(DecodeError::Payload(_) | DecodeError::VersionMismatch { .. }) => {}
            Err(e) => prop_assert!(false, "the header was valid, yet: {e}"),
        }
    }

    /// A valid header and a payload of postcard-like tokens.
    #[test]
    fn postcard_like_payloads_never_panic(
        tokens in proptest::collection::vec(token(), 0..40),
        version in prop_oneof![Just(SCHEMA_VERSION as u8), any::<u8>()],
    ) {
        let mut bytes = header();
        bytes.push(version);
        bytes.extend(tokens.concat());
        decode_checked(&bytes);
    }

    /// A valid header and random bytes.
    #[test]
    fn random_payloads_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = header();
        bytes.extend(body);
        decode_checked(&bytes);
    }
}

/// A length of 2^64 - 1 spliced in at every offset of a rich envelope, and written over each
/// byte: each of its length prefixes (strings, the values map, features, top features, the
/// window) is hit. Preallocating what such a prefix claims would abort the test process.
#[test]
fn a_huge_length_at_any_offset_is_refused_without_allocating_it() {
    let env = Envelope::new(Payload::Anomaly(Anomaly {
        record: Record {
            id: RecordId::from_u128(7),
            ts_ms: 1_764_000_000_000,
            node: "node-a".into(),
            subject: Subject::Pod(PodRef {
                uid: "u".into(),
                namespace: Some("ns".into()),
                name: Some("p".into()),
                owner: Some(OwnerRef {
                    kind: "Deployment".into(),
                    name: "web".into(),
                }),
                qos: Some(QosClass::Burstable),
            }),
            family: Family::Cpu,
            values: [(Metric::ALL[0], 1.0), (Metric::ALL[1], 2.0)].into(),
        },
        score: 0.9,
        threshold: 0.6,
        model_version: "cpu-1".into(),
        features: vec![1.0, 2.0],
        top_features: vec![("f".into(), 1.0)],
        window: vec![Record {
            id: RecordId::from_u128(8),
            ts_ms: 1,
            node: "n".into(),
            subject: Subject::Node,
            family: Family::Cpu,
            values: BTreeMap::new(),
        }],
    }));
    let bytes = encode_wire(&env).expect("encode");
    let mut refused = 0;
    for i in 4..=bytes.len() {
        let mut spliced = bytes.clone();
        spliced.splice(i..i, HUGE_VARINT);
        refused += usize::from(decode_checked(&spliced).is_none());
        let mut over = bytes.clone();
        let end = (i + HUGE_VARINT.len()).min(over.len());
        over.splice(i..end, HUGE_VARINT);
        refused += usize::from(decode_checked(&over).is_none());
    }
    assert!(refused > bytes.len(), "only {refused} refused");
}
