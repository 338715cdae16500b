//! The `spool` section of the agent configuration and its validated form.

use super::SpoolError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Spool settings as written by the user (the `spool` section of the agent configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Directory of the segments and checkpoints, created if absent. In the DaemonSet a hostPath,
    /// so queued records outlive the pod.
    pub dir: PathBuf,
    /// Most bytes the spool keeps on disk, both lanes together. Past it, samples are dropped or
    /// evicted first (see the module docs).
    pub max_bytes: u64,
    /// A segment is closed and the next one started when a record would take it past this size;
    /// eviction frees space one segment at a time.
    pub segment_bytes: u64,
    /// When appended records are forced to stable storage.
    pub fsync: FsyncPolicy,
    /// With `fsync = "interval"`: most milliseconds between two fsyncs.
    pub fsync_interval_ms: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("/var/lib/selfheal/spool"),
            max_bytes: 256 * 1024 * 1024,
            segment_bytes: 8 * 1024 * 1024,
            fsync: FsyncPolicy::Interval,
            fsync_interval_ms: 1000,
        }
    }
}

/// When the spool calls fsync. Records are written to the kernel at once in every mode, so a
/// killed agent loses nothing; fsync guards against losing the host (power, kernel panic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// After every record and checkpoint: safest, slowest.
    Always,
    /// At most every `fsync_interval_ms`, on the next append.
    Interval,
    /// Never; the kernel writes back on its own schedule.
    Never,
}

/// Validated spool settings.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    /// Spool directory.
    pub dir: PathBuf,
    /// Byte bound.
    pub max_bytes: u64,
    /// Segment size.
    pub segment_bytes: u64,
    /// fsync policy.
    pub fsync: FsyncPolicy,
    /// fsync interval for [`FsyncPolicy::Interval`].
    pub fsync_interval: Duration,
}

impl SpoolConfig {
    /// Checks the fields.
    pub fn validate(&self) -> Result<SpoolSettings, SpoolError> {
        let invalid = |field, reason: String| {
            Err(SpoolError::Invalid(
                selfheal_runtime::config::FieldError::new(field, reason),
            ))
        };
        if self.dir.as_os_str().is_empty() {
            return invalid("spool.dir", "must not be empty".into());
        }
        if self.segment_bytes < 4096 {
            return invalid(
                "spool.segment_bytes",
                format!("must be at least 4096, got {}", self.segment_bytes),
            );
        }
        // Eviction frees whole segments: with fewer than four the bound would be coarse.
        if self.max_bytes < 4 * self.segment_bytes {
            return invalid(
                "spool.max_bytes",
                format!(
                    "must be at least 4 × segment_bytes ({}), got {}",
                    4 * self.segment_bytes,
                    self.max_bytes
                ),
            );
        }
        if self.fsync == FsyncPolicy::Interval && self.fsync_interval_ms == 0 {
            return invalid(
                "spool.fsync_interval_ms",
                "must be positive with fsync = \"interval\"".into(),
            );
        }
        Ok(SpoolSettings {
            dir: self.dir.clone(),
            max_bytes: self.max_bytes,
            segment_bytes: self.segment_bytes,
            fsync: self.fsync,
            fsync_interval: Duration::from_millis(self.fsync_interval_ms),
        })
    }
}
