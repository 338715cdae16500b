//! The durable on-disk spool between the scorer and the forwarder: a bounded write-ahead log of
//! wire records, so a Kinesis outage or an agent restart loses nothing that matters.
//!
//! The pipeline [`Spool::push`]es every [`Envelope`] it wants shipped; the forwarder
//! ([`crate::forward`]) takes [`SpooledBatch`]es with [`Spool::read_batch`] and calls [`Spool::ack`]
//! only once the sink accepted them, so delivery is at-least-once (consumers de-duplicate by
//! `Record.id`).
//!
//! On disk, `<dir>/anomaly/` and `<dir>/sample/` are two *lanes* (priority classes), each a
//! sequence of append-only segment files `<seq>.seg` of [`frame`]d records and an `ack`
//! checkpoint (`<seq> <offset>`, replaced atomically) marking what the sink has accepted. A
//! restart replays from the checkpoint. Segments wholly behind the checkpoint are deleted.
//!
//! The spool is bounded by `max_bytes`. When full, a new sampled normal record is dropped; a new
//! anomaly evicts the oldest sample segments first, and only when no samples remain the oldest
//! anomaly segment. Every drop is counted by [`DropReason`]. Corrupt or torn frames are skipped and
//! counted, never fatal; a write error (a full disk included) drops that record, counted, and the
//! spool carries on.
//!
//! Records a sink refuses for good are never deleted: [`Spool::quarantine`] moves them to
//! `<dir>/quarantine/` ([`quarantine`]), which `selfheal agent spool inspect` shows.
//!
//! One process owns a spool directory at a time (the agent, or `selfheal agent spool drain` while
//! the agent is stopped); `inspect` only reads.

pub mod cli;
mod config;
mod inspect;
mod lane;
pub mod quarantine;
mod stats;

pub use config::{FsyncPolicy, SpoolConfig, SpoolSettings};
pub use inspect::{Inspection, LaneInspection, inspect};
pub use selfheal_runtime::frame::MAX_RECORD_BYTES;
pub use stats::{DropReason, Lane, SpoolMetrics, SpoolStats};

use lane::{LaneState, Pos, read_at, remove_segment, scan_bytes, seg_path};
use selfheal_core::schema::{Envelope, encode_wire};
use selfheal_runtime::frame;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// Kinesis refuses partition keys longer than this many characters.
pub const MAX_PARTITION_KEY_LEN: usize = 256;

/// Why the spool cannot start or be inspected. Once running, errors are events (counted and
/// logged), never returned.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The configuration is unusable; names the field.
    #[error("invalid spool configuration: {0}")]
    Invalid(#[from] selfheal_runtime::config::FieldError),
    /// A directory or file of the spool could not be created or read.
    #[error("spool I/O on {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One record handed to the forwarder.
#[derive(Debug, Clone)]
pub struct SpooledRecord {
    /// Its lane.
    pub lane: Lane,
    /// Partition key (workload identity).
    pub partition_key: String,
    /// The wire record (`encode_wire` output).
    pub data: Vec<u8>,
    /// When it was spooled, unix milliseconds.
    pub appended_ms: i64,
}

/// Records read together; acknowledge them with [`Spool::ack`] once the sink took them all.
#[derive(Debug, Default)]
pub struct SpooledBatch {
    /// The records, anomalies first.
    pub records: Vec<SpooledRecord>,
    /// Per lane: the position after the last record read, if any was.
    ends: [Option<Pos>; 2],
    /// Per lane: how many records.
    counts: [u64; 2],
}

impl SpooledBatch {
    /// No records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Appends a batch read after this one (the linger top-up); acknowledge the result once.
    pub fn merge(&mut self, later: SpooledBatch) {
        self.records.extend(later.records);
        for i in 0..2 {
            if later.ends[i].is_some() {
                self.ends[i] = later.ends[i];
            }
            self.counts[i] += later.counts[i];
        }
    }

    /// Bytes of wire data plus partition keys.
    pub fn bytes(&self) -> usize {
        self.records
            .iter()
            .map(|r| r.data.len() + r.partition_key.len())
            .sum()
    }
}

#[derive(Debug)]
struct Inner {
    settings: SpoolSettings,
    lanes: [LaneState; 2],
    total_bytes: u64,
    last_sync: Instant,
    quarantine: quarantine::Quarantine,
}

/// The spool. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Spool {
    inner: Mutex<Inner>,
    stats: Arc<SpoolStats>,
    notify: Notify,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How much to read from a segment at once.
const READ_CHUNK: usize = 256 * 1024;

impl Spool {
    /// Opens (or creates) the spool in `settings.dir`, recovering from whatever a crash left:
    /// torn tails are cut, acknowledged segments deleted, unacknowledged records queued again.
    pub fn open(settings: SpoolSettings) -> Result<Spool, SpoolError> {
        fs::create_dir_all(&settings.dir).map_err(io_err(&settings.dir))?;
        let stats = Arc::new(SpoolStats::default());
        let lanes = [
            LaneState::open(&settings.dir, Lane::Anomaly, &stats)?,
            LaneState::open(&settings.dir, Lane::Sample, &stats)?,
        ];
        let total_bytes = lanes.iter().map(LaneState::bytes).sum();
        let quarantine = quarantine::Quarantine::open(
            &settings.dir,
            settings.max_bytes / 4,
            settings.segment_bytes,
        )?;
        stats
            .quarantine_records
            .store(quarantine.records(), Ordering::Relaxed);
        if quarantine.records() > 0 {
            tracing::warn!(
                records = quarantine.records(),
                bytes = quarantine.bytes(),
                "SpoolQuarantineNotEmpty"
            );
        }
        let unacked: u64 = lanes.iter().map(|l| l.unacked).sum();
        if unacked > 0 {
            tracing::info!(records = unacked, bytes = total_bytes, "SpoolReplayQueued");
        }
        let spool = Spool {
            inner: Mutex::new(Inner {
                settings,
                lanes,
                total_bytes,
                last_sync: Instant::now(),
                quarantine,
            }),
            stats,
            notify: Notify::new(),
        };
        spool.publish_depth(&spool.lock());
        Ok(spool)
    }

    /// The live counters.
    pub fn stats(&self) -> &Arc<SpoolStats> {
        &self.stats
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; carry on with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Encodes and spools an envelope in its lane, keyed by its workload identity. A record
    /// that cannot be kept is counted by reason and returned as `Err`; nothing else to do.
    pub fn push(&self, env: &Envelope) -> Result<(), DropReason> {
        let record = env.record();
        let key = record.subject.workload_key(&record.node);
        let lane = Lane::of(&env.payload);
        match encode_wire(env) {
            Ok(wire) => self.append(lane, &key, &wire),
            Err(e) => {
                tracing::warn!(error = %e, id = %record.id, "SpoolEncodeError");
                self.stats.count_drop(DropReason::Encode, 1);
                Err(DropReason::Encode)
            }
        }
    }

    /// Spools one wire record in `lane` under `partition_key`.
    pub fn append(&self, lane: Lane, partition_key: &str, wire: &[u8]) -> Result<(), DropReason> {
        let result = self.append_inner(lane, partition_key, wire);
        match result {
            Ok(()) => {
                self.stats.appended[lane.idx()].fetch_add(1, Ordering::Relaxed);
                self.notify.notify_one();
            }
            Err(reason) => {
                tracing::trace!(
                    lane = lane.as_str(),
                    reason = reason.as_str(),
                    "SpoolRecordDropped"
                );
                self.stats.count_drop(reason, 1);
            }
        }
        result
    }

    fn append_inner(&self, lane: Lane, key: &str, wire: &[u8]) -> Result<(), DropReason> {
        if key.len() > MAX_PARTITION_KEY_LEN || key.len() + wire.len() > MAX_RECORD_BYTES {
            return Err(DropReason::TooLarge);
        }
        let framed = frame::encode(now_ms(), key, wire);
        let need = framed.len() as u64;
        let mut inner = self.lock();
        if need > inner.settings.max_bytes {
            return Err(DropReason::TooLarge);
        }
        while inner.total_bytes + need > inner.settings.max_bytes {
            if lane == Lane::Sample {
                return Err(DropReason::SampleFull);
            }
            // Evict samples before anomalies; `evict_oldest` fails only when a lane is empty.
            if !self.evict_oldest(&mut inner, Lane::Sample)
                && !self.evict_oldest(&mut inner, Lane::Anomaly)
            {
                return Err(DropReason::TooLarge);
            }
        }
        let segment_bytes = inner.settings.segment_bytes;
        let state = &mut inner.lanes[lane.idx()];
        let active_len = state.active().len;
        if active_len > 0
            && active_len + need > segment_bytes
            && let Err(e) = state.rotate()
        {
            self.io_event(&state.dir, "rotate", &e);
            return Err(DropReason::Io);
        }
        let active_len = state.active().len;
        if let Err(e) = state.writer.write_all(&framed) {
            // A partial write would leave a torn frame: cut back to the last whole one.
            let _ = state.writer.set_len(active_len);
            self.io_event(&state.dir, "write", &e);
            return Err(DropReason::Io);
        }
        let last = state.segments.len() - 1;
        state.segments[last].len += need;
        state.unacked += 1;
        inner.total_bytes += need;
        let to_sync: &[Lane] = match inner.settings.fsync {
            FsyncPolicy::Always => std::slice::from_ref(&Lane::ALL[lane.idx()]),
            // Both lanes: the other lane's last records must not wait for its next append.
            FsyncPolicy::Interval if inner.last_sync.elapsed() >= inner.settings.fsync_interval => {
                &Lane::ALL
            }
            FsyncPolicy::Interval | FsyncPolicy::Never => &[],
        };
        if !to_sync.is_empty() {
            inner.last_sync = Instant::now();
        }
        for l in to_sync {
            let state = &inner.lanes[l.idx()];
            if let Err(e) = state.writer.sync_data() {
                // The record is in the kernel's cache; only a host crash could lose it now.
                self.io_event(&state.dir, "fsync", &e);
            }
        }
        self.publish_depth(&inner);
        Ok(())
    }

    fn io_event(&self, dir: &Path, op: &'static str, e: &io::Error) {
        self.stats.io_errors.fetch_add(1, Ordering::Relaxed);
        let disk_full = e.kind() == io::ErrorKind::StorageFull;
        tracing::warn!(dir = %dir.display(), op, disk_full, error = %e, "SpoolIoError");
    }

    fn publish_depth(&self, inner: &Inner) {
        self.stats
            .depth_bytes
            .store(inner.total_bytes, Ordering::Relaxed);
        self.stats.depth_records.store(
            inner.lanes.iter().map(|l| l.unacked).sum(),
            Ordering::Relaxed,
        );
        for l in &inner.lanes {
            let i = l.lane.idx();
            self.stats.lane_records[i].store(l.unacked, Ordering::Relaxed);
            self.stats.lane_bytes[i].store(l.bytes(), Ordering::Relaxed);
        }
    }

    /// Evicts the oldest segment of `lane`, counting its unread records as dropped. Returns
    /// false when the lane holds no bytes.
    fn evict_oldest(&self, inner: &mut Inner, lane: Lane) -> bool {
        let state = &mut inner.lanes[lane.idx()];
        if state.bytes() == 0 {
            return false;
        }
        if state.segments.len() == 1 {
            // Only the active segment holds data: start a new one so this one can go.
            if let Err(e) = state.rotate() {
                self.io_event(&state.dir, "rotate", &e);
                return false;
            }
        }
        let Some(seg) = state.segments.pop_front() else {
            return false;
        };
        let unread = if state.read.seq > seg.seq {
            0
        } else {
            let from = if state.read.seq == seg.seq {
                state.read.offset
            } else {
                0
            };
            match fs::read(seg_path(&state.dir, seg.seq)) {
                Ok(buf) => scan_bytes(&buf, (from as usize).min(buf.len())).records,
                Err(_) => 0,
            }
        };
        remove_segment(&state.dir, seg.seq);
        if state.reader.as_ref().is_some_and(|(s, _)| *s == seg.seq) {
            state.reader = None;
        }
        let next = state.segments.front().map_or(seg.seq + 1, |s| s.seq);
        let next = Pos {
            seq: next,
            offset: 0,
        };
        state.read = state.read.max(next);
        state.acked = state.acked.max(next);
        state.unacked = state.unacked.saturating_sub(unread);
        inner.total_bytes -= seg.len;
        let reason = match lane {
            Lane::Sample => DropReason::SampleEvicted,
            Lane::Anomaly => DropReason::AnomalyEvicted,
        };
        self.stats.count_drop(reason, unread);
        tracing::warn!(
            lane = lane.as_str(),
            records = unread,
            bytes = seg.len,
            "SpoolSegmentEvicted"
        );
        true
    }

    /// Takes the next records not yet handed out, anomalies first, up to `max_records` and
    /// `max_bytes` (wire data plus partition keys; a single larger record still comes alone).
    pub fn read_batch(&self, max_records: usize, max_bytes: usize) -> SpooledBatch {
        let mut inner = self.lock();
        let mut batch = SpooledBatch::default();
        let mut bytes = 0usize;
        for lane in Lane::ALL {
            let state = &mut inner.lanes[lane.idx()];
            self.read_lane(state, &mut batch, &mut bytes, max_records, max_bytes);
        }
        batch
    }

    fn read_lane(
        &self,
        state: &mut LaneState,
        batch: &mut SpooledBatch,
        bytes: &mut usize,
        max_records: usize,
        max_bytes: usize,
    ) {
        let lane = state.lane;
        // Each pass either takes records, skips bytes, or moves to the next segment, so the loop
        // ends; the bound is a guard against a broken invariant, not a limit in practice.
        for _ in 0..1_000_000 {
            if batch.records.len() >= max_records || *bytes >= max_bytes {
                break;
            }
            let Some(seg_len) = state.segment_len(state.read.seq) else {
                // The read position's segment is gone (evicted): move to the next one.
                match state.next_seq_after(state.read.seq) {
                    Some(seq) => state.read = Pos { seq, offset: 0 },
                    None => break,
                }
                continue;
            };
            if state.read.offset >= seg_len {
                match state.next_seq_after(state.read.seq) {
                    Some(seq) => {
                        state.read = Pos { seq, offset: 0 };
                        batch.ends[lane.idx()] = Some(state.read);
                        continue;
                    }
                    None => break,
                }
            }
            let seq = state.read.seq;
            if state.reader.as_ref().is_none_or(|(s, _)| *s != seq) {
                let path = seg_path(&state.dir, seq);
                match File::open(&path) {
                    Ok(f) => state.reader = Some((seq, f)),
                    Err(e) => {
                        self.io_event(&state.dir, "open", &e);
                        self.skip_region(state, seg_len - state.read.offset);
                        batch.ends[lane.idx()] = Some(state.read);
                        continue;
                    }
                }
            }
            let Some((_, file)) = state.reader.as_ref() else {
                break;
            };
            let remaining = (seg_len - state.read.offset) as usize;
            let mut chunk_len = remaining.min(READ_CHUNK);
            let buf = loop {
                let buf = match read_at(file, state.read.offset, chunk_len) {
                    Ok(b) => b,
                    Err(e) => {
                        self.io_event(&state.dir, "read", &e);
                        Vec::new()
                    }
                };
                // A frame longer than the chunk: read once more, large enough for any frame.
                let whole = frame::HEADER_LEN + frame::MAX_BODY_LEN;
                if buf.len() == chunk_len
                    && chunk_len < remaining
                    && chunk_len < whole
                    && matches!(frame::scan_at(&buf, 0), frame::Scanned::Incomplete { .. })
                {
                    chunk_len = remaining.min(whole);
                    continue;
                }
                break buf;
            };
            if buf.is_empty() {
                // Unreadable or shorter than we thought: give up on the rest of the segment.
                self.skip_region(state, remaining as u64);
                batch.ends[lane.idx()] = Some(state.read);
                continue;
            }
            // The last chunk of a segment holds its end: there a frame running past the end
            // is a torn tail only if no frame follows (see `frame::scan_complete`).
            let last_chunk = state.read.offset + buf.len() as u64 >= seg_len;
            let mut pos = 0;
            while pos < buf.len() {
                if batch.records.len() >= max_records {
                    break;
                }
                let scanned = if last_chunk {
                    frame::scan_complete(&buf, pos)
                } else {
                    frame::scan_at(&buf, pos)
                };
                match scanned {
                    frame::Scanned::Frame(f) => {
                        let size = f.key.len() + f.wire.len();
                        if !batch.records.is_empty() && *bytes + size > max_bytes {
                            *bytes = max_bytes; // full
                            break;
                        }
                        *bytes += size;
                        batch.records.push(SpooledRecord {
                            lane,
                            partition_key: f.key.to_owned(),
                            data: f.wire.to_vec(),
                            appended_ms: f.appended_ms,
                        });
                        batch.counts[lane.idx()] += 1;
                        pos = f.offset + f.len;
                        state.read.offset += f.len as u64;
                    }
                    frame::Scanned::Corrupt { offset, len } => {
                        pos = offset + len;
                        self.skip_region(state, len as u64);
                    }
                    frame::Scanned::Incomplete { .. } => {
                        let at_end = state.read.offset + (buf.len() - pos) as u64 >= seg_len;
                        // The segment ends inside this frame, or the file is shorter than we
                        // knew (cut under us): nothing more can be read from it.
                        if at_end || pos == 0 {
                            self.skip_region(state, seg_len - state.read.offset);
                        }
                        break;
                    }
                }
            }
            batch.ends[lane.idx()] = Some(state.read);
        }
    }

    fn skip_region(&self, state: &mut LaneState, len: u64) {
        self.stats.corrupt_regions.fetch_add(1, Ordering::Relaxed);
        self.stats.corrupt_bytes.fetch_add(len, Ordering::Relaxed);
        tracing::warn!(
            lane = state.lane.as_str(),
            segment = state.read.seq,
            offset = state.read.offset,
            bytes = len,
            "SpoolCorruptRegionSkipped"
        );
        state.read.offset += len;
    }

    /// Moves `records` (refused for good by the sink) to the quarantine, durably, before the
    /// caller acknowledges their batch. Returns false when they could not be written there (an
    /// I/O error, logged): they are then counted as [`DropReason::Rejected`].
    pub fn quarantine(&self, records: &[&SpooledRecord], why: &str) -> bool {
        let mut inner = self.lock();
        let n = records.len() as u64;
        match inner.quarantine.put(records, now_ms()) {
            Ok(evicted) => {
                self.stats.quarantined.fetch_add(n, Ordering::Relaxed);
                if evicted > 0 {
                    self.stats
                        .count_drop(DropReason::QuarantineEvicted, evicted);
                    tracing::warn!(records = evicted, "SpoolQuarantineEvicted");
                }
                self.stats
                    .quarantine_records
                    .store(inner.quarantine.records(), Ordering::Relaxed);
                tracing::warn!(records = n, reason = why, "SpoolRecordsQuarantined");
                true
            }
            Err(e) => {
                self.io_event(&inner.settings.dir.join(quarantine::DIR), "quarantine", &e);
                self.stats.count_drop(DropReason::Rejected, n);
                false
            }
        }
    }

    /// Marks a batch as delivered: moves each lane's checkpoint past it and deletes segments
    /// left wholly behind. Batches must be acknowledged in the order they were read.
    pub fn ack(&self, batch: &SpooledBatch) {
        let mut inner = self.lock();
        let sync = inner.settings.fsync != FsyncPolicy::Never;
        let mut freed = 0;
        for lane in Lane::ALL {
            let Some(end) = batch.ends[lane.idx()] else {
                continue;
            };
            let state = &mut inner.lanes[lane.idx()];
            let mut end = end.max(state.acked);
            state.unacked = state.unacked.saturating_sub(batch.counts[lane.idx()]);
            // A fully read active segment: start a new one so the old one can be deleted now
            // rather than when it fills up.
            let active = state.active();
            if end.seq == active.seq && end.offset >= active.len && active.len > 0 {
                match state.rotate() {
                    Ok(()) => {
                        end = Pos {
                            seq: state.active().seq,
                            offset: 0,
                        };
                        state.read = state.read.max(end);
                    }
                    Err(e) => self.io_event(&state.dir, "rotate", &e),
                }
            } else if state
                .segment_len(end.seq)
                .is_some_and(|len| end.offset >= len)
                && let Some(seq) = state.next_seq_after(end.seq)
            {
                end = Pos { seq, offset: 0 };
            }
            state.acked = end;
            if let Err(e) = state.write_checkpoint(sync) {
                self.io_event(&state.dir, "checkpoint", &e);
            }
            freed += state.delete_acked_segments();
        }
        inner.total_bytes -= freed;
        self.stats
            .acked_records
            .fetch_add(batch.records.len() as u64, Ordering::Relaxed);
        self.publish_depth(&inner);
    }

    /// Records not yet acknowledged (read or not).
    pub fn depth(&self) -> u64 {
        self.lock().lanes.iter().map(|l| l.unacked).sum()
    }

    /// True when every queued record has been handed out by [`Spool::read_batch`].
    pub fn fully_read(&self) -> bool {
        let inner = self.lock();
        inner.lanes.iter().all(|l| {
            let last = l.active();
            l.read.seq == last.seq && l.read.offset >= last.len
        })
    }

    /// Waits until a record is appended after the last wake-up.
    pub async fn appended(&self) {
        self.notify.notified().await;
    }

    /// Forces appended records to stable storage (at shutdown).
    pub fn sync(&self) {
        let inner = self.lock();
        for state in &inner.lanes {
            if let Err(e) = state.writer.sync_data() {
                self.io_event(&state.dir, "fsync", &e);
            }
        }
    }
}

#[cfg(test)]
mod tests;
