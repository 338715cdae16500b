//! Nothing acknowledged that was not stored, from the agent's side: its HTTP sink against the
//! real aggregator binary keeps records spooled on every answer but 400 and 413 (a wrong URL's
//! 404, a newer schema version's 503), and moves those two to the spool's quarantine instead
//! of deleting them; and the Kinesis consumer stops a shard at a record of a newer schema
//! version without checkpointing past it.

use crate::agent_forward::runtime;
use crate::ingest::{NODE_A_TOKEN, token_file};
use crate::lake::Aggregator;
use crate::pipeline::{consumer_settings, eventually, picky};
use crate::support::moto::{Moto, create_stream, kinesis_client};
use crate::support::records::{node_wire, now_ms};
use crate::support::{free_port, selfheal, stdout_of, write_file};
use aws_sdk_kinesis::primitives::Blob;
use selfheal_agent::forward::http::{HttpConfig, HttpSink};
use selfheal_agent::forward::spool::{FsyncPolicy, Lane, Spool, SpoolConfig};
use selfheal_agent::forward::{ForwardConfig, Forwarder};
use selfheal_aggregator::pipeline::dead_letter::DeadLetters;
use selfheal_aggregator::pipeline::{
    Checkpoint, CheckpointStore, Delivery, FileCheckpoints, PipelineMetrics,
};
use selfheal_aggregator::sources::kinesis::{ConsumeMetrics, Consumer};
use selfheal_core::schema::SCHEMA_VERSION;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn open_spool(dir: &Path) -> Arc<Spool> {
    let settings = SpoolConfig {
        dir: dir.to_owned(),
        max_bytes: 16 << 20,
        segment_bytes: 1 << 20,
        fsync: FsyncPolicy::Never,
        fsync_interval_ms: 1000,
    }
    .validate()
    .expect("spool settings");
    Arc::new(Spool::open(settings).expect("open spool"))
}

/// A wire record of node-a whose header says the next schema version.
fn next_version(id: u128) -> Vec<u8> {
    let mut w = node_wire(id, "node-a", now_ms());
    w[2..4].copy_from_slice(&(SCHEMA_VERSION + 1).to_le_bytes());
    w
}

struct Running {
    tmp: tempfile::TempDir,
    aggregator: Aggregator,
    port: u16,
}

fn aggregator() -> Running {
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = write_file(
        tmp.path(),
        "aggregator.toml",
        &format!(
            r#"listen_addr = "127.0.0.1:{port}"
[ingest]
source = "http"
log_dir = "{}"
{}
[lake]
location = "{}"
"#,
            tmp.path().join("ingest-log").display(),
            token_file(tmp.path()),
            tmp.path().join("lake").display(),
        ),
    );
    let aggregator = Aggregator::spawn(selfheal(), &config, port);
    Running {
        tmp,
        aggregator,
        port,
    }
}

/// Forwards `spool` to `path` on the aggregator for `secs`, then stops; the forwarder's stats.
async fn forward_for(
    spool: &Arc<Spool>,
    port: u16,
    path: &str,
    token_dir: &Path,
    secs: u64,
) -> Arc<selfheal_agent::forward::ForwardStats> {
    let token = write_file(token_dir, "agent-token", NODE_A_TOKEN);
    let sink = HttpSink::from_config(&HttpConfig {
        url: format!("http://127.0.0.1:{port}{path}"),
        connect_timeout_ms: 500,
        token_file: Some(token),
        ..HttpConfig::default()
    })
    .expect("sink");
    let settings = ForwardConfig {
        linger_ms: 10,
        retry_initial_ms: 50,
        retry_max_ms: 200,
        request_timeout_ms: 2000,
        ..ForwardConfig::default()
    }
    .validate()
    .expect("forward settings");
    let fwd = Forwarder::new(Arc::clone(spool), sink, settings);
    let stats = fwd.stats();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(fwd.run(rx, Duration::from_millis(100)));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.send_replace(true);
    task.await.expect("forwarder ends");
    stats
}

#[test]
fn a_sink_answering_404_or_a_newer_schema_503_keeps_the_spool_depth() {
    let rt = runtime();
    let agg = aggregator();
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = open_spool(&tmp.path().join("spool"));
    for i in 0..20 {
        spool
            .append(
                Lane::Sample,
                "node/node-a",
                &node_wire(i, "node-a", now_ms()),
            )
            .expect("spooled");
    }
    // A wrong path: the aggregator's router answers 404, call after call.
    let stats = rt.block_on(forward_for(&spool, agg.port, "/v1/nope", tmp.path(), 2));
    assert!(stats.call_errors.load(Ordering::Relaxed) >= 3, "{stats:?}");
    assert_eq!(spool.depth(), 20, "a 404 lost spooled records");
    assert_eq!(spool.stats().dropped_total(), 0);
    assert_eq!(spool.stats().quarantined.load(Ordering::Relaxed), 0);

    // An agent on the next schema version: 503 every time; nothing dropped or quarantined.
    let spool2 = open_spool(&tmp.path().join("spool-next"));
    for i in 100..110 {
        spool2
            .append(Lane::Sample, "node/node-a", &next_version(i))
            .expect("spooled");
    }
    let stats = rt.block_on(forward_for(&spool2, agg.port, "/v1/ingest", tmp.path(), 2));
    assert!(stats.call_errors.load(Ordering::Relaxed) >= 3, "{stats:?}");
    assert_eq!(
        spool2.depth(),
        10,
        "records of a newer schema were not kept"
    );
    assert_eq!(spool2.stats().dropped_total(), 0);
    assert_eq!(spool2.stats().quarantined.load(Ordering::Relaxed), 0);
    let m = agg.aggregator.metrics_text();
    assert!(
        crate::agent_forward::metric(
            &m,
            "selfheal_aggregator_ingest_requests_total{status=\"503\"}"
        ) >= 3.0,
        "{m}"
    );
    assert!(
        crate::agent_forward::metric(&m, "selfheal_aggregator_ingest_log_appended_records_total")
            == 0.0,
        "{m}"
    );

    // Once the sink is right, the first spool drains (reopened, as by the agent's restart with
    // the fixed config: the records handed out to the stopped forwarder are queued again).
    drop(spool);
    let spool = open_spool(&tmp.path().join("spool"));
    assert_eq!(spool.depth(), 20);
    let stats = rt.block_on(forward_for(&spool, agg.port, "/v1/ingest", tmp.path(), 2));
    assert_eq!(stats.records_sent.load(Ordering::Relaxed), 20);
    assert_eq!(spool.depth(), 0);
    let _ = &agg.tmp;
    agg.aggregator.stop();
}

#[test]
fn records_refused_for_good_are_quarantined_and_shown_by_spool_inspect() {
    let rt = runtime();
    let agg = aggregator();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("spool");
    let spool = open_spool(&dir);
    // Stamped ten thousand hours ago: outside the aggregator's window, 400.
    for i in 0..7 {
        let old = node_wire(i, "node-a", now_ms() - 10_000 * 3_600_000);
        spool
            .append(Lane::Sample, "node/node-a", &old)
            .expect("spooled");
    }
    let stats = rt.block_on(forward_for(&spool, agg.port, "/v1/ingest", tmp.path(), 1));
    assert_eq!(stats.records_rejected.load(Ordering::Relaxed), 7);
    assert_eq!(spool.depth(), 0);
    assert_eq!(spool.stats().quarantined.load(Ordering::Relaxed), 7);
    assert_eq!(
        spool.stats().dropped_total(),
        0,
        "refused records were deleted"
    );
    drop(spool);
    let out = stdout_of(
        selfheal()
            .args(["agent", "spool", "inspect", "--json", "--dir"])
            .arg(&dir),
    );
    let ins: serde_json::Value = serde_json::from_str(&out).expect("inspect JSON");
    assert_eq!(ins["quarantine"]["records"], 7, "{ins:#}");
    assert_eq!(ins["sample"]["records"], 0, "{ins:#}");
    agg.aggregator.stop();
}

/// A record of the next schema version on a shard: the records before it are handled and
/// checkpointed, the shard stops there (gauge and counter), and nothing after it is handled or
/// checkpointed, however long the consumer runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_stops_a_shard_at_a_newer_schema_version_and_never_checkpoints_past_it() {
    let moto = Moto::start();
    let kinesis = kinesis_client(&moto.endpoint());
    create_stream(&kinesis, "next", 1).await;
    let mut seqs = Vec::new();
    for i in 0..10u128 {
        let data = if i == 5 {
            next_version(i)
        } else {
            node_wire(i, "node-a", now_ms())
        };
        let out = kinesis
            .put_record()
            .stream_name("next")
            .partition_key("node/node-a")
            .data(Blob::new(data))
            .send()
            .await
            .expect("put record");
        seqs.push(out.sequence_number().to_owned());
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let handler = picky(u128::MAX, u128::MAX);
    let handled = Arc::clone(&handler.handled);
    let checkpoints = tmp.path().join("checkpoints");
    let delivery = Delivery::new(
        handler,
        FileCheckpoints::new(checkpoints.clone()),
        DeadLetters::new(tmp.path().join("dead-letter")),
        Arc::new(PipelineMetrics::default()),
        (Duration::from_millis(50), Duration::from_millis(500)),
    );
    let metrics = Arc::new(ConsumeMetrics::default());
    let consumer = Consumer::new(
        kinesis.clone(),
        consumer_settings("next"),
        delivery,
        Arc::clone(&metrics),
        true,
    );
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(consumer.run(stop));
    eventually("the shard stops at the newer record", || {
        metrics.stalled_shards.get() == 1
    })
    .await;
    // Several poll intervals and shard refreshes later, still nothing past it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        *handled.lock().expect("lock"),
        (0..5).collect::<Vec<u128>>()
    );
    assert_eq!(metrics.newer_schema.get(), 1);
    let shard = "shardId-000000000000";
    let cp = FileCheckpoints::new(checkpoints.clone())
        .load(shard)
        .await
        .expect("load checkpoint")
        .expect("a checkpoint");
    assert_eq!(
        cp.resume_after(),
        Some(seqs[4].as_str()),
        "checkpointed past the record of the newer schema: {cp:?}"
    );
    assert!(!matches!(cp, Checkpoint::ShardEnd));
    stop_tx.send_replace(true);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the consumer stops")
        .expect("no panic");
    assert_eq!(metrics.stalled_shards.get(), 0);
}
