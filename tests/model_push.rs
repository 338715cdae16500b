//! Model push end to end: `selfheal model publish` into a real moto S3 server, and the real agent
//! binary pulling models from S3 and from a kubelet-style ConfigMap mount, swapping them live,
//! refusing corrupt ones and riding out an S3 outage.
//!
//! Every agent here runs one node CPU model whose threshold every score reaches (1-of-1), so each
//! cycle prints one anomaly naming the model version in use: the version sequence on stdout is
//! the model history, cycle by cycle.

use crate::support::forest::{self, Rng, dataset, grow_forest};
use crate::support::moto::{
    Moto, aws_env, create_bucket, get_object, list_keys, put_object, s3_client,
};
use crate::support::netproxy::{Mode, TcpProxy};
use crate::support::{KillOnDrop, free_port, http_get, selfheal};
use selfheal_agent::detect::family_signals;
use selfheal_core::Family;
use selfheal_core::features::FeatureSpec;
use selfheal_core::model::{AlarmRule, MANIFEST_FILE, MODEL_FILE, ModelManifest};
use selfheal_core::schema::{Envelope, Payload, Subject};
use selfheal_model_export::onnx::write_model_dir;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const BUCKET: &str = "selfheal-models";
const STORE: &str = "s3://selfheal-models/fleet/prod";
const PREFIX: &str = "fleet/prod";

/// Writes a node CPU model directory `<root>/<version>` (value-only features, 100 trees).
fn model_dir(root: &Path, version: &str, seed: u64) -> PathBuf {
    let signals = family_signals(Family::Cpu);
    let mut rng = Rng::new(seed);
    let train = dataset(&mut rng, 4096, signals.len());
    let forest = grow_forest(&mut rng, &train, signals.len(), 100, 256);
    let manifest = forest::manifest(
        &forest,
        FeatureSpec::raw(signals),
        Family::Cpu.as_str(),
        version,
        0.0,
        AlarmRule::k_of_n(1, 1),
    );
    let dir = root.join(version);
    write_model_dir(&dir, &forest, manifest).expect("write model dir");
    dir
}

/// `selfheal model publish DIR --to TO` against moto at `endpoint`.
fn publish_cmd(dir: &Path, to: &str, endpoint: &str) -> Command {
    let mut cmd = selfheal();
    aws_env(&mut cmd)
        .env("AWS_ENDPOINT_URL", endpoint)
        .args(["model", "publish"])
        .arg(dir)
        .args(["--to", to]);
    cmd
}

fn publish_ok(dir: &Path, endpoint: &str) {
    let out = publish_cmd(dir, STORE, endpoint)
        .output()
        .expect("run selfheal model publish");
    assert!(
        out.status.success(),
        "publish {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn key(version: &str, file: &str) -> String {
    format!("{PREFIX}/cpu/{version}/{file}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_s3_writes_latest_last_and_never_overwrites_a_version() {
    let moto = Moto::start();
    let s3 = s3_client(&moto.endpoint());
    create_bucket(&s3, BUCKET).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let versions: Vec<PathBuf> = (1..=4)
        .map(|i| model_dir(tmp.path(), &format!("v{i}"), i))
        .collect();

    // A reader polls `latest` until it names v4: whatever it names must already be complete.
    let reader = {
        let s3 = s3.clone();
        tokio::spawn(async move {
            let mut seen: Vec<String> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while seen.last().map(String::as_str) != Some("v4") {
                assert!(Instant::now() < deadline, "latest never named v4: {seen:?}");
                if let Some(v) = get_object(&s3, BUCKET, &format!("{PREFIX}/cpu/latest")).await {
                    let v = String::from_utf8(v)
                        .expect("utf-8 latest")
                        .trim()
                        .to_owned();
                    for file in [MODEL_FILE, MANIFEST_FILE] {
                        assert!(
                            get_object(&s3, BUCKET, &key(&v, file)).await.is_some(),
                            "latest names {v} before its {file} is there"
                        );
                    }
                    if seen.last() != Some(&v) {
                        seen.push(v);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        })
    };
    for dir in &versions {
        let endpoint = moto.endpoint();
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || publish_ok(&dir, &endpoint))
            .await
            .expect("publish task");
    }
    let seen = reader.await.expect("reader saw only complete versions");
    assert!(
        seen.len() >= 2,
        "the reader watched the publishes: {seen:?}"
    );

    let mut expected: Vec<String> = (1..=4)
        .flat_map(|i| {
            [
                key(&format!("v{i}"), MANIFEST_FILE),
                key(&format!("v{i}"), MODEL_FILE),
            ]
        })
        .collect();
    expected.insert(0, format!("{PREFIX}/cpu/latest"));
    expected.sort();
    assert_eq!(list_keys(&s3, BUCKET).await, expected);
    for file in [MODEL_FILE, MANIFEST_FILE] {
        assert_eq!(
            get_object(&s3, BUCKET, &key("v2", file)).await,
            Some(std::fs::read(versions[1].join(file)).expect("local file")),
            "{file} uploaded byte for byte"
        );
    }

    // Publishing v2 again is a no-op on the version and points `latest` back at it.
    let endpoint = moto.endpoint();
    let v2 = versions[1].clone();
    tokio::task::spawn_blocking(move || publish_ok(&v2, &endpoint))
        .await
        .expect("republish task");
    let latest = get_object(&s3, BUCKET, &format!("{PREFIX}/cpu/latest")).await;
    assert_eq!(latest.as_deref(), Some(&b"v2\n"[..]));

    // Another model under the name v2 is refused, and nothing changes.
    let impostor = model_dir(&tmp.path().join("other"), "v2", 99);
    let out = publish_cmd(&impostor, STORE, &moto.endpoint())
        .output()
        .expect("run publish");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "overwrite accepted");
    assert!(
        stderr.contains("already exists with different content"),
        "{stderr}"
    );
    assert_eq!(
        get_object(&s3, BUCKET, &key("v2", MODEL_FILE)).await,
        Some(std::fs::read(versions[1].join(MODEL_FILE)).expect("local file"))
    );

    // A model directory failing its own checksum uploads nothing.
    let bad = model_dir(tmp.path(), "v5", 5);
    std::fs::write(bad.join(MODEL_FILE), b"not the model").expect("corrupt");
    let out = publish_cmd(&bad, STORE, &moto.endpoint())
        .output()
        .expect("run publish");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match the manifest"));
    assert_eq!(list_keys(&s3, BUCKET).await, expected);
}

/// The agent binary printing JSON lines. Each cycle prints one node CPU sample, then (its model
/// alarming on every score) one node CPU anomaly for it: the reader pairs them, so a cycle that
/// went unscored shows as a sample without an anomaly.
struct Agent {
    _child: KillOnDrop,
    port: u16,
    cycles: mpsc::UnboundedReceiver<(i64, Option<String>)>,
    scored_once: bool,
}

impl Agent {
    fn start(source: &str, extra_env: &[(&str, &str)]) -> Agent {
        let port = free_port();
        let mut cmd = selfheal();
        aws_env(&mut cmd)
            .args(["agent", "--print"])
            .env("SELFHEAL_AGENT_INTERVAL_SECS", "0.2")
            .env("SELFHEAL_AGENT_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("SELFHEAL_AGENT_PODS__SOURCE", "none")
            .env("SELFHEAL_AGENT_MODELS__SOURCE", source)
            .env("SELFHEAL_AGENT_MODELS__POLL_SECS", "0.2")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = KillOnDrop(cmd.spawn().expect("spawn agent"));
        let stdout = child.0.stdout.take().expect("stdout");
        let (tx, cycles) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let node_cpu =
                |r: &selfheal_core::Record| r.subject == Subject::Node && r.family == Family::Cpu;
            let mut unscored: Option<i64> = None;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let env: Envelope = serde_json::from_str(&line).expect("envelope per line");
                let sent = match env.payload {
                    Payload::Sample { record, .. } if node_cpu(&record) => {
                        let previous = unscored.replace(record.ts_ms);
                        previous.map(|ts| tx.send((ts, None)))
                    }
                    Payload::Anomaly(a) if node_cpu(&a.record) => {
                        assert_eq!(
                            unscored.take(),
                            Some(a.record.ts_ms),
                            "anomaly of this cycle"
                        );
                        Some(tx.send((a.record.ts_ms, Some(a.model_version))))
                    }
                    _ => None,
                };
                if sent.is_some_and(|r| r.is_err()) {
                    break;
                }
            }
        });
        Agent {
            _child: child,
            port,
            cycles,
            scored_once: false,
        }
    }

    /// The next cycle: its timestamp and the model version that scored it. Once a model has
    /// scored, every later cycle must be scored too.
    async fn next(&mut self) -> (i64, String) {
        loop {
            let (ts, version) = tokio::time::timeout(Duration::from_secs(20), self.cycles.recv())
                .await
                .expect("a node CPU record every cycle")
                .expect("agent stdout open");
            match version {
                Some(v) => {
                    self.scored_once = true;
                    return (ts, v);
                }
                None => assert!(!self.scored_once, "the cycle at {ts} ms was not scored"),
            }
        }
    }

    /// Reads cycles until one scores with `version`; returns the (timestamp, version) history.
    async fn wait_for(&mut self, version: &str) -> Vec<(i64, String)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut history = Vec::new();
        loop {
            let cycle = self.next().await;
            let done = cycle.1 == version;
            history.push(cycle);
            if done {
                return history;
            }
            assert!(
                Instant::now() < deadline,
                "{version} never scored: {history:?}"
            );
        }
    }

    /// `/metrics` once `cond` holds on it (at most 20 s).
    async fn metrics_when(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let port = self.port;
            let got = tokio::task::spawn_blocking(move || http_get(port, "/metrics"))
                .await
                .expect("metrics task");
            if let Some((200, body)) = got
                && cond(&body)
            {
                return body;
            }
            assert!(Instant::now() < deadline, "{what} never showed in /metrics");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The value of a counter line `name` in a metrics text, 0 when absent.
fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_pulls_models_from_s3_swaps_refuses_and_rides_out_an_outage() {
    let moto = Moto::start();
    let s3 = s3_client(&moto.endpoint());
    create_bucket(&s3, BUCKET).await;
    let proxy = TcpProxy::start(([127, 0, 0, 1], moto.port).into()).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let publish = |version: &str, seed: u64| {
        let dir = model_dir(tmp.path(), version, seed);
        let endpoint = moto.endpoint();
        tokio::task::spawn_blocking(move || publish_ok(&dir, &endpoint))
    };
    publish("v1", 1).await.expect("publish v1");
    let mut agent = Agent::start(
        STORE,
        &[
            ("SELFHEAL_AGENT_MODELS__ENDPOINT_URL", &proxy.endpoint()),
            (
                "SELFHEAL_AGENT_MODELS__CACHE_DIR",
                cache.to_str().expect("utf-8 path"),
            ),
        ],
    );
    agent.wait_for("v1").await;

    // Hot swap: every cycle is scored, by v1 until the switch and by v2 after it.
    publish("v2", 2).await.expect("publish v2");
    let history = agent.wait_for("v2").await;
    let tail: Vec<(i64, String)> = [agent.next().await, agent.next().await].into();
    let all: Vec<&(i64, String)> = history.iter().chain(&tail).collect();
    let switch = all.iter().position(|(_, v)| v == "v2").expect("v2 scored");
    assert!(all[..switch].iter().all(|(_, v)| v == "v1"), "{all:?}");
    assert!(all[switch..].iter().all(|(_, v)| v == "v2"), "{all:?}");
    let metrics = agent
        .metrics_when("v2 in use", |m| {
            m.contains("selfheal_agent_model_info{family=\"cpu\",version=\"v2\"} 1")
        })
        .await;
    assert!(!metrics.contains("version=\"v1\""), "{metrics}");
    // Polls of an unchanged `latest` (conditional GETs answered 304) are not errors.
    assert_eq!(
        counter(&metrics, "selfheal_agent_model_source_errors_total"),
        0.0,
        "{metrics}"
    );

    // A corrupt v3 written straight into the bucket (its model does not match the manifest's
    // checksum) is downloaded, refused and counted; v2 keeps scoring.
    let mut manifest: ModelManifest = serde_json::from_slice(
        &get_object(&s3, BUCKET, &key("v2", MANIFEST_FILE))
            .await
            .expect("v2 manifest"),
    )
    .expect("manifest json");
    manifest.version = "v3".into();
    put_object(
        &s3,
        BUCKET,
        &key("v3", MODEL_FILE),
        b"\x08\x07garbage".to_vec(),
    )
    .await;
    put_object(
        &s3,
        BUCKET,
        &key("v3", MANIFEST_FILE),
        serde_json::to_vec(&manifest).expect("json"),
    )
    .await;
    put_object(
        &s3,
        BUCKET,
        &format!("{PREFIX}/cpu/latest"),
        b"v3\n".to_vec(),
    )
    .await;
    agent
        .metrics_when("the refusal of v3", |m| {
            m.contains("selfheal_agent_model_loads_total{family=\"cpu\",result=\"refused\"} 1")
        })
        .await;
    for _ in 0..3 {
        assert_eq!(agent.next().await.1, "v2");
    }

    // S3 unreachable: errors are counted, v2 keeps scoring, and the next version after the
    // outage is picked up.
    proxy.set(Mode::Refuse);
    let metrics = agent
        .metrics_when("S3 errors", |m| {
            counter(m, "selfheal_agent_model_source_errors_total") >= 2.0
        })
        .await;
    assert!(
        metrics.contains("selfheal_agent_model_info{family=\"cpu\",version=\"v2\"} 1"),
        "{metrics}"
    );
    for _ in 0..3 {
        assert_eq!(agent.next().await.1, "v2");
    }
    publish("v4", 4)
        .await
        .expect("publish v4 during the outage");
    for _ in 0..3 {
        assert_eq!(
            agent.next().await.1,
            "v2",
            "v4 cannot arrive while S3 is down"
        );
    }
    proxy.set(Mode::Pass);
    agent.wait_for("v4").await;
    // Only the version in use stays in the cache.
    let mut cached: Vec<String> = std::fs::read_dir(cache.join("cpu"))
        .expect("cache dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    cached.sort();
    assert_eq!(cached, ["latest", "v4"]);
}

/// Lays out `files` (relative path → bytes) as the kubelet's atomic writer does for a ConfigMap
/// volume: a new hidden timestamped directory, a `..data` symlink swapped to it with a rename,
/// user-visible top-level entries as symlinks through `..data`, then the old directory removed.
fn kubelet_write(mount: &Path, stamp: &str, files: &[(&str, Vec<u8>)]) {
    let ts_dir = mount.join(format!("..{stamp}"));
    for (rel, bytes) in files {
        let path = ts_dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, bytes).expect("write key");
    }
    let old = std::fs::read_link(mount.join("..data")).ok();
    let tmp_link = mount.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{stamp}"), &tmp_link).expect("symlink ..data_tmp");
    std::fs::rename(&tmp_link, mount.join("..data")).expect("swap ..data");
    for (rel, _) in files {
        let top = rel.split('/').next().expect("top-level entry");
        let visible = mount.join(top);
        if std::fs::symlink_metadata(&visible).is_err() {
            std::os::unix::fs::symlink(format!("..data/{top}"), &visible).expect("symlink key");
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(mount.join(old)).expect("remove old timestamped dir");
    }
}

/// The ConfigMap keys of a model directory, mapped (with `items`) to `<family>/<file>`.
fn configmap_files(dir: &Path) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "cpu/model.onnx",
            std::fs::read(dir.join(MODEL_FILE)).expect("model"),
        ),
        (
            "cpu/manifest.json",
            std::fs::read(dir.join(MANIFEST_FILE)).expect("manifest"),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_swaps_models_when_the_kubelet_updates_a_configmap_mount() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let v1 = model_dir(tmp.path(), "v1", 1);
    // A ConfigMap holds at most 1 MiB: a 100-tree model must fit with room to spare.
    let bytes: usize = configmap_files(&v1).iter().map(|(_, b)| b.len()).sum();
    assert!(bytes < 512 * 1024, "a 100-tree model is {bytes} bytes");
    let mount = tmp.path().join("mount");
    std::fs::create_dir(&mount).expect("mount dir");
    kubelet_write(
        &mount,
        "2026_11_25_10_00_00.000000001",
        &configmap_files(&v1),
    );
    let mut agent = Agent::start(mount.to_str().expect("utf-8 path"), &[]);
    agent.wait_for("v1").await;

    let v2 = model_dir(tmp.path(), "v2", 2);
    kubelet_write(
        &mount,
        "2026_11_25_10_05_00.000000002",
        &configmap_files(&v2),
    );
    let history = agent.wait_for("v2").await;
    let switch = history.len() - 1;
    assert!(
        history[..switch].iter().all(|(_, v)| v == "v1"),
        "{history:?}"
    );

    // A corrupt update is refused and v2 keeps scoring.
    let mut bad = configmap_files(&v2);
    bad[0].1.truncate(100);
    kubelet_write(&mount, "2026_11_25_10_10_00.000000003", &bad);
    agent
        .metrics_when("the refusal", |m| {
            m.contains("selfheal_agent_model_loads_total{family=\"cpu\",result=\"refused\"} 1")
        })
        .await;
    for _ in 0..3 {
        assert_eq!(agent.next().await.1, "v2");
    }
}

/// The other ConfigMap shape: one ConfigMap per family mounted at `<source>/<family>/`, its
/// `..data` link inside the family directory. The registry loads each update once.
#[test]
fn registry_follows_a_configmap_mounted_per_family() {
    use selfheal_agent::detect::{ModelEvent, ModelRegistry};
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = tmp.path().join("models");
    let mount = source.join("cpu");
    std::fs::create_dir_all(&mount).expect("mount dir");
    let keys = |dir: &Path| {
        vec![
            (
                MODEL_FILE,
                std::fs::read(dir.join(MODEL_FILE)).expect("model"),
            ),
            (
                MANIFEST_FILE,
                std::fs::read(dir.join(MANIFEST_FILE)).expect("manifest"),
            ),
        ]
    };
    let mut registry = ModelRegistry::new(source);
    let loaded = |events: Vec<ModelEvent>| -> Vec<String> {
        events
            .into_iter()
            .map(|e| match e {
                ModelEvent::Loaded { scorer, .. } => scorer.manifest().version.clone(),
                ModelEvent::Refused { error, .. } => panic!("refused: {error:?}"),
            })
            .collect()
    };
    for (i, version) in ["v1", "v2"].into_iter().enumerate() {
        let dir = model_dir(tmp.path(), version, i as u64 + 1);
        kubelet_write(
            &mount,
            &format!("2026_11_25_10_0{i}_00.00000000{i}"),
            &keys(&dir),
        );
        assert_eq!(loaded(registry.poll()), [version]);
        assert!(
            registry.poll().is_empty(),
            "an unchanged mount loads nothing"
        );
    }
}
