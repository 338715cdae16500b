//! `selfheal agent spool inspect`: a read-only scan of a spool directory.

use super::lane::{list_segments, read_checkpoint, scan_bytes, seg_path};
use super::{Lane, SpoolError, io_err};
use serde::Serialize;
use std::fs;
use std::path::Path;

/// What `selfheal agent spool inspect` shows about one lane.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LaneInspection {
    /// Segment files present.
    pub segments: usize,
    /// Unacknowledged records (valid frames after the checkpoint).
    pub records: u64,
    /// Bytes of segment files.
    pub bytes: u64,
    /// When the oldest unacknowledged record was spooled, unix milliseconds.
    pub oldest_ms: Option<i64>,
    /// Corrupt or torn regions that reading will skip.
    pub corrupt_regions: u64,
}

/// A read-only look at a spool directory (for operators; safe while the agent runs, though the
/// numbers may then be a moment old).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Inspection {
    /// Anomaly lane.
    pub anomaly: LaneInspection,
    /// Sample lane.
    pub sample: LaneInspection,
    /// Records the sink refused for good (HTTP 400/413), set aside and never sent again.
    pub quarantine: LaneInspection,
}

/// Scans a spool directory without changing it.
pub fn inspect(dir: &Path) -> Result<Inspection, SpoolError> {
    // A typo in --dir must not look like an empty spool.
    fs::metadata(dir).map_err(io_err(dir))?;
    let mut out = Inspection::default();
    for lane in Lane::ALL {
        let lane_dir = dir.join(lane.as_str());
        if !lane_dir.is_dir() {
            continue;
        }
        let acked = read_checkpoint(&lane_dir).unwrap_or_default();
        let mut li = LaneInspection::default();
        for seq in list_segments(&lane_dir)? {
            if seq < acked.seq {
                continue;
            }
            let path = seg_path(&lane_dir, seq);
            let buf = fs::read(&path).map_err(io_err(&path))?;
            let from = if seq == acked.seq {
                (acked.offset as usize).min(buf.len())
            } else {
                0
            };
            let s = scan_bytes(&buf, from);
            li.segments += 1;
            li.bytes += buf.len() as u64;
            li.records += s.records;
            li.corrupt_regions += s.corrupt_regions + u64::from(s.torn_at.is_some());
            li.oldest_ms = match (li.oldest_ms, s.oldest_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        match lane {
            Lane::Anomaly => out.anomaly = li,
            Lane::Sample => out.sample = li,
        }
    }
    let qdir = dir.join(super::quarantine::DIR);
    if qdir.is_dir() {
        for seq in list_segments(&qdir)? {
            let path = seg_path(&qdir, seq);
            let buf = fs::read(&path).map_err(io_err(&path))?;
            let s = scan_bytes(&buf, 0);
            let q = &mut out.quarantine;
            q.segments += 1;
            q.bytes += buf.len() as u64;
            q.records += s.records;
            q.corrupt_regions += s.corrupt_regions + u64::from(s.torn_at.is_some());
            q.oldest_ms = match (q.oldest_ms, s.oldest_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }
    Ok(out)
}
