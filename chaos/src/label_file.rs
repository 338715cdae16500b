//! The label windows file of `--labels-out`: the NAB-style JSON `selfheal model train
//! --labels` and `model eval --labels` read (`{"<series>": [["start", "end"], ...]}`, RFC 3339,
//! ends inclusive).
//!
//! A chaos window is written under two keys, `<family>/<workload>` (the target's own series,
//! e.g. `cpu/chaos/Deployment/chaos-cpu`) and `<family>/node/<node>` (the node's series of the
//! same family, which the fault moves too), the family being the one the fault's kind is meant
//! to show in. The file is read, extended and replaced atomically, so a series of runs
//! (a schedule, or runs one after another) accumulates in one file and a crash mid-write
//! leaves the previous content.

use selfheal_lake::labels::LabelWindow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file could not be read or replaced.
#[derive(Debug, thiserror::Error)]
pub enum LabelFileError {
    /// Reading the existing file failed.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The existing file is not a label windows file; it is left as it is.
    #[error("{path} is not a label windows file (left unchanged)")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Writing failed.
    #[error("cannot write {0}")]
    Write(#[source] selfheal_runtime::atomic::AtomicWriteError),
}

/// The series keys a window labels.
pub fn keys(w: &LabelWindow) -> [String; 2] {
    let family = w.kind.family();
    [
        format!("{family}/{}", w.target),
        format!("{family}/node/{}", w.node),
    ]
}

/// Adds `windows` to the label windows file at `path` (created if absent).
pub fn append(path: &Path, windows: &[LabelWindow]) -> Result<(), LabelFileError> {
    let mut all: BTreeMap<String, Vec<(String, String)>> = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| LabelFileError::Decode {
            path: path.to_owned(),
            source,
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(source) => {
            return Err(LabelFileError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    for w in windows {
        // Whole seconds that cover the window: start rounded down, end up.
        let start = crate::fault::rfc3339(w.start_ms);
        let end = crate::fault::rfc3339(w.end_ms + 999);
        for key in keys(w) {
            let list = all.entry(key).or_default();
            if !list.contains(&(start.clone(), end.clone())) {
                list.push((start.clone(), end.clone()));
            }
        }
    }
    let mut bytes = serde_json::to_vec_pretty(&all).unwrap_or_default();
    bytes.push(b'\n');
    selfheal_runtime::atomic::write(path, &bytes).map_err(LabelFileError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfheal_lake::labels::FaultKind;

    #[test]
    fn windows_accumulate_under_the_target_and_the_node() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("labels.json");
        let w = |run: &str, kind, start_ms| LabelWindow {
            run_id: run.into(),
            kind,
            target: format!("chaos/Deployment/chaos-{kind}"),
            node: "n1".into(),
            pod_uid: None,
            start_ms,
            end_ms: start_ms + 30_500,
        };
        append(&path, &[w("a", FaultKind::Cpu, 1_764_000_000_500)]).expect("first");
        append(&path, &[w("b", FaultKind::Restart, 1_764_000_100_000)]).expect("second");
        let got: BTreeMap<String, Vec<(String, String)>> =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(
            got["cpu/chaos/Deployment/chaos-cpu"],
            [("2025-11-24T16:00:00Z".into(), "2025-11-24T16:00:31Z".into())]
        );
        assert_eq!(got["cpu/node/n1"].len(), 1);
        assert_eq!(got["restarts/chaos/Deployment/chaos-restart"].len(), 1);
        std::fs::write(&path, "[1]").expect("write");
        assert!(matches!(
            append(&path, &[w("c", FaultKind::Cpu, 0)]),
            Err(LabelFileError::Decode { .. })
        ));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "[1]");
    }
}
