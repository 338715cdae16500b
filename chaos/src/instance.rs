//! The data directory of a local instance and the instance running in it.
//!
//! The layout is shared with `selfheal up`: `lake/` (the local lake), `pods/` (Pod JSON files
//! the agent's `dir` pod source reads), `models/`, `spool/`, `store/`, and `instance.json`,
//! written by `selfheal up` while it runs (its API URL, ingest URL, credential file and pid).
//! The default directory is `$XDG_DATA_HOME/selfheal`, else `~/.local/share/selfheal`, as the
//! XDG base directory specification says for user data.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The file `selfheal up` writes into the data directory while it runs.
pub const INSTANCE_FILE: &str = "instance.json";
/// Largest `instance.json` read: it holds a few URLs and paths.
const MAX_INSTANCE_BYTES: u64 = 64 << 10;

/// The default data directory: `$XDG_DATA_HOME/selfheal`, else `$HOME/.local/share/selfheal`.
pub fn default_data_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    xdg.or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .map(|h| h.join(".local/share"))
    })
    .map(|d| d.join("selfheal"))
}

/// What chaos reads of a running local instance. Unknown fields are ignored: `selfheal up`
/// owns the file and may add to it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Instance {
    /// The incident API and page.
    pub api_url: Option<String>,
    /// Where agents POST records.
    pub ingest_url: Option<String>,
    /// The process id of `selfheal up`.
    pub pid: Option<u32>,
}

impl Instance {
    /// True when the instance's process is alive (a stale file of a crashed instance is not).
    pub fn is_running(&self) -> bool {
        self.pid
            .is_some_and(|pid| Path::new("/proc").join(pid.to_string()).exists())
    }
}

/// Why `instance.json` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// The file exists but cannot be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not the instance's JSON.
    #[error("{path} is not an instance file")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The file is larger than any instance file.
    #[error("{path} is over {MAX_INSTANCE_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
}

/// The instance recorded in `data_dir`, or `None` when there is no `instance.json`.
pub fn read_instance(data_dir: &Path) -> Result<Option<Instance>, InstanceError> {
    let path = data_dir.join(INSTANCE_FILE);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(InstanceError::Io { path, source }),
    };
    if meta.len() > MAX_INSTANCE_BYTES {
        return Err(InstanceError::TooLarge { path });
    }
    let bytes = std::fs::read(&path).map_err(|source| InstanceError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| InstanceError::Decode { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_file_is_read_loosely_and_checked_for_life() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert!(read_instance(tmp.path()).expect("absent").is_none());
        let me = std::process::id();
        std::fs::write(
            tmp.path().join(INSTANCE_FILE),
            format!(r#"{{"api_url":"http://127.0.0.1:9478","pid":{me},"later":1}}"#),
        )
        .expect("write");
        let i = read_instance(tmp.path()).expect("read").expect("present");
        assert_eq!(i.api_url.as_deref(), Some("http://127.0.0.1:9478"));
        assert!(i.is_running());
        std::fs::write(tmp.path().join(INSTANCE_FILE), "[").expect("write");
        assert!(read_instance(tmp.path()).is_err());
    }
}
