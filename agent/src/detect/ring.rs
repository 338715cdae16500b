//! The flight recorder of one series: its last raw records, kept as columns.
//!
//! Every record of a (subject, family) series shares its node, subject and family, and its values
//! name only the family's metrics, so the ring keeps just what varies: the id, the time and one
//! value per family metric. A [`Record`] costs ~600 bytes of heap (five strings of the pod's
//! identity and a `BTreeMap`); a row here costs 24 bytes plus 8 per metric, so the 60-record
//! default for 100 pods × 5 families drops from ~18 MiB to ~2.5 MiB (the `MODELS=1` footprint run
//! of issue 16 traced the agent's RSS to this ring). Records are rebuilt only when an anomaly
//! carries the window.

use selfheal_core::family::{Family, Metric};
use selfheal_core::schema::{Record, RecordId, Subject};
use std::collections::VecDeque;

/// The last `capacity` records of one series; see the module docs.
#[derive(Debug)]
pub(crate) struct FlightRing {
    capacity: usize,
    family: Family,
    /// Metrics of the family, in `Metric::ALL` order: the column of each value.
    metrics: Box<[Metric]>,
    /// (id, time) per row, oldest first.
    rows: VecDeque<(RecordId, i64)>,
    /// `metrics.len()` values per row, row-major; NaN where the record had no value (a record
    /// never holds NaN: the schema says an unavailable metric is absent).
    values: VecDeque<f64>,
}

impl FlightRing {
    /// An empty ring for `family` keeping `capacity` records (0 keeps none).
    pub(crate) fn new(family: Family, capacity: usize) -> Self {
        let metrics: Box<[Metric]> = family.metrics().collect();
        FlightRing {
            capacity,
            family,
            rows: VecDeque::with_capacity(capacity),
            values: VecDeque::with_capacity(capacity * metrics.len()),
            metrics,
        }
    }

    /// Appends `record`, dropping the oldest when full. A value for a metric outside the family
    /// (which the schema rules out) is not kept.
    pub(crate) fn push(&mut self, record: &Record) {
        if self.capacity == 0 {
            return;
        }
        debug_assert_eq!(record.family, self.family);
        if self.rows.len() == self.capacity {
            self.rows.pop_front();
            self.values.drain(..self.metrics.len());
        }
        self.rows.push_back((record.id, record.ts_ms));
        self.values.extend(
            self.metrics
                .iter()
                .map(|m| record.values.get(m).copied().unwrap_or(f64::NAN)),
        );
    }

    /// Records held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// The window as records of `node` and `subject`, oldest first.
    pub(crate) fn records(&self, node: &str, subject: &Subject) -> Vec<Record> {
        let width = self.metrics.len();
        self.rows
            .iter()
            .enumerate()
            .map(|(i, &(id, ts_ms))| Record {
                id,
                ts_ms,
                node: node.to_owned(),
                subject: subject.clone(),
                family: self.family,
                values: self
                    .metrics
                    .iter()
                    .zip(self.values.range(i * width..(i + 1) * width))
                    .filter(|(_, v)| !v.is_nan())
                    .map(|(m, v)| (*m, *v))
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfheal_core::schema::PodRef;
    use std::collections::BTreeMap;

    fn record(i: u128, family: Family, values: &[(Metric, f64)]) -> Record {
        Record {
            id: RecordId::from_u128(i),
            ts_ms: 1_700_000_000_000 + i as i64 * 1000,
            node: "node-a".into(),
            subject: Subject::Pod(PodRef {
                uid: "u-1".into(),
                namespace: Some("shop".into()),
                name: Some("web-1".into()),
                owner: None,
                qos: None,
            }),
            family,
            values: values.iter().copied().collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn it_gives_back_the_last_records_exactly_with_absent_values_still_absent() {
        let family = Family::Cpu;
        let metrics: Vec<Metric> = family.metrics().collect();
        assert!(metrics.len() >= 2, "the test needs two cpu metrics");
        let mut ring = FlightRing::new(family, 3);
        let mut pushed = Vec::new();
        for i in 0..5u128 {
            // Every other record lacks the second metric.
            let mut values = vec![(metrics[0], i as f64 * 0.5)];
            if i % 2 == 0 {
                values.push((metrics[1], -(i as f64)));
            }
            let r = record(i, family, &values);
            ring.push(&r);
            pushed.push(r);
        }
        assert_eq!(ring.len(), 3);
        let last = &pushed[2..];
        assert_eq!(ring.records("node-a", &last[0].subject), last);
    }

    #[test]
    fn a_zero_capacity_ring_keeps_nothing() {
        let mut ring = FlightRing::new(Family::Memory, 0);
        let m = Family::Memory
            .metrics()
            .next()
            .into_iter()
            .map(|m| (m, 1.0));
        ring.push(&record(1, Family::Memory, &m.collect::<Vec<_>>()));
        assert_eq!(ring.len(), 0);
        assert!(ring.records("node-a", &Subject::Node).is_empty());
    }
}
