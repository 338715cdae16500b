//! The score stage of one agent cycle: `SeriesDetector::detect` on 200 pods' CPU records (13 signals,
//! the standard feature set: 78 features), one batch through a 100-tree forest, alarms, and the
//! flight recorder. Two cases: `quiet` (threshold above every score: no anomaly, the usual
//! cycle) and `storm` (threshold 0, 1-of-1: every pod anomalous, each anomaly copying its
//! 60-record window). Target: a quiet cycle costs under 0.1% of a 5 s interval (< 5 ms).
//!
//! `cargo bench --bench detect`

#[path = "../tests/support/forest.rs"]
mod forest;

use criterion::{Criterion, Throughput};
use selfheal_agent::detect::{SeriesDetector, family_signals};
use selfheal_agent::score::Scorer;
use selfheal_core::Family;
use selfheal_core::features::FeatureSpec;
use selfheal_core::model::AlarmRule;
use selfheal_core::schema::{PodRef, Record, RecordId, Subject};
use selfheal_model_export::onnx::write_model_dir;
use std::hint::black_box;
use std::sync::Arc;

const PODS: usize = 200;

fn detector(threshold: f64, alarm: AlarmRule) -> SeriesDetector {
    let features = FeatureSpec::standard(family_signals(Family::Cpu));
    let n = features.len();
    let (forest, _) = forest::standard_forest(7, n);
    let manifest = forest::manifest(&forest, features, "cpu", "bench", threshold, alarm);
    let dir = tempfile::tempdir().expect("tempdir");
    write_model_dir(dir.path(), &forest, manifest).expect("write model");
    let scorer = Arc::new(Scorer::load(dir.path()).expect("load model"));
    let mut detector = SeriesDetector::new(60);
    detector
        .set_model(Family::Cpu, scorer)
        .expect("signals are the cpu metrics");
    detector
}

fn main() {
    let mut rng = forest::Rng::new(1);
    let mut id = 0u128;
    let mut cycle = move || -> Vec<Record> {
        (0..PODS)
            .map(|p| {
                id += 1;
                Record {
                    id: RecordId::from_u128(id),
                    ts_ms: id as i64,
                    node: "n".into(),
                    subject: Subject::Pod(PodRef {
                        uid: format!("pod-{p}"),
                        namespace: None,
                        name: None,
                        owner: None,
                        qos: None,
                    }),
                    family: Family::Cpu,
                    values: Family::Cpu
                        .metrics()
                        .map(|m| (m, rng.normalish()))
                        .collect(),
                }
            })
            .collect()
    };
    let warmup: Vec<Vec<Record>> = (0..61).map(|_| cycle()).collect();
    let cycles: Vec<Vec<Record>> = (0..64).map(|_| cycle()).collect();
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("detect");
    group.throughput(Throughput::Elements(PODS as u64));
    for (name, threshold, alarm) in [
        ("quiet_200_pods_cpu", 1.5, AlarmRule::default()),
        ("storm_200_pods_cpu", 0.0, AlarmRule::k_of_n(1, 1)),
    ] {
        let mut detector = detector(threshold, alarm);
        // Every series past its longest window, and its ring full.
        for records in &warmup {
            detector.detect(records);
        }
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % cycles.len();
                black_box(detector.detect(black_box(&cycles[i])))
            })
        });
    }
    group.finish();
    c.final_summary();
}
