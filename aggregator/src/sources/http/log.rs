//! The HTTP ingest log: where an agent's batch is made durable before it is acknowledged, and
//! what the handlers read, each at its own position, as they read a Kinesis shard.
//!
//! Layout: segment files `<dir>/<start offset, 20 digits>.seg`, each a run of frames in the
//! agent spool's format ([`selfheal_runtime::frame`]: partition key and wire record, CRC'd).
//! Offsets are global and only grow: a record's sequence number is the offset just past its
//! frame, so a handler's checkpoint `after <n>` means "resume at offset n". The last segment is
//! the active one; appends go to its end under one lock and return only after `fdatasync`, so a
//! 200 means the record survives a crash or a power cut.
//!
//! Retention: every reader reports how far it has checkpointed ([`IngestLog::release`]); a
//! segment every reader is past is deleted, and an active segment every reader has finished is
//! rolled so it can go too. The log is bounded: once the segments on disk hold `max_bytes` an
//! append is refused ([`LogError::Full`], answered 503, so the agents keep spooling), which is
//! how a stalled handler pushes back on the fleet instead of filling the disk.
//!
//! Recovery ([`IngestLog::open`]): the active segment is scanned; a torn tail (a crash during an
//! append, never acknowledged) is truncated so appends continue on a frame boundary. A corrupt
//! frame inside a segment (bit rot) is skipped by the readers, counted, never trusted.
//!
//! Retried requests: an agent that was not answered (the aggregator died between the fsync and
//! the 200) sends the batch again. The ids of the most recent records appended (seeded from the
//! active segment at start) are remembered, and a record already logged is not logged twice.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use selfheal_runtime::frame::{self, Scanned};
use std::collections::{BTreeSet, HashSet, VecDeque};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use tokio::sync::watch;

/// Most bytes one [`IngestLog::read`] returns: several frames of the largest kind (1 MiB).
const READ_CHUNK: usize = 4 * 1024 * 1024;
/// Ids of recently appended records remembered to drop an agent's resend (~12 MiB).
const RECENT_IDS: usize = 1 << 18;

/// The log could not be opened, appended to or read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The segments on disk hold `max_bytes` already: a handler is behind.
    #[error("the ingest log is full ({bytes} of {max} bytes unconsumed)")]
    Full {
        /// Bytes on disk.
        bytes: u64,
        /// The bound.
        max: u64,
    },
    /// An append failed and its partial frame could not be cut off again; appends are refused
    /// until a restart recovers the segment.
    #[error("the ingest log's active segment is damaged: {0}")]
    Broken(String),
    /// The blocking file task did not complete.
    #[error("ingest log file task did not complete")]
    Join(#[source] tokio::task::JoinError),
}

/// One record to append.
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// The record id (for dropping resends).
    pub id: u128,
    /// The partition key (the workload identity).
    pub key: String,
    /// The wire record.
    pub wire: Vec<u8>,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Records written.
    pub records: usize,
    /// Records dropped because they were logged already (an agent's resend).
    pub duplicates: usize,
}

/// One record read back.
#[derive(Debug, Clone)]
pub struct LoggedRecord {
    /// The offset just past its frame: its sequence number.
    pub end: u64,
    /// The partition key.
    pub key: String,
    /// The wire record.
    pub wire: Vec<u8>,
}

/// What one read found.
#[derive(Debug, Default)]
pub struct Chunk {
    /// Records, in log order.
    pub records: Vec<LoggedRecord>,
    /// Where the next read starts.
    pub next: u64,
    /// Whether `next` moved past where the read started (records or skipped bytes): read
    /// again at once rather than waiting for an append.
    pub moved: bool,
}

/// The log's gauges and counters (`selfheal_aggregator_ingest_log_*`).
#[derive(Debug, Default)]
pub struct LogMetrics {
    /// Bytes in segments on disk.
    pub bytes: Gauge,
    /// Segment files on disk.
    pub segments: Gauge,
    /// Records appended.
    pub appended: Counter,
    /// Records dropped as resends of records logged already.
    pub duplicates: Counter,
    /// Bytes skipped by readers because they were not a valid frame.
    pub corrupt_bytes: Counter,
    /// Bytes of a torn tail cut off at start.
    pub truncated_bytes: Counter,
    /// Records a reader could not read because their segment was gone (deleted by hand).
    pub lost_bytes: Counter,
}

impl LogMetrics {
    /// Registers every metric under `registry` (prefix `ingest_log`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("ingest_log");
        let bytes = prometheus_client::registry::Unit::Bytes;
        r.register_with_unit(
            "size",
            "Bytes in ingest log segments on disk",
            bytes.clone(),
            self.bytes.clone(),
        );
        r.register(
            "segments",
            "Ingest log segment files",
            self.segments.clone(),
        );
        r.register(
            "appended_records",
            "Records appended",
            self.appended.clone(),
        );
        r.register(
            "duplicate_records",
            "Records not appended because they were logged already (resends)",
            self.duplicates.clone(),
        );
        r.register_with_unit(
            "corrupt",
            "Bytes skipped by readers because they were not a valid frame",
            bytes.clone(),
            self.corrupt_bytes.clone(),
        );
        r.register_with_unit(
            "truncated",
            "Bytes of torn tails cut off at start",
            bytes.clone(),
            self.truncated_bytes.clone(),
        );
        r.register_with_unit(
            "lost",
            "Bytes a reader skipped because their segment was gone",
            bytes,
            self.lost_bytes.clone(),
        );
    }
}

/// Validated log settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// The directory of segments.
    pub dir: PathBuf,
    /// Appends are refused once the segments on disk hold this many bytes.
    pub max_bytes: u64,
}

impl LogSettings {
    /// A segment is sealed at this size: an eighth of the bound (so retention frees space in
    /// steps of at most an eighth), within 4 KiB..64 MiB.
    fn segment_bytes(&self) -> u64 {
        (self.max_bytes / 8).clamp(4096, 64 * 1024 * 1024)
    }
}

/// The most recently appended ids.
#[derive(Debug, Default)]
struct RecentIds {
    set: HashSet<u128>,
    order: VecDeque<u128>,
}

impl RecentIds {
    fn insert(&mut self, id: u128) {
        if self.set.insert(id) {
            self.order.push_back(id);
            if self.order.len() > RECENT_IDS
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

#[derive(Debug)]
struct State {
    /// The active segment, open for appending.
    active: File,
    active_start: u64,
    /// The committed end: every byte before it is fsynced.
    end: u64,
    /// Start offsets of the segments on disk (the last is the active one).
    segments: BTreeSet<u64>,
    /// How far each reader has checkpointed.
    readers: Vec<u64>,
    recent: RecentIds,
    broken: Option<String>,
}

impl State {
    fn oldest(&self) -> u64 {
        self.segments.first().copied().unwrap_or(self.active_start)
    }
}

/// The durable ingest log. Its methods block (file I/O): call them from blocking tasks.
#[derive(Debug)]
pub struct IngestLog {
    settings: LogSettings,
    state: Mutex<State>,
    end: watch::Sender<u64>,
    metrics: std::sync::Arc<LogMetrics>,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LogError + 'a {
    move |source| LogError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}.seg"))
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Reads `[at, at + len)` of `file`, less at its end.
fn read_range(file: &File, at: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

impl IngestLog {
    /// Opens (or creates) the log in `settings.dir`, recovering the active segment.
    pub fn open(
        settings: LogSettings,
        metrics: std::sync::Arc<LogMetrics>,
    ) -> Result<IngestLog, LogError> {
        let dir = settings.dir.clone();
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let mut segments = BTreeSet::new();
        for e in std::fs::read_dir(&dir).map_err(io("listing", &dir))? {
            let e = e.map_err(io("listing", &dir))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if let Some(start) = name
                .strip_suffix(".seg")
                .filter(|n| n.len() == 20)
                .and_then(|n| n.parse::<u64>().ok())
            {
                segments.insert(start);
            }
        }
        let mut recent = RecentIds::default();
        let (active_start, end) = match segments.last().copied() {
            None => {
                let p = segment_path(&dir, 0);
                File::create(&p).map_err(io("creating", &p))?;
                sync_dir(&dir)?;
                segments.insert(0);
                (0, 0)
            }
            Some(start) => {
                let p = segment_path(&dir, start);
                let bytes = std::fs::read(&p).map_err(io("reading", &p))?;
                let valid = recover(&bytes, &mut recent);
                if valid < bytes.len() {
                    let cut = bytes.len() - valid;
                    tracing::warn!(segment = %p.display(), bytes = cut, "IngestLogTornTailTruncated");
                    metrics.truncated_bytes.inc_by(cut as u64);
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .map_err(io("opening", &p))?;
                    f.set_len(valid as u64).map_err(io("truncating", &p))?;
                    f.sync_all().map_err(io("syncing", &p))?;
                }
                (start, start + valid as u64)
            }
        };
        let p = segment_path(&dir, active_start);
        let active = std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .map_err(io("opening", &p))?;
        let (end_tx, _) = watch::channel(end);
        let log = IngestLog {
            settings,
            state: Mutex::new(State {
                active,
                active_start,
                end,
                segments,
                readers: Vec::new(),
                recent,
                broken: None,
            }),
            end: end_tx,
            metrics,
        };
        log.gauges(&log.lock());
        Ok(log)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock ends the process (see `run`); the state is whole
        // between statements, so a poisoned lock is still usable until then.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn gauges(&self, st: &State) {
        self.metrics
            .bytes
            .set(i64::try_from(st.end - st.oldest()).unwrap_or(i64::MAX));
        self.metrics
            .segments
            .set(i64::try_from(st.segments.len()).unwrap_or(i64::MAX));
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.settings.dir
    }

    /// A receiver of the committed end offset, which changes after every append.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.end.subscribe()
    }

    /// Bytes in segments on disk.
    pub fn bytes(&self) -> u64 {
        let st = self.lock();
        st.end - st.oldest()
    }

    /// Registers a reader that has checkpointed up to `after` (`None`: never read). Returns
    /// its slot for [`IngestLog::release`] and where it starts reading: `after`, or the oldest
    /// record on disk when `after` is older or absent. Register every reader before any reads,
    /// so no segment is deleted under one.
    pub fn register(&self, after: Option<u64>) -> (usize, u64) {
        let mut st = self.lock();
        let oldest = st.oldest();
        let pos = match after {
            Some(a) if a > st.end => {
                tracing::warn!(checkpoint = a, end = st.end, "IngestCheckpointBeyondLogEnd");
                st.end
            }
            Some(a) if a < oldest => {
                self.metrics.lost_bytes.inc_by(oldest - a);
                tracing::warn!(checkpoint = a, oldest, "IngestLogRecordsGone");
                oldest
            }
            Some(a) => a,
            None => oldest,
        };
        st.readers.push(pos);
        (st.readers.len() - 1, pos)
    }

    /// Appends `records` (skipping ones logged already) and returns once they are fsynced.
    pub fn append(&self, records: &[LogRecord]) -> Result<Appended, LogError> {
        let mut st = self.lock();
        if let Some(why) = &st.broken {
            return Err(LogError::Broken(why.clone()));
        }
        let bytes = st.end - st.oldest();
        if bytes >= self.settings.max_bytes {
            return Err(LogError::Full {
                bytes,
                max: self.settings.max_bytes,
            });
        }
        let appended_ms = now_ms();
        let mut seen = HashSet::new();
        let mut buf = Vec::new();
        let mut fresh = Vec::new();
        for r in records {
            if st.recent.set.contains(&r.id) || !seen.insert(r.id) {
                continue;
            }
            buf.extend(frame::encode(appended_ms, &r.key, &r.wire));
            fresh.push(r.id);
        }
        let duplicates = records.len() - fresh.len();
        self.metrics.duplicates.inc_by(duplicates as u64);
        if fresh.is_empty() {
            return Ok(Appended {
                records: 0,
                duplicates,
            });
        }
        if st.end - st.active_start >= self.settings.segment_bytes() {
            self.roll(&mut st)?;
        }
        let path = segment_path(&self.settings.dir, st.active_start);
        let before = st.end - st.active_start;
        let written = st
            .active
            .write_all(&buf)
            .and_then(|()| st.active.sync_data());
        if let Err(source) = written {
            // Cut the partial frame off so the next append starts on a frame boundary.
            if let Err(e) = st.active.set_len(before) {
                st.broken = Some(format!("{}: {e}", path.display()));
                tracing::error!(segment = %path.display(), error = %e, "IngestLogBroken");
            }
            return Err(LogError::Io {
                op: "appending to",
                path,
                source,
            });
        }
        st.end += buf.len() as u64;
        for id in &fresh {
            st.recent.insert(*id);
        }
        self.metrics.appended.inc_by(fresh.len() as u64);
        self.gauges(&st);
        self.end.send_replace(st.end);
        Ok(Appended {
            records: fresh.len(),
            duplicates,
        })
    }

    /// Starts a new active segment at the committed end.
    fn roll(&self, st: &mut State) -> Result<(), LogError> {
        let p = segment_path(&self.settings.dir, st.end);
        let f = std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&p)
            .map_err(io("creating", &p))?;
        sync_dir(&self.settings.dir)?;
        st.active = f;
        st.active_start = st.end;
        st.segments.insert(st.end);
        Ok(())
    }

    /// Records that reader `slot` has checkpointed up to `after`; deletes the segments every
    /// reader is past.
    pub fn release(&self, slot: usize, after: u64) -> Result<(), LogError> {
        let mut st = self.lock();
        if let Some(r) = st.readers.get_mut(slot) {
            *r = (*r).max(after);
        }
        let min = st.readers.iter().copied().min().unwrap_or(0);
        if min >= st.end && st.end > st.active_start && st.broken.is_none() {
            // Everything is consumed: seal the active segment so it can go too.
            self.roll(&mut st)?;
        }
        let starts: Vec<u64> = st.segments.iter().copied().collect();
        for pair in starts.windows(2) {
            let (start, next) = (pair[0], pair[1]);
            if next > min {
                break;
            }
            let p = segment_path(&self.settings.dir, start);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(LogError::Io {
                        op: "deleting",
                        path: p,
                        source,
                    });
                }
            }
            st.segments.remove(&start);
        }
        self.gauges(&st);
        Ok(())
    }

    /// Reads records from `pos` on, up to about `READ_CHUNK` bytes, crossing into the next
    /// segment when one is finished.
    pub fn read(&self, pos: u64) -> Result<Chunk, LogError> {
        let mut pos = pos;
        let mut moved = false;
        loop {
            let (start, limit, sealed) = {
                let st = self.lock();
                let oldest = st.oldest();
                if pos < oldest {
                    self.metrics.lost_bytes.inc_by(oldest - pos);
                    tracing::warn!(from = pos, to = oldest, "IngestLogRecordsGone");
                    pos = oldest;
                    moved = true;
                }
                let start = st
                    .segments
                    .range(..=pos)
                    .next_back()
                    .copied()
                    .unwrap_or(oldest);
                match st.segments.range(start + 1..).next().copied() {
                    Some(next) => (start, next, true),
                    None => (start, st.end, false),
                }
            };
            if pos >= limit {
                if sealed {
                    pos = limit;
                    moved = true;
                    continue;
                }
                return Ok(Chunk {
                    records: Vec::new(),
                    next: pos,
                    moved,
                });
            }
            let want = usize::try_from(limit - pos)
                .unwrap_or(usize::MAX)
                .min(READ_CHUNK);
            let path = segment_path(&self.settings.dir, start);
            let buf = match File::open(&path) {
                Ok(f) => read_range(&f, pos - start, want).map_err(io("reading", &path))?,
                // Deleted between the lock and the open: the reader is past it, or it was
                // deleted by hand; either way nothing is left to read there.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(source) => {
                    return Err(LogError::Io {
                        op: "opening",
                        path,
                        source,
                    });
                }
            };
            let whole = want == usize::try_from(limit - pos).unwrap_or(usize::MAX);
            return Ok(self.scan(&buf, pos, limit, whole, moved));
        }
    }

    /// Frames of `buf` (read at `pos`; the segment's readable part ends at `limit`).
    fn scan(&self, buf: &[u8], pos: u64, limit: u64, whole: bool, moved: bool) -> Chunk {
        let mut out = Chunk {
            records: Vec::new(),
            next: pos,
            moved,
        };
        let mut p = 0;
        while p < buf.len() {
            // Up to the readable end, a length corrupted to run past it is skipped to the next
            // frame instead of hiding every record after it.
            let scanned = if whole {
                frame::scan_complete(buf, p)
            } else {
                frame::scan_at(buf, p)
            };
            match scanned {
                Scanned::Frame(f) => {
                    p = f.offset + f.len;
                    out.records.push(LoggedRecord {
                        end: pos + p as u64,
                        key: f.key.to_owned(),
                        wire: f.wire.to_vec(),
                    });
                }
                Scanned::Corrupt { offset, len } => {
                    self.metrics.corrupt_bytes.inc_by(len as u64);
                    tracing::warn!(
                        offset = pos + offset as u64,
                        bytes = len,
                        "IngestLogCorruptBytesSkipped"
                    );
                    p = offset + len;
                }
                Scanned::Incomplete { offset } => {
                    if !whole {
                        // The chunk ends inside a frame: the next read starts at it.
                        p = offset;
                    } else {
                        // Appends are whole frames, so a partial one up to the readable end is
                        // damage (a segment cut short by hand): skip it.
                        let len = buf.len() - offset;
                        self.metrics.corrupt_bytes.inc_by(len as u64);
                        tracing::warn!(
                            offset = pos + offset as u64,
                            bytes = len,
                            "IngestLogCorruptBytesSkipped"
                        );
                        p = buf.len();
                    }
                    break;
                }
            }
        }
        // A file shorter than the segment's span (cut short by hand) reads as nothing more.
        out.next = if whole && p == buf.len() {
            limit
        } else {
            pos + p as u64
        };
        out.moved |= out.next > pos;
        out
    }
}

/// Length of the valid prefix of the active segment `bytes`: up to the end of its last valid
/// frame. Notes every frame's record id.
fn recover(bytes: &[u8], recent: &mut RecentIds) -> usize {
    let mut p = 0;
    let mut valid = 0;
    while p < bytes.len() {
        match frame::scan_complete(bytes, p) {
            Scanned::Frame(f) => {
                if let Ok(env) = selfheal_core::schema::decode_wire(f.wire) {
                    recent.insert(env.record().id.as_u128());
                }
                p = f.offset + f.len;
                valid = p;
            }
            Scanned::Corrupt { offset, len } => p = offset + len,
            Scanned::Incomplete { .. } => break,
        }
    }
    valid
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn rec(id: u128) -> LogRecord {
        LogRecord {
            id,
            key: "node/a".into(),
            wire: format!("wire-{id}").into_bytes(),
        }
    }

    fn open(dir: &Path, max: u64) -> IngestLog {
        IngestLog::open(
            LogSettings {
                dir: dir.to_owned(),
                max_bytes: max,
            },
            Arc::default(),
        )
        .expect("open log")
    }

    fn read_all(log: &IngestLog, mut pos: u64) -> (Vec<String>, u64) {
        let mut out = Vec::new();
        loop {
            let c = log.read(pos).expect("read");
            out.extend(
                c.records
                    .iter()
                    .map(|r| String::from_utf8_lossy(&r.wire).into_owned()),
            );
            pos = c.next;
            if !c.moved {
                return (out, pos);
            }
        }
    }

    #[test]
    fn appends_read_back_across_segments_resends_are_dropped_and_consumed_segments_go() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let log = open(tmp.path(), 64 * 1024);
        let (slot, start) = log.register(None);
        assert_eq!(start, 0);
        for i in 0..400 {
            let a = log.append(&[rec(i), rec(i + 1000)]).expect("append");
            assert_eq!(a.records, 2);
        }
        let again = log.append(&[rec(5), rec(7)]).expect("append");
        assert_eq!((again.records, again.duplicates), (0, 2));
        let segments_before = std::fs::read_dir(tmp.path()).expect("ls").count();
        assert!(segments_before > 2, "{segments_before} segments");
        let (got, end) = read_all(&log, 0);
        assert_eq!(got.len(), 800);
        assert_eq!(got[0], "wire-0");
        assert_eq!(got[799], "wire-1399");
        log.release(slot, end).expect("release");
        assert_eq!(log.bytes(), 0);
        assert_eq!(std::fs::read_dir(tmp.path()).expect("ls").count(), 1);
    }

    #[test]
    fn a_full_log_refuses_appends_until_a_reader_releases() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let log = open(tmp.path(), 4096);
        let (slot, _) = log.register(None);
        let mut i = 0;
        let err = loop {
            match log.append(&[rec(i)]) {
                Ok(_) => i += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(err, LogError::Full { .. }), "{err}");
        let (got, end) = read_all(&log, 0);
        assert_eq!(got.len() as u128, i);
        log.release(slot, end).expect("release");
        log.append(&[rec(i)]).expect("room again");
    }

    #[test]
    fn a_torn_tail_is_cut_off_at_open_and_known_ids_survive_a_restart() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let env = |id: u128| {
            selfheal_core::schema::Envelope::new(selfheal_core::schema::Payload::Sample {
                record: selfheal_core::schema::Record {
                    id: selfheal_core::RecordId::from_u128(id),
                    ts_ms: 1,
                    node: "a".into(),
                    subject: selfheal_core::schema::Subject::Node,
                    family: selfheal_core::Family::Cpu,
                    values: Default::default(),
                },
                inclusion_probability: 1.0,
            })
        };
        let wire = |id| selfheal_core::schema::encode_wire(&env(id)).expect("wire");
        let end = {
            let log = open(tmp.path(), 1 << 20);
            for id in 1..=3 {
                log.append(&[LogRecord {
                    id,
                    key: "k".into(),
                    wire: wire(id),
                }])
                .expect("append");
            }
            log.bytes()
        };
        let seg = segment_path(tmp.path(), 0);
        let torn = frame::encode(9, "k", &wire(4));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&seg)
            .expect("open");
        f.write_all(&torn[..torn.len() / 2]).expect("torn write");
        drop(f);
        let log = open(tmp.path(), 1 << 20);
        assert_eq!(log.bytes(), end, "torn tail truncated");
        let a = log
            .append(&[
                LogRecord {
                    id: 2,
                    key: "k".into(),
                    wire: wire(2),
                },
                LogRecord {
                    id: 4,
                    key: "k".into(),
                    wire: wire(4),
                },
            ])
            .expect("append");
        assert_eq!((a.records, a.duplicates), (1, 1));
        let c = log.read(0).expect("read");
        assert_eq!(c.records.len(), 4);
        assert_eq!(c.next, log.bytes());
    }
}
