//! What the spool counts: its two lanes, why records are lost, and the live counters behind
//! the `selfheal_agent_spool_*` metrics.

use crate::telemetry::counter;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use selfheal_core::schema::Payload;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The two priority classes; each is a directory of its own segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Anomalies: read first, evicted last.
    Anomaly,
    /// Sampled normal records: dropped or evicted first when the spool is full.
    Sample,
}

impl Lane {
    /// Both lanes, in read priority order.
    pub const ALL: [Lane; 2] = [Lane::Anomaly, Lane::Sample];

    /// The lane a payload belongs in.
    pub fn of(payload: &Payload) -> Lane {
        match payload {
            Payload::Anomaly(_) => Lane::Anomaly,
            Payload::Sample { .. } => Lane::Sample,
        }
    }

    /// The lane's directory name and label.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Anomaly => "anomaly",
            Lane::Sample => "sample",
        }
    }

    pub(super) fn idx(self) -> usize {
        self as usize
    }
}

/// Why a record was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A new sampled normal record arrived while the spool was full.
    SampleFull,
    /// A queued sampled normal record was evicted to make room for an anomaly.
    SampleEvicted,
    /// A queued anomaly was evicted to make room for a newer one (no samples were left).
    AnomalyEvicted,
    /// The record (wire bytes plus partition key) is over [`MAX_RECORD_BYTES`](super::MAX_RECORD_BYTES), its key over
    /// [`MAX_PARTITION_KEY_LEN`](super::MAX_PARTITION_KEY_LEN), or it is larger than the whole spool.
    TooLarge,
    /// The envelope could not be encoded.
    Encode,
    /// Writing failed (a full disk included).
    Io,
    /// The sink refused the record for good and it could not be written to the quarantine
    /// either (a write error); records refused for good go to the quarantine otherwise.
    Rejected,
    /// A quarantined record was deleted to keep the quarantine within its bound.
    QuarantineEvicted,
}

impl DropReason {
    /// Every reason, for exporting counters.
    pub const ALL: [DropReason; 8] = [
        DropReason::SampleFull,
        DropReason::SampleEvicted,
        DropReason::AnomalyEvicted,
        DropReason::TooLarge,
        DropReason::Encode,
        DropReason::Io,
        DropReason::Rejected,
        DropReason::QuarantineEvicted,
    ];

    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::SampleFull => "sample_full",
            DropReason::SampleEvicted => "sample_evicted",
            DropReason::AnomalyEvicted => "anomaly_evicted",
            DropReason::TooLarge => "too_large",
            DropReason::Encode => "encode",
            DropReason::Io => "io",
            DropReason::Rejected => "rejected",
            DropReason::QuarantineEvicted => "quarantine_evicted",
        }
    }
}

/// Live counters and gauges, shared with telemetry (plain atomics: read them any time).
#[derive(Debug, Default)]
pub struct SpoolStats {
    pub(super) appended: [AtomicU64; 2],
    dropped: [AtomicU64; DropReason::ALL.len()],
    /// Records acknowledged by the sink.
    pub acked_records: AtomicU64,
    /// Corrupt or torn regions skipped while reading or recovering.
    pub corrupt_regions: AtomicU64,
    /// Bytes in those regions.
    pub corrupt_bytes: AtomicU64,
    /// Write, fsync or checkpoint errors (each also logged).
    pub io_errors: AtomicU64,
    /// Records queued and not yet acknowledged (in flight included).
    pub depth_records: AtomicU64,
    /// Bytes of segment files on disk.
    pub depth_bytes: AtomicU64,
    pub(super) lane_records: [AtomicU64; 2],
    pub(super) lane_bytes: [AtomicU64; 2],
    /// Records moved to the quarantine since start.
    pub quarantined: AtomicU64,
    /// Records in the quarantine now.
    pub quarantine_records: AtomicU64,
}

impl SpoolStats {
    /// Records appended to `lane` since start.
    pub fn appended(&self, lane: Lane) -> u64 {
        self.appended[lane.idx()].load(Ordering::Relaxed)
    }

    /// Records queued in `lane` and not yet acknowledged.
    pub fn depth_records_in(&self, lane: Lane) -> u64 {
        self.lane_records[lane.idx()].load(Ordering::Relaxed)
    }

    /// Bytes of `lane`'s segment files on disk.
    pub fn depth_bytes_in(&self, lane: Lane) -> u64 {
        self.lane_bytes[lane.idx()].load(Ordering::Relaxed)
    }

    /// Records lost for `reason` since start.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    /// Records lost for any reason since start.
    pub fn dropped_total(&self) -> u64 {
        DropReason::ALL.iter().map(|r| self.dropped(*r)).sum()
    }

    /// Counts `n` records lost for `reason`.
    pub fn count_drop(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].fetch_add(n, Ordering::Relaxed);
    }
}

/// Labels of the per-lane spool metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaneLabels {
    /// `anomaly` or `sample`.
    lane: &'static str,
}

/// Labels of `selfheal_agent_spool_dropped_records_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    /// A [`DropReason`] label.
    reason: &'static str,
}

/// The spool's metrics (`selfheal_agent_spool_*`), read at scrape time from its atomics, so
/// `/metrics` is exact even between cycles.
#[derive(Debug)]
pub struct SpoolMetrics(pub Arc<SpoolStats>);

impl Collector for SpoolMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sp = &self.0;
        for (name, help, f) in [
            (
                "spool_depth_records",
                "Records queued in the spool and not yet acknowledged",
                SpoolStats::depth_records_in as fn(&SpoolStats, Lane) -> u64,
            ),
            (
                "spool_depth_bytes",
                "Bytes of spool segment files",
                SpoolStats::depth_bytes_in,
            ),
        ] {
            let g = ConstGauge::new(0u64);
            let mut m = enc.encode_descriptor(name, help, None, g.metric_type())?;
            for lane in Lane::ALL {
                ConstGauge::new(f(sp, lane)).encode(m.encode_family(&LaneLabels {
                    lane: lane.as_str(),
                })?)?;
            }
        }
        let c = ConstCounter::new(0u64);
        let mut m = enc.encode_descriptor(
            "spool_appended_records",
            "Records written to the spool",
            None,
            c.metric_type(),
        )?;
        for lane in Lane::ALL {
            ConstCounter::new(sp.appended(lane)).encode(m.encode_family(&LaneLabels {
                lane: lane.as_str(),
            })?)?;
        }
        let mut m = enc.encode_descriptor(
            "spool_dropped_records",
            "Records lost, by reason",
            None,
            c.metric_type(),
        )?;
        for reason in DropReason::ALL {
            ConstCounter::new(sp.dropped(reason)).encode(m.encode_family(&ReasonLabels {
                reason: reason.as_str(),
            })?)?;
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut enc,
            "spool_acked_records",
            "Records the sink accepted and the spool released",
            load(&sp.acked_records),
        )?;
        counter(
            &mut enc,
            "spool_corrupt_regions",
            "Corrupt or torn spool regions skipped",
            load(&sp.corrupt_regions),
        )?;
        counter(
            &mut enc,
            "spool_quarantined_records",
            "Records the sink refused for good, moved to the quarantine",
            load(&sp.quarantined),
        )?;
        let g = ConstGauge::new(load(&sp.quarantine_records));
        let m = enc.encode_descriptor(
            "spool_quarantine_records",
            "Records held in the quarantine",
            None,
            g.metric_type(),
        )?;
        g.encode(m)?;
        counter(
            &mut enc,
            "spool_io_errors",
            "Spool write, fsync or checkpoint errors",
            load(&sp.io_errors),
        )
    }
}
