//! The grouping key: which anomalies become one incident. Like Alertmanager's `group_by`, a
//! list of labels; anomalies with equal values of them share an incident. The default is the
//! workload identity and the family; a node-level anomaly (the node's own metrics) is always
//! grouped by node and family, whatever `group_by` says, since it has no workload.

use selfheal_core::incident::{Labels, Scope};
use selfheal_core::schema::{Anomaly, Subject};
use selfheal_core::{Family, PodRef};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// A label anomalies can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupLabel {
    /// The pod's namespace.
    Namespace,
    /// The workload identity, `<ns>/<kind>/<name>` (includes the namespace).
    Workload,
    /// The metric family.
    Family,
    /// The node the record came from.
    Node,
    /// The pod itself (one incident per pod).
    Pod,
}

impl GroupLabel {
    fn as_str(self) -> &'static str {
        match self {
            GroupLabel::Namespace => "namespace",
            GroupLabel::Workload => "workload",
            GroupLabel::Family => "family",
            GroupLabel::Node => "node",
            GroupLabel::Pod => "pod",
        }
    }
}

/// The default `group_by`.
pub fn default_group_by() -> Vec<GroupLabel> {
    vec![GroupLabel::Workload, GroupLabel::Family]
}

/// Where an anomaly belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grouping {
    /// The rendered key, `label=value` pairs in `group_by` order joined by `,`.
    pub key: String,
    /// Labels for matchers and filters (always scope, family, and whatever the subject has).
    pub labels: Labels,
    /// Node or pod.
    pub scope: Scope,
    /// The anomaly's family.
    pub family: Family,
    /// The workload identity.
    pub workload_key: String,
}

/// A pod's display name: `<ns>/<name>` when resolved, else its uid.
pub fn pod_name(p: &PodRef) -> String {
    match (&p.namespace, &p.name) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        _ => p.uid.clone(),
    }
}

/// Groups one anomaly under `group_by` (sorted and deduplicated by the config's validation).
pub fn group(a: &Anomaly, group_by: &[GroupLabel]) -> Grouping {
    let r = &a.record;
    let workload_key = r.subject.workload_key(&r.node);
    let mut labels = Labels::new();
    labels.insert("family".into(), r.family.as_str().into());
    match &r.subject {
        Subject::Node => {
            labels.insert("scope".into(), "node".into());
            labels.insert("node".into(), r.node.clone());
            let key = format!("family={},node={}", r.family, r.node);
            labels.insert("key".into(), key.clone());
            Grouping {
                key,
                labels,
                scope: Scope::Node,
                family: r.family,
                workload_key,
            }
        }
        Subject::Pod(p) => {
            labels.insert("scope".into(), "pod".into());
            if let Some(ns) = &p.namespace {
                labels.insert("namespace".into(), ns.clone());
            }
            // `workload` without the namespace reads naturally next to `namespace=`.
            let workload = workload_key
                .split_once('/')
                .map(|(_, rest)| rest.to_owned())
                .unwrap_or_else(|| workload_key.clone());
            labels.insert("workload".into(), workload);
            let mut key = String::with_capacity(64);
            for (i, g) in group_by.iter().enumerate() {
                if i > 0 {
                    key.push(',');
                }
                let v = match g {
                    GroupLabel::Namespace => p.namespace.clone().unwrap_or_default(),
                    GroupLabel::Workload => workload_key.clone(),
                    GroupLabel::Family => r.family.as_str().to_owned(),
                    GroupLabel::Node => r.node.clone(),
                    GroupLabel::Pod => pod_name(p),
                };
                let _ = write!(key, "{}={v}", g.as_str());
            }
            if group_by.contains(&GroupLabel::Node) {
                labels.insert("node".into(), r.node.clone());
            }
            labels.insert("key".into(), key.clone());
            Grouping {
                key,
                labels,
                scope: Scope::Pod,
                family: r.family,
                workload_key,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::testkit::{anomaly, node_anomaly};

    #[test]
    fn default_key_is_workload_and_family_whatever_the_pod_or_node() {
        let a = anomaly(1, "n1", 0, 0.9);
        let b = anomaly(2, "n3", 4, 0.7);
        let ga = group(&a, &default_group_by());
        assert_eq!(ga.key, "workload=shop/Deployment/checkout,family=cpu");
        assert_eq!(ga, group(&b, &default_group_by()));
        assert_eq!(ga.labels["workload"], "Deployment/checkout");
        assert_eq!(ga.labels["namespace"], "shop");
        assert_eq!(ga.scope, Scope::Pod);
    }

    #[test]
    fn node_anomalies_group_by_node_and_family() {
        let g = group(&node_anomaly(1, "n2"), &[GroupLabel::Namespace]);
        assert_eq!(g.key, "family=cpu,node=n2");
        assert_eq!(g.scope, Scope::Node);
        assert_eq!(g.labels["node"], "n2");
    }

    #[test]
    fn group_by_is_configurable() {
        let by = [GroupLabel::Workload, GroupLabel::Family, GroupLabel::Node];
        let a = group(&anomaly(1, "n1", 0, 0.9), &by);
        let b = group(&anomaly(2, "n2", 0, 0.9), &by);
        assert_ne!(a.key, b.key);
        let by_ns = [GroupLabel::Namespace];
        assert_eq!(
            group(&anomaly(1, "n1", 0, 0.9), &by_ns).key,
            "namespace=shop"
        );
    }
}
