//! Unit tests of the spool on real files in a temp dir.

use super::lane::list_segments;
use super::*;
use std::fs::OpenOptions;

fn settings(dir: &Path, max_bytes: u64, segment_bytes: u64) -> SpoolSettings {
    SpoolConfig {
        dir: dir.to_owned(),
        max_bytes,
        segment_bytes,
        fsync: FsyncPolicy::Never,
        fsync_interval_ms: 1000,
    }
    .validate()
    .expect("valid test settings")
}

/// A record of `len` bytes whose first 8 bytes are `id`, so tests can tell records apart.
fn rec(id: u64, len: usize) -> Vec<u8> {
    let mut v = id.to_le_bytes().to_vec();
    v.resize(len.max(8), 0x5A);
    v
}

fn id_of(r: &SpooledRecord) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&r.data[..8]);
    u64::from_le_bytes(b)
}

fn drain(spool: &Spool) -> Vec<(Lane, u64)> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let b = spool.read_batch(100, 1 << 20);
        if b.is_empty() {
            break;
        }
        out.extend(b.records.iter().map(|r| (r.lane, id_of(r))));
        spool.ack(&b);
    }
    out
}

fn seg_files(dir: &Path, lane: Lane) -> Vec<PathBuf> {
    let d = dir.join(lane.as_str());
    let mut v: Vec<_> = list_segments(&d)
        .expect("list")
        .into_iter()
        .map(|s| seg_path(&d, s))
        .collect();
    v.sort();
    v
}

#[test]
fn records_come_back_in_order_anomalies_first() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(settings(tmp.path(), 1 << 20, 64 << 10)).expect("open");
    for i in 0..5 {
        spool
            .append(Lane::Sample, "k/s", &rec(i, 50))
            .expect("append");
        spool
            .append(Lane::Anomaly, "k/a", &rec(100 + i, 50))
            .expect("append");
    }
    let b = spool.read_batch(100, 1 << 20);
    let got: Vec<_> = b.records.iter().map(|r| (r.lane, id_of(r))).collect();
    let mut want: Vec<_> = (0..5).map(|i| (Lane::Anomaly, 100 + i)).collect();
    want.extend((0..5).map(|i| (Lane::Sample, i)));
    assert_eq!(got, want);
    assert_eq!(b.records[0].partition_key, "k/a");
    assert_eq!(spool.depth(), 10);
    spool.ack(&b);
    assert_eq!(spool.depth(), 0);
    assert!(spool.read_batch(100, 1 << 20).is_empty());
}

#[test]
fn batches_respect_record_and_byte_limits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(settings(tmp.path(), 1 << 20, 64 << 10)).expect("open");
    for i in 0..10 {
        spool
            .append(Lane::Sample, "k", &rec(i, 99))
            .expect("append");
    }
    assert_eq!(spool.read_batch(3, 1 << 20).len(), 3);
    // 100 bytes per record (99 + 1 key byte): 250 bytes fit two.
    assert_eq!(spool.read_batch(100, 250).len(), 2);
    // A record larger than the byte budget still comes, alone.
    assert_eq!(spool.read_batch(100, 10).len(), 1);
}

#[test]
fn segments_rotate_by_size_and_acked_ones_are_deleted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(settings(tmp.path(), 1 << 20, 4096)).expect("open");
    for i in 0..100 {
        spool
            .append(Lane::Sample, "k", &rec(i, 200))
            .expect("append");
    }
    let files = seg_files(tmp.path(), Lane::Sample);
    assert!(files.len() >= 5, "expected rotation, got {files:?}");
    for f in &files {
        let len = fs::metadata(f).expect("stat").len();
        assert!(len <= 4096, "{} is {len} bytes", f.display());
    }
    let got = drain(&spool);
    assert_eq!(got.len(), 100);
    assert!(got.iter().map(|(_, id)| *id).eq(0..100));
    // Everything acknowledged: only the fresh active segment is left, and it is empty.
    let left = seg_files(tmp.path(), Lane::Sample);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(fs::metadata(&left[0]).expect("stat").len(), 0);
    assert_eq!(spool.stats().depth_bytes.load(Ordering::Relaxed), 0);
}

#[test]
fn restart_replays_only_unacknowledged_records() {
    let tmp = tempfile::tempdir().expect("tempdir");
    {
        let spool = Spool::open(settings(tmp.path(), 1 << 20, 4096)).expect("open");
        for i in 0..50 {
            spool
                .append(Lane::Sample, "k", &rec(i, 100))
                .expect("append");
        }
        spool
            .append(Lane::Anomaly, "k", &rec(1000, 100))
            .expect("append");
        let b = spool.read_batch(20, 1 << 20); // the anomaly + samples 0..19
        spool.ack(&b);
        // Read but never acknowledged: must come back after the restart.
        let unacked = spool.read_batch(10, 1 << 20);
        assert_eq!(unacked.len(), 10);
    }
    let spool = Spool::open(settings(tmp.path(), 1 << 20, 4096)).expect("reopen");
    assert_eq!(spool.depth(), 31);
    let got: Vec<u64> = drain(&spool).into_iter().map(|(_, id)| id).collect();
    assert_eq!(got, (19..50).collect::<Vec<_>>());
    // A second restart after everything was acknowledged replays nothing.
    drop(spool);
    let spool = Spool::open(settings(tmp.path(), 1 << 20, 4096)).expect("reopen");
    assert!(drain(&spool).is_empty());
}

#[test]
fn when_full_new_samples_are_dropped_and_anomalies_evict_samples_first() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // 16 KiB spool, 4 KiB segments, ~1 KiB records.
    let spool = Spool::open(settings(tmp.path(), 16 << 10, 4 << 10)).expect("open");
    let mut kept_samples = 0;
    for i in 0..40 {
        if spool.append(Lane::Sample, "k", &rec(i, 1000)).is_ok() {
            kept_samples += 1;
        }
    }
    let stats = spool.stats().clone();
    assert!(kept_samples < 40);
    assert_eq!(stats.dropped(DropReason::SampleFull), 40 - kept_samples);
    // Anomalies still get in, by evicting the oldest samples.
    for i in 0..8 {
        spool
            .append(Lane::Anomaly, "k", &rec(500 + i, 1000))
            .expect("an anomaly is never refused while samples remain");
    }
    assert!(stats.dropped(DropReason::SampleEvicted) > 0);
    assert_eq!(stats.dropped(DropReason::AnomalyEvicted), 0);
    assert!(spool.stats().depth_bytes.load(Ordering::Relaxed) <= 16 << 10);
    let got = drain(&spool);
    let anomalies: Vec<u64> = got
        .iter()
        .filter(|(l, _)| *l == Lane::Anomaly)
        .map(|(_, id)| *id)
        .collect();
    assert_eq!(anomalies, (500..508).collect::<Vec<_>>());
    let samples = got.iter().filter(|(l, _)| *l == Lane::Sample).count() as u64;
    // Every sample is either delivered or counted as evicted: none vanish silently.
    assert_eq!(
        samples + stats.dropped(DropReason::SampleEvicted),
        kept_samples
    );
    // The samples that survived are the newest ones.
    let first_sample = got
        .iter()
        .find(|(l, _)| *l == Lane::Sample)
        .map(|(_, id)| *id);
    assert!(first_sample.is_none_or(|id| id > 0));
}

#[test]
fn anomalies_evict_older_anomalies_only_when_no_samples_remain() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(settings(tmp.path(), 16 << 10, 4 << 10)).expect("open");
    for i in 0..40 {
        spool
            .append(Lane::Anomaly, "k", &rec(i, 1000))
            .expect("anomalies are always taken");
    }
    let stats = spool.stats();
    assert!(stats.dropped(DropReason::AnomalyEvicted) > 0);
    let got: Vec<u64> = drain(&spool).into_iter().map(|(_, id)| id).collect();
    assert_eq!(got.last(), Some(&39), "the newest anomaly is kept");
    assert_eq!(
        got.len() as u64 + stats.dropped(DropReason::AnomalyEvicted),
        40
    );
}

#[test]
fn oversized_records_are_refused_and_counted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(settings(tmp.path(), 8 << 20, 1 << 20)).expect("open");
    let big = vec![0; MAX_RECORD_BYTES];
    assert_eq!(
        spool.append(Lane::Anomaly, "k", &big),
        Err(DropReason::TooLarge)
    );
    let long_key = "x".repeat(MAX_PARTITION_KEY_LEN + 1);
    assert_eq!(
        spool.append(Lane::Anomaly, &long_key, b"x"),
        Err(DropReason::TooLarge)
    );
    assert_eq!(spool.stats().dropped(DropReason::TooLarge), 2);
    // The largest allowed record fits, in a segment of its own.
    spool
        .append(Lane::Anomaly, "k", &big[..MAX_RECORD_BYTES - 1])
        .expect("fits");
    assert_eq!(drain(&spool).len(), 1);
}

#[test]
fn torn_tail_after_a_crash_is_cut_and_the_rest_replayed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    {
        let spool = Spool::open(settings(tmp.path(), 1 << 20, 64 << 10)).expect("open");
        for i in 0..10 {
            spool
                .append(Lane::Sample, "k", &rec(i, 100))
                .expect("append");
        }
    }
    let seg = seg_files(tmp.path(), Lane::Sample)[0].clone();
    let len = fs::metadata(&seg).expect("stat").len();
    // The last frame half written, as if the process died inside write().
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .and_then(|f| f.set_len(len - 40))
        .expect("truncate");
    let spool = Spool::open(settings(tmp.path(), 1 << 20, 64 << 10)).expect("reopen");
    assert_eq!(spool.stats().corrupt_regions.load(Ordering::Relaxed), 1);
    let got: Vec<u64> = drain(&spool).into_iter().map(|(_, id)| id).collect();
    assert_eq!(got, (0..9).collect::<Vec<_>>());
    // New records go on after the recovery.
    spool
        .append(Lane::Sample, "k", &rec(77, 100))
        .expect("append");
    assert_eq!(drain(&spool), vec![(Lane::Sample, 77)]);
}

#[test]
fn corrupt_bytes_in_a_segment_are_skipped_counted_and_the_rest_delivered() {
    let tmp = tempfile::tempdir().expect("tempdir");
    {
        let spool = Spool::open(settings(tmp.path(), 1 << 20, 4096)).expect("open");
        for i in 0..60 {
            spool
                .append(Lane::Sample, "k", &rec(i, 100))
                .expect("append");
        }
    }
    let files = seg_files(tmp.path(), Lane::Sample);
    // Bit rot in the middle of the first segment, and a whole segment overwritten with junk.
    let mut first = fs::read(&files[0]).expect("read");
    first[300] ^= 0xFF;
    fs::write(&files[0], &first).expect("write");
    let junk_len = fs::metadata(&files[1]).expect("stat").len() as usize;
    fs::write(&files[1], vec![0xEE; junk_len]).expect("write");
    let spool = Spool::open(settings(tmp.path(), 1 << 20, 4096)).expect("reopen");
    let got = drain(&spool);
    let frame_len = 12 + 10 + 1 + 100;
    assert_eq!(got.len(), 60 - 1 - junk_len / frame_len);
    assert!(spool.stats().corrupt_regions.load(Ordering::Relaxed) >= 2);
    // Nothing left to loop on.
    assert!(spool.read_batch(100, 1 << 20).is_empty());
}

#[test]
fn inspect_reports_queued_records_by_lane() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(settings(tmp.path(), 1 << 20, 4096)).expect("open");
    for i in 0..30 {
        spool
            .append(Lane::Sample, "k", &rec(i, 100))
            .expect("append");
    }
    for i in 0..3 {
        spool
            .append(Lane::Anomaly, "k", &rec(i, 100))
            .expect("append");
    }
    let b = spool.read_batch(5, 1 << 20);
    spool.ack(&b); // 3 anomalies + 2 samples
    let ins = inspect(tmp.path()).expect("inspect");
    assert_eq!(ins.anomaly.records, 0);
    assert_eq!(ins.sample.records, 28);
    assert!(ins.sample.segments >= 1);
    assert!(ins.sample.oldest_ms.is_some());
}

#[test]
fn config_is_validated_naming_the_field() {
    let cfg = SpoolConfig {
        max_bytes: 4096,
        ..SpoolConfig::default()
    };
    let err = cfg.validate().expect_err("too small").to_string();
    assert!(err.contains("spool.max_bytes"), "{err}");
    let parsed: Result<SpoolConfig, _> = serde_json::from_str(r#"{"max_byte": 1}"#);
    assert!(parsed.is_err(), "unknown fields are refused");
}

#[test]
fn a_full_disk_is_counted_and_the_spool_carries_on() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(settings(tmp.path(), 1 << 20, 4096)).expect("open");
    // 33 frames of 123 bytes fill the first 4 KiB segment; the next one rotates.
    for i in 0..33 {
        spool
            .append(Lane::Sample, "k", &rec(i, 100))
            .expect("append");
    }
    // The next segment is a device that always answers ENOSPC, as a full disk does.
    let active = seg_files(tmp.path(), Lane::Sample).len() as u64 - 1;
    std::os::unix::fs::symlink(
        "/dev/full",
        seg_path(&tmp.path().join("sample"), active + 1),
    )
    .expect("symlink");
    for i in 33..43 {
        assert_eq!(
            spool.append(Lane::Sample, "k", &rec(i, 100)),
            Err(DropReason::Io)
        );
    }
    assert_eq!(spool.stats().dropped(DropReason::Io), 10);
    assert!(spool.stats().io_errors.load(Ordering::Relaxed) >= 10);
    // The other lane and everything spooled before still work.
    spool
        .append(Lane::Anomaly, "k", &rec(99, 100))
        .expect("append");
    let got: Vec<u64> = drain(&spool).into_iter().map(|(_, id)| id).collect();
    assert_eq!(got[0], 99);
    assert_eq!(&got[1..], &(0..33).collect::<Vec<_>>()[..]);
}

#[test]
fn a_corrupted_length_in_the_middle_of_a_segment_still_replays_every_later_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    {
        let spool = Spool::open(settings(tmp.path(), 1 << 20, 64 << 10)).expect("open");
        for i in 0..20 {
            spool
                .append(Lane::Sample, "k", &rec(i, 100))
                .expect("append");
        }
    }
    let seg = seg_files(tmp.path(), Lane::Sample)[0].clone();
    let mut bytes = fs::read(&seg).expect("read");
    let frame_len = 12 + 10 + 1 + 100;
    // Frame 5's length now points past the end of the file: before, recovery took it for a
    // torn tail and cut the segment there, losing frames 5..20.
    let at = 5 * frame_len + 4;
    bytes[at..at + 4].copy_from_slice(&(60_000u32).to_le_bytes());
    fs::write(&seg, &bytes).expect("write");
    let spool = Spool::open(settings(tmp.path(), 1 << 20, 64 << 10)).expect("reopen");
    assert_eq!(
        fs::metadata(&seg).expect("stat").len() as usize,
        bytes.len(),
        "recovery truncated the segment"
    );
    let got: Vec<u64> = drain(&spool).into_iter().map(|(_, id)| id).collect();
    let want: Vec<u64> = (0..20).filter(|i| *i != 5).collect();
    assert_eq!(got, want);
    assert_eq!(spool.stats().corrupt_regions.load(Ordering::Relaxed), 1);
    // And `inspect` agrees, without touching anything.
    drop(spool);
}

#[test]
fn quarantined_records_leave_their_lane_stay_on_disk_and_are_inspectable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(settings(tmp.path(), 1 << 20, 4096)).expect("open");
    for i in 0..5 {
        spool
            .append(Lane::Sample, "k", &rec(i, 100))
            .expect("append");
    }
    let batch = spool.read_batch(100, 1 << 20);
    let refs: Vec<&SpooledRecord> = batch.records.iter().collect();
    assert!(spool.quarantine(&refs, "aggregator answered 400"));
    spool.ack(&batch);
    assert_eq!(spool.depth(), 0);
    assert_eq!(spool.stats().quarantined.load(Ordering::Relaxed), 5);
    assert_eq!(
        spool.stats().dropped_total(),
        0,
        "a quarantined record counted as lost"
    );
    let ins = inspect(tmp.path()).expect("inspect");
    assert_eq!((ins.sample.records, ins.quarantine.records), (0, 5));
    drop(spool);
    // It survives a restart and is not sent again.
    let spool = Spool::open(settings(tmp.path(), 1 << 20, 4096)).expect("reopen");
    assert!(spool.read_batch(100, 1 << 20).is_empty());
    assert_eq!(spool.stats().quarantine_records.load(Ordering::Relaxed), 5);
}
