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
