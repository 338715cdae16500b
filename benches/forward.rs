//! Forwarding throughput and CPU cost: one process pushes envelopes into the spool and forwards
//! them to a real moto Kinesis on this machine (a bench command, not criterion: each run needs a
//! server and tens of thousands of records, and the figure of merit is records/s end to end).
//!
//!   cargo bench --bench forward [-- RECORDS]
//!
//! Prints, per run: push rate (encode + spool append), forward rate (spool → PutRecords → ack,
//! starting from a full spool), and this process's CPU time per 1,000 records forwarded (moto's
//! own CPU is not counted; it runs in its own process on the same two cores).

#[path = "../tests/support/mod.rs"]
#[allow(dead_code, unused_imports)]
mod support;

use selfheal_agent::forward::kinesis::KinesisSink;
use selfheal_agent::forward::{ForwardConfig, Forwarder};
use selfheal_agent::spool::{FsyncPolicy, Spool, SpoolConfig};
use selfheal_core::schema::OwnerRef;
use selfheal_core::{Envelope, Family, Metric, Payload, PodRef, Record, RecordId, Subject};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::moto::{Moto, create_stream, kinesis_client};

/// A sampled pod record with a realistic number of values (one family's metrics).
fn envelope(i: u64) -> Envelope {
    let values: BTreeMap<Metric, f64> = Metric::ALL
        .iter()
        .filter(|m| m.family() == Family::Cpu)
        .map(|m| (*m, 0.125 * (i % 17) as f64))
        .collect();
    Envelope::new(Payload::Sample {
        record: Record {
            id: RecordId::from_u128(u128::from(i)),
            ts_ms: 1_700_000_000_000 + i as i64,
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

fn main() {
    let records: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(50_000);
    let moto = Moto::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = kinesis_client(&moto.endpoint());
        create_stream(&client, "bench", 4).await;
        let bytes = selfheal_core::schema::encode_wire(&envelope(0))
            .expect("encode")
            .len();
        println!("records per run: {records}, wire record ≈ {bytes} bytes");
        for run in 0..3u64 {
            let tmp = tempfile::tempdir().expect("tempdir");
            let spool = Arc::new(
                Spool::open(
                    SpoolConfig {
                        dir: tmp.path().to_owned(),
                        max_bytes: 1 << 30,
                        fsync: FsyncPolicy::Interval,
                        ..SpoolConfig::default()
                    }
                    .validate()
                    .expect("spool settings"),
                )
                .expect("open spool"),
            );
            let (cpu0, t0) = (cpu_time(), Instant::now());
            for i in 0..records {
                spool
                    .push(&envelope(run * records + i))
                    .expect("pushed");
            }
            let (push_cpu, push_wall) = (cpu_time() - cpu0, t0.elapsed());

            let sink = KinesisSink::new(kinesis_client(&moto.endpoint()), "bench".into());
            let settings = ForwardConfig::default().validate().expect("settings");
            let fwd = Forwarder::new(Arc::clone(&spool), sink, settings);
            let stats = fwd.stats();
            let (tx, rx) = tokio::sync::watch::channel(false);
            let (cpu0, t0) = (cpu_time(), Instant::now());
            let task = tokio::spawn(fwd.run(rx, Duration::from_secs(30)));
            while spool.depth() > 0 {
                assert!(t0.elapsed() < Duration::from_secs(600), "forwarding stalled");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let (fwd_cpu, fwd_wall) = (cpu_time() - cpu0, t0.elapsed());
            tx.send_replace(true);
            task.await.expect("forwarder");
            let sent = stats.records_sent.load(Ordering::Relaxed);
            assert_eq!(sent, records);
            println!(
                "run {run}: push {:>8.0} rec/s ({:.1} ms CPU/1k) | forward {:>7.0} rec/s, {} calls, {:.1} ms CPU/1k records",
                records as f64 / push_wall.as_secs_f64(),
                push_cpu.as_secs_f64() * 1e6 / records as f64,
                sent as f64 / fwd_wall.as_secs_f64(),
                stats.calls.load(Ordering::Relaxed),
                fwd_cpu.as_secs_f64() * 1e6 / sent as f64,
            );
        }
    });
}
