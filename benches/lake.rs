//! Lake write throughput: `selfheal_lake::LakeWriter` (what the aggregator's lake handler calls)
//! writing batches of decoded envelopes as partitioned Parquet to a local directory and to a real
//! moto S3 on this machine (a bench command, not criterion: the figure of merit is records/s end
//! to end, with a server).
//!
//!   cargo bench --bench lake [-- RECORDS]
//!
//! Prints, per target: records/s through rows → Parquet (Snappy) → durable put, in batches of
//! 10,000 records spread over two hour partitions (so two objects a batch), and bytes per row.
//! A first line measures Parquet encoding alone.

#[path = "../tests/support/mod.rs"]
mod support;

use selfheal_core::Envelope;
use selfheal_lake::format::{self, LakeRow, rows_of};
use selfheal_lake::{LakeStore, LakeWriter, S3Options};
use std::time::Instant;
use support::moto::{Moto, s3_client};
use support::records::pod_cpu_sample;

const BATCH: usize = 10_000;

/// Record `i`, 0.72 s after record `i - 1`: a 10,000-record batch spans two hours.
fn envelope(i: u64) -> Envelope {
    pod_cpu_sample(i, 1_764_000_000_000 + i as i64 * 720)
}

async fn run(what: &str, writer: &LakeWriter, batches: &[Vec<LakeRow>]) {
    let start = Instant::now();
    let mut rows = 0;
    let mut bytes = 0;
    let mut objects = 0;
    for (i, b) in batches.iter().enumerate() {
        let r = writer
            .write_rows(&format!("shardId-000000000000-{i}-{i}"), b.clone())
            .await
            .expect("write batch");
        rows += r.rows;
        bytes += r.bytes;
        objects += r.objects;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{what}: {:>8.0} rec/s ({rows} rows, {objects} objects, {:.1} bytes/row)",
        rows as f64 / secs,
        bytes as f64 / rows as f64
    );
}

fn main() {
    let records: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let batches: Vec<Vec<LakeRow>> = (0..records.div_ceil(BATCH))
        .map(|b| {
            (b * BATCH..((b + 1) * BATCH).min(records))
                .flat_map(|i| rows_of(&envelope(i as u64)))
                .collect()
        })
        .collect();
    println!(
        "records: {records} in batches of {BATCH}, wire record ≈ {} bytes",
        selfheal_core::schema::encode_wire(&envelope(0))
            .expect("encode")
            .len()
    );
    let start = Instant::now();
    let mut encoded = 0;
    for b in &batches {
        encoded += format::encode(b).expect("encode").len();
    }
    println!(
        "parquet encode only: {:>8.0} rec/s ({:.1} bytes/row)",
        records as f64 / start.elapsed().as_secs_f64(),
        encoded as f64 / records as f64
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let moto = Moto::start();
    rt.block_on(async {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = LakeStore::open(&tmp.path().to_string_lossy(), &S3Options::default())
            .await
            .expect("open dir");
        run(
            "local dir (fsync + rename)",
            &LakeWriter::new(dir),
            &batches,
        )
        .await;
        let s3 = s3_client(&moto.endpoint());
        s3.create_bucket()
            .bucket("bench")
            .send()
            .await
            .expect("create bucket");
        let store = LakeStore::S3 {
            client: s3,
            bucket: "bench".into(),
            prefix: "lake/".into(),
        };
        run("moto S3 (PutObject)", &LakeWriter::new(store), &batches).await;
    });
}
