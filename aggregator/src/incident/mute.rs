//! Silences and inhibition: deciding what mutes an incident. Matchers compile once (regular
//! expressions anchored at both ends, as in Alertmanager); a mute is decided afresh at every
//! batch and every tick, so a silence that ends or an inhibiting incident that resolves unmutes
//! its incidents at once, with an event.

use selfheal_core::incident::{
    Incident, InhibitRule, MatchOp, Matcher, MutedBy, Silence, SilenceState,
};
use std::collections::BTreeMap;

/// A matcher whose regex failed to compile.
#[derive(Debug, thiserror::Error)]
#[error("matcher {matcher}: invalid regular expression")]
pub struct BadMatcher {
    /// The matcher as written.
    pub matcher: String,
    /// The regex error.
    #[source]
    pub source: regex::Error,
}

/// A matcher ready to test incidents.
#[derive(Debug, Clone)]
pub struct CompiledMatcher {
    m: Matcher,
    re: Option<regex::Regex>,
}

impl CompiledMatcher {
    /// Compiles `m`.
    pub fn new(m: &Matcher) -> Result<CompiledMatcher, BadMatcher> {
        let re = match m.op {
            MatchOp::Regex | MatchOp::NotRegex => Some(
                regex::RegexBuilder::new(&format!("^(?:{})$", m.value))
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|source| BadMatcher {
                        matcher: m.to_string(),
                        source,
                    })?,
            ),
            MatchOp::Eq | MatchOp::NotEq => None,
        };
        Ok(CompiledMatcher { m: m.clone(), re })
    }

    fn positive(&self, v: &str) -> bool {
        match (&self.re, self.m.op) {
            (Some(re), _) => re.is_match(v),
            (None, _) => v == self.m.value,
        }
    }

    fn negated(&self) -> bool {
        matches!(self.m.op, MatchOp::NotEq | MatchOp::NotRegex)
    }

    /// Whether `inc` matches. `node` on a pod incident tests every affected node: `=`/`=~` match
    /// when any does, `!=`/`!~` when none does. An absent label is the empty string.
    pub fn matches(&self, inc: &Incident) -> bool {
        let hit = if self.m.name == "node" && !inc.nodes.is_empty() {
            inc.nodes.iter().any(|n| self.positive(n))
        } else {
            let v = inc.labels.get(&self.m.name).map_or("", String::as_str);
            self.positive(v)
        };
        hit != self.negated()
    }
}

/// Compiles a list of matchers (all must match).
pub fn compile(ms: &[Matcher]) -> Result<Vec<CompiledMatcher>, BadMatcher> {
    ms.iter().map(CompiledMatcher::new).collect()
}

fn all(ms: &[CompiledMatcher], inc: &Incident) -> bool {
    ms.iter().all(|m| m.matches(inc))
}

/// A rule with compiled matchers.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// The rule.
    pub rule: InhibitRule,
    source: Vec<CompiledMatcher>,
    target: Vec<CompiledMatcher>,
}

impl CompiledRule {
    /// Compiles `rule`.
    pub fn new(rule: &InhibitRule) -> Result<CompiledRule, BadMatcher> {
        Ok(CompiledRule {
            rule: rule.clone(),
            source: compile(&rule.source)?,
            target: compile(&rule.target)?,
        })
    }
}

/// The silences known, compiled.
#[derive(Debug, Default)]
pub struct Silences {
    by_id: BTreeMap<String, (Silence, Vec<CompiledMatcher>)>,
}

impl Silences {
    /// Adds or replaces a silence.
    pub fn put(&mut self, s: Silence) -> Result<(), BadMatcher> {
        let c = compile(&s.matchers)?;
        self.by_id.insert(s.id.clone(), (s, c));
        Ok(())
    }

    /// A silence by id.
    pub fn get(&self, id: &str) -> Option<&Silence> {
        self.by_id.get(id).map(|(s, _)| s)
    }

    /// Every silence, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Silence> {
        self.by_id.values().map(|(s, _)| s)
    }

    /// Drops silences expired before `before_ms` (the store keeps them for history).
    pub fn forget_expired(&mut self, before_ms: i64) {
        self.by_id.retain(|_, (s, _)| s.ends_at_ms >= before_ms);
    }

    /// The first active silence (by id) matching `inc`.
    pub fn muting(&self, inc: &Incident, now_ms: i64) -> Option<&Silence> {
        self.by_id
            .values()
            .find(|(s, c)| s.state(now_ms) == SilenceState::Active && all(c, inc))
            .map(|(s, _)| s)
    }
}

/// What mutes `target` among `active` incidents (silences first, then rules in order).
pub fn decide(
    target: &Incident,
    active: &[&Incident],
    silences: &Silences,
    rules: &[CompiledRule],
    now_ms: i64,
) -> Option<MutedBy> {
    if let Some(s) = silences.muting(target, now_ms) {
        return Some(MutedBy::Silence { id: s.id.clone() });
    }
    for r in rules {
        if !all(&r.target, target) {
            continue;
        }
        let sources = active.iter().filter(|s| {
            s.id != target.id
                && all(&r.source, s)
                && r.rule
                    .equal
                    .iter()
                    .filter(|l| l.as_str() != "node")
                    .all(|l| s.labels.get(l) == target.labels.get(l))
        });
        if r.rule.equal.iter().any(|l| l == "node") {
            // Every node of the target must be covered by some source's nodes.
            let mut covered_by = None;
            let mut uncovered: Vec<&String> = target.nodes.iter().collect();
            for s in sources {
                let before = uncovered.len();
                uncovered.retain(|n| !s.nodes.contains(*n));
                if uncovered.len() < before && covered_by.is_none() {
                    covered_by = Some(s.id.clone());
                }
                if uncovered.is_empty() {
                    break;
                }
            }
            if uncovered.is_empty()
                && let Some(by) = covered_by
            {
                return Some(MutedBy::Inhibition {
                    rule: r.rule.name.clone(),
                    by,
                });
            }
        } else if let Some(s) = sources.into_iter().next() {
            return Some(MutedBy::Inhibition {
                rule: r.rule.name.clone(),
                by: s.id.clone(),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::key::{default_group_by, group};
    use crate::incident::testkit::{anomaly, node_anomaly};
    use selfheal_core::incident::{Observation, Scope};

    fn incident_of(a: &selfheal_core::schema::Anomaly, at: i64) -> Incident {
        let g = group(a, &default_group_by());
        let (mut i, _) = Incident::open(g.key, g.labels, g.scope, g.family, g.workload_key, at, at);
        let pod = match &a.record.subject {
            selfheal_core::Subject::Pod(p) => Some(crate::incident::key::pod_name(p)),
            selfheal_core::Subject::Node => None,
        };
        i.observe(
            &Observation {
                ts_ms: a.record.ts_ms,
                pod: pod.as_deref(),
                node: &a.record.node,
                score: a.score,
                threshold: a.threshold,
                model_version: &a.model_version,
                top_features: &a.top_features,
            },
            at,
        );
        i
    }

    fn silence(matchers: &[&str], start: i64, end: i64) -> Silence {
        Silence {
            id: "s1".into(),
            matchers: matchers
                .iter()
                .map(|m| m.parse().expect("matcher"))
                .collect(),
            starts_at_ms: start,
            ends_at_ms: end,
            created_by: "ops".into(),
            comment: "maintenance".into(),
            created_at_ms: 0,
            expired_by: None,
        }
    }

    #[test]
    fn a_silence_mutes_matching_incidents_while_active() {
        let inc = incident_of(&anomaly(1, "n1", 0, 0.9), 0);
        let mut s = Silences::default();
        s.put(silence(
            &["namespace=shop", "workload=~Deployment/check.*"],
            10,
            20,
        ))
        .expect("put");
        assert_eq!(decide(&inc, &[], &s, &[], 5), None);
        assert_eq!(
            decide(&inc, &[], &s, &[], 15),
            Some(MutedBy::Silence { id: "s1".into() })
        );
        assert_eq!(decide(&inc, &[], &s, &[], 20), None);
        let mut other = Silences::default();
        other
            .put(silence(&["namespace!=shop"], 0, 100))
            .expect("put");
        assert_eq!(decide(&inc, &[], &other, &[], 15), None);
    }

    #[test]
    fn a_node_incident_inhibits_pod_incidents_only_on_its_nodes() {
        let rules = [CompiledRule::new(&InhibitRule::node_inhibits_pods()).expect("rule")];
        let pod = incident_of(&anomaly(1, "n1", 0, 0.9), 0);
        let node = incident_of(&node_anomaly(2, "n1"), 0);
        assert_eq!(node.scope, Scope::Node);
        let s = Silences::default();
        assert!(matches!(
            decide(&pod, &[&pod, &node], &s, &rules, 1),
            Some(MutedBy::Inhibition { .. })
        ));
        assert_eq!(decide(&node, &[&pod, &node], &s, &rules, 1), None);
        // A pod incident that also spans n2 is not explained by n1 alone.
        let mut wide = pod.clone();
        wide.nodes.insert("n2".into());
        assert_eq!(decide(&wide, &[&wide, &node], &s, &rules, 1), None);
    }

    #[test]
    fn bad_regex_is_refused() {
        let m: Matcher = "workload=~(".parse().expect("parses");
        assert!(CompiledMatcher::new(&m).is_err());
    }
}
