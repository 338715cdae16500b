//! The dataset builder: `selfheal model train --input LAKE --labels ...` and `model eval` on a
//! lake written by the real lake writer, with chaos label windows in its `labels/` partition or
//! in a label windows file, as `selfheal chaos run` writes them.

use crate::support::selfheal;
use selfheal_core::schema::OwnerRef;
use selfheal_core::{Envelope, Family, Metric, Payload, PodRef, Record, RecordId, Subject};
use selfheal_lake::labels::{FaultKind, LabelWindow, write_label};
use selfheal_lake::{LakeStore, LakeWriter, S3Options};
use std::collections::BTreeMap;
use std::path::Path;

/// 2026-12-01T00:00:00Z.
const T0_MS: i64 = 1_796_083_200_000;
const SECS: i64 = 3600;
/// Fault windows, seconds after T0: (start, end).
const FAULTS: [(i64, i64); 3] = [(1200, 1230), (2000, 2040), (2900, 2930)];

/// A deterministic noise source (xorshift).
struct Noise(u64);
impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn pod() -> Subject {
    Subject::Pod(PodRef {
        uid: "5e1f4ea1-0000-4000-8000-00000000c0de".into(),
        namespace: Some("chaos".into()),
        name: Some("chaos-cpu-6f7c9d8b5-q2w3e".into()),
        owner: Some(OwnerRef {
            kind: "Deployment".into(),
            name: "chaos-cpu".into(),
        }),
        qos: None,
    })
}

/// An hour of 1 s CPU samples of the node and of the chaos pod; during each fault both jump
/// by a core.
fn envelopes() -> Vec<Envelope> {
    let mut noise = Noise(0x1234_5678_9abc_def1);
    let mut out = Vec::new();
    for s in 0..SECS {
        let fault = FAULTS.iter().any(|&(a, b)| s >= a && s <= b);
        for (k, subject) in [Subject::Node, pod()].into_iter().enumerate() {
            let base = if k == 0 { 0.4 } else { 0.1 };
            let cores = base + 0.05 * noise.next() + if fault { 1.0 } else { 0.0 };
            out.push(Envelope::new(Payload::Sample {
                record: Record {
                    id: RecordId::from_u128(((s as u128) << 1) | k as u128 | (7 << 100)),
                    ts_ms: T0_MS + s * 1000,
                    node: "n1".into(),
                    subject,
                    family: Family::Cpu,
                    values: BTreeMap::from([
                        (Metric::CpuUsageCores, cores),
                        (Metric::CpuLoad1, 1.0 + cores + 0.1 * noise.next()),
                    ]),
                },
                inclusion_probability: 1.0,
            }));
        }
    }
    out
}

fn windows() -> Vec<LabelWindow> {
    FAULTS
        .iter()
        .enumerate()
        .map(|(i, &(a, b))| LabelWindow {
            run_id: format!("run{i}"),
            kind: FaultKind::Cpu,
            target: "chaos/Deployment/chaos-cpu".into(),
            node: "n1".into(),
            pod_uid: None,
            start_ms: T0_MS + a * 1000,
            end_ms: T0_MS + b * 1000,
        })
        .collect()
}

fn write_lake(dir: &Path) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = LakeStore::open(&dir.to_string_lossy(), &S3Options::default())
            .await
            .expect("lake");
        let writer = LakeWriter::new(store.clone());
        let rows: Vec<_> = envelopes()
            .iter()
            .flat_map(selfheal_lake::format::rows_of)
            .collect();
        writer.write_rows("http-0-1", rows).await.expect("write");
        for w in windows() {
            write_label(&store, &w).await.expect("label");
        }
    });
}

/// Runs the binary; stderr without the log's colour escapes.
fn run(args: &[&str]) -> (bool, String, String) {
    let out = selfheal().args(args).output().expect("run selfheal");
    let err = String::from_utf8_lossy(&out.stderr);
    let mut plain = String::with_capacity(err.len());
    let mut chars = err.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        plain,
    )
}

#[test]
fn lake_samples_sliced_by_chaos_windows_train_and_evaluate_a_model() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let lake = tmp.path().join("lake");
    write_lake(&lake);
    let lake_s = lake.to_string_lossy().into_owned();
    let model = tmp.path().join("m1");
    let (ok, _, err) = run(&[
        "model",
        "train",
        "--family",
        "cpu",
        "--input",
        &lake_s,
        "--labels",
        "lake",
        "--out",
        &model.to_string_lossy(),
        "--trees",
        "50",
    ]);
    assert!(ok, "{err}");
    // Two series (node, pod), each cut around three faults.
    assert!(err.contains("LakeLabelled"), "{err}");
    assert!(err.contains("eval_series=6"), "{err}");
    assert!(err.contains("windows_matched=3 windows_total=3"), "{err}");
    assert!(err.contains("method=\"best_f1\""), "{err}");

    let (ok, out, err) = run(&[
        "model",
        "eval",
        "--model",
        &model.to_string_lossy(),
        "--input",
        &lake_s,
        "--labels",
        "lake",
        "--json",
    ]);
    assert!(ok, "{err}");
    let m: serde_json::Value = serde_json::from_str(&out).expect("metrics JSON");
    eprintln!("{m}");
    // The evaluation stretches: each fault on the node and on the pod (6 windows), from 180 s
    // before to 120 s after: 2 × (331 + 341 + 331) rows, holding every labelled row
    // (2 × (31 + 41 + 31)).
    assert_eq!(m["windows"], 6, "{m}");
    assert_eq!(m["points"], 2006, "{m}");
    assert_eq!(m["labelled_points"], 206, "{m}");
    // A one-core jump is found in (nearly) every window by a model that never trained on one.
    let hit = m["windows_hit"].as_u64().expect("windows_hit");
    assert!(hit >= 5, "{m}");

    // The same windows from a label windows file (as `chaos run --labels-out` writes it).
    let mut file: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for w in windows() {
        let t = |ms: i64| {
            time::OffsetDateTime::from_unix_timestamp(ms / 1000)
                .expect("time")
                .format(&time::format_description::well_known::Rfc3339)
                .expect("format")
        };
        for key in ["cpu/chaos/Deployment/chaos-cpu", "cpu/node/n1"] {
            file.entry(key.into())
                .or_default()
                .push((t(w.start_ms), t(w.end_ms)));
        }
    }
    let labels = tmp.path().join("labels.json");
    std::fs::write(&labels, serde_json::to_vec(&file).expect("json")).expect("write");
    let (ok, out, err) = run(&[
        "model",
        "eval",
        "--model",
        &model.to_string_lossy(),
        "--input",
        &lake_s,
        "--labels",
        &labels.to_string_lossy(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let m2: serde_json::Value = serde_json::from_str(&out).expect("metrics JSON");
    assert_eq!(m2, m);

    // A bad --labels is named.
    let (ok, _, err) = run(&[
        "model",
        "train",
        "--family",
        "cpu",
        "--input",
        &lake_s,
        "--labels",
        "nowhere",
        "--out",
        &tmp.path().join("m2").to_string_lossy(),
    ]);
    assert!(!ok);
    assert!(err.contains("--labels nowhere"), "{err}");
}
