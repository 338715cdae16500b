//! The record schema, version 1, and its two encodings.
//!
//! * JSON, for people and the lake: [`Envelope`] serializes with serde_json as-is.
//! * The wire, agent → Kinesis/HTTP: [`encode_wire`] writes a four-byte header (magic `SH`, then
//!   the schema version as a little-endian u16) followed by the envelope in `postcard`, whose
//!   format is specified and stable. [`decode_wire`] checks both before it reads a byte of payload,
//!   so a consumer that meets a newer schema says so instead of misreading it.
//!
//! postcard is not self-describing: no `skip_serializing_if` on anything in here, and new fields
//! go into a new schema version.

use crate::family::{Family, Metric};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The schema version written by this build.
pub const SCHEMA_VERSION: u16 = 1;

/// First two bytes of every wire record.
pub const WIRE_MAGIC: [u8; 2] = *b"SH";

/// A unique record id (128 random or derived bits), hex in JSON, raw bytes on the wire.
///
/// Delivery is at least once; consumers drop duplicates by this id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RecordId(pub [u8; 16]);

impl RecordId {
    /// Builds an id from a 128-bit number.
    pub fn from_u128(v: u128) -> Self {
        RecordId(v.to_be_bytes())
    }

    /// The id as a 128-bit number.
    pub fn as_u128(self) -> u128 {
        u128::from_be_bytes(self.0)
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.as_u128())
    }
}

impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordId({self})")
    }
}

impl Serialize for RecordId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for RecordId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            if s.len() != 32 {
                return Err(serde::de::Error::custom("record id must be 32 hex digits"));
            }
            u128::from_str_radix(&s, 16)
                .map(RecordId::from_u128)
                .map_err(|_| serde::de::Error::custom("record id must be 32 hex digits"))
        } else {
            <[u8; 16]>::deserialize(d).map(RecordId)
        }
    }
}

/// The Kubernetes workload that owns a pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OwnerRef {
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `Job`, `CronJob`, `ReplicaSet` (bare), `Node`
    /// (static pods) or whatever kind the owner reference names.
    pub kind: String,
    /// The owner's name. A Deployment's pods are named by the Deployment, not the ReplicaSet.
    pub name: String,
}

/// A pod's Kubernetes quality-of-service class, which decides its cgroup placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QosClass {
    /// Requests equal limits for every container.
    Guaranteed,
    /// Some requests or limits set.
    Burstable,
    /// No requests or limits.
    BestEffort,
}

/// Who a pod is. Only `uid` is certain: the rest comes from the kubelet or API server and is
/// `None` until the agent has resolved it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodRef {
    /// The pod's UID, as found in its cgroup path.
    pub uid: String,
    /// The pod's namespace.
    pub namespace: Option<String>,
    /// The pod's name.
    pub name: Option<String>,
    /// The owning workload, resolved through ReplicaSets to their Deployment.
    pub owner: Option<OwnerRef>,
    /// The QoS class from the cgroup layout.
    pub qos: Option<QosClass>,
}

/// What a record describes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    /// The node itself.
    Node,
    /// One pod on the node.
    Pod(PodRef),
}

impl Subject {
    /// The workload identity, used as the Kinesis partition key and the incident grouping key:
    /// `node/<node>` for the node, `<ns>/<kind>/<owner>` for an owned pod, `<ns>/Pod/<name>` for
    /// a bare pod, `pod-uid/<uid>` for a pod not yet resolved. Never random, so one workload's
    /// records stay ordered on one shard.
    pub fn workload_key(&self, node: &str) -> String {
        match self {
            Subject::Node => format!("node/{node}"),
            Subject::Pod(p) => match (&p.namespace, &p.owner, &p.name) {
                (Some(ns), Some(o), _) => format!("{ns}/{}/{}", o.kind, o.name),
                (Some(ns), None, Some(name)) => format!("{ns}/Pod/{name}"),
                _ => format!("pod-uid/{}", p.uid),
            },
        }
    }
}

/// One normalized sample: the values of one family's metrics for one subject at one time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Unique id, for de-duplication downstream.
    pub id: RecordId,
    /// Sample time, unix milliseconds.
    pub ts_ms: i64,
    /// The node's name.
    pub node: String,
    /// Node or pod.
    pub subject: Subject,
    /// The family of every metric in `values`.
    pub family: Family,
    /// Metric values; a metric the source cannot provide is absent, never NaN.
    pub values: BTreeMap<Metric, f64>,
}

/// Why a record is forwarded, and what the consumer needs to know about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// A normal record kept by the sampler. `inclusion_probability` is the chance it had to be
    /// kept, so the lake can be re-weighted (Horvitz–Thompson) and stay unbiased.
    Sample {
        /// The sampled record.
        record: Record,
        /// Probability in (0, 1] with which this record was kept.
        inclusion_probability: f64,
    },
    /// A record the model judged anomalous.
    Anomaly(Anomaly),
}

/// An anomaly, with what is needed to act on it and to learn from it later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// The record that tripped the alarm.
    pub record: Record,
    /// Anomaly score that was compared with `threshold` (higher is more anomalous; one
    /// isolation forest's scores lie in 0..1, a per-signal model's are the largest excess over a
    /// forest's ordinary ceiling, about 0 at the boundary): the model's score, EWMA-smoothed when
    /// the model's alarm rule smooths (the k-of-n rule can fire on a sample whose own score fell
    /// back below the threshold).
    pub score: f64,
    /// The threshold the score was compared with: the model's, raised by as much as the
    /// series' recent level exceeds the model's ordinary score when the alarm rule adapts.
    pub threshold: f64,
    /// The model's version.
    pub model_version: String,
    /// The feature vector the model scored, in the manifest's feature order.
    pub features: Vec<f64>,
    /// The features that contributed most, with their contribution, largest first.
    pub top_features: Vec<(String, f64)>,
    /// Raw samples of the same series from the minutes before the anomaly (flight recorder),
    /// oldest first. The agent's sampler leaves out records of the series it has already
    /// forwarded (as samples or in an earlier anomaly's window), so a series that stays anomalous
    /// does not resend its history every cycle: downstream, the full window is this plus the
    /// series' earlier records, joined by subject, family and time.
    pub window: Vec<Record>,
}

/// What travels on the wire and into the lake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The schema version the envelope was written with.
    pub schema_version: u16,
    /// The contents.
    pub payload: Payload,
}

impl Envelope {
    /// Wraps a payload in an envelope of the current schema version.
    pub fn new(payload: Payload) -> Self {
        Envelope {
            schema_version: SCHEMA_VERSION,
            payload,
        }
    }

    /// The record the payload is about.
    pub fn record(&self) -> &Record {
        match &self.payload {
            Payload::Sample { record, .. } => record,
            Payload::Anomaly(a) => &a.record,
        }
    }
}

/// Why bytes could not be read as a wire record.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the header.
    #[error("wire record too short ({0} bytes)")]
    TooShort(usize),
    /// The record does not start with the selfheal magic: not ours, or corrupt.
    #[error("not a selfheal wire record (bad magic {0:02x?})")]
    BadMagic([u8; 2]),
    /// Written by a schema version this build cannot read.
    #[error("unsupported schema version {found} (this build reads {supported})")]
    UnsupportedVersion {
        /// The version in the header.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// The payload does not decode.
    #[error("corrupt wire record payload")]
    Payload(#[source] postcard::Error),
    /// The header and the envelope disagree on the version.
    #[error("header says schema {header}, envelope says {envelope}")]
    VersionMismatch {
        /// Version in the header.
        header: u16,
        /// Version in the envelope.
        envelope: u16,
    },
}

/// Why an envelope could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode wire record")]
pub struct EncodeError(#[source] postcard::Error);

/// Encodes an envelope for the wire: magic, version, postcard payload.
pub fn encode_wire(env: &Envelope) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&WIRE_MAGIC);
    out.extend_from_slice(&env.schema_version.to_le_bytes());
    postcard::to_io(env, &mut out).map_err(EncodeError)?;
    Ok(out)
}

/// The length [`encode_wire`] would produce for `env`, without allocating: what a record costs
/// on the wire, for byte budgets.
pub fn wire_len(env: &Envelope) -> Result<usize, EncodeError> {
    postcard::serialize_with_flavor(env, postcard::ser_flavors::Size::default())
        .map(|n| n + WIRE_MAGIC.len() + 2)
        .map_err(EncodeError)
}

/// Decodes a wire record, checking magic and version first.
pub fn decode_wire(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    let (header, body) = bytes
        .split_first_chunk::<4>()
        .ok_or(DecodeError::TooShort(bytes.len()))?;
    let magic = [header[0], header[1]];
    if magic != WIRE_MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    let version = u16::from_le_bytes([header[2], header[3]]);
    if version != SCHEMA_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    let env: Envelope = postcard::from_bytes(body).map_err(DecodeError::Payload)?;
    if env.schema_version != version {
        return Err(DecodeError::VersionMismatch {
            header: version,
            envelope: env.schema_version,
        });
    }
    Ok(env)
}

#[cfg(test)]
#[path = "schema_fuzz.rs"]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pod() -> Subject {
        Subject::Pod(PodRef {
            uid: "3f1c2a9e-0b7d-4c1e-9a57-6d2f8e4b1c00".into(),
            namespace: Some("shop".into()),
            name: Some("checkout-7d9f8b6c5-x2x9k".into()),
            owner: Some(OwnerRef {
                kind: "Deployment".into(),
                name: "checkout".into(),
            }),
            qos: Some(QosClass::Burstable),
        })
    }

    fn record(values: BTreeMap<Metric, f64>) -> Record {
        Record {
            id: RecordId::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            ts_ms: 1_764_000_000_000,
            node: "node-a".into(),
            subject: pod(),
            family: Family::Cpu,
            values,
        }
    }

    fn anomaly_env() -> Envelope {
        let r = record(BTreeMap::from([(Metric::CpuUsageCores, 1.5)]));
        Envelope::new(Payload::Anomaly(Anomaly {
            record: r.clone(),
            score: 0.71,
            threshold: 0.62,
            model_version: "cpu-2026.11.25-1".into(),
            features: vec![1.5, 0.2],
            top_features: vec![("cpu_usage_cores_z60".into(), 4.2)],
            window: vec![r],
        }))
    }

    #[test]
    fn wire_round_trip_keeps_everything() {
        let env = anomaly_env();
        let bytes = encode_wire(&env).expect("encode");
        assert_eq!(&bytes[..2], b"SH");
        assert_eq!(decode_wire(&bytes).expect("decode"), env);
        assert_eq!(wire_len(&env).expect("size"), bytes.len());
    }

    #[test]
    fn json_round_trip_and_id_is_hex() {
        let env = anomaly_env();
        let json = serde_json::to_string(&env).expect("json");
        assert!(
            json.contains("\"0123456789abcdef0011223344556677\""),
            "{json}"
        );
        assert!(json.contains("\"cpu_usage_cores\":1.5"), "{json}");
        let back: Envelope = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, env);
    }

    #[test]
    fn decoder_rejects_other_versions_and_garbage() {
        let mut bytes = encode_wire(&anomaly_env()).expect("encode");
        assert!(matches!(
            decode_wire(&bytes[..3]),
            Err(DecodeError::TooShort(3))
        ));
        bytes[2] = 2;
        assert!(matches!(
            decode_wire(&bytes),
            Err(DecodeError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        ));
        bytes[0] = b'X';
        assert!(matches!(decode_wire(&bytes), Err(DecodeError::BadMagic(_))));
        let mut truncated = encode_wire(&anomaly_env()).expect("encode");
        truncated.truncate(truncated.len() / 2);
        assert!(matches!(
            decode_wire(&truncated),
            Err(DecodeError::Payload(_))
        ));
    }

    #[test]
    fn workload_keys() {
        assert_eq!(Subject::Node.workload_key("n1"), "node/n1");
        assert_eq!(pod().workload_key("n1"), "shop/Deployment/checkout");
        let bare = Subject::Pod(PodRef {
            uid: "u".into(),
            namespace: Some("ns".into()),
            name: Some("p".into()),
            owner: None,
            qos: None,
        });
        assert_eq!(bare.workload_key("n1"), "ns/Pod/p");
        let unresolved = Subject::Pod(PodRef {
            uid: "u".into(),
            namespace: None,
            name: None,
            owner: None,
            qos: None,
        });
        assert_eq!(unresolved.workload_key("n1"), "pod-uid/u");
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_wire(&bytes);
        }

        #[test]
        fn finite_values_round_trip(vals in proptest::collection::btree_map(0usize..Metric::ALL.len(), -1e12f64..1e12, 0..8), ts in any::<i64>(), id in any::<u128>()) {
            let values = vals.into_iter().map(|(i, v)| (Metric::ALL[i], v)).collect();
            let mut r = record(values);
            r.ts_ms = ts;
            r.id = RecordId::from_u128(id);
            let env = Envelope::new(Payload::Sample { record: r, inclusion_probability: 0.25 });
            let bytes = encode_wire(&env).expect("encode");
            prop_assert_eq!(decode_wire(&bytes).expect("decode"), env.clone());
            let json = serde_json::to_vec(&env).expect("json");
            let back: Envelope = serde_json::from_slice(&json).expect("parse");
            prop_assert_eq!(back, env);
        }
    }
}
