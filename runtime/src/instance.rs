//! The local instance's data directory and its `instance.json`: how `selfheal up` tells the other
//! commands on this machine (`selfheal incidents|silences|heal`, `selfheal chaos run`) where it
//! is, so they need no `--url` by default.
//!
//! The data directory is `--data-dir`, else `$SELFHEAL_DATA_DIR`, else `$XDG_DATA_HOME/selfheal`
//! (an absolute `XDG_DATA_HOME` only, as the XDG spec says), else `~/.local/share/selfheal`.
//! `selfheal up` writes `<data dir>/instance.json` atomically once its aggregator answers, and
//! removes it when it stops (also on a forced stop by a second signal). Readers check that the
//! recorded process is still the one that wrote the file (its pid and its start time in
//! `/proc/<pid>/stat`, so a pid the kernel gave to another process since is not taken for it):
//! a file left by a SIGKILL or a power cut is reported as stale, never used.
//!
//! The file (format 1; readers ignore fields they do not know):
//!
//! ```json
//! {"format": 1, "pid": 4242, "pid_start_ticks": 123456, "started_at_ms": 1764612345000,
//!  "data_dir": "/home/me/.local/share/selfheal", "node": "laptop",
//!  "api_url": "http://127.0.0.1:9478", "page_url": "http://127.0.0.1:9478/incidents",
//!  "ingest_url": "http://127.0.0.1:9478/v1/ingest",
//!  "ingest_token_file": "/home/me/.local/share/selfheal/ingest-token",
//!  "api_token_file": "/home/me/.local/share/selfheal/api-token",
//!  "agent_url": "http://127.0.0.1:9477"}
//! ```
//!
//! `ingest_token_file` is the node's ingest credential (the bearer token the agent posts with,
//! mode 0600); `api_token_file` the token of the API's write routes (acknowledge, resolve,
//! silences).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file's name in the data directory.
pub const FILE: &str = "instance.json";
/// The format written; readers refuse a newer one.
pub const FORMAT: u32 = 1;

/// A running local instance, as `selfheal up` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// [`FORMAT`].
    pub format: u32,
    /// The `selfheal up` process.
    pub pid: u32,
    /// Its start time in clock ticks after boot (`/proc/<pid>/stat` field 22), which tells it
    /// from a later process given the same pid.
    pub pid_start_ticks: Option<u64>,
    /// When it started, unix milliseconds.
    pub started_at_ms: i64,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// The node name its agent reports (records posted to the ingest must carry it).
    pub node: String,
    /// The aggregator's base URL (`/api/v1`, `/metrics`, `/healthz`).
    pub api_url: String,
    /// The incident page.
    pub page_url: String,
    /// Where agents POST records (`Authorization: Bearer` the token in `ingest_token_file`).
    pub ingest_url: String,
    /// The node's ingest credential (mode 0600).
    pub ingest_token_file: PathBuf,
    /// The token of the API's write routes (mode 0600).
    pub api_token_file: PathBuf,
    /// The agent's `/metrics` and `/healthz`.
    pub agent_url: String,
}

/// Why no running instance was found.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// No data directory was given and neither `XDG_DATA_HOME` nor `HOME` says where it is.
    #[error("no data directory: pass --data-dir, or set SELFHEAL_DATA_DIR, XDG_DATA_HOME or HOME")]
    NoDataDir,
    /// There is no `instance.json`: nothing is running on this data directory.
    #[error(
        "no local instance is running ({} does not exist): start one with `selfheal up`, or \
         pass --url",
        file.display()
    )]
    NotRunning {
        /// The file looked for.
        file: PathBuf,
    },
    /// The file names a process that is gone: the instance did not stop cleanly.
    #[error(
        "no local instance is running: {} names pid {pid}, which has exited (the instance did \
         not stop cleanly); start it again with `selfheal up`, or pass --url",
        file.display()
    )]
    Stale {
        /// The file.
        file: PathBuf,
        /// The pid it names.
        pid: u32,
    },
    /// The file could not be read or parsed.
    #[error("cannot read {}", file.display())]
    Unreadable {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file was written by a newer selfheal.
    #[error("{} is format {found}, newer than this selfheal reads ({FORMAT})", file.display())]
    NewerFormat {
        /// The file.
        file: PathBuf,
        /// Its format.
        found: u32,
    },
    /// The file could not be written.
    #[error("cannot write the instance file")]
    Write(#[source] crate::atomic::AtomicWriteError),
}

/// The data directory: `explicit` (a flag or `SELFHEAL_DATA_DIR`, already read by the caller's
/// argument parser), else `$XDG_DATA_HOME/selfheal`, else `$HOME/.local/share/selfheal`.
pub fn data_dir(explicit: Option<&Path>) -> Result<PathBuf, InstanceError> {
    if let Some(d) = explicit {
        return Ok(d.to_owned());
    }
    let env = |k| std::env::var_os(k).map(PathBuf::from);
    default_data_dir(env("XDG_DATA_HOME"), env("HOME"))
}

fn default_data_dir(
    xdg_data_home: Option<PathBuf>,
    home: Option<PathBuf>,
) -> Result<PathBuf, InstanceError> {
    // The XDG spec: a relative XDG_DATA_HOME is invalid and is ignored.
    if let Some(x) = xdg_data_home.filter(|p| p.is_absolute()) {
        return Ok(x.join("selfheal"));
    }
    match home.filter(|p| p.is_absolute()) {
        Some(h) => Ok(h.join(".local/share/selfheal")),
        None => Err(InstanceError::NoDataDir),
    }
}

impl Instance {
    /// The path of the file in `data_dir`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE)
    }

    /// Writes the file into [`Instance::data_dir`], atomically (a reader sees the whole file or
    /// none), readable by its owner only.
    pub fn write(&self) -> Result<(), InstanceError> {
        let mut bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| InstanceError::Write(json_write_error(&self.data_dir, e)))?;
        bytes.push(b'\n');
        crate::atomic::write_private(&Instance::path(&self.data_dir), &bytes)
            .map_err(InstanceError::Write)
    }

    /// Removes the file if it still describes this process; true when it did.
    pub fn remove_own(data_dir: &Path) -> bool {
        let path = Instance::path(data_dir);
        let ours = read(&path).is_ok_and(|i| i.pid == std::process::id());
        ours && std::fs::remove_file(&path).is_ok()
    }

    /// Whether the recorded process is alive and is the one that wrote the file.
    pub fn is_alive(&self) -> bool {
        match (self.pid_start_ticks, process_start_ticks(self.pid)) {
            (Some(want), Some(now)) => want == now,
            (None, Some(_)) => true,
            (_, None) => false,
        }
    }

    /// The running instance of `data_dir`, or why there is none.
    pub fn find(data_dir: &Path) -> Result<Instance, InstanceError> {
        let file = Instance::path(data_dir);
        let inst = match read(&file) {
            Ok(i) => i,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(InstanceError::NotRunning { file });
            }
            Err(source) => return Err(InstanceError::Unreadable { file, source }),
        };
        if inst.format > FORMAT {
            return Err(InstanceError::NewerFormat {
                file,
                found: inst.format,
            });
        }
        if !inst.is_alive() {
            return Err(InstanceError::Stale {
                file,
                pid: inst.pid,
            });
        }
        Ok(inst)
    }
}

fn json_write_error(dir: &Path, e: serde_json::Error) -> crate::atomic::AtomicWriteError {
    crate::atomic::AtomicWriteError {
        op: "encoding",
        path: Instance::path(dir),
        source: e.into(),
    }
}

fn read(path: &Path) -> std::io::Result<Instance> {
    // A few hundred bytes; anything much larger is not ours.
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(std::fs::File::open(path)?, 64 * 1024),
        &mut text,
    )?;
    serde_json::from_str(&text).map_err(std::io::Error::other)
}

/// The start time of process `pid` in clock ticks after boot (`/proc/<pid>/stat` field 22),
/// `None` when there is no such process.
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

fn parse_start_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may itself hold spaces and parentheses:
    // the fields after the last `)` are the state (field 3) onwards.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> Instance {
        Instance {
            format: FORMAT,
            pid: std::process::id(),
            pid_start_ticks: process_start_ticks(std::process::id()),
            started_at_ms: 1,
            data_dir: dir.to_owned(),
            node: "n".into(),
            api_url: "http://127.0.0.1:1".into(),
            page_url: "http://127.0.0.1:1/incidents".into(),
            ingest_url: "http://127.0.0.1:1/v1/ingest".into(),
            ingest_token_file: dir.join("ingest-token"),
            api_token_file: dir.join("api-token"),
            agent_url: "http://127.0.0.1:2".into(),
        }
    }

    #[test]
    fn the_data_dir_follows_xdg_then_home() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(
            default_data_dir(p("/x"), p("/h")).expect("xdg"),
            Path::new("/x/selfheal")
        );
        assert_eq!(
            default_data_dir(p("relative"), p("/h")).expect("relative xdg ignored"),
            Path::new("/h/.local/share/selfheal")
        );
        assert!(matches!(
            default_data_dir(None, None),
            Err(InstanceError::NoDataDir)
        ));
        assert_eq!(
            data_dir(Some(Path::new("/given"))).expect("explicit"),
            Path::new("/given")
        );
    }

    #[test]
    fn written_then_found_then_removed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let err = Instance::find(tmp.path()).expect_err("nothing yet");
        assert!(matches!(err, InstanceError::NotRunning { .. }), "{err}");
        assert!(err.to_string().contains("selfheal up"), "{err}");
        let inst = sample(tmp.path());
        inst.write().expect("write");
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(Instance::path(tmp.path()))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(Instance::find(tmp.path()).expect("found"), inst);
        assert!(Instance::remove_own(tmp.path()));
        assert!(!Instance::path(tmp.path()).exists());
    }

    #[test]
    fn a_file_of_a_dead_or_reused_pid_is_stale() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut inst = sample(tmp.path());
        // Our pid, started at another time: a reused pid.
        inst.pid_start_ticks = inst.pid_start_ticks.map(|t| t + 1);
        inst.write().expect("write");
        let err = Instance::find(tmp.path()).expect_err("reused pid");
        assert!(matches!(err, InstanceError::Stale { .. }), "{err}");
        assert!(err.to_string().contains("did not stop cleanly"), "{err}");
        // A file of another process is never removed by this one.
        inst.pid = u32::MAX;
        inst.write().expect("write");
        assert!(!Instance::remove_own(tmp.path()));
        assert!(matches!(
            Instance::find(tmp.path()),
            Err(InstanceError::Stale { pid: u32::MAX, .. })
        ));
    }

    #[test]
    fn newer_formats_and_garbage_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut inst = sample(tmp.path());
        inst.format = FORMAT + 1;
        inst.write().expect("write");
        assert!(matches!(
            Instance::find(tmp.path()),
            Err(InstanceError::NewerFormat { .. })
        ));
        std::fs::write(Instance::path(tmp.path()), "{").expect("write");
        assert!(matches!(
            Instance::find(tmp.path()),
            Err(InstanceError::Unreadable { .. })
        ));
    }

    #[test]
    fn start_ticks_survive_odd_command_names() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 50";
        assert_eq!(parse_start_ticks(stat), Some(98765));
        assert_eq!(parse_start_ticks("garbage"), None);
        assert!(process_start_ticks(std::process::id()).is_some());
    }
}
