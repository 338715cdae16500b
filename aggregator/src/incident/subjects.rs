//! The subjects seen recently in records (samples and anomalies alike): how many pods each
//! workload has and how many nodes the fleet has, for severity's breadth. A pod or node not seen
//! for `window` is forgotten; at most `max_entries` are held (new ones beyond that are not
//! tracked and counted in `overflow`, so a flood of made-up pod uids cannot grow memory).

use selfheal_core::schema::{Record, Subject};
use std::collections::HashMap;

/// Recently seen pods per workload, and nodes.
#[derive(Debug)]
pub struct RecentSubjects {
    window_ms: i64,
    max_entries: usize,
    pods: HashMap<String, HashMap<String, i64>>,
    nodes: HashMap<String, i64>,
    entries: usize,
    /// Subjects not tracked because the view was full.
    pub overflow: u64,
}

impl RecentSubjects {
    /// An empty view.
    pub fn new(window_ms: i64, max_entries: usize) -> RecentSubjects {
        RecentSubjects {
            window_ms,
            max_entries,
            pods: HashMap::new(),
            nodes: HashMap::new(),
            entries: 0,
            overflow: 0,
        }
    }

    /// Notes `r`'s node and pod as seen at `now_ms`.
    pub fn observe(&mut self, r: &Record, now_ms: i64) {
        if let Some(t) = self.nodes.get_mut(&r.node) {
            *t = (*t).max(now_ms);
        } else if self.entries < self.max_entries {
            self.nodes.insert(r.node.clone(), now_ms);
            self.entries += 1;
        } else {
            self.overflow += 1;
        }
        if let Subject::Pod(p) = &r.subject {
            let full = self.entries >= self.max_entries;
            let wk = r.subject.workload_key(&r.node);
            let pods = match self.pods.get_mut(&wk) {
                Some(p) => p,
                None if full => {
                    self.overflow += 1;
                    return;
                }
                None => self.pods.entry(wk).or_default(),
            };
            if let Some(t) = pods.get_mut(&p.uid) {
                *t = (*t).max(now_ms);
            } else if !full {
                pods.insert(p.uid.clone(), now_ms);
                self.entries += 1;
            } else {
                self.overflow += 1;
            }
        }
    }

    /// Pods of `workload_key` seen within the window.
    pub fn pods_of(&self, workload_key: &str, now_ms: i64) -> u64 {
        let lo = now_ms - self.window_ms;
        self.pods
            .get(workload_key)
            .map_or(0, |p| p.values().filter(|t| **t >= lo).count() as u64)
    }

    /// Nodes seen within the window.
    pub fn nodes(&self, now_ms: i64) -> u64 {
        let lo = now_ms - self.window_ms;
        self.nodes.values().filter(|t| **t >= lo).count() as u64
    }

    /// Forgets what left the window.
    pub fn expire(&mut self, now_ms: i64) {
        let lo = now_ms - self.window_ms;
        let before = self.nodes.len();
        self.nodes.retain(|_, t| *t >= lo);
        let mut removed = before - self.nodes.len();
        self.pods.retain(|_, pods| {
            let n = pods.len();
            pods.retain(|_, t| *t >= lo);
            removed += n - pods.len();
            !pods.is_empty()
        });
        self.entries -= removed;
    }

    /// Subjects held.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::testkit::anomaly;

    #[test]
    fn counts_pods_per_workload_and_nodes_within_the_window() {
        let mut v = RecentSubjects::new(60_000, 100);
        for pod in 0..5 {
            for node in ["n1", "n2"] {
                v.observe(&anomaly(1, node, pod, 0.9).record, 1_000);
            }
        }
        // Pod uids differ per node in the testkit: ten pods.
        assert_eq!(v.pods_of("shop/Deployment/checkout", 1_000), 10);
        assert_eq!(v.nodes(1_000), 2);
        assert_eq!(v.pods_of("shop/Deployment/checkout", 100_000), 0);
        v.expire(100_000);
        assert!(v.is_empty());
    }

    #[test]
    fn the_view_is_bounded() {
        let mut v = RecentSubjects::new(60_000, 3);
        for pod in 0..10 {
            v.observe(&anomaly(1, "n1", pod, 0.9).record, 1_000);
        }
        assert_eq!(v.len(), 3);
        assert!(v.overflow > 0);
    }
}
