//! Healing benchmarks (a bench command, not criterion: whole-run latency percentiles and
//! throughput), on the SQLite store in a temp directory and the dry-run executor.
//!
//! * `latency`: 500 incidents one after another, each opened by one anomaly batch, then one
//!   controller pass; prints p50/p99 of "incident durable → its action's outcome recorded"
//!   (intent, timeline, dry-run answer, outcome, `verifying`). The controller runs every
//!   `heal.interval_ms` (250 ms by default), which adds up to that much on top.
//! * `storm`: 10,000 incidents open at once (10,000 Deployments in 100 namespaces), then one
//!   controller pass over all of them; prints decisions/s and store writes/s, with the default
//!   guardrails (most refused by the hourly rate) and with the limits raised (every one acts).
//!
//! `cargo bench --bench heal -- latency|storm` (see docs/benchmarks.md).

use selfheal_aggregator::heal::metrics::HealMetrics;
use selfheal_aggregator::heal::{AnyExecutor, DryRunExecutor, Healer};
use selfheal_aggregator::incident::handler::{Incidents, SystemClock};
use selfheal_aggregator::incident::{IncidentMetrics, IncidentSettings};
use selfheal_aggregator::policy::{Policy, PolicySource};
use selfheal_aggregator::store::sqlite::SqliteStore;
use selfheal_core::schema::{Anomaly, OwnerRef};
use selfheal_core::{Envelope, Family, Metric, Payload, PodRef, Record, RecordId, Subject};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn anomaly(id: u128, ns: &str, name: &str) -> Envelope {
    Envelope::new(Payload::Anomaly(Anomaly {
        record: Record {
            id: RecordId::from_u128(id),
            ts_ms: now_ms(),
            node: "node-0".into(),
            subject: Subject::Pod(PodRef {
                uid: format!("{ns}-{name}-0"),
                namespace: Some(ns.into()),
                name: Some(format!("{name}-0")),
                owner: Some(OwnerRef {
                    kind: "Deployment".into(),
                    name: name.into(),
                }),
                qos: None,
            }),
            family: Family::Cpu,
            values: BTreeMap::from([(Metric::CpuUsageCores, 3.5)]),
        },
        score: 0.9,
        threshold: 0.6,
        model_version: "v1".into(),
        features: vec![3.5],
        top_features: vec![],
        window: vec![],
    }))
}

async fn rig(
    dir: &std::path::Path,
    policy: Policy,
) -> (Incidents<SqliteStore>, Healer<SqliteStore>) {
    let store = SqliteStore::open(dir).await.expect("store");
    let incidents = Incidents::start(
        IncidentSettings::default(),
        store,
        Arc::new(SystemClock),
        Arc::new(IncidentMetrics::default()),
    )
    .await
    .expect("incidents");
    let dry = Arc::new(DryRunExecutor::open(None, Duration::ZERO).expect("dry"));
    let healer = Healer::start(
        incidents.clone(),
        Arc::new(PolicySource::fixed(policy)),
        AnyExecutor::DryRun(Arc::clone(&dry)),
        dry,
        Arc::new(HealMetrics::default()),
    )
    .await
    .expect("healer");
    (incidents, healer)
}

fn raised() -> Policy {
    let mut p = Policy::default();
    p.guardrails.max_actions_per_hour = 1_000_000;
    p.guardrails.max_actions_per_hour_per_namespace = 1_000_000;
    p.guardrails.max_workloads_per_namespace_per_hour = 1_000_000;
    p
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn latency() {
    let dir = tempfile::tempdir().expect("dir");
    let (incidents, healer) = rig(dir.path(), raised()).await;
    let mut ms = Vec::new();
    for i in 0..500u128 {
        let rec = anomaly(i + 1, &format!("ns-{}", i % 50), &format!("w-{i}"));
        incidents.apply_batch([&rec]).await.expect("batch");
        let t = Instant::now();
        let st = healer.tick().await;
        assert_eq!(st.intents, 1);
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "latency: incident durable -> action outcome recorded (dry-run), 500 incidents: p50 {:.2} ms, p99 {:.2} ms",
        pct(&mut ms, 0.5),
        pct(&mut ms, 0.99)
    );
}

async fn storm(label: &str, policy: Policy) {
    let dir = tempfile::tempdir().expect("dir");
    let (incidents, healer) = rig(dir.path(), policy).await;
    let recs: Vec<Envelope> = (0..10_000u128)
        .map(|i| anomaly(i + 1, &format!("ns-{}", i % 100), &format!("w-{i}")))
        .collect();
    for chunk in recs.chunks(5_000) {
        incidents.apply_batch(chunk).await.expect("batch");
    }
    let t = Instant::now();
    let st = healer.tick().await;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "storm ({label}): 10000 open incidents, one pass {:.2} s: {} decisions ({:.0}/s), {} intents, {} store writes ({:.0}/s)",
        secs,
        st.decisions,
        st.decisions as f64 / secs,
        st.intents,
        st.store_writes,
        st.store_writes as f64 / secs
    );
}

fn main() {
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let all = which.is_empty();
    rt.block_on(async {
        if all || which.iter().any(|w| w == "latency") {
            latency().await;
        }
        if all || which.iter().any(|w| w == "storm") {
            storm("default guardrails", Policy::default()).await;
            storm("limits raised", raised()).await;
        }
    });
}
