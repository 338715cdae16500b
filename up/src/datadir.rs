//! The data directory of a local instance: the name of each part (one constant each, the names
//! the other commands that read the directory agree on), its creation (owner-only), and the lock
//! that keeps a second `selfheal up` off a directory one is already running on.
//!
//! ```text
//! <data dir>/            mode 0700
//!   agent.toml           the agent's config, generated when missing, then the user's
//!   aggregator.toml      the aggregator's, likewise
//!   ingest-token         the node's ingest credential (random, 0600, reused)
//!   ingest-tokens        the aggregator's token table: "<node> sha256:<digest>" (0600)
//!   api-token            the API's write token (random, 0600, reused)
//!   instance.json        while running: URLs, credential paths, pid (selfheal_runtime::instance)
//!   instance.lock        held while running
//!   lake/                the local lake (the lake crate's layout)
//!   pods/                the agent's local pod source: one kubelet-format Pod JSON per file
//!   models/              the model registry (`<family>/<version>/`, `<family>/latest`)
//!   model-cache/         the agent's model state (signatures of loaded models)
//!   spool/               the agent's outage buffer
//!   ingest-log/          the aggregator's durable ingest log, checkpoints, dead letters
//!   store/               the SQLite incident store (incidents.db)
//!   heal/                the dry-run executor's record of every request (dry-run.jsonl)
//! ```

use selfheal_runtime::instance::Instance;
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The local lake.
pub const LAKE: &str = "lake";
/// The agent's local pod source: one kubelet-format Pod JSON object per file, which
/// `selfheal chaos run` writes for the workloads it starts. The agent reads it with
/// `pods.source = "dir"`, `pods.dir = <data dir>/pods` (see [`crate::configs`]).
pub const PODS: &str = "pods";
/// The model registry the agent polls.
pub const MODELS: &str = "models";
/// The agent's model state (and the mirror of an S3 model source).
pub const MODEL_CACHE: &str = "model-cache";
/// The agent's spool.
pub const SPOOL: &str = "spool";
/// The aggregator's ingest log.
pub const INGEST_LOG: &str = "ingest-log";
/// The incident store.
pub const STORE: &str = "store";
/// The healing controller's files (the dry-run log).
pub const HEAL: &str = "heal";
/// The agent's generated config.
pub const AGENT_CONFIG: &str = "agent.toml";
/// The aggregator's generated config.
pub const AGGREGATOR_CONFIG: &str = "aggregator.toml";
/// The node's ingest credential.
pub const INGEST_TOKEN: &str = "ingest-token";
/// The aggregator's ingest token table.
pub const INGEST_TOKENS: &str = "ingest-tokens";
/// The API's write token.
pub const API_TOKEN: &str = "api-token";
/// Held (`flock`) while an instance runs on the directory.
pub const LOCK: &str = "instance.lock";

const SUBDIRS: [&str; 8] = [
    LAKE,
    PODS,
    MODELS,
    MODEL_CACHE,
    SPOOL,
    INGEST_LOG,
    STORE,
    HEAL,
];

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// A directory could not be created or resolved.
    #[error("cannot create the data directory {}", path.display())]
    Create {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The path is not UTF-8 or holds a control character, so it cannot be written into the
    /// TOML configs (and their comments) as it is.
    #[error("the data directory {} is not a UTF-8 path free of control characters", .0.display())]
    Unprintable(PathBuf),
    /// Another `selfheal up` holds the lock.
    #[error("another `selfheal up` is running on {}{running}", dir.display())]
    Busy {
        /// The directory.
        dir: PathBuf,
        /// What its instance.json says, as ` (pid N, page URL)`, or empty.
        running: String,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A data directory, created.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Creates `root` (mode 0700) and its parts, or reuses them; the root comes back absolute.
    pub fn create(root: &Path) -> Result<DataDir, DataDirError> {
        let mkdir = |p: &Path| {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(p)
                .map_err(|source| DataDirError::Create {
                    path: p.to_owned(),
                    source,
                })
        };
        mkdir(root)?;
        let root = std::fs::canonicalize(root).map_err(|source| DataDirError::Create {
            path: root.to_owned(),
            source,
        })?;
        if root
            .to_str()
            .is_none_or(|s| s.chars().any(char::is_control))
        {
            return Err(DataDirError::Unprintable(root));
        }
        for sub in SUBDIRS {
            mkdir(&root.join(sub))?;
        }
        Ok(DataDir { root })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A part of it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The directory as text, for configs (checked UTF-8 at creation).
    pub fn text(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    /// Group or other permissions on the root, if any (an existing directory is reused as it
    /// is; the credentials in it are 0600 whatever the directory's mode).
    pub fn loose_mode(&self) -> Option<u32> {
        let mode = std::fs::metadata(&self.root).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }

    /// Takes the directory's lock, held until the returned file is dropped (or the process
    /// ends, however it ends: the kernel releases a `flock` with its last descriptor).
    pub fn lock(&self) -> Result<File, DataDirError> {
        let path = self.path(LOCK);
        let lock_err = |source| DataDirError::Lock {
            path: path.clone(),
            source,
        };
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(lock_err)?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(DataDirError::Busy {
                dir: self.root.clone(),
                running: match Instance::find(&self.root) {
                    Ok(i) => format!(" (pid {}, {})", i.pid, i.page_url),
                    Err(_) => String::new(),
                },
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(lock_err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_owner_only_and_locked_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dd = DataDir::create(&tmp.path().join("a/selfheal")).expect("create");
        let mode = std::fs::metadata(dd.root())
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(dd.loose_mode(), None);
        for sub in SUBDIRS {
            assert!(dd.path(sub).is_dir(), "{sub}");
        }
        let held = dd.lock().expect("first lock");
        let again = DataDir::create(dd.root()).expect("reused");
        let err = again.lock().expect_err("second lock");
        assert!(matches!(err, DataDirError::Busy { .. }), "{err}");
        drop(held);
        again.lock().expect("free again");
    }
}
