//! Forwarding throughput and CPU cost: one process pushes envelopes into the spool and forwards
//! them to a real moto Kinesis on this machine (a bench command, not criterion: each run needs a
//! server and tens of thousands of records, and the figure of merit is records/s end to end).
//!
//!   cargo bench --bench forward [-- RECORDS]
//!
//! Prints, per run: push rate (encode + spool append), forward rate (spool → PutRecords → ack,
//! starting from a full spool), and this process's CPU time per 1,000 records forwarded (moto's
//! own CPU is not counted; it runs in its own process on the same two cores).
//!
//! moto 5's `put_record` lists every key of the shard to find the last sequence number, so its
//! cost per record grows with the records already on the shard: each run writes to a fresh
//! 16-shard stream to keep moto's slowdown out of the forwarder's figures. A last pass forwards
//! the same records over the HTTP sink to a local endpoint that accepts everything, which shows
//! the forwarder's own ceiling without moto.

#[path = "../tests/support/mod.rs"]
mod support;

use selfheal_agent::forward::http::{HttpConfig, HttpSink};
use selfheal_agent::forward::kinesis::KinesisSink;
use selfheal_agent::forward::spool::{FsyncPolicy, Spool, SpoolConfig};
use selfheal_agent::forward::{ForwardConfig, Forwarder, Sink};
use selfheal_core::Envelope;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::moto::{Moto, create_stream, kinesis_client};
use support::records::pod_cpu_sample;

/// Record `i` (a pod CPU sample).
fn envelope(i: u64) -> Envelope {
    pod_cpu_sample(i, 1_700_000_000_000 + i as i64)
}

/// This process's user + system CPU time (from /proc/self/stat, in USER_HZ = 100 ticks).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    Duration::from_millis(f.iter().sum::<u64>() * 10)
}

fn spool_in(dir: &std::path::Path) -> Arc<Spool> {
    let settings = SpoolConfig {
        dir: dir.to_owned(),
        max_bytes: 1 << 30,
        fsync: FsyncPolicy::Interval,
        ..SpoolConfig::default()
    }
    .validate()
    .expect("spool settings");
    Arc::new(Spool::open(settings).expect("open spool"))
}

/// Pushes `records` envelopes; returns (wall, CPU).
fn push(spool: &Spool, first: u64, records: u64) -> (Duration, Duration) {
    let (cpu0, t0) = (cpu_time(), Instant::now());
    for i in first..first + records {
        spool.push(&envelope(i)).expect("pushed");
    }
    (t0.elapsed(), cpu_time() - cpu0)
}

/// Runs a forwarder until the spool is empty; returns (wall, CPU, calls).
async fn forward<S: Sink>(spool: &Arc<Spool>, sink: S, records: u64) -> (Duration, Duration, u64) {
    let settings = ForwardConfig::default().validate().expect("settings");
    let fwd = Forwarder::new(Arc::clone(spool), sink, settings);
    let stats = fwd.stats();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let (cpu0, t0) = (cpu_time(), Instant::now());
    let task = tokio::spawn(fwd.run(rx, Duration::from_secs(30)));
    while spool.depth() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "forwarding stalled"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (wall, cpu) = (t0.elapsed(), cpu_time() - cpu0);
    tx.send_replace(true);
    task.await.expect("forwarder");
    assert_eq!(stats.records_sent.load(Ordering::Relaxed), records);
    (wall, cpu, stats.calls.load(Ordering::Relaxed))
}

fn report(
    what: &str,
    records: u64,
    (pw, pc): (Duration, Duration),
    (fw, fc, calls): (Duration, Duration, u64),
) {
    let n = records as f64;
    println!(
        "{what}: push {:>7.0} rec/s ({:.2} ms CPU/1k) | forward {:>6.0} rec/s in {calls} calls, {:.2} ms CPU/1k records",
        n / pw.as_secs_f64(),
        pc.as_secs_f64() * 1e6 / n,
        n / fw.as_secs_f64(),
        fc.as_secs_f64() * 1e6 / n,
    );
}

fn main() {
    let records: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let moto = Moto::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = kinesis_client(&moto.endpoint());
        let bytes = selfheal_core::schema::encode_wire(&envelope(0))
            .expect("encode")
            .len();
        println!("records per run: {records}, wire record ≈ {bytes} bytes");
        for run in 0..3u64 {
            let stream = format!("bench-{run}");
            create_stream(&client, &stream, 16).await;
            let tmp = tempfile::tempdir().expect("tempdir");
            let spool = spool_in(tmp.path());
            let pushed = push(&spool, run * records, records);
            let sink = KinesisSink::new(kinesis_client(&moto.endpoint()), stream);
            let fwd = forward(&spool, sink, records).await;
            report(&format!("moto run {run}"), records, pushed, fwd);
        }
        // The forwarder's own ceiling: the HTTP sink to a local endpoint that accepts all.
        let app = axum::Router::new().route(
            "/v1/ingest",
            axum::routing::post(|_body: axum::body::Bytes| async {
                axum::http::StatusCode::NO_CONTENT
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let tmp = tempfile::tempdir().expect("tempdir");
        let spool = spool_in(tmp.path());
        let n = records * 5;
        let pushed = push(&spool, 0, n);
        let sink = HttpSink::from_config(&HttpConfig {
            url: format!("http://{addr}/v1/ingest"),
            connect_timeout_ms: 1000,
            ..HttpConfig::default()
        })
        .expect("sink");
        let fwd = forward(&spool, sink, n).await;
        report("http ceiling", n, pushed, fwd);
        server.abort();
    });
}
