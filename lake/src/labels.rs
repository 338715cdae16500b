//! Ground-truth windows of chaos runs, in the lake's `labels/` partition.
//!
//! Each run of `selfheal chaos run` writes one [`LabelWindow`] (kind of fault, target workload,
//! node, start, end, run id) as a JSON object at `labels/dt=YYYY-MM-DD/<run id>.json`, the date
//! being the window's start in UTC. JSON rather than Parquet: a run is one row of six fields,
//! read back whole by the trainer and the scorecard, and people read it by hand. The table's
//! reader lists only `*.parquet`, so the labels never mix with samples. A run id is unique, so
//! writing a window again (a retry) replaces the same object.
//!
//! [`read_labels`] returns every window of the lake; an object that is not a window is an
//! error naming its key, because training on a silently shortened set of labels would
//! mislabel the faults it left out as normal running.

use crate::store::{LakeStore, StoreError};
use selfheal_core::Family;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Where label windows live in the lake.
pub const LABELS_PREFIX: &str = "labels/";

/// A fault `selfheal chaos` injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// CPU saturation threads under a CPU quota.
    Cpu,
    /// A memory leak growing to a bound under a memory limit.
    Memory,
    /// A loopback traffic flood against a port.
    Traffic,
    /// A kill and restart loop of the container.
    Restart,
}

impl FaultKind {
    /// Every kind, in a stable order.
    pub const ALL: [FaultKind; 4] = [
        FaultKind::Cpu,
        FaultKind::Memory,
        FaultKind::Traffic,
        FaultKind::Restart,
    ];

    /// The name used on the command line and in the labels.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Cpu => "cpu",
            FaultKind::Memory => "memory",
            FaultKind::Traffic => "traffic",
            FaultKind::Restart => "restart",
        }
    }

    /// The metric family whose model should see this fault.
    pub fn family(self) -> Family {
        match self {
            FaultKind::Cpu => Family::Cpu,
            FaultKind::Memory => Family::Memory,
            FaultKind::Traffic => Family::Traffic,
            FaultKind::Restart => Family::Restarts,
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The ground truth of one chaos run: this fault ran against this workload on this node from
/// `start_ms` to `end_ms` (unix milliseconds, the workload's own start and stop). Unknown
/// fields are ignored on read, so windows a newer writer adds fields to stay readable here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelWindow {
    /// Unique id of the run (hex).
    pub run_id: String,
    /// The fault.
    pub kind: FaultKind,
    /// The target's workload key, `<namespace>/<kind>/<name>` as records name it
    /// (`selfheal_core::schema::Subject::workload_key`).
    pub target: String,
    /// The node the fault ran on (the agent's `node_name`).
    pub node: String,
    /// The target pod's UID, when the run made or chose one pod.
    pub pod_uid: Option<String>,
    /// When the workload started, unix milliseconds.
    pub start_ms: i64,
    /// When it stopped, unix milliseconds (a run stopped early ends then).
    pub end_ms: i64,
}

impl LabelWindow {
    /// The object key of this window.
    pub fn key(&self) -> String {
        let t = OffsetDateTime::from_unix_timestamp(self.start_ms.div_euclid(1000))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        format!(
            "{LABELS_PREFIX}dt={:04}-{:02}-{:02}/{}.json",
            t.year(),
            u8::from(t.month()),
            t.day(),
            self.run_id
        )
    }
}

/// Label windows that could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An object under `labels/` is not a label window.
    #[error("label object {key} is not a label window")]
    Decode {
        /// The object.
        key: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A window that cannot be stored: its run id would not make a safe key, or it ends
    /// before it starts.
    #[error("invalid label window: {0}")]
    Invalid(String),
}

/// A window fit to store and to train on: a run id that makes a safe key, and an end no earlier
/// than its start. Checked on write and again on read (the bucket may have been written by
/// someone else).
fn validate(window: &LabelWindow) -> Result<(), String> {
    let id_ok = !window.run_id.is_empty()
        && window.run_id.len() <= 64
        && window
            .run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !id_ok {
        return Err(format!(
            "run id {:?} must be 1 to 64 letters, digits or '-'",
            window.run_id
        ));
    }
    if window.end_ms < window.start_ms {
        return Err(format!(
            "run {} ends ({}) before it starts ({})",
            window.run_id, window.end_ms, window.start_ms
        ));
    }
    Ok(())
}

/// Writes `window` to the lake's `labels/` partition, durably (atomic in a directory, one
/// PutObject in S3). Returns the key.
pub async fn write_label(store: &LakeStore, window: &LabelWindow) -> Result<String, LabelError> {
    validate(window).map_err(LabelError::Invalid)?;
    let key = window.key();
    let mut bytes = serde_json::to_vec_pretty(window).map_err(|source| LabelError::Decode {
        key: key.clone(),
        source,
    })?;
    bytes.push(b'\n');
    store.put(&key, bytes).await?;
    Ok(key)
}

/// Every label window in the lake, sorted by start time then run id.
pub async fn read_labels(store: &LakeStore) -> Result<Vec<LabelWindow>, LabelError> {
    let mut out = Vec::new();
    for key in store.list(".json").await? {
        if !key.starts_with(LABELS_PREFIX) {
            continue;
        }
        let bytes = store.get(&key).await?;
        let w: LabelWindow =
            serde_json::from_slice(&bytes).map_err(|source| LabelError::Decode {
                key: key.clone(),
                source,
            })?;
        validate(&w).map_err(|why| LabelError::Invalid(format!("{key}: {why}")))?;
        out.push(w);
    }
    out.sort_by(|a, b| (a.start_ms, &a.run_id).cmp(&(b.start_ms, &b.run_id)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::S3Options;

    fn window(run_id: &str, start_ms: i64) -> LabelWindow {
        LabelWindow {
            run_id: run_id.into(),
            kind: FaultKind::Cpu,
            target: "chaos/Deployment/chaos-cpu".into(),
            node: "n1".into(),
            pod_uid: Some("u".into()),
            start_ms,
            end_ms: start_ms + 30_000,
        }
    }

    #[tokio::test]
    async fn windows_round_trip_through_a_directory_lake() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = LakeStore::open(&tmp.path().to_string_lossy(), &S3Options::default())
            .await
            .expect("open");
        // 2025-11-24T16:00:00Z
        let b = window("b2", 1_764_000_000_000);
        let a = window("a1", 1_764_000_000_000 - 86_400_000);
        assert_eq!(
            write_label(&store, &b).await.expect("write"),
            "labels/dt=2025-11-24/b2.json"
        );
        write_label(&store, &a).await.expect("write");
        write_label(&store, &a).await.expect("a retry replaces");
        assert_eq!(read_labels(&store).await.expect("read"), vec![a, b]);
        let bad = LabelWindow {
            run_id: "../x".into(),
            ..window("x", 0)
        };
        assert!(matches!(
            write_label(&store, &bad).await,
            Err(LabelError::Invalid(_))
        ));
        store
            .put("labels/dt=2025-11-24/junk.json", b"{}".to_vec())
            .await
            .expect("put");
        let err = read_labels(&store).await.expect_err("junk");
        assert!(err.to_string().contains("junk.json"), "{err}");
        std::fs::remove_file(tmp.path().join("labels/dt=2025-11-24/junk.json")).expect("rm");
        // A window written by someone else that ends before it starts is refused on read.
        let backwards = LabelWindow {
            end_ms: 0,
            ..window("c3", 1_764_000_000_000)
        };
        let text = serde_json::to_vec(&backwards).expect("json");
        store
            .put("labels/dt=2025-11-24/c3.json", text)
            .await
            .expect("put");
        let err = read_labels(&store).await.expect_err("backwards");
        assert!(err.to_string().contains("c3.json"), "{err}");
        assert!(matches!(err, LabelError::Invalid(_)), "{err}");
    }
}
