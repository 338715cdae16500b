//! Forwarding end to end: the spool and forwarder of `selfheal-agent` against a real moto
//! Kinesis, through proxies that cut the network or fail part of each PutRecords call, and the
//! `selfheal agent spool` commands in a process that is killed with SIGKILL.

use crate::support::faultproxy::FaultProxy;
use crate::support::moto::{Moto, aws_env, create_stream, kinesis_client, read_stream};
use crate::support::netproxy::{Mode, TcpProxy};
use crate::support::{KillOnDrop, selfheal, signal, stdout_of};
use selfheal_agent::forward::kinesis::KinesisSink;
use selfheal_agent::forward::spool::{FsyncPolicy, Spool, SpoolConfig};
use selfheal_agent::forward::{ForwardConfig, ForwardStats, Forwarder};
use selfheal_core::schema::{Anomaly, OwnerRef, decode_wire};
use selfheal_core::{Envelope, Family, Metric, Payload, PodRef, Record, RecordId, Subject};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Record `i`: a pod sample of one of four workloads; every tenth is an anomaly.
fn envelope(i: u128) -> Envelope {
    let record = Record {
        id: RecordId::from_u128(i),
        ts_ms: 1_700_000_000_000 + i as i64,
        node: "node-a".into(),
        subject: Subject::Pod(PodRef {
            uid: format!("uid-{}", i % 4),
            namespace: Some("shop".into()),
            name: Some(format!("web-{}-abc", i % 4)),
            owner: Some(OwnerRef {
                kind: "Deployment".into(),
                name: format!("web-{}", i % 4),
            }),
            qos: None,
        }),
        family: Family::Cpu,
        values: BTreeMap::from([(Metric::CpuUsageCores, 0.25)]),
    };
    let payload = if i.is_multiple_of(10) {
        Payload::Anomaly(Anomaly {
            record,
            score: 0.8,
            threshold: 0.6,
            model_version: "test-1".into(),
            features: vec![0.1, 0.2],
            top_features: vec![("cpu_usage_cores".into(), 0.7)],
            window: Vec::new(),
        })
    } else {
        Payload::Sample {
            record,
            inclusion_probability: 0.1,
        }
    };
    Envelope::new(payload)
}

fn open_spool(dir: &Path, segment_bytes: u64) -> Arc<Spool> {
    let settings = SpoolConfig {
        dir: dir.to_owned(),
        max_bytes: 64 << 20,
        segment_bytes,
        fsync: FsyncPolicy::Never,
        fsync_interval_ms: 1000,
    }
    .validate()
    .expect("spool settings");
    Arc::new(Spool::open(settings).expect("open spool"))
}

fn test_forward_config() -> ForwardConfig {
    ForwardConfig {
        linger_ms: 20,
        retry_initial_ms: 50,
        retry_max_ms: 400,
        request_timeout_ms: 1000,
        ..ForwardConfig::default()
    }
}

/// A forwarder task to `endpoint`; returns its stats, the shutdown sender and the task.
fn spawn_forwarder(
    spool: &Arc<Spool>,
    endpoint: &str,
    stream: &str,
) -> (
    Arc<ForwardStats>,
    watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let sink = KinesisSink::new(kinesis_client(endpoint), stream.to_owned());
    let settings = test_forward_config().validate().expect("forward settings");
    let fwd = Forwarder::new(Arc::clone(spool), sink, settings);
    let stats = fwd.stats();
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(fwd.run(rx, Duration::from_secs(5)));
    (stats, tx, task)
}

async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Decodes every record on the stream; returns how many times each record id arrived.
async fn ids_on_stream(endpoint: &str, stream: &str) -> HashMap<u128, usize> {
    let mut counts = HashMap::new();
    for (key, data) in read_stream(&kinesis_client(endpoint), stream).await {
        let env = decode_wire(&data).expect("a selfheal wire record on the stream");
        let rec = env.record();
        assert_eq!(
            key,
            rec.subject.workload_key(&rec.node),
            "partition key = workload"
        );
        *counts.entry(rec.id.as_u128()).or_default() += 1;
    }
    counts
}

fn assert_all_arrived(counts: &HashMap<u128, usize>, ids: impl Iterator<Item = u128>) {
    let mut missing = Vec::new();
    for id in ids {
        if !counts.contains_key(&id) {
            missing.push(id);
        }
    }
    assert!(
        missing.is_empty(),
        "{} records lost, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_records_arrive_on_the_kinesis_stream_keyed_by_workload() {
    let moto = Moto::start();
    create_stream(&kinesis_client(&moto.endpoint()), "fwd", 2).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = open_spool(tmp.path(), 1 << 20);
    let (stats, stop, task) = spawn_forwarder(&spool, &moto.endpoint(), "fwd");
    for i in 0..2000 {
        spool.push(&envelope(i)).expect("spooled");
    }
    wait_until("2000 records sent", Duration::from_secs(60), || {
        stats.records_sent.load(Ordering::Relaxed) == 2000
    })
    .await;
    stop.send_replace(true);
    task.await.expect("forwarder ends");
    assert_eq!(spool.depth(), 0, "everything acknowledged");
    let counts = ids_on_stream(&moto.endpoint(), "fwd").await;
    assert_eq!(counts.len(), 2000);
    assert_all_arrived(&counts, 0..2000);
    assert!(
        stats.calls.load(Ordering::Relaxed) >= 4,
        "batched, ≤ 500 per call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_produced_during_an_outage_all_arrive_after_it() {
    let moto = Moto::start();
    create_stream(&kinesis_client(&moto.endpoint()), "outage", 1).await;
    let proxy = TcpProxy::start(([127, 0, 0, 1], moto.port).into()).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = open_spool(tmp.path(), 64 << 10);
    let (stats, stop, task) = spawn_forwarder(&spool, &proxy.endpoint(), "outage");
    for i in 0..200 {
        spool.push(&envelope(i)).expect("spooled");
    }
    wait_until("the first 200 sent", Duration::from_secs(30), || {
        stats.records_sent.load(Ordering::Relaxed) == 200
    })
    .await;
    // Outage: first connections hang (black hole), then they are refused.
    proxy.set(Mode::BlackHole);
    for i in 200..500 {
        spool.push(&envelope(i)).expect("spooled");
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    proxy.set(Mode::Refuse);
    for i in 500..800 {
        spool.push(&envelope(i)).expect("spooled");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        stats.records_sent.load(Ordering::Relaxed),
        200,
        "nothing gets through"
    );
    assert!(
        stats.call_errors.load(Ordering::Relaxed) >= 2,
        "the outage was seen"
    );
    assert!(spool.depth() >= 600);
    proxy.set(Mode::Pass);
    wait_until("the backlog drained", Duration::from_secs(60), || {
        spool.depth() == 0
    })
    .await;
    stop.send_replace(true);
    task.await.expect("forwarder ends");
    let counts = ids_on_stream(&moto.endpoint(), "outage").await;
    assert_all_arrived(&counts, 0..800);
    assert_eq!(spool.stats().dropped_total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_putrecords_failures_resend_only_the_failed_records() {
    let moto = Moto::start();
    create_stream(&kinesis_client(&moto.endpoint()), "partial", 2).await;
    let faults = FaultProxy::start(moto.endpoint(), 3).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = open_spool(tmp.path(), 1 << 20);
    let (stats, stop, task) = spawn_forwarder(&spool, &faults.endpoint(), "partial");
    for i in 0..900 {
        spool.push(&envelope(i)).expect("spooled");
    }
    wait_until("900 records sent", Duration::from_secs(60), || {
        stats.records_sent.load(Ordering::Relaxed) == 900
    })
    .await;
    stop.send_replace(true);
    task.await.expect("forwarder ends");
    let injected = faults.stats.injected.load(Ordering::Relaxed);
    assert!(
        injected >= 300,
        "every third new record failed once: {injected}"
    );
    // Exactly the failed entries came again: each record was seen once, plus once per failure.
    assert_eq!(
        faults.stats.entries_seen.load(Ordering::Relaxed),
        900 + injected
    );
    assert_eq!(stats.records_retried.load(Ordering::Relaxed), injected);
    assert_eq!(stats.throttled.load(Ordering::Relaxed), injected);
    let counts = ids_on_stream(&moto.endpoint(), "partial").await;
    assert_eq!(counts.len(), 900);
    assert!(counts.values().all(|&n| n == 1), "no record landed twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_spool_segment_is_skipped_counted_and_the_rest_delivered() {
    let moto = Moto::start();
    create_stream(&kinesis_client(&moto.endpoint()), "corrupt", 1).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    {
        let spool = open_spool(tmp.path(), 16 << 10);
        for i in 1..=600 {
            // Samples only (i % 10 != 0 avoided below): all in one lane, several segments.
            if i % 10 != 0 {
                spool.push(&envelope(i)).expect("spooled");
            }
        }
    }
    let lane = tmp.path().join("sample");
    let mut segs: Vec<_> = std::fs::read_dir(&lane)
        .expect("lane dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 3, "{segs:?}");
    // Bit rot across the middle of the second segment.
    let victim = &segs[1];
    let mut bytes = std::fs::read(victim).expect("read segment");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5A;
    }
    std::fs::write(victim, &bytes).expect("corrupt segment");

    let spool = open_spool(tmp.path(), 16 << 10);
    let queued = spool.depth();
    let (stats, stop, task) = spawn_forwarder(&spool, &moto.endpoint(), "corrupt");
    wait_until("the spool drained", Duration::from_secs(60), || {
        spool.depth() == 0
    })
    .await;
    stop.send_replace(true);
    task.await.expect("forwarder ends");
    let sent = stats.records_sent.load(Ordering::Relaxed);
    assert_eq!(sent, queued);
    assert!(spool.stats().corrupt_regions.load(Ordering::Relaxed) >= 1);
    let counts = ids_on_stream(&moto.endpoint(), "corrupt").await;
    let pushed = (1..=600u128).filter(|i| i % 10 != 0).count();
    let lost = pushed - counts.len();
    assert!(
        (1..=3).contains(&lost),
        "only the records hit by the rot are lost: {lost}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_killed_during_an_outage_replays_its_spool_on_restart() {
    let moto = Moto::start();
    create_stream(&kinesis_client(&moto.endpoint()), "killed", 1).await;
    let proxy = TcpProxy::start(([127, 0, 0, 1], moto.port).into()).await;
    proxy.set(Mode::Refuse);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_str().expect("utf-8 path").to_owned();
    {
        let spool = open_spool(tmp.path(), 8 << 20);
        for i in 0..300 {
            spool.push(&envelope(i)).expect("spooled");
        }
    }
    let drain = |timeout: &str| {
        let mut cmd = selfheal();
        aws_env(&mut cmd).args([
            "agent",
            "spool",
            "drain",
            "--dir",
            &dir,
            "--stream",
            "killed",
            "--endpoint-url",
            &proxy.endpoint(),
            "--timeout-secs",
            timeout,
        ]);
        cmd
    };
    // The forwarder process retries against the outage, and dies by SIGKILL mid-way.
    let child = KillOnDrop(drain("120").spawn().expect("start selfheal"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    signal(child.0.id(), "KILL");
    drop(child);

    let inspect =
        stdout_of(selfheal().args(["agent", "spool", "inspect", "--json", "--dir", &dir]));
    let ins: serde_json::Value = serde_json::from_str(&inspect).expect("json");
    assert_eq!(ins["anomaly"]["records"], 30);
    assert_eq!(ins["sample"]["records"], 270);

    // The network is back; a new process replays the spool.
    proxy.set(Mode::Pass);
    let mut again = drain("60");
    let out = tokio::task::spawn_blocking(move || again.output())
        .await
        .expect("join")
        .expect("run selfheal");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts = ids_on_stream(&moto.endpoint(), "killed").await;
    assert_eq!(counts.len(), 300);
    assert_all_arrived(&counts, 0..300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_sink_posts_batches_and_retries_server_errors() {
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use selfheal_agent::forward::http::{CONTENT_TYPE, HttpConfig, HttpSink};
    use selfheal_core::batch::decode_batch;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Ingest {
        calls: std::sync::atomic::AtomicU64,
        ids: Mutex<Vec<u128>>,
    }
    async fn ingest(State(s): State<Arc<Ingest>>, headers: HeaderMap, body: Bytes) -> StatusCode {
        // The first two calls fail as an overloaded server would.
        if s.calls.fetch_add(1, Ordering::Relaxed) < 2 {
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        if headers
            .get("content-type")
            .is_none_or(|v| v != CONTENT_TYPE)
        {
            return StatusCode::UNSUPPORTED_MEDIA_TYPE;
        }
        let Ok(records) = decode_batch(&body) else {
            return StatusCode::BAD_REQUEST;
        };
        let mut ids = s.ids.lock().expect("lock");
        for r in records {
            match decode_wire(r) {
                Ok(env) => ids.push(env.record().id.as_u128()),
                Err(_) => return StatusCode::BAD_REQUEST,
            }
        }
        StatusCode::NO_CONTENT
    }
    let state = Arc::new(Ingest::default());
    let app = axum::Router::new()
        .route("/v1/ingest", axum::routing::post(ingest))
        .with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind ingest");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = open_spool(tmp.path(), 1 << 20);
    let sink = HttpSink::from_config(&HttpConfig {
        url: format!("http://{addr}/v1/ingest"),
        connect_timeout_ms: 1000,
        ..HttpConfig::default()
    })
    .expect("http sink");
    let fwd = Forwarder::new(
        Arc::clone(&spool),
        sink,
        test_forward_config().validate().expect("settings"),
    );
    let stats = fwd.stats();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(fwd.run(rx, Duration::from_secs(5)));
    for i in 0..1200 {
        spool.push(&envelope(i)).expect("spooled");
    }
    wait_until("1200 records posted", Duration::from_secs(30), || {
        stats.records_sent.load(Ordering::Relaxed) == 1200
    })
    .await;
    stop.send_replace(true);
    task.await.expect("forwarder ends");
    server.abort();
    assert_eq!(stats.call_errors.load(Ordering::Relaxed), 2);
    let mut ids = state.ids.lock().expect("lock").clone();
    ids.sort_unstable();
    assert_eq!(ids, (0..1200).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_the_spool_within_the_grace_period_and_no_longer() {
    let moto = Moto::start();
    create_stream(&kinesis_client(&moto.endpoint()), "flush", 1).await;
    let proxy = TcpProxy::start(([127, 0, 0, 1], moto.port).into()).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = open_spool(tmp.path(), 1 << 20);
    // Reachable: everything queued at shutdown is flushed before the task ends.
    let (_stats, stop, task) = spawn_forwarder(&spool, &proxy.endpoint(), "flush");
    for i in 0..1000 {
        spool.push(&envelope(i)).expect("spooled");
    }
    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("flushed within the grace period")
        .expect("forwarder ends");
    assert_eq!(spool.depth(), 0);
    assert_all_arrived(&ids_on_stream(&moto.endpoint(), "flush").await, 0..1000);

    // Unreachable: the task still ends when the grace period is over, and keeps the records.
    proxy.set(Mode::BlackHole);
    for i in 1000..1100 {
        spool.push(&envelope(i)).expect("spooled");
    }
    let sink = KinesisSink::new(kinesis_client(&proxy.endpoint()), "flush".into());
    let fwd = Forwarder::new(
        Arc::clone(&spool),
        sink,
        test_forward_config().validate().expect("settings"),
    );
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(fwd.run(rx, Duration::from_millis(1500)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the grace period bounds shutdown")
        .expect("forwarder ends");
    assert!(
        t0.elapsed() >= Duration::from_millis(1400),
        "it kept trying for the grace period"
    );
    assert_eq!(
        spool.depth(),
        100,
        "undelivered records stay queued for the next start"
    );
}
