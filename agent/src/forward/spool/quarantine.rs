//! The quarantine: records a sink refused for good (the aggregator answered 400 or 413: a body
//! it can never take) are moved here instead of deleted, so an operator can see them with
//! `selfheal agent spool inspect` and replay or discard them by hand once the cause is known (a
//! clock far off, an aggregator too old or misconfigured). Nothing reads it automatically.
//!
//! On disk: `<dir>/quarantine/<seq>.seg`, frames in the spool's format, appended and fsynced
//! before the records leave their lane. It is bounded by a quarter of `spool.max_bytes`; past
//! that its oldest segment is deleted and its records counted as
//! [`super::DropReason::QuarantineEvicted`] (a WARN line each time), so a sink that refuses
//! everything cannot fill the disk.

use super::lane::{create_segment, list_segments, seg_path};
use super::{SpoolError, SpooledRecord, io_err};
use selfheal_runtime::frame;
use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The quarantine's directory under a spool directory.
pub const DIR: &str = "quarantine";

#[derive(Debug)]
pub(super) struct Quarantine {
    dir: PathBuf,
    /// (seq, bytes, records), oldest first; the last is appended to.
    segments: VecDeque<(u64, u64, u64)>,
    writer: File,
    max_bytes: u64,
    segment_bytes: u64,
}

impl Quarantine {
    pub(super) fn open(
        root: &Path,
        max_bytes: u64,
        segment_bytes: u64,
    ) -> Result<Quarantine, SpoolError> {
        let dir = root.join(DIR);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut segments = VecDeque::new();
        for seq in list_segments(&dir)? {
            let path = seg_path(&dir, seq);
            let buf = fs::read(&path).map_err(io_err(&path))?;
            let records = super::lane::scan_bytes(&buf, 0).records;
            segments.push_back((seq, buf.len() as u64, records));
        }
        // Appends go to a fresh segment, never after bytes of unknown state.
        let next = segments.back().map_or(0, |s| s.0 + 1);
        let writer = create_segment(&dir, next)?;
        segments.push_back((next, 0, 0));
        Ok(Quarantine {
            dir,
            segments,
            writer,
            max_bytes: max_bytes.max(segment_bytes),
            segment_bytes,
        })
    }

    /// Records held.
    pub(super) fn records(&self) -> u64 {
        self.segments.iter().map(|s| s.2).sum()
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.1).sum()
    }

    /// Appends `records` durably. Returns how many older records were evicted to stay bounded.
    pub(super) fn put(&mut self, records: &[&SpooledRecord], now_ms: i64) -> io::Result<u64> {
        let mut buf = Vec::new();
        for r in records {
            buf.extend(frame::encode(now_ms, &r.partition_key, &r.data));
        }
        let active = self.segments.back().map_or(0, |s| s.1);
        if active > 0 && active + buf.len() as u64 > self.segment_bytes {
            let seq = self.segments.back().map_or(0, |s| s.0 + 1);
            self.writer = create_segment(&self.dir, seq).map_err(|e| match e {
                SpoolError::Io { source, .. } => source,
                other => io::Error::other(other.to_string()),
            })?;
            self.segments.push_back((seq, 0, 0));
        }
        let before = self.segments.back().map_or(0, |s| s.1);
        if let Err(e) = self
            .writer
            .write_all(&buf)
            .and_then(|()| self.writer.sync_data())
        {
            let _ = self.writer.set_len(before);
            return Err(e);
        }
        if let Some(last) = self.segments.back_mut() {
            last.1 += buf.len() as u64;
            last.2 += records.len() as u64;
        }
        let mut evicted = 0;
        while self.bytes() > self.max_bytes && self.segments.len() > 1 {
            if let Some((seq, _, n)) = self.segments.pop_front() {
                super::lane::remove_segment(&self.dir, seq);
                evicted += n;
            }
        }
        Ok(evicted)
    }
}
