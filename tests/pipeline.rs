//! The data path end to end, every part real: the agent binary scores a pod and its node with a
//! model, samples and spools, and forwards to a moto Kinesis stream; the aggregator binary reads
//! every shard of it into a Parquet lake in moto S3; the trainer trains a new model from that
//! lake. Every anomaly the agent raised must be in the lake, as an anomaly row carrying its
//! score, threshold and model version.
//!
//! Then the pipeline's failure rules, with the real Kinesis consumer on moto and the real HTTP
//! source: a poison batch is set aside and the shard moves on; a panicking task ends the run.

use crate::agent_forward::{PodAgent, metric, runtime, stop, wait_metrics};
use crate::lake::{start_aggregator, wait_for_ids};
use crate::support::moto::{
    Moto, aws_env, create_bucket, create_stream, kinesis_client, s3_client,
};
use crate::support::records::pod_cpu_sample;
use crate::support::{free_port, selfheal, stdout_of, write_file};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use selfheal_aggregator::config::AggregatorConfig;
use selfheal_aggregator::pipeline::dead_letter::DeadLetters;
use selfheal_aggregator::pipeline::{
    Batch, Delivery, FileCheckpoints, Handler, HandlerError, HandlerLabels, PipelineMetrics,
    SharedHandler,
};
use selfheal_aggregator::run::{RunError, run_with};
use selfheal_aggregator::sources::kinesis::{ConsumeMetrics, Consumer, ConsumerSettings};
use selfheal_core::batch::encode_batch;
use selfheal_core::schema::{decode_wire, encode_wire};
use selfheal_lake::LakeStore;
use selfheal_lake::format::RowKind;
use selfheal_runtime::frame;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn anomalies_from_the_agent_reach_the_s3_lake_through_kinesis_and_train_a_model() {
    let rt = runtime();
    let moto = Moto::start();
    rt.block_on(create_stream(
        &kinesis_client(&moto.endpoint()),
        "records",
        2,
    ));
    let s3 = s3_client(&moto.endpoint());
    rt.block_on(create_bucket(&s3, "lake-bucket"));

    // The agent sees one pod and its node, scores CPU with a model that alarms every cycle, and
    // forwards everything (probability 1) so ids can be counted.
    let pod_agent = PodAgent::new(&moto.endpoint(), "records");
    let agent = &pod_agent.files;
    let run = tempfile::tempdir().expect("aggregator dir");
    let aggregator = start_aggregator(
        run.path(),
        &moto.endpoint(),
        "records",
        "s3://lake-bucket/lake",
    );
    let mut child = agent.start("out");
    wait_metrics(
        agent,
        "30 cycles with anomalies sent",
        Duration::from_secs(60),
        |m| {
            metric(m, "selfheal_agent_cycles_total") >= 30.0
                && metric(m, "selfheal_agent_sample_anomaly_records_total") >= 10.0
        },
    );
    let status = stop(&mut child, Duration::from_secs(10));
    assert!(
        status.success(),
        "agent exit 0: {status:?}\n{}",
        agent.log("out")
    );
    let (printed, printed_anomalies) = agent.printed("out");
    assert!(
        printed_anomalies >= 10,
        "{printed_anomalies} anomalies printed"
    );

    // Everything the agent printed lands in the lake, each record once.
    let store = LakeStore::S3 {
        client: s3.clone(),
        bucket: "lake-bucket".into(),
        prefix: "lake/".into(),
    };
    let rows = rt.block_on(wait_for_ids(&store, &printed));
    aggregator.stop();
    let mut seen: HashMap<u128, usize> = HashMap::new();
    for (_, r) in rows.iter().filter(|(_, r)| r.kind != RowKind::Window) {
        *seen.entry(r.id.as_u128()).or_default() += 1;
    }
    assert!(seen.values().all(|&n| n == 1), "a record written twice");
    let anomalies: Vec<_> = rows
        .iter()
        .map(|(_, r)| r)
        .filter(|r| r.kind == RowKind::Anomaly)
        .collect();
    assert_eq!(
        anomalies.len(),
        printed_anomalies,
        "every anomaly the agent raised is an anomaly row of the lake"
    );
    for a in &anomalies {
        assert_eq!(a.model_version.as_deref(), Some("v1"));
        assert!(a.score.is_some_and(f64::is_finite) && a.threshold == Some(0.0));
        assert_eq!(a.inclusion_probability, Some(1.0));
    }
    let workloads: HashSet<&str> = rows.iter().map(|(_, r)| r.workload.as_str()).collect();
    assert!(
        workloads.contains("shop/Deployment/web") && workloads.contains("node/node-a"),
        "{workloads:?}"
    );

    // The trainer reads that lake and trains a model from the samples the agent collected:
    // memory, since with this alarming CPU model every CPU record is an anomaly, and the trainer
    // learns normal behaviour from samples only.
    let out = tempfile::tempdir().expect("model dir");
    let model = out.path().join("memory");
    let mut train = selfheal();
    aws_env(&mut train)
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .args(["model", "train", "--family", "memory", "--trees", "20"])
        .args(["--input", "s3://lake-bucket/lake", "--out"])
        .arg(&model);
    stdout_of(&mut train);
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(model.join("manifest.json")).expect("manifest written"),
    )
    .expect("manifest JSON");
    assert_eq!(manifest["family"], "memory");
    assert!(
        std::fs::metadata(model.join("model.onnx")).is_ok_and(|m| m.len() > 0),
        "model.onnx written"
    );
}

/// A handler for the pipeline tests: refuses as poison any batch holding record `poison`,
/// panics on any batch holding record `panic`, and remembers the ids of what it handled.
pub(crate) struct Picky {
    poison: u128,
    panic: u128,
    pub(crate) handled: Arc<Mutex<Vec<u128>>>,
}

impl Handler for Picky {
    fn name(&self) -> &'static str {
        "picky"
    }

    async fn handle(&self, batch: &Batch) -> Result<(), HandlerError> {
        let ids: Vec<u128> = batch
            .records
            .iter()
            .map(|r| r.envelope.record().id.as_u128())
            .collect();
        assert!(!ids.contains(&self.panic), "a bug in the handler");
        if ids.contains(&self.poison) {
            return Err(HandlerError::poison(format!(
                "record {:x} breaks an invariant of this handler",
                self.poison
            )));
        }
        self.handled
            .lock()
            .map_err(|e| HandlerError::retryable(e.to_string()))?
            .extend(ids);
        Ok(())
    }
}

pub(crate) fn picky(poison: u128, panic: u128) -> Picky {
    Picky {
        poison,
        panic,
        handled: Arc::default(),
    }
}

async fn put_ids(client: &aws_sdk_kinesis::Client, stream: &str, ids: std::ops::Range<u64>) {
    let entries: Vec<PutRecordsRequestEntry> = ids
        .map(|i| {
            let env = pod_cpu_sample(i, 1_764_000_000_000 + i as i64 * 1000);
            PutRecordsRequestEntry::builder()
                .partition_key("shop/Deployment/web")
                .data(Blob::new(encode_wire(&env).expect("encode")))
                .build()
                .expect("entry")
        })
        .collect();
    client
        .put_records()
        .stream_name(stream)
        .set_records(Some(entries))
        .send()
        .await
        .expect("put records");
}

pub(crate) fn consumer_settings(stream: &str) -> ConsumerSettings {
    ConsumerSettings {
        stream: stream.into(),
        batch_max_records: 10,
        batch_max_bytes: 1 << 20,
        flush_interval: Duration::from_millis(300),
        poll_interval: Duration::from_millis(100),
        get_records_limit: 10_000,
        shard_refresh: Duration::from_secs(1),
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(500),
    }
}

pub(crate) async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not within 30 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Kinesis consumer with a handler that refuses one batch as poison: that batch is written
/// to the dead-letter directory (framed records that decode to its ids, and the reason), counted,
/// and the checkpoint moves past it, so the shard's next batch is handled. Then a handler that
/// panics: the consumer task panics too (so `run` stops the process non-zero) instead of
/// logging the reader's death and leaving its shard unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_batch_is_set_aside_and_the_shard_moves_on_and_a_panic_ends_the_consumer() {
    let moto = Moto::start();
    let kinesis = kinesis_client(&moto.endpoint());
    create_stream(&kinesis, "poison", 1).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    // Ten records: one batch (batch_max_records = 10), holding the poison record 5.
    put_ids(&kinesis, "poison", 0..10).await;

    let handler = picky(5, 25);
    let handled = Arc::clone(&handler.handled);
    let metrics = Arc::new(PipelineMetrics::default());
    let dead = tmp.path().join("dead-letter");
    let delivery = Delivery::new(
        handler,
        FileCheckpoints::new(tmp.path().join("checkpoints")),
        DeadLetters::new(dead.clone()),
        Arc::clone(&metrics),
        (Duration::from_millis(50), Duration::from_millis(500)),
    );
    let consumer = Consumer::new(
        kinesis.clone(),
        consumer_settings("poison"),
        delivery,
        Arc::new(ConsumeMetrics::default()),
        true,
    );
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(consumer.run(stop));
    let labels = HandlerLabels {
        handler: "picky".into(),
    };
    eventually("the poison batch is set aside", || {
        metrics.dead_letter_batches.get_or_create(&labels).get() == 1
    })
    .await;
    put_ids(&kinesis, "poison", 10..20).await;
    eventually("the next batch is handled", || {
        handled.lock().expect("lock").len() == 10
    })
    .await;
    assert_eq!(
        *handled.lock().expect("lock"),
        (10..20).collect::<Vec<u128>>()
    );
    assert_eq!(metrics.dead_letter_records.get_or_create(&labels).get(), 10);

    let files: Vec<_> = std::fs::read_dir(&dead)
        .expect("dead-letter dir")
        .map(|e| e.expect("entry").path())
        .collect();
    let records = files
        .iter()
        .find(|p| p.extension().is_some_and(|x| x == "records"))
        .expect("a .records file");
    let reason = std::fs::read_to_string(records.with_extension("reason")).expect("reason");
    assert!(reason.contains("breaks an invariant"), "{reason}");
    let bytes = std::fs::read(records).expect("read dead letter");
    let mut ids = Vec::new();
    let mut pos = 0;
    while let frame::Scanned::Frame(f) = frame::scan_at(&bytes, pos) {
        ids.push(decode_wire(f.wire).expect("wire").record().id.as_u128());
        pos = f.offset + f.len;
    }
    assert_eq!(pos, bytes.len(), "only whole frames");
    assert_eq!(ids, (0..10).collect::<Vec<u128>>());

    // A bug: the handler panics on the next batch.
    put_ids(&kinesis, "poison", 20..30).await;
    let ended = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the consumer ends when its reader panics");
    assert!(
        ended.as_ref().is_err_and(tokio::task::JoinError::is_panic),
        "{ended:?}"
    );
    drop(stop_tx);
}

/// `run` with a handler that panics on its first batch: the HTTP source's log reader panics,
/// and `run` stops the server and returns `TaskPanicked` (the binary exits 1 on it), where
/// before a dead task left the process running, or exiting 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_task_makes_run_fail() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = write_file(
        tmp.path(),
        "aggregator.toml",
        &format!(
            "listen_addr = \"127.0.0.1:{port}\"\nshutdown_grace_secs = 5\n[ingest]\nsource = \"http\"\n\
             log_dir = \"{}\"\n[ingest.auth]\ntoken_file = \"{}\"\n[batch]\nflush_interval_ms = 100\n",
            tmp.path().join("log").display(),
            write_file(
                tmp.path(),
                "tokens",
                "ip-10-0-1-23.ec2.internal pipeline-test-token-0123456789\n"
            )
            .display()
        ),
    );
    let settings = AggregatorConfig::load(Some(&config))
        .expect("config")
        .validate()
        .expect("valid");
    let handler: SharedHandler = Arc::new(picky(u128::MAX, 3));
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(run_with(
        settings,
        vec![handler],
        prometheus_client::registry::Registry::default(),
        stop,
    ));
    // Stamped now: the ingest refuses records outside its time window.
    let now = crate::support::records::now_ms();
    let wire = encode_wire(&pod_cpu_sample(3, now)).expect("encode");
    let body = encode_batch([wire.as_slice()]).expect("frame");
    let start = Instant::now();
    loop {
        let sent = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/v1/ingest"))
            .bearer_auth("pipeline-test-token-0123456789")
            .body(body.clone())
            .send()
            .await;
        if sent.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "ingest never answered 200"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ended = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("run returns once a task panicked")
        .expect("run itself does not panic");
    match ended {
        Err(RunError::TaskPanicked(task)) => assert_eq!(task, "picky reader"),
        other => panic!("expected TaskPanicked, got {other:?}"),
    }
}
