//! Deduplication by record id: a record redelivered (Kinesis at-least-once, a replay after a
//! crash before the checkpoint, an agent re-sending a batch it got no answer for) never counts
//! twice.
//!
//! The set of ids seen is bounded two ways. In time: ids live in buckets of their record time,
//! and buckets older than `window` before the aggregator's clock are dropped (a record's time is
//! clamped into the window, so one with a far-future timestamp cannot push every other id out).
//! In size: past `max_ids` the oldest bucket goes early, counted. A duplicate older than the
//! window is therefore counted again: the window (default one hour, longer than an agent's spool
//! holds a batch in practice) is the guarantee's bound, and every such record is counted in
//! `beyond_window`. Across restarts the store keeps the same buckets, written in the same
//! transaction as the incident update the ids counted towards, and [`SeenIds`] is rebuilt from
//! them, so a replay after a crash meets the ids it already counted.

use selfheal_core::RecordId;
use std::collections::{BTreeMap, HashSet};

// One hash set answers "seen?" in one lookup; the per-bucket lists only say what to drop when a
// bucket leaves the window (about 40 bytes an id in all).

/// An id the set has taken, for the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeenId {
    /// Start of its bucket, unix ms.
    pub bucket_ms: i64,
    /// The record id.
    pub id: RecordId,
}

/// What [`SeenIds::insert`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Never seen: count it.
    New(SeenId),
    /// Seen before: do not count it.
    Duplicate,
}

/// The bounded set of record ids seen recently.
#[derive(Debug)]
pub struct SeenIds {
    window_ms: i64,
    bucket_ms: i64,
    max_ids: usize,
    ids: HashSet<u128>,
    buckets: BTreeMap<i64, Vec<u128>>,
    /// Ids whose record time was older than the window (clamped in; a duplicate of one beyond
    /// the window would not have been recognised).
    pub beyond_window: u64,
    /// Buckets dropped early because the set was full.
    pub evicted_buckets: u64,
}

impl SeenIds {
    /// An empty set keeping ids for `window_ms` in buckets of `bucket_ms`, at most `max_ids`.
    pub fn new(window_ms: i64, bucket_ms: i64, max_ids: usize) -> SeenIds {
        SeenIds {
            window_ms: window_ms.max(1),
            bucket_ms: bucket_ms.clamp(1, window_ms.max(1)),
            max_ids: max_ids.max(1),
            ids: HashSet::new(),
            buckets: BTreeMap::new(),
            beyond_window: 0,
            evicted_buckets: 0,
        }
    }

    /// Ids held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The oldest bucket start still kept at `now_ms`: the store prunes below it.
    pub fn horizon_ms(&self, now_ms: i64) -> i64 {
        self.bucket_of(now_ms - self.window_ms)
    }

    fn bucket_of(&self, ts_ms: i64) -> i64 {
        ts_ms.div_euclid(self.bucket_ms) * self.bucket_ms
    }

    /// Checks `id` and takes it if new. `ts_ms` is the record's time, `now_ms` the clock's.
    pub fn insert(&mut self, id: RecordId, ts_ms: i64, now_ms: i64) -> Seen {
        let raw = id.as_u128();
        if !self.ids.insert(raw) {
            return Seen::Duplicate;
        }
        let lo = now_ms - self.window_ms;
        if ts_ms < lo {
            self.beyond_window += 1;
        }
        let bucket = self.bucket_of(ts_ms.clamp(lo, now_ms));
        self.buckets.entry(bucket).or_default().push(raw);
        while self.ids.len() > self.max_ids && self.buckets.len() > 1 {
            self.drop_oldest();
            self.evicted_buckets += 1;
        }
        Seen::New(SeenId {
            bucket_ms: bucket,
            id,
        })
    }

    /// Takes an id loaded from the store (no window check: the store pruned by the horizon).
    pub fn restore(&mut self, s: SeenId) {
        if self.ids.insert(s.id.as_u128()) {
            self.buckets
                .entry(s.bucket_ms)
                .or_default()
                .push(s.id.as_u128());
        }
    }

    /// Drops buckets that left the window at `now_ms`.
    pub fn expire(&mut self, now_ms: i64) {
        let horizon = self.horizon_ms(now_ms);
        while let Some((&b, _)) = self.buckets.first_key_value() {
            if b >= horizon {
                break;
            }
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        if let Some((_, ids)) = self.buckets.pop_first() {
            for id in ids {
                self.ids.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn a_redelivered_id_is_a_duplicate() {
        let mut s = SeenIds::new(60 * MIN, MIN, 1_000);
        let id = RecordId::from_u128(7);
        assert!(matches!(s.insert(id, 10 * MIN, 10 * MIN), Seen::New(_)));
        assert_eq!(s.insert(id, 10 * MIN, 11 * MIN), Seen::Duplicate);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn the_window_bounds_the_set() {
        let mut s = SeenIds::new(10 * MIN, MIN, 1_000_000);
        for i in 0..100i64 {
            s.insert(RecordId::from_u128(i as u128), i * MIN, i * MIN);
            s.expire(i * MIN);
        }
        assert!(s.len() <= 11, "{}", s.len());
        // A future timestamp is clamped to now, so it does not expire everything.
        s.insert(RecordId::from_u128(1_000), i64::MAX / 2, 99 * MIN);
        s.expire(99 * MIN);
        assert!(s.len() >= 10);
    }

    #[test]
    fn the_cap_drops_the_oldest_bucket_first() {
        let mut s = SeenIds::new(60 * MIN, MIN, 10);
        for i in 0..20i64 {
            s.insert(
                RecordId::from_u128(i as u128),
                30 * MIN + i * MIN / 4,
                60 * MIN,
            );
        }
        assert!(s.len() <= 10);
        assert!(s.evicted_buckets > 0);
        // The newest survive.
        assert_eq!(
            s.insert(RecordId::from_u128(19), 0, 60 * MIN),
            Seen::Duplicate
        );
    }

    #[test]
    fn restored_ids_are_duplicates() {
        let mut s = SeenIds::new(60 * MIN, MIN, 100);
        let id = RecordId::from_u128(3);
        s.restore(SeenId {
            bucket_ms: 5 * MIN,
            id,
        });
        assert_eq!(s.insert(id, 5 * MIN, 6 * MIN), Seen::Duplicate);
    }
}
