//! Record builders for the incident tests.

use selfheal_core::schema::{
    Anomaly, Envelope, OwnerRef, Payload, PodRef, Record, RecordId, Subject,
};
use selfheal_core::{Family, Metric};
use std::collections::BTreeMap;

/// A CPU anomaly of pod `pod` of Deployment shop/checkout on `node`.
pub fn anomaly(id: u128, node: &str, pod: usize, score: f64) -> Anomaly {
    Anomaly {
        record: Record {
            id: RecordId::from_u128(id),
            ts_ms: 1_000_000,
            node: node.into(),
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
            values: BTreeMap::from([(Metric::CpuUsageCores, 2.0)]),
        },
        score,
        threshold: 0.6,
        model_version: "cpu-1".into(),
        features: vec![2.0],
        top_features: vec![("cpu_usage_cores".into(), 3.0)],
        window: vec![],
    }
}

/// A node-level CPU anomaly.
pub fn node_anomaly(id: u128, node: &str) -> Anomaly {
    let mut a = anomaly(id, node, 0, 0.9);
    a.record.subject = Subject::Node;
    a
}

/// Wraps an anomaly.
pub fn env(a: Anomaly) -> Envelope {
    Envelope::new(Payload::Anomaly(a))
}

/// A sample of pod `pod` on `node`.
pub fn sample(id: u128, node: &str, pod: usize) -> Envelope {
    Envelope::new(Payload::Sample {
        record: anomaly(id, node, pod, 0.0).record,
        inclusion_probability: 1.0,
    })
}
