//! The agent's score stage end to end: real model directories written by
//! `selfheal_model_export::onnx::write_model_dir`, picked up by `detect::ModelRegistry`, scored by
//! `detect::SeriesDetector` cycle after cycle — the k-of-n rule, refusals that keep the old model, and a
//! hot swap of `latest` while cycles run.

use crate::support::forest::{self, Rng, dataset, grow_forest};
use crate::support::{KillOnDrop, free_port, http_get, selfheal};
use selfheal_agent::detect::{
    DetectError, LATEST_FILE, ModelEvent, ModelRegistry, SeriesDetector, family_signals,
};
use selfheal_agent::score::ScoreError;
use selfheal_core::features::FeatureSpec;
use selfheal_core::forest::IsolationForest;
use selfheal_core::model::{AlarmRule, MODEL_FILE};
use selfheal_core::schema::{Anomaly, PodRef, Record, RecordId, Subject};
use selfheal_core::schema::{Envelope, Payload};
use selfheal_core::{Family, Metric};
use selfheal_model_export::onnx::write_model_dir;
use std::io::BufRead;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const FAMILY: Family = Family::Restarts;
const THRESHOLD: f64 = 0.6;

/// A value-only spec over `signals`.
fn spec(signals: Vec<String>) -> FeatureSpec {
    FeatureSpec::raw(signals)
}

/// A forest over `FAMILY`'s metrics, trained on the blob `dataset` draws.
fn forest(seed: u64) -> IsolationForest {
    forest_over(seed, family_signals(FAMILY).len())
}

fn forest_over(seed: u64, n: usize) -> IsolationForest {
    let mut rng = Rng::new(seed);
    let train = dataset(&mut rng, 4096, n);
    grow_forest(&mut rng, &train, n, 100, 256)
}

/// Writes `<root>/<family>/<version>/` with `signals`, then points `latest` at it (rename, so a
/// poll sees the old or the new name).
fn publish(root: &Path, version: &str, forest: &IsolationForest, signals: Vec<String>) {
    let model = Model {
        family: FAMILY,
        threshold: THRESHOLD,
        alarm: AlarmRule::k_of_n(3, 5),
    };
    publish_model(root, &model, version, forest, signals);
}

/// What differs between the test models besides the forest.
struct Model {
    family: Family,
    threshold: f64,
    alarm: AlarmRule,
}

fn publish_model(
    root: &Path,
    model: &Model,
    version: &str,
    forest: &IsolationForest,
    signals: Vec<String>,
) {
    let manifest = forest::manifest(
        forest,
        spec(signals),
        model.family.as_str(),
        version,
        model.threshold,
        model.alarm,
    );
    let family_dir = root.join(model.family.as_str());
    write_model_dir(&family_dir.join(version), forest, manifest).expect("write model dir");
    point_latest_of(root, model.family, version);
}

fn point_latest(root: &Path, version: &str) {
    point_latest_of(root, FAMILY, version);
}

fn point_latest_of(root: &Path, family: Family, version: &str) {
    let family_dir = root.join(family.as_str());
    std::fs::create_dir_all(&family_dir).expect("family dir");
    let tmp = family_dir.join("latest.tmp");
    std::fs::write(&tmp, format!("{version}\n")).expect("write latest");
    std::fs::rename(&tmp, family_dir.join(LATEST_FILE)).expect("rename latest");
}

/// A record of `FAMILY` for pod `uid` with every metric at `values[i]`.
fn record(uid: &str, id: u128, values: [f64; 5]) -> Record {
    Record {
        id: RecordId::from_u128(id),
        ts_ms: id as i64,
        node: "n1".into(),
        subject: Subject::Pod(PodRef {
            uid: uid.into(),
            namespace: Some("default".into()),
            name: Some(uid.into()),
            owner: None,
            qos: None,
        }),
        family: FAMILY,
        values: FAMILY.metrics().zip(values).collect(),
    }
}

/// Centre of the training blob, and a point far outside it.
const NORMAL: [f64; 5] = [0.0, 1.0, 2.0, 3.0, 4.0];
const FAR: [f64; 5] = [500.0; 5];

fn loaded(events: &[ModelEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            ModelEvent::Loaded { scorer, .. } => Some(scorer.manifest().version.clone()),
            ModelEvent::Refused { .. } => None,
        })
        .collect()
}

fn refused(events: &[ModelEvent]) -> Vec<&DetectError> {
    events
        .iter()
        .filter_map(|e| match e {
            ModelEvent::Refused { error, .. } => Some(error),
            ModelEvent::Loaded { .. } => None,
        })
        .collect()
}

/// A detector with `v1` loaded from `root`, and its registry.
fn loaded_detector(root: &Path, window: usize) -> (ModelRegistry, SeriesDetector) {
    publish(root, "v1", &forest(1), family_signals(FAMILY));
    let mut registry = ModelRegistry::new(root.to_owned());
    let events = registry.poll();
    assert_eq!(loaded(&events), ["v1"], "{events:?}");
    let mut detector = SeriesDetector::new(window);
    detector.apply(&events);
    let scorer = detector.model(FAMILY).expect("model in use");
    let normal = scorer
        .score_one(&NORMAL.map(|v| v as f32))
        .expect("score normal");
    let far = scorer.score_one(&FAR.map(|v| v as f32)).expect("score far");
    assert!(
        f64::from(normal) < THRESHOLD && f64::from(far) >= THRESHOLD,
        "test forest must separate: normal {normal}, far {far}"
    );
    (registry, detector)
}

#[test]
fn anomalies_need_k_of_n_alarms_and_carry_their_context() {
    let root = tempfile::tempdir().expect("tempdir");
    let (_registry, mut detector) = loaded_detector(root.path(), 8);
    let mut id = 0;
    let mut cycle = |detector: &mut SeriesDetector, spike: [f64; 5], sustained: [f64; 5]| {
        id += 3;
        let node_cpu = Record {
            family: Family::Cpu,
            subject: Subject::Node,
            values: [(Metric::CpuUsageCores, 1.0)].into(),
            ..record("node", id + 2, NORMAL)
        };
        let records = [
            record("spiky", id, spike),
            record("sustained", id + 1, sustained),
            node_cpu,
        ];
        let d = detector.detect(&records);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        assert_eq!(d.scored, [(FAMILY, 2)], "both pods scored in one batch");
        let spiky = record("spiky", 0, NORMAL).subject;
        assert!(
            d.anomalies.iter().all(|a| a.record.subject != spiky),
            "a single spike raised"
        );
        d.anomalies
    };
    for _ in 0..10 {
        assert!(cycle(&mut detector, NORMAL, NORMAL).is_empty());
    }
    // One spike on `spiky`; `sustained` starts its anomaly: 1 and 2 alarms are not enough.
    assert!(cycle(&mut detector, FAR, FAR).is_empty());
    assert!(cycle(&mut detector, NORMAL, FAR).is_empty());
    let third = cycle(&mut detector, NORMAL, FAR);
    assert_eq!(third.len(), 1, "third alarm of five raises: {third:?}");
    let a: &Anomaly = &third[0];
    assert_eq!(a.record.subject, record("sustained", 0, FAR).subject);
    assert!(a.score >= THRESHOLD, "{}", a.score);
    assert_eq!(a.threshold, THRESHOLD);
    assert_eq!(a.model_version, "v1");
    assert_eq!(a.features, FAR.to_vec());
    assert_eq!(a.top_features.len(), 3);
    assert_eq!(a.window.len(), 8, "ring bounded by window_records");
    assert_eq!(
        a.window.last(),
        Some(&a.record),
        "window ends with the record"
    );
    assert!(
        a.window.windows(2).all(|w| w[0].ts_ms < w[1].ts_ms),
        "oldest first"
    );
    // The alarms stay in the 5-sample window for two more cycles, then the series is quiet.
    let after: Vec<usize> = (0..5)
        .map(|_| cycle(&mut detector, NORMAL, NORMAL).len())
        .collect();
    assert_eq!(after, [1, 1, 0, 0, 0]);
    // Series that left the cycle are forgotten.
    detector.detect(&[]);
    assert_eq!(detector.series_count(), 0);
}

#[test]
fn refused_models_are_reported_once_and_the_previous_model_keeps_scoring() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut registry, mut detector) = loaded_detector(root.path(), 4);

    // v2: model.onnx changed after the manifest was written: checksum mismatch.
    publish(root.path(), "v2", &forest(2), family_signals(FAMILY));
    let model = root.path().join("restarts/v2").join(MODEL_FILE);
    let mut bytes = std::fs::read(&model).expect("read model");
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&model, bytes).expect("corrupt model");
    let events = registry.poll();
    assert!(
        matches!(
            refused(&events)[..],
            [DetectError::Load {
                source: ScoreError::Checksum { .. },
                ..
            }]
        ),
        "{events:?}"
    );
    detector.apply(&events);
    assert!(
        registry.poll().is_empty(),
        "a refused model is not retried until it changes"
    );

    // v3: a valid model over other signals.
    let others = (0..5).map(|i| format!("f{i}")).collect();
    publish(root.path(), "v3", &forest(3), others);
    let events = registry.poll();
    assert!(
        matches!(refused(&events)[..], [DetectError::Signals { .. }]),
        "{events:?}"
    );
    detector.apply(&events);

    // `latest` naming a version that does not exist, then one climbing out.
    point_latest(root.path(), "v9");
    let events = registry.poll();
    assert!(
        matches!(
            refused(&events)[..],
            [DetectError::Load {
                source: ScoreError::Read { .. },
                ..
            }]
        ),
        "{events:?}"
    );
    point_latest(root.path(), "../restarts");
    let events = registry.poll();
    assert!(
        matches!(refused(&events)[..], [DetectError::Latest { .. }]),
        "{events:?}"
    );
    detector.apply(&events);

    // v1 still scores.
    let mut versions = Vec::new();
    for i in 0..5 {
        let d = detector.detect(&[record("p", i, FAR)]);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        versions.extend(d.anomalies.into_iter().map(|a| a.model_version));
    }
    assert_eq!(versions, ["v1", "v1", "v1"]);

    // Pointing back to a good version loads it.
    point_latest(root.path(), "v1");
    assert_eq!(loaded(&registry.poll()), ["v1"]);
}

#[test]
fn latest_switched_while_cycles_run_swaps_without_skipping_a_cycle() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut registry, mut detector) = loaded_detector(root.path(), 60);
    let (tx, rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    // The poller: what the agent does in spawn_blocking, here on its own thread, as fast as it
    // can so a swap lands in the middle of the cycles.
    let poller = std::thread::spawn(move || {
        while stop_rx.try_recv().is_err() {
            let events = registry.poll();
            if !events.is_empty() && tx.send(events).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let publisher = {
        let root = root.path().to_owned();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            publish(&root, "v2", &forest(2), family_signals(FAMILY));
        })
    };
    let pods: Vec<String> = (0..200).map(|i| format!("pod-{i}")).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut versions: Vec<String> = Vec::new();
    let mut id = 0;
    let mut cycles = 0;
    while versions.iter().filter(|v| *v == "v2").count() < 20 {
        assert!(Instant::now() < deadline, "v2 never scored: {versions:?}");
        for events in rx.try_iter() {
            detector.apply(&events);
        }
        let records: Vec<Record> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                id += 1;
                record(p, id, if i == 0 { FAR } else { NORMAL })
            })
            .collect();
        let d = detector.detect(&records);
        assert!(d.errors.is_empty(), "cycle {cycles}: {:?}", d.errors);
        assert_eq!(
            d.scored,
            [(FAMILY, pods.len())],
            "cycle {cycles} fully scored"
        );
        if cycles >= 2 {
            assert_eq!(d.anomalies.len(), 1, "cycle {cycles}: {:?}", d.anomalies);
        }
        versions.extend(d.anomalies.into_iter().map(|a| a.model_version));
        cycles += 1;
    }
    stop_tx.send(()).expect("stop poller");
    poller.join().expect("poller");
    publisher.join().expect("publisher");
    let first_v2 = versions.iter().position(|v| v == "v2").expect("v2 seen");
    assert!(first_v2 > 0, "v1 scored before the swap: {versions:?}");
    assert!(
        versions[..first_v2].iter().all(|v| v == "v1")
            && versions[first_v2..].iter().all(|v| v == "v2"),
        "one clean switch from v1 to v2: {versions:?}"
    );
}

/// The agent binary with `--print`, scoring with the models of `source` (polled every 0.2 s)
/// at `interval` seconds, `/metrics` on `port`; the anomalies it prints arrive on the receiver.
fn printing_agent(
    source: &Path,
    port: u16,
    interval: &str,
) -> (KillOnDrop, mpsc::Receiver<Anomaly>) {
    let child = selfheal()
        .args(["agent", "--print"])
        .env("SELFHEAL_AGENT_INTERVAL_SECS", interval)
        .env("SELFHEAL_AGENT_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("SELFHEAL_AGENT_PODS__SOURCE", "none")
        .env("SELFHEAL_AGENT_MODELS__SOURCE", source)
        .env("SELFHEAL_AGENT_MODELS__POLL_SECS", "0.2")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent");
    let mut agent = KillOnDrop(child);
    let stdout = agent.0.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let env: Envelope = serde_json::from_str(&line).expect("envelope per line");
            if let Payload::Anomaly(a) = env.payload
                && tx.send(a).is_err()
            {
                break;
            }
        }
    });
    (agent, rx)
}

/// The agent binary with a node CPU model whose threshold every score reaches (1-of-1): every
/// cycle's node CPU record is an anomaly, so the version in use shows on stdout each cycle.
#[test]
fn agent_scores_with_published_models_and_swaps_them_live() {
    let root = tempfile::tempdir().expect("tempdir");
    let cpu = Model {
        family: Family::Cpu,
        threshold: 0.0,
        alarm: AlarmRule::k_of_n(1, 1),
    };
    let n = family_signals(Family::Cpu).len();
    publish_model(
        root.path(),
        &cpu,
        "v1",
        &forest_over(1, n),
        family_signals(Family::Cpu),
    );
    let port = free_port();
    let (_agent, rx) = printing_agent(root.path(), port, "0.2");
    let next_anomaly = || {
        let a = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("an anomaly every cycle");
        assert_eq!(a.record.family, Family::Cpu);
        assert_eq!(a.record.subject, Subject::Node);
        assert_eq!(a.features.len(), n);
        a.model_version
    };
    let wait_for = |version: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while next_anomaly() != version {
            assert!(Instant::now() < deadline, "{version} never scored");
        }
    };
    wait_for("v1");
    publish_model(
        root.path(),
        &cpu,
        "v2",
        &forest_over(2, n),
        family_signals(Family::Cpu),
    );
    wait_for("v2");

    // A v3 over other signals is refused and counted; v2 keeps scoring.
    let others = (0..n).map(|i| format!("f{i}")).collect();
    publish_model(root.path(), &cpu, "v3", &forest_over(3, n), others);
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        if let Some((200, body)) = http_get(port, "/metrics")
            && body.contains("selfheal_agent_model_loads_total{family=\"cpu\",result=\"refused\"}")
        {
            break body;
        }
        assert!(Instant::now() < deadline, "refusal never counted");
        std::thread::sleep(Duration::from_millis(100));
    };
    let in_use = if metrics.contains("version=\"v3\"") {
        "v3"
    } else {
        "v2"
    };
    for _ in 0..3 {
        assert_eq!(next_anomaly(), in_use);
    }
    for name in [
        "selfheal_agent_anomalies_total{family=\"cpu\"}",
        "selfheal_agent_model_loads_total{family=\"cpu\",result=\"loaded\"}",
        "selfheal_agent_score_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    assert!(
        metrics.contains(&format!(
            "selfheal_agent_model_info{{family=\"cpu\",version=\"{in_use}\"}} 1"
        )) && !metrics.contains("version=\"v1\""),
        "model_info shows only the version in use:\n{metrics}"
    );
}

/// Regression test for the default model the trainer writes (one forest per signal, an alarm
/// rule that adapts): trained by `selfheal model train` and run by the agent's `SeriesDetector`, a
/// series whose one signal moves to a new level for good alarms at first, then learns it as its
/// new normal (anomalies carry the raised threshold), and a further rise alarms again.
#[test]
fn a_trained_per_signal_model_learns_a_new_normal_on_the_node() {
    let root = tempfile::tempdir().expect("tempdir");
    let signals = family_signals(FAMILY);
    let mut state = 11u64;
    let mut noise = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let base = [0.0, 1.0, 2.0, 3.0, 4.0];
    let mut sample = |shift: f64| -> [f64; 5] {
        let mut v = base.map(|b| b + noise());
        v[2] += shift;
        v
    };
    let mut csv = signals.join(",") + "\n";
    for _ in 0..2000 {
        let v = sample(0.0);
        csv += &v.map(|x| x.to_string()).join(",");
        csv += "\n";
    }
    let data = root.path().join("train.csv");
    std::fs::write(&data, csv).expect("write csv");
    let out = root.path().join(FAMILY.as_str()).join("v1");
    let status = selfheal()
        .args([
            "model",
            "train",
            "--family",
            FAMILY.as_str(),
            "--trees",
            "30",
        ])
        // Sensitivity 0.5 (contamination 0.01): the quiet-data ceiling below is about a
        // threshold near the 99th percentile; the default sensitivity (0.9, chosen for
        // windows hit) alarms more often on purpose, and adaptation is what this test is about.
        .args(["--sensitivity", "0.5", "--adapt-window", "100"])
        // The forest size and smoothing this test was written for (the defaults before the
        // leave-one-machine-out choice): what it checks is adaptation, not the defaults.
        .args([
            "--max-samples",
            "256",
            "--smoothing-half-life",
            "15",
            "--input",
        ])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .args(["--version", "v1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run selfheal model train");
    assert!(status.success(), "model train failed");
    point_latest(root.path(), "v1");
    let mut registry = ModelRegistry::new(root.path().to_owned());
    let events = registry.poll();
    assert_eq!(loaded(&events), ["v1"], "{events:?}");
    let mut detector = SeriesDetector::new(0);
    detector.apply(&events);
    let manifest = detector.model(FAMILY).expect("model").manifest().clone();
    assert_eq!(manifest.forests, signals.len(), "one forest per signal");
    assert_eq!(manifest.alarm.adapt_window, 100);
    assert!(manifest.ordinary_score.is_some());

    let mut id = 0;
    let mut run = |detector: &mut SeriesDetector, cycles: usize, shift: f64| -> Vec<Anomaly> {
        (0..cycles)
            .flat_map(|_| {
                id += 1;
                let d = detector.detect(&[record("p", id, sample(shift))]);
                assert!(d.errors.is_empty(), "{:?}", d.errors);
                d.anomalies
            })
            .collect()
    };
    // Ordinary noise: the first 60 cycles are the feature warm-up (never alarm); after that the
    // default threshold and k-of-n rule alarm on a minority of cycles at most (the data and the
    // trainer are deterministic).
    let quiet = run(&mut detector, 300, 0.0);
    assert!(
        quiet.len() <= 60,
        "{} anomalies on ordinary data",
        quiet.len()
    );
    // Signal 2 moves 10 noise widths up and stays there.
    let moved = run(&mut detector, 400, 10.0);
    let first_100 = moved
        .iter()
        .filter(|a| a.record.id.as_u128() <= 400)
        .count();
    assert!(
        first_100 >= 50,
        "the move alarms at first: {first_100} of 100"
    );
    let last_100 = moved.iter().filter(|a| a.record.id.as_u128() > 600).count();
    assert_eq!(last_100, 0, "the new level is learned");
    // A further rise alarms again, against a threshold raised above the model's.
    let risen = run(&mut detector, 50, 30.0);
    assert!(
        risen.len() >= 10,
        "{} anomalies after a further rise",
        risen.len()
    );
    assert!(
        risen.iter().all(|a| a.threshold > manifest.threshold),
        "anomalies carry the raised threshold"
    );
}

/// Issue 16, item 4, through the binaries: a CSV of the node's cpu metrics (the 10 a node
/// record has, not the pod-only three, columns in reverse schema order) trains with
/// `selfheal model train --family cpu`, publishes with `selfheal model publish`, and the agent
/// loads it and scores its node records by metric name. A CSV with a column that is not a cpu
/// metric is refused at train time, naming the column.
#[test]
fn a_model_trained_on_a_csv_of_some_family_metrics_in_any_order_scores_on_the_agent() {
    let root = tempfile::tempdir().expect("tempdir");
    let pod_only = [
        "cpu_limit_cores",
        "cpu_throttled_ratio",
        "cpu_throttled_secs_per_sec",
    ];
    let mut columns: Vec<String> = family_signals(Family::Cpu)
        .into_iter()
        .filter(|m| !pod_only.contains(&m.as_str()))
        .collect();
    columns.reverse();
    assert_eq!(columns.len(), 10);
    // Training values far from any real host's (about 1000 on every metric), so that the node's
    // real records lie outside the training range and the model alarms once warm: what this
    // proves is that the agent reads the model's columns by name and scores them.
    let mut rng = Rng::new(5);
    let mut csv = |columns: &[String]| {
        let mut text = columns.join(",") + "\n";
        for _ in 0..1500 {
            let row: Vec<String> = columns
                .iter()
                .map(|_| (1000.0 + rng.unit()).to_string())
                .collect();
            text += &(row.join(",") + "\n");
        }
        text
    };
    let train = |input: &Path, out: &Path| {
        selfheal()
            .args(["model", "train", "--family", "cpu", "--trees", "10"])
            .args(["--max-samples", "64", "--version", "csv1", "--input"])
            .arg(input)
            .arg("--out")
            .arg(out)
            .stdout(Stdio::null())
            .output()
            .expect("run selfheal model train")
    };
    let data = root.path().join("cpu.csv");
    std::fs::write(&data, csv(&columns)).expect("write csv");
    let model = root.path().join("model");
    let out = train(&data, &model);
    assert!(
        out.status.success(),
        "model train failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A column that is not a cpu metric is refused, by name, and no model is written.
    let mut bad_columns = columns.clone();
    bad_columns.insert(3, "memory_used_bytes".into());
    let bad = root.path().join("bad.csv");
    std::fs::write(&bad, csv(&bad_columns)).expect("write csv");
    let refused_dir = root.path().join("refused");
    let out = train(&bad, &refused_dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a memory column trained a cpu model");
    assert!(
        stderr.contains("\"memory_used_bytes\" is not a cpu metric"),
        "{stderr}"
    );
    assert!(
        !refused_dir.exists(),
        "nothing is written for a refused input"
    );

    let store = root.path().join("store");
    let status = selfheal()
        .args(["model", "publish"])
        .arg(&model)
        .arg("--to")
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run selfheal model publish");
    assert!(status.success(), "model publish failed");

    let port = free_port();
    let (_agent, rx) = printing_agent(&store, port, "0.1");
    // The feature warm-up is 60 cycles (6 s at 0.1 s); then the node's cpu record alarms.
    let a = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the csv-trained cpu model scores the node's records");
    assert_eq!(a.record.family, Family::Cpu);
    assert_eq!(a.record.subject, Subject::Node);
    assert_eq!(a.model_version, "csv1");
    let spec = FeatureSpec::standard(columns.clone());
    assert_eq!(
        a.features.len(),
        spec.len(),
        "the model's 10 signals' features"
    );
    assert!(
        a.top_features
            .iter()
            .all(|(name, _)| columns.iter().any(|c| name.starts_with(c.as_str()))),
        "{:?}",
        a.top_features
    );
    let metrics = http_get(port, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    assert!(
        metrics.contains("selfheal_agent_model_loads_total{family=\"cpu\",result=\"loaded\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("result=\"refused\""), "{metrics}");
}
