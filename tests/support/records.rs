//! Synthetic wire records for benches: realistic in shape (a pod of one of 40 Deployments on an
//! EC2-named node, every CPU metric), cheap to make in the hundreds of thousands.

use selfheal_core::schema::OwnerRef;
use selfheal_core::{Envelope, Family, Metric, Payload, PodRef, Record, RecordId, Subject};
use std::collections::BTreeMap;

/// Record `i`, taken at `ts_ms`: a sample (inclusion probability 0.05) of pod `web-{i % 40}`
/// with a value for every CPU metric, all distinct across records.
pub fn pod_cpu_sample(i: u64, ts_ms: i64) -> Envelope {
    let values: BTreeMap<Metric, f64> = Metric::ALL
        .iter()
        .filter(|m| m.family() == Family::Cpu)
        .map(|m| (*m, 0.125 * (i % 17) as f64 + (i as f64) * 1e-6))
        .collect();
    Envelope::new(Payload::Sample {
        record: Record {
            id: RecordId::from_u128(u128::from(i)),
            ts_ms,
            node: "ip-10-0-1-23.ec2.internal".into(),
            subject: Subject::Pod(PodRef {
                uid: format!("{:08x}-0000-4000-8000-000000000000", i % 40),
                namespace: Some("shop".into()),
                name: Some(format!("web-{}-7d9f8", i % 40)),
                owner: Some(OwnerRef {
                    kind: "Deployment".into(),
                    name: format!("web-{}", i % 40),
                }),
                qos: None,
            }),
            family: Family::Cpu,
            values,
        },
        inclusion_probability: 0.05,
    })
}

/// The incident storm's record: a CPU anomaly (score `score` over threshold 0.6, model
/// `cpu-v7`) of pod `checkout-{node}-{pod}` of Deployment shop/checkout on `node-{node}`.
pub fn checkout_cpu_anomaly(id: u128, ts_ms: i64, node: usize, pod: usize, score: f64) -> Envelope {
    Envelope::new(Payload::Anomaly(selfheal_core::schema::Anomaly {
        record: Record {
            id: RecordId::from_u128(id),
            ts_ms,
            node: format!("node-{node}"),
            subject: Subject::Pod(PodRef {
                uid: format!("uid-{node}-{pod}"),
                namespace: Some("shop".into()),
                name: Some(format!("checkout-{node}-{pod}")),
                owner: Some(OwnerRef {
                    kind: "Deployment".into(),
                    name: "checkout".into(),
                }),
                qos: None,
            }),
            family: Family::Cpu,
            values: BTreeMap::from([(Metric::CpuUsageCores, 3.5)]),
        },
        score,
        threshold: 0.6,
        model_version: "cpu-v7".into(),
        features: vec![3.5],
        top_features: vec![("cpu_usage_cores_z60".into(), 4.0)],
        window: vec![],
    }))
}

/// The wire form of a node-a CPU sample with id `id`, taken now (what node-a's agent sends).
pub fn node_a_wire(id: u128) -> Vec<u8> {
    node_wire(id, "node-a", now_ms())
}

/// The wire form of a CPU sample of `node` with id `id`, taken at `ts_ms`.
pub fn node_wire(id: u128, node: &str, ts_ms: i64) -> Vec<u8> {
    let env = Envelope::new(Payload::Sample {
        record: Record {
            id: RecordId::from_u128(id),
            ts_ms,
            node: node.into(),
            subject: Subject::Node,
            family: Family::Cpu,
            values: BTreeMap::from([(Metric::CpuUsageCores, 0.5)]),
        },
        inclusion_probability: 1.0,
    });
    selfheal_core::schema::encode_wire(&env).expect("encode wire")
}

/// Now, unix milliseconds.
pub fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis(),
    )
    .expect("time fits i64")
}
