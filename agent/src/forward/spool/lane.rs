//! One lane on disk: its directory of append-only segment files and its `ack` checkpoint, and
//! the recovery that opens them after a crash (torn tails cut, acknowledged segments deleted).

use super::{Lane, SpoolError, SpoolStats, io_err};
use selfheal_runtime::frame;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(super) struct Pos {
    pub(super) seq: u64,
    pub(super) offset: u64,
}

#[derive(Debug)]
pub(super) struct Segment {
    pub(super) seq: u64,
    pub(super) len: u64,
}

#[derive(Debug)]
pub(super) struct LaneState {
    pub(super) lane: Lane,
    pub(super) dir: PathBuf,
    /// Oldest first; the last one is the active segment `writer` appends to.
    pub(super) segments: VecDeque<Segment>,
    pub(super) writer: File,
    pub(super) reader: Option<(u64, File)>,
    pub(super) read: Pos,
    pub(super) acked: Pos,
    /// Records not yet acknowledged.
    pub(super) unacked: u64,
}

pub(super) fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

pub(super) fn list_segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut seqs = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        if let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

pub(super) fn read_checkpoint(dir: &Path) -> Option<Pos> {
    let text = fs::read_to_string(dir.join("ack")).ok()?;
    let mut it = text.split_whitespace();
    let seq = it.next()?.parse().ok()?;
    let offset = it.next()?.parse().ok()?;
    Some(Pos { seq, offset })
}

/// What a scan of one segment file found.
#[derive(Debug, Default)]
pub(super) struct ScanSummary {
    pub(super) records: u64,
    pub(super) oldest_ms: Option<i64>,
    pub(super) corrupt_regions: u64,
    pub(super) corrupt_bytes: u64,
    /// Offset of a torn final frame, if the file ends inside one.
    pub(super) torn_at: Option<u64>,
}

/// Scans a whole segment file from `from`. A frame that runs past the end is a torn tail only
/// when no valid frame start follows it ([`frame::scan_complete`]): a length field corrupted in
/// the middle of a segment is skipped to the next frame, never taken for a torn tail that would
/// cut off every record after it.
pub(super) fn scan_bytes(buf: &[u8], from: usize) -> ScanSummary {
    let mut s = ScanSummary::default();
    let mut pos = from;
    while pos < buf.len() {
        match frame::scan_complete(buf, pos) {
            frame::Scanned::Frame(f) => {
                s.records += 1;
                s.oldest_ms = Some(s.oldest_ms.map_or(f.appended_ms, |o| o.min(f.appended_ms)));
                pos = f.offset + f.len;
            }
            frame::Scanned::Corrupt { offset, len } => {
                s.corrupt_regions += 1;
                s.corrupt_bytes += len as u64;
                pos = offset + len;
            }
            frame::Scanned::Incomplete { offset } => {
                s.torn_at = Some(offset as u64);
                break;
            }
        }
    }
    s
}

impl LaneState {
    pub(super) fn open(
        root: &Path,
        lane: Lane,
        stats: &SpoolStats,
    ) -> Result<LaneState, SpoolError> {
        let dir = root.join(lane.as_str());
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let seqs = list_segments(&dir)?;
        let checkpoint = read_checkpoint(&dir);
        let mut acked = checkpoint.unwrap_or(Pos {
            seq: seqs.first().copied().unwrap_or(0),
            offset: 0,
        });
        let mut segments = VecDeque::new();
        let mut unacked = 0;
        for &seq in &seqs {
            let path = seg_path(&dir, seq);
            if seq < acked.seq {
                // Acknowledged before a crash that came before its deletion.
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "SpoolSegmentDeleteError");
                }
                continue;
            }
            let buf = fs::read(&path).map_err(io_err(&path))?;
            let from = if seq == acked.seq {
                (acked.offset as usize).min(buf.len())
            } else {
                0
            };
            let summary = scan_bytes(&buf, from);
            let mut len = buf.len() as u64;
            if let Some(torn) = summary.torn_at {
                // A crash mid-write: cut the partial frame so the file ends on a boundary.
                tracing::warn!(path = %path.display(), offset = torn, "SpoolTornTailTruncated");
                stats.corrupt_regions.fetch_add(1, Ordering::Relaxed);
                stats.corrupt_bytes.fetch_add(len - torn, Ordering::Relaxed);
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(torn).map_err(io_err(&path))?;
                len = torn;
            }
            if summary.corrupt_regions > 0 {
                tracing::warn!(
                    path = %path.display(),
                    regions = summary.corrupt_regions,
                    bytes = summary.corrupt_bytes,
                    "SpoolCorruptRegionsFound"
                );
            }
            unacked += summary.records;
            segments.push_back(Segment { seq, len });
        }
        // The checkpoint may point at a segment evicted before the restart: resume at the next.
        match segments.front() {
            Some(first) if first.seq > acked.seq => {
                acked = Pos {
                    seq: first.seq,
                    offset: 0,
                }
            }
            Some(first) if first.seq == acked.seq => acked.offset = acked.offset.min(first.len),
            _ => {}
        }
        // Always append to a fresh segment: never write after bytes of unknown state.
        let next_seq = seqs.last().map_or(0, |s| s + 1).max(acked.seq);
        let writer = create_segment(&dir, next_seq)?;
        segments.push_back(Segment {
            seq: next_seq,
            len: 0,
        });
        if segments.len() == 1 {
            acked = Pos {
                seq: next_seq,
                offset: 0,
            };
        }
        Ok(LaneState {
            lane,
            dir,
            segments,
            writer,
            reader: None,
            read: acked,
            acked,
            unacked,
        })
    }

    pub(super) fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    pub(super) fn active(&self) -> &Segment {
        // Invariant: a lane always has an active segment (open and rotate push one first).
        &self.segments[self.segments.len() - 1]
    }

    pub(super) fn rotate(&mut self) -> io::Result<()> {
        let seq = self.active().seq + 1;
        let path = seg_path(&self.dir, seq);
        self.writer = OpenOptions::new().create(true).append(true).open(&path)?;
        self.segments.push_back(Segment { seq, len: 0 });
        Ok(())
    }

    pub(super) fn segment_len(&self, seq: u64) -> Option<u64> {
        self.segments.iter().find(|s| s.seq == seq).map(|s| s.len)
    }

    pub(super) fn next_seq_after(&self, seq: u64) -> Option<u64> {
        self.segments.iter().map(|s| s.seq).find(|&s| s > seq)
    }

    pub(super) fn write_checkpoint(&self, sync: bool) -> io::Result<()> {
        let line = format!("{} {}\n", self.acked.seq, self.acked.offset);
        let ack = self.dir.join("ack");
        if sync {
            return selfheal_runtime::atomic::write(&ack, line.as_bytes())
                .map_err(|e| io::Error::new(e.source.kind(), e));
        }
        // `sync = false` is the operator's choice of speed over durability for the whole spool
        // (segments are not fsynced either): still atomic, so a reader never sees half a line,
        // but a power cut may bring back an older checkpoint, which replays records (never
        // loses them).
        let tmp = self.dir.join("ack.tmp");
        fs::write(&tmp, line)?;
        fs::rename(&tmp, ack)
    }

    /// Deletes segments wholly behind the checkpoint; returns the bytes freed.
    pub(super) fn delete_acked_segments(&mut self) -> u64 {
        let mut freed = 0;
        while self.segments.len() > 1 && self.segments[0].seq < self.acked.seq {
            let seg = self.segments.pop_front().map_or(0, |s| {
                remove_segment(&self.dir, s.seq);
                s.len
            });
            freed += seg;
        }
        freed
    }
}

pub(super) fn create_segment(dir: &Path, seq: u64) -> Result<File, SpoolError> {
    let path = seg_path(dir, seq);
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path))
}

pub(super) fn remove_segment(dir: &Path, seq: u64) {
    let path = seg_path(dir, seq);
    if let Err(e) = fs::remove_file(&path) {
        tracing::warn!(path = %path.display(), error = %e, "SpoolSegmentDeleteError");
    }
}

/// Reads `len` bytes at `offset`, or fewer at the end of the file.
pub(super) fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}
