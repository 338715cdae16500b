//! Incidents end to end through the real binary: a storm of one CPU anomaly from 3 nodes x 5
//! pods of one Deployment, put on a moto Kinesis stream (with redeliveries), read by `selfheal
//! aggregator`, becomes exactly one incident with the right counts, every redelivery counted as
//! deduplicated, every record in the lake; a SIGKILL mid-storm loses and doubles nothing;
//! silences and inhibition mute visibly and expire; the CLI reads it all back.

use crate::support::moto::{Moto, aws_env, create_stream, kinesis_client};
use crate::support::records::checkout_cpu_anomaly;
use crate::support::{KillOnDrop, free_port, http_get, selfheal, signal, stdout_of, write_file};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use selfheal_aggregator::api::{ListBody, ShowBody};
use selfheal_core::incident::{EventKind, MutedBy, State};
use selfheal_core::schema::{Anomaly, OwnerRef, encode_wire};
use selfheal_core::{Envelope, Family, Metric, Payload, PodRef, Record, RecordId, Subject};
use selfheal_lake::LakeStore;
use selfheal_lake::format::{self, RowKind};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn anomaly(id: u128, ts_ms: i64, node: &str, subject: Subject, score: f64) -> Envelope {
    Envelope::new(Payload::Anomaly(Anomaly {
        record: Record {
            id: RecordId::from_u128(id),
            ts_ms,
            node: node.into(),
            subject,
            family: Family::Cpu,
            values: BTreeMap::from([(Metric::CpuUsageCores, 3.5)]),
        },
        score,
        threshold: 0.6,
        model_version: "cpu-v7".into(),
        features: vec![3.5],
        top_features: vec![("cpu_usage_cores_z60".into(), 4.0)],
        window: vec![],
    }))
}

/// 3 nodes x 5 pods, 200 reports each over two minutes of record time: 3000 anomalies.
pub(crate) fn storm(id_base: u128, t0: i64) -> Vec<Envelope> {
    let mut out = Vec::with_capacity(3000);
    for round in 0..200 {
        for node in 0..3 {
            for pod in 0..5 {
                let id = id_base + (round * 15 + node * 5 + pod) as u128;
                let score = 0.7 + (round % 20) as f64 / 100.0;
                out.push(checkout_cpu_anomaly(
                    id,
                    t0 + round as i64 * 600,
                    node,
                    pod,
                    score,
                ));
            }
        }
    }
    out
}

pub(crate) async fn put(client: &aws_sdk_kinesis::Client, stream: &str, envs: &[Envelope]) {
    let entries: Vec<PutRecordsRequestEntry> = envs
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

async fn put_raw(client: &aws_sdk_kinesis::Client, stream: &str, data: Vec<Vec<u8>>) {
    let entries: Vec<PutRecordsRequestEntry> = data
        .into_iter()
        .map(|d| {
            PutRecordsRequestEntry::builder()
                .partition_key("junk")
                .data(Blob::new(d))
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

/// A running aggregator whose files live in `dir`.
pub(crate) struct Agg {
    child: KillOnDrop,
    port: u16,
    token_file: PathBuf,
}

pub(crate) fn config(dir: &Path, port: u16, stream: &str) -> PathBuf {
    write_file(
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
dir = "{dir}/checkpoints"
[batch]
max_records = 500
flush_interval_ms = 300
[lake]
location = "{dir}/lake"
[incidents]
group_wait_secs = 1
group_interval_secs = 2
resolve_timeout_secs = 600
api_token_file = "{dir}/api-token"
[incidents.store]
dir = "{dir}/incidents"
"#,
            dir = dir.display()
        ),
    )
}

/// The API token the tests' aggregators are configured with (written to `<dir>/api-token`).
pub(crate) const TOKEN: &str = "test-token-0123456789abcdef0123456789";

fn write_token(dir: &Path) -> PathBuf {
    write_file(dir, "api-token", &format!("{TOKEN}\n"))
}

/// The same aggregator with the HTTP ingest source instead of Kinesis.
fn http_config(dir: &Path, port: u16) -> PathBuf {
    write_file(
        dir,
        "aggregator.toml",
        &format!(
            r#"listen_addr = "127.0.0.1:{port}"
shutdown_grace_secs = 20
[ingest]
source = "http"
max_body_bytes = {HTTP_MAX_BODY}
log_dir = "{dir}/ingest-log"
[ingest.auth]
token_file = "{dir}/ingest-tokens"
[batch]
max_records = 500
flush_interval_ms = 300
retry_initial_ms = 50
retry_max_ms = 500
[lake]
location = "{dir}/lake"
[incidents]
group_wait_secs = 1
group_interval_secs = 2
resolve_timeout_secs = 600
api_token_file = "{dir}/api-token"
[incidents.store]
dir = "{dir}/incidents"
"#,
            dir = dir.display()
        ),
    )
}

/// The HTTP source's body limit in these tests.
const HTTP_MAX_BODY: usize = 512 * 1024;

impl Agg {
    pub(crate) fn start(dir: &Path, moto: &Moto, port: u16) -> Agg {
        let cfg = config(dir, port, "records");
        let mut cmd = selfheal();
        aws_env(&mut cmd).env("AWS_ENDPOINT_URL", moto.endpoint());
        Agg::spawn(cmd, dir, &cfg, port)
    }

    fn start_http(dir: &Path, port: u16) -> Agg {
        let cfg = http_config(dir, port);
        let table: String = (0..3)
            .map(|n| format!("node-{n} {}\n", ingest_token(n)))
            .collect();
        write_file(dir, "ingest-tokens", &table);
        Agg::spawn(selfheal(), dir, &cfg, port)
    }

    pub(crate) fn spawn(mut cmd: std::process::Command, dir: &Path, cfg: &Path, port: u16) -> Agg {
        write_token(dir);
        cmd.args(["aggregator", "--config"])
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = KillOnDrop(cmd.spawn().expect("start aggregator"));
        let start = Instant::now();
        while http_get(port, "/healthz").is_none_or(|(s, _)| s != 200) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "aggregator /healthz not 200 within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Agg {
            child,
            port,
            token_file: dir.join("api-token"),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn metric(&self, name: &str) -> f64 {
        let (_, body) = http_get(self.port, "/metrics").expect("/metrics");
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    pub(crate) fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let (status, body) = http_get(self.port, path).expect("API answers");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    pub(crate) fn wait(&self, what: &str, limit: Duration, mut ok: impl FnMut(&Agg) -> bool) {
        let start = Instant::now();
        while !ok(self) {
            assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(crate) fn incidents(&self, query: &str) -> ListBody {
        self.get_json(&format!("/api/v1/incidents?{query}"))
    }

    pub(crate) fn stop(mut self) {
        signal(self.child.0.id(), "TERM");
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.0.try_wait().expect("wait") {
                assert!(st.success(), "aggregator exited with {st}");
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn kill(mut self) {
        signal(self.child.0.id(), "KILL");
        let _ = self.child.0.wait();
    }
}

/// The CLI against `agg`, with its token file.
pub(crate) fn cli(agg: &Agg, args: &[&str]) -> String {
    let mut c = selfheal();
    c.args(args)
        .args(["--url", &agg.url()])
        .arg("--token-file")
        .arg(&agg.token_file);
    stdout_of(&mut c)
}

fn lake_ids(rt: &tokio::runtime::Runtime, dir: &Path) -> HashSet<u128> {
    let store = rt
        .block_on(LakeStore::open(
            &dir.join("lake").display().to_string(),
            &Default::default(),
        ))
        .expect("open lake");
    let keys = rt.block_on(store.list(".parquet")).expect("list lake");
    let mut ids = HashSet::new();
    for k in keys {
        let bytes = rt.block_on(store.get(&k)).expect("get");
        for r in format::decode(bytes).expect("decode") {
            if r.kind == RowKind::Anomaly {
                ids.insert(r.id.as_u128());
            }
        }
    }
    ids
}

#[test]
fn a_storm_from_fifteen_pods_on_three_nodes_through_kinesis_is_one_incident() {
    let rt = runtime();
    let moto = Moto::start();
    let kinesis = kinesis_client(&moto.endpoint());
    rt.block_on(create_stream(&kinesis, "records", 2));
    let dir = tempfile::tempdir().expect("dir");
    let agg = Agg::start(dir.path(), &moto, free_port());
    let t0 = now_ms() - 120_000;
    let recs = storm(1 << 64, t0);
    rt.block_on(put(&kinesis, "records", &recs));
    // A third of the storm redelivered (the same record ids again).
    rt.block_on(put(&kinesis, "records", &recs[..1000]));
    // A malformed record on the stream: skipped and counted. (A newer schema version stops its
    // shard by design, until the aggregator is upgraded: the ingest work tests that.)
    rt.block_on(put_raw(&kinesis, "records", vec![b"garbage".to_vec()]));
    agg.wait("every anomaly counted", Duration::from_secs(90), |a| {
        a.metric("selfheal_aggregator_incidents_anomalies_total") >= 3000.0
            && a.metric("selfheal_aggregator_incidents_anomalies_deduplicated_total") >= 1000.0
    });
    assert_eq!(
        agg.metric("selfheal_aggregator_incidents_anomalies_total"),
        3000.0
    );
    assert_eq!(
        agg.metric("selfheal_aggregator_incidents_anomalies_deduplicated_total"),
        1000.0
    );
    assert_eq!(
        agg.metric("selfheal_aggregator_incidents_opened_total"),
        1.0
    );
    agg.wait("bad records counted", Duration::from_secs(10), |a| {
        a.metric("selfheal_aggregator_consume_malformed_records_total") >= 1.0
    });
    let list = agg.incidents("");
    assert_eq!(list.incidents.len(), 1, "exactly one incident");
    let inc = &list.incidents[0];
    assert_eq!(inc.anomaly_count, 3000);
    assert_eq!((inc.pod_count, inc.node_count), (15, 3));
    assert_eq!(inc.first_seen_ms, t0);
    assert_eq!(inc.last_seen_ms, t0 + 199 * 600);
    assert!((inc.peak.score - 0.89).abs() < 1e-9, "{}", inc.peak.score);
    assert_eq!(inc.peak.threshold, 0.6);
    assert!(inc.model_versions.contains("cpu-v7"));
    assert_eq!(inc.features[0].name, "cpu_usage_cores_z60");
    assert_eq!(inc.labels["workload"], "Deployment/checkout");
    // group_wait is 1 s here: the first notification is on the timeline.
    agg.wait("first notification", Duration::from_secs(10), |a| {
        a.metric("selfheal_aggregator_incidents_notifications_total{reason=\"opened\",suppressed=\"false\"}") >= 1.0
            || a.incidents("").incidents[0].notify.sent >= 1
    });
    let show: ShowBody = agg.get_json(&format!("/api/v1/incidents/{}", inc.id));
    assert!(matches!(show.events[0].kind, EventKind::Opened));
    let added: u64 = show
        .events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Anomalies { added, .. } => Some(added),
            _ => None,
        })
        .sum();
    assert!(added <= 3000 && added > 0);
    // Filters narrow the list.
    assert_eq!(
        agg.incidents("namespace=shop&family=cpu").incidents.len(),
        1
    );
    assert_eq!(agg.incidents("family=memory").incidents.len(), 0);
    assert_eq!(agg.incidents("state=resolved").incidents.len(), 0);
    // The CLI shows the same.
    let table = cli(&agg, &["incidents", "list"]);
    assert!(
        table.contains(inc.id.as_str()) && table.contains("shop/Deployment/checkout"),
        "{table}"
    );
    let json: ListBody = serde_json::from_str(&cli(
        &agg,
        &["incidents", "list", "--state", "open", "--json"],
    ))
    .expect("--json");
    assert_eq!(json.incidents.len(), 1);
    let shown = cli(&agg, &["incidents", "show", inc.id.as_str()]);
    assert!(
        shown.contains("anomalies  3000") && shown.contains("timeline"),
        "{shown}"
    );
    // The lake still holds every record.
    let want: HashSet<u128> = recs.iter().map(|e| e.record().id.as_u128()).collect();
    let start = Instant::now();
    loop {
        let ids = lake_ids(&rt, dir.path());
        if want.is_subset(&ids) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "lake misses records"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The write routes need the token: without it, or with a wrong one, 401, counted.
    for (auth, reason) in [(None, "missing"), (Some("Bearer nope"), "invalid")] {
        let mut req = reqwest::Client::new()
            .post(format!("{}/api/v1/incidents/{}/ack", agg.url(), inc.id))
            .json(&serde_json::json!({"by": "mallory"}));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let status = rt.block_on(req.send()).expect("answer").status();
        assert_eq!(status.as_u16(), 401);
        assert_eq!(
            agg.metric(&format!(
                "selfheal_aggregator_api_auth_refused_total{{reason=\"{reason}\"}}"
            )),
            1.0
        );
    }
    assert_eq!(agg.incidents("").incidents[0].state, State::Open);
    // Acknowledge and resolve through the CLI; each is an event with its actor.
    let out = cli(
        &agg,
        &[
            "incidents",
            "ack",
            inc.id.as_str(),
            "--by",
            "ana",
            "--comment",
            "on it",
        ],
    );
    assert!(out.contains("acknowledged"), "{out}");
    let out = cli(
        &agg,
        &["incidents", "resolve", inc.id.as_str(), "--by", "ana"],
    );
    assert!(out.contains("resolved"), "{out}");
    let show: ShowBody = agg.get_json(&format!("/api/v1/incidents/{}", inc.id));
    assert_eq!(show.incident.state, State::Resolved);
    assert!(show.events.iter().any(|e| matches!(
        e.kind,
        EventKind::StateChanged {
            to: State::Acknowledged,
            ..
        }
    ) && e.actor
        == selfheal_core::incident::Actor::Person("ana".into())
        && e.cause == "on it"));
    agg.stop();
}

#[test]
fn an_aggregator_sigkilled_mid_storm_continues_the_same_incident() {
    let rt = runtime();
    let moto = Moto::start();
    let kinesis = kinesis_client(&moto.endpoint());
    rt.block_on(create_stream(&kinesis, "records", 2));
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let agg = Agg::start(dir.path(), &moto, port);
    let t0 = now_ms() - 120_000;
    let recs = storm(2 << 64, t0);
    rt.block_on(put(&kinesis, "records", &recs[..1500]));
    agg.wait("part of the storm counted", Duration::from_secs(60), |a| {
        a.metric("selfheal_aggregator_incidents_anomalies_total") >= 300.0
    });
    let first = agg.incidents("").incidents[0].id.clone();
    agg.kill();
    // The rest arrives while it is down, and the first half is redelivered too.
    rt.block_on(put(&kinesis, "records", &recs[1500..]));
    rt.block_on(put(&kinesis, "records", &recs[..1500]));
    let agg = Agg::start(dir.path(), &moto, port);
    agg.wait("the whole storm counted", Duration::from_secs(90), |a| {
        a.incidents("")
            .incidents
            .first()
            .is_some_and(|i| i.anomaly_count >= 3000)
    });
    std::thread::sleep(Duration::from_secs(2));
    let list = agg.incidents("");
    assert_eq!(list.incidents.len(), 1, "no second incident");
    assert_eq!(list.incidents[0].id, first, "the same incident continues");
    assert_eq!(
        list.incidents[0].anomaly_count, 3000,
        "each anomaly counted once"
    );
    assert_eq!(
        (list.incidents[0].pod_count, list.incidents[0].node_count),
        (15, 3)
    );
    assert!(agg.metric("selfheal_aggregator_incidents_anomalies_deduplicated_total") >= 1.0);
    agg.stop();
}

#[test]
fn silences_and_inhibition_mute_visibly_and_expire() {
    let rt = runtime();
    let moto = Moto::start();
    let kinesis = kinesis_client(&moto.endpoint());
    rt.block_on(create_stream(&kinesis, "records", 1));
    let dir = tempfile::tempdir().expect("dir");
    let agg = Agg::start(dir.path(), &moto, free_port());
    // A silence for the shop namespace, for 4 seconds.
    let out = cli(
        &agg,
        &[
            "silences",
            "add",
            "-m",
            "namespace=shop",
            "--duration",
            "4s",
            "--by",
            "ana",
            "--comment",
            "deploying",
        ],
    );
    let sid = out
        .split_whitespace()
        .nth(1)
        .expect("silence id")
        .to_owned();
    let listed = cli(&agg, &["silences", "list"]);
    assert!(
        listed.contains(&sid) && listed.contains("active"),
        "{listed}"
    );
    let t = now_ms();
    rt.block_on(put(&kinesis, "records", &storm(3 << 64, t)[..30]));
    agg.wait("the incident", Duration::from_secs(30), |a| {
        !a.incidents("").incidents.is_empty()
    });
    let inc = agg.incidents("").incidents.remove(0);
    assert_eq!(
        inc.muted,
        Some(MutedBy::Silence { id: sid.clone() }),
        "muted, and by what"
    );
    assert!(agg.metric("selfheal_aggregator_incidents_muted{by=\"silence\"}") >= 1.0);
    agg.wait("silenced anomalies counted", Duration::from_secs(10), |a| {
        a.metric("selfheal_aggregator_incidents_anomalies_silenced_total") >= 30.0
    });
    assert_eq!(
        agg.metric("selfheal_aggregator_incidents_anomalies_silenced_total"),
        30.0,
        "every anomaly that joined the silenced incident"
    );
    // It expires by itself; the incident unmutes with an event.
    agg.wait("silence expiry", Duration::from_secs(15), |a| {
        a.incidents("").incidents[0].muted.is_none()
    });
    let show: ShowBody = agg.get_json(&format!("/api/v1/incidents/{}", inc.id));
    assert!(
        show.events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Muted { .. }))
    );
    assert!(
        show.events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Unmuted { .. }))
    );

    // Inhibition: a node-level CPU incident on node-0 mutes a pod incident that only has pods
    // there.
    let t = now_ms();
    let mut recs = vec![anomaly(4 << 64, t, "node-0", Subject::Node, 0.95)];
    let lone = Subject::Pod(PodRef {
        uid: "uid-web".into(),
        namespace: Some("web".into()),
        name: Some("front-1".into()),
        owner: Some(OwnerRef {
            kind: "Deployment".into(),
            name: "front".into(),
        }),
        qos: None,
    });
    recs.push(anomaly((4 << 64) + 1, t, "node-0", lone, 0.8));
    rt.block_on(put(&kinesis, "records", &recs));
    agg.wait("pod incident inhibited", Duration::from_secs(30), |a| {
        a.incidents("namespace=web")
            .incidents
            .first()
            .is_some_and(|i| matches!(i.muted, Some(MutedBy::Inhibition { .. })))
    });
    let node_inc = agg
        .incidents("")
        .incidents
        .into_iter()
        .find(|i| i.labels.get("scope").map(String::as_str) == Some("node"))
        .expect("node incident");
    let web = agg.incidents("namespace=web").incidents.remove(0);
    assert!(agg.metric("selfheal_aggregator_incidents_muted{by=\"inhibition\"}") >= 1.0);
    assert_eq!(
        web.muted,
        Some(MutedBy::Inhibition {
            rule: "node-inhibits-pods".into(),
            by: node_inc.id.clone()
        })
    );
    // The node incident resolves; the inhibition ends with it.
    cli(
        &agg,
        &["incidents", "resolve", node_inc.id.as_str(), "--by", "ops"],
    );
    agg.wait("inhibition ends", Duration::from_secs(10), |a| {
        a.incidents("namespace=web").incidents[0].muted.is_none()
    });
    // A silence can be expired by hand too.
    let out = cli(
        &agg,
        &[
            "silences",
            "add",
            "-m",
            "namespace=web",
            "--duration",
            "1h",
            "--by",
            "ana",
            "--comment",
            "x",
        ],
    );
    let sid2 = out
        .split_whitespace()
        .nth(1)
        .expect("silence id")
        .to_owned();
    agg.wait("web silenced", Duration::from_secs(5), |a| {
        a.incidents("namespace=web").incidents[0].muted
            == Some(MutedBy::Silence { id: sid2.clone() })
    });
    cli(&agg, &["silences", "expire", &sid2, "--by", "ana"]);
    assert!(agg.incidents("namespace=web").incidents[0].muted.is_none());
    agg.stop();
}

/// node-`n`'s ingest credential in the HTTP test.
fn ingest_token(n: usize) -> String {
    format!("node-{n}-ingest-token-0123456789abcdef")
}

async fn post_batch(url: &str, node: usize, body: Vec<u8>) -> u16 {
    reqwest::Client::new()
        .post(url)
        .bearer_auth(ingest_token(node))
        .header(
            reqwest::header::CONTENT_TYPE,
            selfheal_core::batch::CONTENT_TYPE,
        )
        .timeout(Duration::from_secs(10))
        .body(body)
        .send()
        .await
        .expect("the ingest endpoint answers")
        .status()
        .as_u16()
}

/// A wire record of a schema version this build does not read (the header says 99).
fn wrong_version(e: &Envelope) -> Vec<u8> {
    let mut w = encode_wire(e).expect("encode");
    w[2..4].copy_from_slice(&99u16.to_le_bytes());
    w
}

#[test]
fn the_same_storm_through_http_ingest_is_the_same_incident_and_bad_records_lose_nothing() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    let agg = Agg::start_http(dir.path(), free_port());
    let url = format!("{}/v1/ingest", agg.url());
    let t0 = now_ms() - 120_000;
    let recs = storm(6 << 64, t0);
    // Each node's agent posts its own records (the credential names the node).
    let per_node: Vec<Vec<Vec<u8>>> = (0..3)
        .map(|n| {
            recs.iter()
                .filter(|e| e.record().node == format!("node-{n}"))
                .map(|e| encode_wire(e).expect("encode"))
                .collect()
        })
        .collect();
    // Each request carries a malformed record among good ones: skipped, counted, the rest kept.
    let mut bad = 0;
    let mut ok = 0;
    for (node, wire) in per_node.iter().enumerate() {
        for (n, chunk) in wire.chunks(250).enumerate() {
            let mut frames: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            let junk = format!("not a record {node} {n}").into_bytes();
            frames.insert(10, &junk);
            bad += 1;
            let body = selfheal_core::batch::encode_batch(frames).expect("frame");
            assert_eq!(rt.block_on(post_batch(&url, node, body)), 200, "{node}/{n}");
            ok += 1;
        }
    }
    // A record of a newer schema version: the request is answered 503 (the agent keeps it and
    // retries after the aggregator is upgraded); nothing of it is logged.
    let old = wrong_version(&recs[0]);
    let body = selfheal_core::batch::encode_batch([old.as_slice()]).expect("frame");
    assert_eq!(rt.block_on(post_batch(&url, 0, body)), 503);
    // An oversized request (one record bigger than the body limit) is refused whole, 413; the
    // storm's records beside it are unaffected.
    let mut huge = checkout_cpu_anomaly(7 << 64, t0, 0, 0, 0.9);
    if let Payload::Anomaly(a) = &mut huge.payload {
        a.features = vec![1.0; HTTP_MAX_BODY / 4];
    }
    let body = selfheal_core::batch::encode_batch([encode_wire(&huge).expect("encode").as_slice()])
        .expect("frame");
    assert!(body.len() > HTTP_MAX_BODY);
    assert_eq!(rt.block_on(post_batch(&url, 0, body)), 413);
    // Broken framing: 400.
    assert_eq!(rt.block_on(post_batch(&url, 0, vec![9, 0, 0, 0, 1])), 400);
    // Each node's first 250 records resent (an agent's retry of a request it saw no answer to).
    for (node, wire) in per_node.iter().enumerate() {
        let body = selfheal_core::batch::encode_batch(wire[..250].iter().map(Vec::as_slice))
            .expect("frame");
        assert_eq!(rt.block_on(post_batch(&url, node, body)), 200);
        ok += 1;
    }
    agg.wait("every anomaly counted", Duration::from_secs(60), |a| {
        a.metric("selfheal_aggregator_incidents_anomalies_total") >= 3000.0
    });
    std::thread::sleep(Duration::from_millis(1000));
    let list = agg.incidents("");
    assert_eq!(list.incidents.len(), 1, "exactly one incident");
    let inc = &list.incidents[0];
    assert_eq!(inc.anomaly_count, 3000);
    assert_eq!((inc.pod_count, inc.node_count), (15, 3));
    assert_eq!(inc.first_seen_ms, t0);
    assert_eq!(inc.last_seen_ms, t0 + 199 * 600);
    assert_eq!(inc.labels["workload"], "Deployment/checkout");
    assert_eq!(
        agg.metric("selfheal_aggregator_incidents_anomalies_total"),
        3000.0
    );
    // Every resent record is counted once as a duplicate: the ingest log drops the resends it
    // remembers, the incident handler any that get past it.
    let dup = agg.metric("selfheal_aggregator_ingest_log_duplicate_records_total")
        + agg.metric("selfheal_aggregator_incidents_anomalies_deduplicated_total");
    assert_eq!(dup, 750.0);
    assert_eq!(
        agg.metric("selfheal_aggregator_consume_malformed_records_total"),
        f64::from(bad),
        "malformed and wrong-version records are counted"
    );
    for (status, want) in [
        ("200", f64::from(ok)),
        ("400", 1.0),
        ("413", 1.0),
        ("503", 1.0),
    ] {
        assert_eq!(
            agg.metric(&format!(
                "selfheal_aggregator_ingest_requests_total{{status=\"{status}\"}}"
            )),
            want,
            "{status}"
        );
    }
    // The lake holds every good record.
    let want: HashSet<u128> = recs.iter().map(|e| e.record().id.as_u128()).collect();
    let start = Instant::now();
    loop {
        let ids = lake_ids(&rt, dir.path());
        if want.is_subset(&ids) {
            assert!(
                !ids.contains(&(7 << 64)),
                "the refused record is not in the lake"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "lake misses records"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    agg.stop();
}

/// Exposes the binary's page to a browser: see tests/incidents_page.rs.
pub(crate) fn start_with_storm(
    rt: &tokio::runtime::Runtime,
    moto: &Moto,
    dir: &Path,
) -> (Agg, String) {
    let kinesis = kinesis_client(&moto.endpoint());
    rt.block_on(create_stream(&kinesis, "records", 1));
    let agg = Agg::start(dir, moto, free_port());
    rt.block_on(put(
        &kinesis,
        "records",
        &storm(5 << 64, now_ms() - 120_000),
    ));
    agg.wait("storm counted", Duration::from_secs(90), |a| {
        a.incidents("")
            .incidents
            .first()
            .is_some_and(|i| i.anomaly_count >= 3000)
    });
    let id = agg.incidents("").incidents[0].id.to_string();
    (agg, id)
}
