//! Incident pipeline benchmarks (a bench command, not criterion: the figures are throughput and
//! peak memory of whole runs, not per-call latency).
//!
//! * `throughput`: anomaly records (wire bytes) through decoding, dedup, grouping and the SQLite
//!   store, batch by batch
//!   as the Kinesis consumer hands them over (5,000 records a batch), on one core (run under
//!   `taskset -c 0`). Prints records/s and p50/p99 of "batch arrives → update durable".
//! * `storm`: a 1,000,000-record duplicate storm (250,000 distinct records, each delivered four
//!   times, redeliveries a few batches later, as a replaying shard does) into the SQLite store;
//!   prints the peak RSS (VmHWM) of the process.
//!
//! `cargo bench --bench incidents -- throughput|storm` (see docs/benchmarks.md for the exact
//! commands and results).

use selfheal_aggregator::incident::handler::{Incidents, SystemClock};
use selfheal_aggregator::incident::{IncidentMetrics, IncidentSettings};
use selfheal_aggregator::store::sqlite::SqliteStore;
#[path = "../tests/support/mod.rs"]
mod support;

use selfheal_core::Envelope;
use std::sync::Arc;
use std::time::Instant;
use support::records::checkout_cpu_anomaly;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Batch `k` (of `len` records) of a storm of 3 nodes x 5 pods, ids from `base`. Built per
/// batch, as the consumer decodes them, so the bench holds one batch of records, not the storm.
fn batch_of(base: u128, k: usize, len: usize, t0: i64) -> Vec<Envelope> {
    (k * len..(k + 1) * len)
        .map(|i| {
            checkout_cpu_anomaly(
                base + i as u128,
                t0 + (i / 15) as i64 * 10,
                (i / 5) % 3,
                i % 5,
                0.8,
            )
        })
        .collect()
}

async fn pipeline(dir: &std::path::Path) -> Incidents<SqliteStore> {
    let store = SqliteStore::open(dir).await.expect("open sqlite");
    Incidents::start(
        IncidentSettings::default(),
        store,
        Arc::new(SystemClock),
        Arc::new(IncidentMetrics::default()),
    )
    .await
    .expect("start")
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn throughput() {
    let dir = tempfile::tempdir().expect("tmp");
    let inc = pipeline(dir.path()).await;
    let n = 1_000_000;
    let batch = 5_000;
    let t0 = now_ms() - 600_000;
    let mut lat = Vec::new();
    let mut secs = 0.0;
    let mut counted = 0;
    for k in 0..n / batch {
        // Wire bytes, as the source reads them; decoding is part of the measured ingest.
        let wire: Vec<Vec<u8>> = batch_of(1 << 64, k, batch, t0)
            .iter()
            .map(|e| selfheal_core::schema::encode_wire(e).expect("encode"))
            .collect();
        let t = Instant::now();
        let b: Vec<Envelope> = wire
            .iter()
            .map(|w| selfheal_core::schema::decode_wire(w).expect("decode"))
            .collect();
        counted += inc.apply_batch(b.iter()).await.expect("apply").anomalies;
        let d = t.elapsed().as_secs_f64();
        secs += d;
        lat.push(d * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    assert_eq!(counted, n as u64);
    let db = std::fs::metadata(dir.path().join("incidents.db")).map_or(0, |m| m.len());
    println!(
        "throughput: {n} anomaly records in {secs:.2} s = {:.0} records/s (batches of {batch}); \
         batch -> durable p50 {:.1} ms p99 {:.1} ms; db {:.1} MiB; peak RSS {} KiB",
        n as f64 / secs,
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        db as f64 / 1048576.0,
        vm_hwm_kib()
    );
}

async fn storm() {
    let dir = tempfile::tempdir().expect("tmp");
    let inc = pipeline(dir.path()).await;
    let distinct: usize = 250_000;
    let batch = 5_000;
    let before = vm_hwm_kib();
    let t0 = now_ms() - 600_000;
    let chunks = distinct / batch;
    let start = Instant::now();
    let (mut counted, mut dups, mut total) = (0, 0, 0);
    // Each batch of new records is followed by redeliveries of the three batches before it.
    for i in 0..chunks + 3 {
        for back in 0..4 {
            let Some(j) = i.checked_sub(back).filter(|j| *j < chunks) else {
                continue;
            };
            let c = batch_of(2 << 64, j, batch, t0);
            let st = inc.apply_batch(c.iter()).await.expect("apply");
            counted += st.anomalies;
            dups += st.duplicates;
            total += c.len();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(total, distinct * 4);
    assert_eq!((counted, dups), (distinct as u64, 3 * distinct as u64));
    println!(
        "storm: {total} records ({distinct} distinct, {dups} duplicates) in {secs:.2} s = {:.0} records/s; \
         peak RSS {} KiB (at start {} KiB)",
        total as f64 / secs,
        vm_hwm_kib(),
        before.max(1)
    );
}

fn main() {
    let which = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "throughput".into());
    // One core's worth: a current-thread runtime (SQLite calls still run on the blocking pool:
    // pin the whole process with `taskset -c 0` to measure one core).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match which.as_str() {
        "throughput" => rt.block_on(throughput()),
        "storm" => rt.block_on(storm()),
        other => eprintln!("unknown bench {other:?}: throughput or storm"),
    }
}
