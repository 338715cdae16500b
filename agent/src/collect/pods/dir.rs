//! The `dir` pod source: kubelet-format Pod JSON files in a local directory, one object per
//! file, for pods that a program on this machine lays out in cgroups itself (`selfheal chaos
//! run`, `selfheal up`) where there is no kubelet or API server to ask.
//!
//! The writer replaces files atomically (temporary sibling, then rename; the runtime's
//! [`atomic`](selfheal_runtime::atomic) write), so a read sees a whole old or new file; names
//! starting with `.` (those temporaries) and names not ending in `.json` are ignored. Every read
//! lists the directory and parses only files whose size, modification time or inode changed, so
//! polling once a second costs a `readdir` and a `stat` per pod. The directory is as hostile as
//! any input: a file over [`MAX_POD_FILE_BYTES`], beyond the first [`MAX_POD_FILES`] (by name),
//! not a regular file, or not a Pod object with a UID is rejected, logged once per version of the
//! file (`PodFileRejected`) and counted in `selfheal_agent_pod_files_rejected_total`; the other
//! files still name their pods. An unreadable directory is a failed list, as for the other
//! sources: logged, counted, and tried again at the next poll, with the directory's content kept.

use super::decode::Pod;
use super::directory::{PodInfo, SharedPodDirectory};
use super::{PodStats, PodsConfig, PodsError, inc};
use selfheal_runtime::chain::ErrorChain;
use selfheal_runtime::shutdown::Shutdown;
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Largest Pod file read. etcd caps an object at 1.5 MiB; a pod written by a local program is a
/// few KB, so anything near this is not a pod.
pub const MAX_POD_FILE_BYTES: u64 = 1 << 20;
/// Most files read per pass (the first, by name). The kubelet's default is 110 pods a node and
/// its documented ceiling 250, so this leaves room for any real node while bounding a pass.
pub const MAX_POD_FILES: usize = 4096;

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime_ns: i128,
    ino: u64,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ino: m.ino(),
        }
    }
}

/// A file as last read: its pod, or why it was rejected.
#[derive(Debug, Clone)]
struct FileState {
    stamp: Stamp,
    pod: Result<PodInfo, String>,
}

/// Keeps a [`SharedPodDirectory`] current from a directory of Pod JSON files until shutdown.
#[derive(Debug)]
pub struct DirWatcher {
    dir: PathBuf,
    poll: Duration,
    directory: SharedPodDirectory,
    stats: Arc<PodStats>,
    relist: Arc<Notify>,
    files: HashMap<OsString, FileState>,
    /// The last pass failed: log the recovery, and only the first of a run of failures at WARN.
    failing: bool,
}

impl DirWatcher {
    /// A watcher of `config.dir`; `None` unless the resolved source is `dir`.
    pub fn new(config: &PodsConfig) -> Option<DirWatcher> {
        if config.resolved_source() != super::PodSource::Dir {
            return None;
        }
        let directory = SharedPodDirectory::default();
        let relist = directory.read().relist.clone();
        Some(DirWatcher {
            dir: config.dir.clone().unwrap_or_default(),
            poll: Duration::from_millis(config.dir_poll_ms),
            directory,
            stats: Arc::new(PodStats::default()),
            relist,
            files: HashMap::new(),
            failing: false,
        })
    }

    /// The directory this watcher keeps current.
    pub fn directory(&self) -> SharedPodDirectory {
        self.directory.clone()
    }

    /// The watcher's counters.
    pub fn stats(&self) -> Arc<PodStats> {
        self.stats.clone()
    }

    /// Reads the directory once and replaces the pod directory with what it holds. Returns the
    /// number of pods known. A directory that cannot be listed is an error (counted in
    /// [`PodStats::list_errors_total`]) and leaves the pod directory as it was.
    pub fn sync_once(&mut self) -> Result<usize, PodsError> {
        let pods = self
            .read_dir()
            .inspect_err(|_| inc(&self.stats.list_errors_total))?;
        let n = pods.len();
        self.directory.write().replace(pods, None);
        self.stats.pods_known.store(n as u64, Ordering::Relaxed);
        inc(&self.stats.relists_total);
        Ok(n)
    }

    /// Reads the directory every `dir_poll_ms`, and at once when a re-list is requested (a
    /// cgroup of a pod not known yet), until `shutdown` becomes true. Never returns an error.
    pub async fn run(mut self, shutdown: watch::Receiver<bool>) {
        let mut shutdown = Shutdown::from(shutdown);
        loop {
            // A pass is a readdir and a stat per file, parsing only changed files: microseconds
            // on a local file system, so it runs inline on the agent's one thread.
            match self.sync_once() {
                Ok(n) => {
                    if std::mem::take(&mut self.failing) {
                        tracing::info!(event = "PodDirRecovered", dir = %self.dir.display(), pods = n);
                    }
                    tracing::trace!(event = "PodsListed", pods = n);
                }
                Err(e) => {
                    let error = ErrorChain::new(&e).to_string();
                    if std::mem::replace(&mut self.failing, true) {
                        tracing::debug!(event = "PodListError", source_kind = "dir", error = %error);
                    } else {
                        tracing::warn!(
                            event = "PodListError", source_kind = "dir", error = %error,
                            "reading the pod directory failed; keeping the pods known and retrying"
                        );
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.poll) => {}
                _ = self.relist.notified() => inc(&self.stats.relist_requests_total),
                () = shutdown.requested() => return,
            }
        }
    }

    /// Lists the directory and returns the pods of its acceptable files, re-reading only the
    /// files that changed since the last pass.
    fn read_dir(&mut self) -> Result<Vec<PodInfo>, PodsError> {
        let dir_err = |source| PodsError::Dir {
            path: self.dir.clone(),
            source,
        };
        let mut names: Vec<OsString> = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(dir_err)? {
            let name = entry.map_err(dir_err)?.file_name();
            let s = name.to_string_lossy();
            if !s.starts_with('.') && s.ends_with(".json") {
                names.push(name);
            }
        }
        names.sort();
        let mut next: HashMap<OsString, FileState> = HashMap::with_capacity(names.len());
        for (i, name) in names.into_iter().enumerate() {
            let path = self.dir.join(&name);
            // A file that vanished between readdir and stat was removed: not an error.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let stamp = Stamp::of(&meta);
            let state = match self.files.remove(&name) {
                Some(old) if old.stamp == stamp => old,
                _ => {
                    let pod = if i >= MAX_POD_FILES {
                        Err(format!("beyond the first {MAX_POD_FILES} files"))
                    } else {
                        read_pod(&path, &meta)
                    };
                    if let Err(reason) = &pod {
                        inc(&self.stats.files_rejected_total);
                        tracing::warn!(
                            event = "PodFileRejected", file = %path.display(), reason = %reason,
                            "pod file ignored"
                        );
                    }
                    FileState { stamp, pod }
                }
            };
            next.insert(name, state);
        }
        self.files = next;
        let mut by_uid: HashMap<String, PodInfo> = HashMap::with_capacity(self.files.len());
        for state in self.files.values() {
            if let Ok(pod) = &state.pod {
                by_uid.insert(pod.uid.clone(), pod.clone());
            }
        }
        Ok(by_uid.into_values().collect())
    }
}

/// Reads one Pod file, bounded: the reason it is not a pod otherwise.
fn read_pod(path: &Path, meta: &std::fs::Metadata) -> Result<PodInfo, String> {
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_POD_FILE_BYTES {
        return Err(format!(
            "{} bytes, over the {MAX_POD_FILE_BYTES}-byte cap",
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        // A file growing after the stat is still read only up to the cap.
        .and_then(|f| f.take(MAX_POD_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > MAX_POD_FILE_BYTES {
        return Err(format!("over the {MAX_POD_FILE_BYTES}-byte cap"));
    }
    let pod: Pod =
        serde_json::from_slice(&bytes).map_err(|e| format!("not a Pod JSON object: {e}"))?;
    pod.info()
        .ok_or_else(|| "the Pod has no metadata.uid".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::pods::PodSource;
    use selfheal_core::schema::OwnerRef;

    fn pod_json(uid: &str, restarts: u64) -> String {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"uid":"{uid}","name":"web-5d9c7b6f8-abcde",
            "namespace":"chaos","labels":{{"pod-template-hash":"5d9c7b6f8"}},
            "ownerReferences":[{{"kind":"ReplicaSet","name":"web-5d9c7b6f8","controller":true}}]}},
            "spec":{{"containers":[{{"name":"app"}}]}},
            "status":{{"qosClass":"Burstable","containerStatuses":[{{"name":"app","ready":true,
            "restartCount":{restarts},"state":{{"running":{{}}}},
            "lastState":{{"terminated":{{"exitCode":137,"reason":"Error"}}}}}}]}}}}"#
        )
    }

    fn watcher(dir: &Path) -> DirWatcher {
        DirWatcher::new(&PodsConfig {
            source: PodSource::Dir,
            dir: Some(dir.to_owned()),
            ..PodsConfig::default()
        })
        .expect("dir source")
    }

    #[test]
    fn pod_files_name_their_pods_and_bad_files_are_counted_not_fatal() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path();
        let uid = "11111111-2222-4333-8444-555555555555";
        selfheal_runtime::atomic::write(
            &d.join(format!("{uid}.json")),
            pod_json(uid, 2).as_bytes(),
        )
        .expect("write");
        std::fs::write(d.join("broken.json"), b"{\"metadata\": ").expect("write");
        std::fs::write(d.join("nouid.json"), b"{\"metadata\":{\"name\":\"x\"}}").expect("write");
        std::fs::write(
            d.join("huge.json"),
            vec![b' '; MAX_POD_FILE_BYTES as usize + 1],
        )
        .expect("write");
        std::fs::create_dir(d.join("adir.json")).expect("mkdir");
        std::fs::write(d.join(".web.json.123.tmp"), b"partial").expect("temp");
        std::fs::write(d.join("notes.txt"), b"not a pod").expect("other");
        let mut w = watcher(d);
        assert_eq!(w.sync_once().expect("pass"), 1);
        let pod = w.directory().get(uid).expect("named");
        assert_eq!(pod.namespace, "chaos");
        assert_eq!(
            pod.owner,
            Some(OwnerRef {
                kind: "Deployment".into(),
                name: "web".into()
            })
        );
        assert_eq!(pod.restarts_total, 2);
        assert!(pod.last_termination_error);
        assert_eq!(w.stats().snapshot().files_rejected_total, 4);
        // Unchanged files are not read again, so a rejection is counted once per version.
        assert_eq!(w.sync_once().expect("pass"), 1);
        assert_eq!(w.stats().snapshot().files_rejected_total, 4);

        // A new version of the pod is read; a removed file forgets its pod.
        selfheal_runtime::atomic::write(
            &d.join(format!("{uid}.json")),
            pod_json(uid, 3).as_bytes(),
        )
        .expect("rewrite");
        w.sync_once().expect("pass");
        assert_eq!(w.directory().get(uid).map(|p| p.restarts_total), Some(3));
        std::fs::remove_file(d.join(format!("{uid}.json"))).expect("rm");
        assert_eq!(w.sync_once().expect("pass"), 0);
        assert!(w.directory().get(uid).is_none());
    }

    #[test]
    fn an_unreadable_directory_is_a_failed_list_that_keeps_the_pods() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let sub = tmp.path().join("pods");
        std::fs::create_dir(&sub).expect("mkdir");
        let uid = "11111111-2222-4333-8444-666666666666";
        std::fs::write(sub.join("p.json"), pod_json(uid, 0)).expect("write");
        let mut w = watcher(&sub);
        w.sync_once().expect("pass");
        std::fs::remove_dir_all(&sub).expect("rm");
        let err = w.sync_once().expect_err("gone");
        assert!(matches!(err, PodsError::Dir { .. }), "{err}");
        assert!(w.directory().get(uid).is_some(), "kept");
        assert_eq!(w.stats().snapshot().list_errors_total, 1);
    }

    #[test]
    fn files_beyond_the_cap_are_rejected() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for i in 0..=MAX_POD_FILES {
            let uid = format!("00000000-0000-4000-8000-{i:012}");
            std::fs::write(tmp.path().join(format!("{uid}.json")), pod_json(&uid, 0))
                .expect("write");
        }
        let mut w = watcher(tmp.path());
        assert_eq!(w.sync_once().expect("pass"), MAX_POD_FILES);
        assert_eq!(w.stats().snapshot().files_rejected_total, 1);
    }
}
