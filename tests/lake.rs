//! The data lake end to end: envelopes put on a two-shard moto Kinesis stream, `selfheal
//! aggregator` processes reading it into a local directory and into moto S3, checked by reading
//! the Parquet back; a restart from checkpoints; a malformed record; and `selfheal model train`
//! training from the lake.

use crate::support::moto::{Moto, aws_env, create_stream, kinesis_client, s3_client};
use crate::support::{KillOnDrop, free_port, http_get, selfheal, signal, stdout_of, write_file};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use selfheal_core::schema::{Anomaly, OwnerRef, encode_wire};
use selfheal_core::{Envelope, Family, Metric, Payload, PodRef, Record, RecordId, Subject};
use selfheal_lake::format::{self, LakeRow, RowKind};
use selfheal_lake::{LakeStore, S3Options, partition};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Start of the synthetic data: 2025-11-24T16:00:00Z.
const T0_MS: i64 = 1_764_000_000_000;
const STEP_MS: i64 = 5_000;

fn pod(i: usize) -> Subject {
    Subject::Pod(PodRef {
        uid: format!("0000000{i}-aaaa-bbbb-cccc-dddddddddddd"),
        namespace: Some("shop".into()),
        name: Some(format!("checkout-7d9f8b6c5-{i}x")),
        owner: Some(OwnerRef {
            kind: "Deployment".into(),
            name: "checkout".into(),
        }),
        qos: None,
    })
}

/// Two blocks of 5-second samples per series, an hour apart (so two hour partitions and a
/// gap the trainer must split at): four pods' CPU and the node's memory. Every 50th pod sample
/// is an anomaly whose window holds the five samples before it (same ids: also sampled).
/// `id_base` keeps the ids of later batches distinct.
fn dataset(id_base: u128, t0_ms: i64) -> Vec<Envelope> {
    let mut out = Vec::new();
    let mut id = id_base;
    for block in 0..2i64 {
        let start = t0_ms + block * 60 * 60_000;
        for p in 0..4usize {
            let mut recent: Vec<Record> = Vec::new();
            for k in 0..60i64 {
                id += 1;
                let x = (k as f64 * 0.3 + p as f64).sin();
                let record = Record {
                    id: RecordId::from_u128(id),
                    ts_ms: start + k * STEP_MS,
                    node: "node-a".into(),
                    subject: pod(p),
                    family: Family::Cpu,
                    values: BTreeMap::from([
                        (Metric::CpuUsageCores, 0.5 + 0.1 * x),
                        (Metric::CpuThrottledRatio, 0.01 * (1.0 + x)),
                    ]),
                };
                let payload = if k % 50 == 49 {
                    Payload::Anomaly(Anomaly {
                        record: record.clone(),
                        score: 0.74,
                        threshold: 0.62,
                        model_version: "cpu-20251124-1".into(),
                        features: vec![0.6, 2.5],
                        top_features: vec![("cpu_usage_cores_z".into(), 2.5)],
                        window: recent[recent.len() - 5..].to_vec(),
                    })
                } else {
                    Payload::Sample {
                        record: record.clone(),
                        inclusion_probability: 0.2,
                    }
                };
                recent.push(record);
                out.push(Envelope::new(payload));
            }
        }
        for k in 0..30i64 {
            id += 1;
            out.push(Envelope::new(Payload::Sample {
                record: Record {
                    id: RecordId::from_u128(id),
                    ts_ms: start + k * 2 * STEP_MS,
                    node: "node-a".into(),
                    subject: Subject::Node,
                    family: Family::Memory,
                    values: BTreeMap::from([(Metric::MemoryUsedBytes, 4e9 + k as f64 * 1e6)]),
                },
                inclusion_probability: 1.0,
            }));
        }
    }
    out
}

async fn put(client: &aws_sdk_kinesis::Client, stream: &str, envs: &[Envelope], junk: bool) {
    let mut entries: Vec<PutRecordsRequestEntry> = envs
        .iter()
        .map(|e| {
            let r = e.record();
            PutRecordsRequestEntry::builder()
                .partition_key(r.subject.workload_key(&r.node))
                .data(Blob::new(encode_wire(e).expect("encode")))
                .build()
                .expect("entry")
        })
        .collect();
    if junk {
        // Not a selfheal record: must be skipped and counted, never block its shard.
        entries.insert(
            entries.len() / 2,
            PutRecordsRequestEntry::builder()
                .partition_key("shop/Deployment/checkout")
                .data(Blob::new(b"{\"not\": \"a wire record\"}".to_vec()))
                .build()
                .expect("entry"),
        );
    }
    for chunk in entries.chunks(500) {
        let out = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(chunk.to_vec()))
            .send()
            .await
            .expect("put records");
        assert_eq!(out.failed_record_count(), Some(0));
    }
}

pub(crate) struct Aggregator {
    child: KillOnDrop,
    port: u16,
}

pub(crate) fn start_aggregator(dir: &Path, endpoint: &str, stream: &str, lake: &str) -> Aggregator {
    let port = free_port();
    let config = write_file(
        dir,
        "aggregator.toml",
        &format!(
            r#"listen_addr = "127.0.0.1:{port}"
shutdown_grace_secs = 20
[kinesis]
stream_name = "{stream}"
poll_interval_ms = 100
shard_refresh_secs = 1
retry_initial_ms = 50
retry_max_ms = 500
[checkpoint]
dir = "{}"
[batch]
max_records = 150
flush_interval_ms = 300
[lake]
location = "{lake}"
"#,
            dir.join("checkpoints").display()
        ),
    );
    let mut cmd = selfheal();
    aws_env(&mut cmd).env("AWS_ENDPOINT_URL", endpoint);
    Aggregator::spawn(cmd, &config, port)
}

impl Aggregator {
    /// Runs `cmd aggregator --config config` and waits until its `/healthz` on `port` is 200.
    pub(crate) fn spawn(mut cmd: Command, config: &Path, port: u16) -> Aggregator {
        cmd.args(["aggregator", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = KillOnDrop(cmd.spawn().expect("start selfheal aggregator"));
        let start = Instant::now();
        while http_get(port, "/healthz").is_none_or(|(s, _)| s != 200) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "aggregator /healthz did not answer 200 within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Aggregator { child, port }
    }

    pub(crate) fn metric(&self, name: &str) -> f64 {
        let (_, body) = http_get(self.port, "/metrics").expect("/metrics answers");
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// The whole `/metrics` exposition.
    pub(crate) fn metrics_text(&self) -> String {
        http_get(self.port, "/metrics").expect("/metrics answers").1
    }

    /// SIGKILL: no shutdown, no last flush; what was acknowledged must survive it.
    pub(crate) fn kill(mut self) {
        signal(self.child.0.id(), "KILL");
        let _ = self.child.0.wait();
    }

    /// SIGTERM, and the exit status must be success.
    pub(crate) fn stop(mut self) {
        signal(self.child.0.id(), "TERM");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.0.try_wait().expect("wait") {
                assert!(status.success(), "aggregator exited with {status}");
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "aggregator did not exit within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Every row of every object, with its key.
pub(crate) async fn all_rows(store: &LakeStore) -> Vec<(String, LakeRow)> {
    let mut out = Vec::new();
    for key in store.list(".parquet").await.expect("list lake") {
        let bytes = store.get(&key).await.expect("get object");
        for r in format::decode(bytes).expect("a readable lake Parquet file") {
            out.push((key.clone(), r));
        }
    }
    out
}

pub(crate) fn primary_ids(rows: &[(String, LakeRow)]) -> (usize, HashSet<u128>) {
    let primary: Vec<u128> = rows
        .iter()
        .filter(|(_, r)| r.kind != RowKind::Window)
        .map(|(_, r)| r.id.as_u128())
        .collect();
    (primary.len(), primary.into_iter().collect())
}

pub(crate) async fn wait_for_ids(
    store: &LakeStore,
    want: &HashSet<u128>,
) -> Vec<(String, LakeRow)> {
    let start = Instant::now();
    loop {
        let rows = all_rows(store).await;
        let (_, ids) = primary_ids(&rows);
        if want.is_subset(&ids) {
            return rows;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "{} of {} records reached {} within 90 s",
            want.intersection(&ids).count(),
            want.len(),
            store.location()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Keys are `dt=…/hour=…/family=…/<shard>-<first>-<last>.parquet`, and each row sits in the
/// partition of its own time and family.
fn assert_partitioned(rows: &[(String, LakeRow)]) {
    let mut partitions = HashSet::new();
    for (key, r) in rows {
        let dir = partition(r.ts_ms, r.family);
        assert!(key.starts_with(&dir), "{key} holds a row of {dir}");
        let file = &key[dir.len()..];
        let parts: Vec<&str> = file.trim_end_matches(".parquet").split('-').collect();
        assert!(
            parts.len() == 4
                && parts[0] == "shardId"
                && parts[2..]
                    .iter()
                    .all(|p| p.bytes().all(|b| b.is_ascii_digit())),
            "object name {file} is not shardId-<n>-<first seq>-<last seq>.parquet"
        );
        partitions.insert(dir);
    }
    for want in [
        "dt=2025-11-24/hour=16/family=cpu/",
        "dt=2025-11-24/hour=16/family=memory/",
        "dt=2025-11-24/hour=17/family=cpu/",
    ] {
        assert!(partitions.contains(want), "no {want} in {partitions:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_to_parquet_lake_in_a_dir_and_s3_restart_and_train() {
    let moto = Moto::start();
    let kinesis = kinesis_client(&moto.endpoint());
    create_stream(&kinesis, "lake", 2).await;
    let s3 = s3_client(&moto.endpoint());
    s3.create_bucket()
        .bucket("lake-bucket")
        .send()
        .await
        .expect("create bucket in moto");

    let first = dataset(0, T0_MS);
    put(&kinesis, "lake", &first, true).await;
    let want: HashSet<u128> = first.iter().map(|e| e.record().id.as_u128()).collect();

    let tmp = tempfile::tempdir().expect("tempdir");
    let dir_run = tmp.path().join("dir");
    let s3_run = tmp.path().join("s3");
    std::fs::create_dir_all(&dir_run).expect("mkdir");
    std::fs::create_dir_all(&s3_run).expect("mkdir");
    let lake_dir = tmp.path().join("lake");
    let lake_dir_s = lake_dir.to_string_lossy().into_owned();
    let to_dir = start_aggregator(&dir_run, &moto.endpoint(), "lake", &lake_dir_s);
    let to_s3 = start_aggregator(&s3_run, &moto.endpoint(), "lake", "s3://lake-bucket/lake");

    let dir_store = LakeStore::open(&lake_dir_s, &S3Options::default())
        .await
        .expect("open lake dir");
    let s3_store = LakeStore::S3 {
        client: s3.clone(),
        bucket: "lake-bucket".into(),
        prefix: "lake/".into(),
    };
    let rows = wait_for_ids(&dir_store, &want).await;
    let s3_rows = wait_for_ids(&s3_store, &want).await;
    assert_partitioned(&rows);
    assert_partitioned(&s3_rows);
    assert_eq!(
        to_dir.metric("selfheal_aggregator_consume_malformed_records_total"),
        1.0
    );
    assert_eq!(
        to_dir.metric("selfheal_aggregator_consume_records_total"),
        first.len() as f64
    );
    let anomalies: Vec<&LakeRow> = rows
        .iter()
        .map(|(_, r)| r)
        .filter(|r| r.kind == RowKind::Anomaly)
        .collect();
    assert_eq!(anomalies.len(), 8, "every anomaly lands once");
    assert!(anomalies.iter().all(|a| a.score == Some(0.74)
        && a.model_version.as_deref() == Some("cpu-20251124-1")
        && a.inclusion_probability == Some(1.0)));
    to_dir.stop();
    to_s3.stop();

    // Restart from the checkpoints with more records on the stream: the new ones arrive, and
    // nothing already written is written again.
    let second = dataset(1_000_000, T0_MS + 2 * 3_600_000);
    put(&kinesis, "lake", &second, false).await;
    let want_all: HashSet<u128> = want
        .iter()
        .copied()
        .chain(second.iter().map(|e| e.record().id.as_u128()))
        .collect();
    let again = start_aggregator(&dir_run, &moto.endpoint(), "lake", &lake_dir_s);
    let rows = wait_for_ids(&dir_store, &want_all).await;
    // Give a re-read (which would be a bug) time to land before counting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        again.metric("selfheal_aggregator_consume_records_total"),
        second.len() as f64,
        "the restarted aggregator read only what was new"
    );
    again.stop();
    let rows = if rows.len() == all_rows(&dir_store).await.len() {
        rows
    } else {
        all_rows(&dir_store).await
    };
    let (primary_rows, distinct) = primary_ids(&rows);
    assert_eq!(distinct, want_all);
    assert_eq!(primary_rows, distinct.len(), "no record written twice");

    // The trainer reads the lake (directory, then S3) and trains a CPU model.
    let model = tmp.path().join("model");
    stdout_of(
        selfheal()
            .args([
                "model", "train", "--family", "cpu", "--trees", "20", "--input",
            ])
            .arg(&lake_dir)
            .arg("--out")
            .arg(&model),
    );
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(model.join("manifest.json")).expect("manifest written"),
    )
    .expect("manifest JSON");
    assert_eq!(manifest["family"], "cpu");
    let names = manifest["feature_names"].as_array().expect("feature names");
    assert!(
        names
            .iter()
            .any(|n| n.as_str().is_some_and(|n| n.starts_with("cpu_usage_cores"))),
        "{names:?}"
    );
    let s3_model = tmp.path().join("model-s3");
    let mut train = selfheal();
    aws_env(&mut train)
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .args([
            "model", "train", "--family", "cpu", "--trees", "20", "--input",
        ])
        .arg("s3://lake-bucket/lake")
        .arg("--out")
        .arg(&s3_model);
    stdout_of(&mut train);
    let s3_manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(s3_model.join("manifest.json")).expect("manifest written"),
    )
    .expect("manifest JSON");
    assert_eq!(s3_manifest["family"], "cpu");
}

#[test]
fn aggregator_config_errors_name_the_field() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = write_file(
        tmp.path(),
        "a.toml",
        "[kinesis]\nstream_name = \"s\"\n[batch]\nmax_records = 0\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_selfheal"))
        .args(["aggregator", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`batch.max_records`"), "{err}");
}
