//! `selfheal chaos schedule FILE`: a series of runs with quiet gaps, from TOML.
//!
//! ```toml
//! quiet_secs = 60            # quiet running before the first run and after each (default 60)
//!
//! [[runs]]
//! kind = "cpu"               # cpu | memory | traffic | restart
//! duration_secs = 30         # default 60, at most 3600
//! cpu_cores = 1.0            # the pod's CPU quota (every kind)
//!
//! [[runs]]
//! kind = "memory"
//! memory_mib = 512           # the pod's memory limit; the leak grows to it
//! leak_mib_per_sec = 32
//! quiet_after_secs = 120     # this run's own gap after it
//! ```
//!
//! The whole file is checked before the first run starts (unknown fields refused, every run's
//! caps checked, the error naming the run and field), so a typo in the tenth run does not stop
//! a series after nine.

use crate::fault::FaultSpec;
use selfheal_lake::labels::FaultKind;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Most runs in one schedule.
pub const MAX_RUNS: usize = 1000;
/// Longest quiet gap.
pub const MAX_QUIET_SECS: u64 = 24 * 3600;

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleFile {
    /// Seconds of quiet running before the first run and after each run.
    #[serde(default = "default_quiet")]
    pub quiet_secs: u64,
    /// The runs, in order.
    pub runs: Vec<RunEntry>,
}

fn default_quiet() -> u64 {
    60
}

/// One run of the schedule; unset fields take `selfheal chaos run`'s defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunEntry {
    /// The fault.
    pub kind: FaultKind,
    /// Seconds the fault runs.
    pub duration_secs: Option<u64>,
    /// The pod's CPU quota in cores.
    pub cpu_cores: Option<f64>,
    /// The pod's memory limit in MiB.
    pub memory_mib: Option<u64>,
    /// The memory fault's growth, MiB a second.
    pub leak_mib_per_sec: Option<u64>,
    /// Seconds between kills of the restart fault.
    pub restart_every_secs: Option<u64>,
    /// The traffic fault's target (127.0.0.0/8).
    pub target: Option<SocketAddr>,
    /// The Deployment name.
    pub name: Option<String>,
    /// Quiet seconds after this run (default: the file's `quiet_secs`).
    pub quiet_after_secs: Option<u64>,
}

/// A checked schedule: the runs and the quiet gap after each.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Quiet running before the first run.
    pub quiet_before: Duration,
    /// Each run and the quiet gap after it.
    pub runs: Vec<(FaultSpec, Duration)>,
}

/// A schedule file that cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The file is not valid TOML of this shape.
    #[error("{path}")]
    Parse {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: Box<figment::Error>,
    },
    /// A value outside its bounds.
    #[error("{path}: {field}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// The field, e.g. `runs[2].duration_secs`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

impl Schedule {
    /// Reads and checks `path` against this machine (`cpus`, `mem_total` bytes).
    pub fn load(path: &Path, cpus: usize, mem_total: u64) -> Result<Schedule, ScheduleError> {
        use figment::providers::{Format, Toml};
        let shown = path.display().to_string();
        if !path.is_file() {
            return Err(ScheduleError::Invalid {
                path: shown,
                field: "file".into(),
                reason: "no such file".into(),
            });
        }
        let file: ScheduleFile =
            figment::Figment::from(Toml::file(path))
                .extract()
                .map_err(|e| ScheduleError::Parse {
                    path: shown.clone(),
                    source: Box::new(e),
                })?;
        file.check(&shown, cpus, mem_total)
    }
}

impl ScheduleFile {
    /// Checks every run's caps; the error names the run and field.
    pub fn check(self, path: &str, cpus: usize, mem_total: u64) -> Result<Schedule, ScheduleError> {
        let bad = |field: String, reason: String| ScheduleError::Invalid {
            path: path.to_owned(),
            field,
            reason,
        };
        if self.runs.is_empty() || self.runs.len() > MAX_RUNS {
            return Err(bad(
                "runs".into(),
                format!("must hold 1 to {MAX_RUNS} runs, got {}", self.runs.len()),
            ));
        }
        let quiet = |field: String, secs: u64| {
            if secs > MAX_QUIET_SECS {
                Err(bad(
                    field,
                    format!("must be at most {MAX_QUIET_SECS}, got {secs}"),
                ))
            } else {
                Ok(Duration::from_secs(secs))
            }
        };
        let quiet_before = quiet("quiet_secs".into(), self.quiet_secs)?;
        let mut runs = Vec::with_capacity(self.runs.len());
        for (i, r) in self.runs.into_iter().enumerate() {
            let mut spec = FaultSpec::new(r.kind);
            if let Some(s) = r.duration_secs {
                spec.duration = Duration::from_secs(s);
            }
            if let Some(c) = r.cpu_cores {
                spec.cpu_cores = c;
            }
            if let Some(m) = r.memory_mib {
                spec.memory_bytes = m.saturating_mul(1 << 20);
            }
            if let Some(m) = r.leak_mib_per_sec {
                spec.leak_bytes_per_sec = m.saturating_mul(1 << 20);
            }
            if let Some(s) = r.restart_every_secs {
                spec.restart_every = Duration::from_secs(s);
            }
            spec.target = r.target;
            if let Some(n) = r.name {
                spec.name = n;
            }
            spec.validate(cpus, mem_total).map_err(|e| {
                let field = match e.option {
                    "--duration" => "duration_secs",
                    "--cpu-cores" => "cpu_cores",
                    "--memory-mib" => "memory_mib",
                    "--leak-mib-per-sec" => "leak_mib_per_sec",
                    "--restart-every-secs" => "restart_every_secs",
                    "--target" => "target",
                    other => other.trim_start_matches('-'),
                };
                bad(format!("runs[{i}].{field}"), e.reason)
            })?;
            let after = quiet(
                format!("runs[{i}].quiet_after_secs"),
                r.quiet_after_secs.unwrap_or(self.quiet_secs),
            )?;
            runs.push((spec, after));
        }
        Ok(Schedule { quiet_before, runs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Schedule, ScheduleError> {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("s.toml");
        std::fs::write(&path, text).expect("write");
        Schedule::load(&path, 2, 8 << 30)
    }

    #[test]
    fn a_schedule_is_checked_whole_before_it_runs() {
        let s = load(
            "quiet_secs = 5\n[[runs]]\nkind = \"cpu\"\nduration_secs = 10\n\
             [[runs]]\nkind = \"restart\"\nrestart_every_secs = 2\nquiet_after_secs = 0\n",
        )
        .expect("valid");
        assert_eq!(s.quiet_before, Duration::from_secs(5));
        assert_eq!(s.runs.len(), 2);
        assert_eq!(s.runs[0].0.duration, Duration::from_secs(10));
        assert_eq!(s.runs[0].1, Duration::from_secs(5));
        assert_eq!(s.runs[1].0.kind, FaultKind::Restart);
        assert_eq!(s.runs[1].1, Duration::ZERO);

        let field = |t: &str| match load(t) {
            Err(ScheduleError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            field("[[runs]]\nkind = \"cpu\"\n[[runs]]\nkind = \"memory\"\nmemory_mib = 99999\n"),
            "runs[1].memory_mib"
        );
        assert_eq!(
            field("[[runs]]\nkind = \"traffic\"\ntarget = \"10.1.1.1:80\"\n"),
            "runs[0].target"
        );
        assert_eq!(field("runs = []\n"), "runs");
        let e = load("[[runs]]\nkind = \"cpu\"\ndurattion_secs = 3\n").expect_err("typo");
        assert!(
            selfheal_runtime::chain::ErrorChain::new(&e)
                .to_string()
                .contains("durattion_secs"),
            "{e}"
        );
        assert!(load("[[runs]]\nkind = \"disk\"\n").is_err());
    }
}
