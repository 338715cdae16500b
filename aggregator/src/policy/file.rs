//! The policy file as written (TOML, unknown fields refused) and its validation into a
//! [`Policy`]: every value checked, the first bad one named by its dotted path
//! (`playbooks.cpu.max_replicas`) in a [`FieldError`], so a bad file stops the start (and a bad
//! reload is refused) with the field to fix.
//!
//! ```toml
//! dry_run = true                      # the default: record what would be done, send nothing
//! [playbooks.cpu]                     # scale out; an HPA-owned workload gets its floor raised
//! action = "scale_out"
//! step = 1                            # +N replicas ...
//! factor = 1.5                        # ... or ×factor, whichever is more
//! max_replicas = 20
//! hold_secs = 1800                    # how long a raised HPA floor is held, then restored
//! [playbooks.memory]
//! action = "rollout_restart"
//! [playbooks.traffic]
//! action = "stabilize"                # scale out, hold for stabilize_for_secs, restore
//! stabilize_for_secs = 900
//! [playbooks.restarts]
//! action = "restart_once"             # one restart per target, then escalate
//! [playbooks.pressure]
//! action = "escalate"
//! [guardrails]
//! cooldown_secs = 900
//! max_actions_per_hour = 30
//! max_actions_per_hour_per_namespace = 10
//! max_unavailable_share = 0.25
//! max_workloads_per_namespace_per_hour = 5
//! allow_namespaces = ["*"]
//! deny_namespaces = ["kube-system", "kube-public", "kube-node-lease"]
//! allow_actions = ["scale", "rollout_restart", "set_hpa_min_replicas"]
//! [[guardrails.maintenance]]
//! name = "freeze"
//! starts_at = "2026-12-24T00:00:00Z"
//! ends_at = "2026-12-27T00:00:00Z"
//! [[guardrails.maintenance]]
//! name = "saturday patching"
//! days = ["sat"]
//! start_utc = "02:00"
//! duration_mins = 120
//! [verify]
//! window_secs = 300
//! settle_secs = 30
//! ```

use super::{Guardrails, Maintenance, Playbook, Policy, Scaling, Verify, Weekly};
use selfheal_core::Family;
use selfheal_core::action::ActionKind;
use selfheal_runtime::config::FieldError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The policy file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyFile {
    /// Record what would be done (the request that would be sent) and send nothing. The default:
    /// turning healing on for real is a decision, written down.
    pub dry_run: bool,
    /// What to do per incident family.
    pub playbooks: PlaybooksFile,
    /// What must never happen.
    pub guardrails: GuardrailsFile,
    /// How an action is judged.
    pub verify: VerifyFile,
}

/// `[playbooks]`: one per family; node-level incidents of any family only escalate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlaybooksFile {
    /// CPU saturation.
    pub cpu: PlaybookFile,
    /// Memory (a leak).
    pub memory: PlaybookFile,
    /// Traffic floods.
    pub traffic: PlaybookFile,
    /// Pressure stalls.
    pub pressure: PlaybookFile,
    /// Crash loops.
    pub restarts: PlaybookFile,
}

/// What a playbook does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionName {
    /// Scale out (+`step` or ×`factor`, at most `max_replicas`); with an HPA, raise its
    /// `minReplicas` for `hold_secs` instead, then restore it.
    ScaleOut,
    /// Scale out and hold the raised floor (replicas, or the HPA's minReplicas) for
    /// `stabilize_for_secs`, then restore the previous value.
    Stabilize,
    /// A rolling restart (`kubectl rollout restart`).
    RolloutRestart,
    /// One rolling restart per workload; a later incident of the same workload escalates.
    RestartOnce,
    /// Do nothing but escalate (notify).
    Escalate,
}

/// `[playbooks.<family>]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybookFile {
    /// What to do.
    pub action: ActionName,
    /// Scale: replicas added (at least this many).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<i32>,
    /// Scale: replicas multiplied by this (rounded up), when that adds more than `step`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    /// Scale: never more than this many replicas (nor above the HPA's `maxReplicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<i32>,
    /// `scale_out` with an HPA: seconds the raised `minReplicas` is held before it is restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_secs: Option<f64>,
    /// `stabilize`: seconds the raised floor is held before the previous value is restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stabilize_for_secs: Option<f64>,
}

impl PlaybookFile {
    fn of(action: ActionName) -> PlaybookFile {
        PlaybookFile {
            action,
            step: None,
            factor: None,
            max_replicas: None,
            hold_secs: None,
            stabilize_for_secs: None,
        }
    }
}

impl Default for PlaybooksFile {
    fn default() -> Self {
        PlaybooksFile {
            cpu: PlaybookFile::of(ActionName::ScaleOut),
            memory: PlaybookFile::of(ActionName::RolloutRestart),
            traffic: PlaybookFile::of(ActionName::Stabilize),
            pressure: PlaybookFile::of(ActionName::Escalate),
            restarts: PlaybookFile::of(ActionName::RestartOnce),
        }
    }
}

/// One `[[guardrails.maintenance]]`: either an absolute range (`starts_at`, `ends_at`, RFC
/// 3339) or a weekly window (`days`, `start_utc` as `HH:MM`, `duration_mins`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceFile {
    /// Shown in refusals.
    pub name: String,
    /// Absolute: start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<String>,
    /// Absolute: end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    /// Weekly: days (`mon` .. `sun`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<String>,
    /// Weekly: start, UTC, `HH:MM`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_utc: Option<String>,
    /// Weekly: length, minutes (at most a week).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_mins: Option<u32>,
}

/// `[guardrails]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardrailsFile {
    /// Seconds after an action on a workload before another may act on it.
    pub cooldown_secs: f64,
    /// Actions in any rolling hour, all namespaces.
    pub max_actions_per_hour: u32,
    /// Actions in any rolling hour, per namespace.
    pub max_actions_per_hour_per_namespace: u32,
    /// Largest share of a workload's replicas unavailable at once, counting those already not
    /// available and those the action takes down (a rolling restart: Kubernetes' default
    /// `maxUnavailable` of 25 %, rounded down; a StatefulSet: one pod).
    pub max_unavailable_share: f64,
    /// Distinct workloads acted on in any rolling hour, per namespace.
    pub max_workloads_per_namespace_per_hour: u32,
    /// Namespaces healing may act in; `"*"` for all.
    pub allow_namespaces: Vec<String>,
    /// Namespaces healing never acts in (wins over `allow_namespaces`).
    pub deny_namespaces: Vec<String>,
    /// Action kinds healing may take: `scale`, `rollout_restart`, `delete_pod`,
    /// `set_hpa_min_replicas`.
    pub allow_actions: Vec<ActionKind>,
    /// Windows in which healing does not act.
    pub maintenance: Vec<MaintenanceFile>,
}

impl Default for GuardrailsFile {
    fn default() -> Self {
        GuardrailsFile {
            cooldown_secs: 900.0,
            max_actions_per_hour: 30,
            max_actions_per_hour_per_namespace: 10,
            max_unavailable_share: 0.25,
            max_workloads_per_namespace_per_hour: 5,
            allow_namespaces: vec!["*".into()],
            deny_namespaces: vec![
                "kube-system".into(),
                "kube-public".into(),
                "kube-node-lease".into(),
            ],
            allow_actions: vec![
                ActionKind::Scale,
                ActionKind::RolloutRestart,
                ActionKind::SetHpaMinReplicas,
            ],
            maintenance: Vec::new(),
        }
    }
}

/// `[verify]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyFile {
    /// Seconds after an action in which its workload's anomalies must stop.
    pub window_secs: f64,
    /// Seconds after the action during which anomalies still arriving are taken as in flight
    /// (the agent's forward interval plus the aggregator's batch), not as a failure.
    pub settle_secs: f64,
}

impl Default for VerifyFile {
    fn default() -> Self {
        VerifyFile {
            window_secs: 300.0,
            settle_secs: 30.0,
        }
    }
}

impl Default for PolicyFile {
    fn default() -> Self {
        PolicyFile {
            dry_run: true,
            playbooks: PlaybooksFile::default(),
            guardrails: GuardrailsFile::default(),
            verify: VerifyFile::default(),
        }
    }
}

/// A why-not for a field path that depends on the family.
macro_rules! pf {
    ($fam:expr, $name:literal) => {
        match $fam {
            Family::Cpu => concat!("playbooks.cpu.", $name),
            Family::Memory => concat!("playbooks.memory.", $name),
            Family::Traffic => concat!("playbooks.traffic.", $name),
            Family::Pressure => concat!("playbooks.pressure.", $name),
            Family::Restarts => concat!("playbooks.restarts.", $name),
        }
    };
}

fn secs_ms(field: &'static str, v: f64, min: f64, max: f64) -> Result<i64, FieldError> {
    if v.is_finite() && v >= min && v <= max {
        Ok((v * 1000.0).round() as i64)
    } else {
        Err(FieldError::new(
            field,
            format!("must be seconds in [{min}, {max}], got {v}"),
        ))
    }
}

fn parse_rfc3339(field: &'static str, v: &str) -> Result<i64, FieldError> {
    time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|e| FieldError::new(field, format!("{v:?} is not RFC 3339: {e}")))
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl PlaybookFile {
    fn validate(&self, fam: Family) -> Result<Playbook, FieldError> {
        let scaling = matches!(self.action, ActionName::ScaleOut | ActionName::Stabilize);
        if !scaling {
            for (set, field) in [
                (self.step.is_some(), pf!(fam, "step")),
                (self.factor.is_some(), pf!(fam, "factor")),
                (self.max_replicas.is_some(), pf!(fam, "max_replicas")),
            ] {
                if set {
                    return Err(FieldError::new(
                        field,
                        "only scale_out and stabilize playbooks scale",
                    ));
                }
            }
        }
        if self.hold_secs.is_some() && self.action != ActionName::ScaleOut {
            return Err(FieldError::new(
                pf!(fam, "hold_secs"),
                "only a scale_out playbook holds a raised HPA floor",
            ));
        }
        if self.stabilize_for_secs.is_some() && self.action != ActionName::Stabilize {
            return Err(FieldError::new(
                pf!(fam, "stabilize_for_secs"),
                "only a stabilize playbook holds and restores",
            ));
        }
        let scaling = |hold_ms: i64| -> Result<Scaling, FieldError> {
            let step = self.step.unwrap_or(1);
            if !(0..=1000).contains(&step) {
                return Err(FieldError::new(
                    pf!(fam, "step"),
                    format!("must be in 0..=1000, got {step}"),
                ));
            }
            let factor = self.factor.unwrap_or(1.0);
            if !(factor.is_finite() && (1.0..=10.0).contains(&factor)) {
                return Err(FieldError::new(
                    pf!(fam, "factor"),
                    format!("must be in [1, 10], got {factor}"),
                ));
            }
            if step == 0 && factor <= 1.0 {
                return Err(FieldError::new(
                    pf!(fam, "step"),
                    "step 0 with factor 1 never adds a replica",
                ));
            }
            let max_replicas = self.max_replicas.unwrap_or(20);
            if !(1..=10_000).contains(&max_replicas) {
                return Err(FieldError::new(
                    pf!(fam, "max_replicas"),
                    format!("must be in 1..=10000, got {max_replicas}"),
                ));
            }
            Ok(Scaling {
                step,
                factor,
                max_replicas,
                hold_ms,
            })
        };
        Ok(match self.action {
            ActionName::ScaleOut => {
                let hold = secs_ms(
                    pf!(fam, "hold_secs"),
                    self.hold_secs.unwrap_or(1800.0),
                    1.0,
                    7.0 * 86_400.0,
                )?;
                Playbook::ScaleOut(scaling(hold)?)
            }
            ActionName::Stabilize => {
                let hold = secs_ms(
                    pf!(fam, "stabilize_for_secs"),
                    self.stabilize_for_secs.unwrap_or(900.0),
                    1.0,
                    7.0 * 86_400.0,
                )?;
                Playbook::Stabilize(scaling(hold)?)
            }
            ActionName::RolloutRestart => Playbook::RolloutRestart,
            ActionName::RestartOnce => Playbook::RestartOnce,
            ActionName::Escalate => Playbook::Escalate,
        })
    }
}

impl MaintenanceFile {
    fn validate(&self, i: usize) -> Result<Maintenance, FieldError> {
        const F: &str = "guardrails.maintenance";
        let at = |reason: String| FieldError::new(F, format!("[{i}] ({:?}): {reason}", self.name));
        if self.name.trim().is_empty() {
            return Err(at("name: must be set (refusals name the window)".into()));
        }
        let absolute = self.starts_at.is_some() || self.ends_at.is_some();
        let weekly =
            !self.days.is_empty() || self.start_utc.is_some() || self.duration_mins.is_some();
        match (absolute, weekly) {
            (true, true) => Err(at(
                "give either starts_at/ends_at or days/start_utc/duration_mins, not both".into(),
            )),
            (false, false) => Err(at(
                "give starts_at and ends_at, or days, start_utc and duration_mins".into(),
            )),
            (true, false) => {
                let (Some(s), Some(e)) = (&self.starts_at, &self.ends_at) else {
                    return Err(at("starts_at and ends_at: both must be set".into()));
                };
                let s = parse_rfc3339(F, s).map_err(|e| at(e.reason))?;
                let e = parse_rfc3339(F, e).map_err(|e| at(e.reason))?;
                if e <= s {
                    return Err(at("ends_at must be after starts_at".into()));
                }
                Ok(Maintenance::Absolute {
                    name: self.name.clone(),
                    starts_at_ms: s,
                    ends_at_ms: e,
                })
            }
            (false, true) => {
                let mut days = BTreeSet::new();
                for d in &self.days {
                    let Some(n) = DAYS.iter().position(|x| x.eq_ignore_ascii_case(d)) else {
                        return Err(at(format!("days: {d:?} is not one of {DAYS:?}")));
                    };
                    days.insert(n as u8);
                }
                if days.is_empty() {
                    return Err(at("days: at least one".into()));
                }
                let Some(start) = &self.start_utc else {
                    return Err(at("start_utc: must be set (HH:MM)".into()));
                };
                let minute = start
                    .split_once(':')
                    .and_then(|(h, m)| Some((h.parse::<u32>().ok()?, m.parse::<u32>().ok()?)))
                    .filter(|(h, m)| *h < 24 && *m < 60 && start.len() == 5)
                    .map(|(h, m)| h * 60 + m)
                    .ok_or_else(|| at(format!("start_utc: {start:?} is not HH:MM")))?;
                let dur = self.duration_mins.unwrap_or(0);
                if !(1..=7 * 24 * 60).contains(&dur) {
                    return Err(at(format!(
                        "duration_mins: must be in 1..={}, got {dur}",
                        7 * 24 * 60
                    )));
                }
                Ok(Maintenance::Weekly(Weekly {
                    name: self.name.clone(),
                    days,
                    start_minute: minute,
                    duration_mins: dur,
                }))
            }
        }
    }
}

impl PolicyFile {
    /// Parses TOML text (unknown fields refused).
    pub fn parse(text: &str) -> Result<PolicyFile, FieldError> {
        toml_parse(text)
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<Policy, FieldError> {
        let p = &self.playbooks;
        let playbooks = [
            (Family::Cpu, p.cpu.validate(Family::Cpu)?),
            (Family::Memory, p.memory.validate(Family::Memory)?),
            (Family::Traffic, p.traffic.validate(Family::Traffic)?),
            (Family::Pressure, p.pressure.validate(Family::Pressure)?),
            (Family::Restarts, p.restarts.validate(Family::Restarts)?),
        ]
        .into_iter()
        .collect();
        let g = &self.guardrails;
        let cooldown_ms = secs_ms(
            "guardrails.cooldown_secs",
            g.cooldown_secs,
            0.0,
            7.0 * 86_400.0,
        )?;
        if g.max_actions_per_hour == 0 {
            return Err(FieldError::new(
                "guardrails.max_actions_per_hour",
                "must be at least 1 (use an escalate playbook or an empty allow_actions to stop healing)",
            ));
        }
        if g.max_actions_per_hour_per_namespace == 0 {
            return Err(FieldError::new(
                "guardrails.max_actions_per_hour_per_namespace",
                "must be at least 1",
            ));
        }
        if g.max_workloads_per_namespace_per_hour == 0 {
            return Err(FieldError::new(
                "guardrails.max_workloads_per_namespace_per_hour",
                "must be at least 1",
            ));
        }
        if !(g.max_unavailable_share.is_finite()
            && g.max_unavailable_share > 0.0
            && g.max_unavailable_share <= 1.0)
        {
            return Err(FieldError::new(
                "guardrails.max_unavailable_share",
                format!("must be in (0, 1], got {}", g.max_unavailable_share),
            ));
        }
        for (field, list) in [
            ("guardrails.allow_namespaces", &g.allow_namespaces),
            ("guardrails.deny_namespaces", &g.deny_namespaces),
        ] {
            for n in list {
                let ok = n == "*"
                    || (!n.is_empty()
                        && n.len() <= 63
                        && n.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
                if !ok {
                    return Err(FieldError::new(
                        field,
                        format!("{n:?} is neither \"*\" nor a namespace name"),
                    ));
                }
            }
        }
        let maintenance = g
            .maintenance
            .iter()
            .enumerate()
            .map(|(i, m)| m.validate(i))
            .collect::<Result<Vec<_>, _>>()?;
        let window_ms = secs_ms("verify.window_secs", self.verify.window_secs, 1.0, 86_400.0)?;
        let settle_ms = secs_ms("verify.settle_secs", self.verify.settle_secs, 0.0, 3_600.0)?;
        if settle_ms >= window_ms {
            return Err(FieldError::new(
                "verify.settle_secs",
                format!(
                    "must be shorter than verify.window_secs ({})",
                    self.verify.window_secs
                ),
            ));
        }
        Ok(Policy {
            dry_run: self.dry_run,
            playbooks,
            guardrails: Guardrails {
                cooldown_ms,
                max_actions_per_hour: g.max_actions_per_hour,
                max_actions_per_hour_per_namespace: g.max_actions_per_hour_per_namespace,
                max_unavailable_share: g.max_unavailable_share,
                max_workloads_per_namespace_per_hour: g.max_workloads_per_namespace_per_hour,
                allow_namespaces: g.allow_namespaces.iter().cloned().collect(),
                deny_namespaces: g.deny_namespaces.iter().cloned().collect(),
                allow_actions: g.allow_actions.iter().copied().collect(),
                maintenance,
            },
            verify: Verify {
                window_ms,
                settle_ms,
            },
        })
    }
}

fn toml_parse(text: &str) -> Result<PolicyFile, FieldError> {
    use figment::Figment;
    use figment::providers::{Format, Serialized, Toml};
    Figment::from(Serialized::defaults(PolicyFile::default()))
        .merge(Toml::string(text))
        .extract::<PolicyFile>()
        .map_err(|e| {
            // figment names the path of the bad key; keep its whole message as the reason and
            // the first path segment it names as the field, so the operator sees both.
            let path = e.path.join(".");
            FieldError::new(
                leak_known(&path),
                selfheal_runtime::chain::ErrorChain::new(&e).to_string(),
            )
        })
}

/// Field names are `&'static str`; a parse error's path is one of the file's own keys, mapped
/// to its static spelling (or the file as a whole).
fn leak_known(path: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "dry_run",
        "playbooks",
        "playbooks.cpu",
        "playbooks.memory",
        "playbooks.traffic",
        "playbooks.pressure",
        "playbooks.restarts",
        "guardrails",
        "guardrails.cooldown_secs",
        "guardrails.max_actions_per_hour",
        "guardrails.max_actions_per_hour_per_namespace",
        "guardrails.max_unavailable_share",
        "guardrails.max_workloads_per_namespace_per_hour",
        "guardrails.allow_namespaces",
        "guardrails.deny_namespaces",
        "guardrails.allow_actions",
        "guardrails.maintenance",
        "verify",
        "verify.window_secs",
        "verify.settle_secs",
    ];
    let mut best: &'static str = "policy file";
    for k in KNOWN {
        if path == *k || path.starts_with(&format!("{k}.")) {
            best = k;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_issues_playbooks() {
        let p = PolicyFile::default().validate().expect("defaults");
        assert!(p.dry_run);
        assert!(matches!(p.playbooks[&Family::Cpu], Playbook::ScaleOut(_)));
        assert_eq!(p.playbooks[&Family::Memory], Playbook::RolloutRestart);
        assert!(matches!(
            p.playbooks[&Family::Traffic],
            Playbook::Stabilize(Scaling {
                hold_ms: 900_000,
                ..
            })
        ));
        assert_eq!(p.playbooks[&Family::Restarts], Playbook::RestartOnce);
        assert_eq!(p.playbooks[&Family::Pressure], Playbook::Escalate);
        assert!(p.guardrails.deny_namespaces.contains("kube-system"));
        assert_eq!(p.verify.window_ms, 300_000);
    }

    #[test]
    fn a_full_file_parses() {
        let f = PolicyFile::parse(
            r#"dry_run = false
[playbooks.cpu]
action = "scale_out"
step = 2
factor = 1.5
max_replicas = 8
hold_secs = 60
[playbooks.traffic]
action = "stabilize"
stabilize_for_secs = 30
[guardrails]
cooldown_secs = 60
allow_namespaces = ["shop"]
allow_actions = ["scale"]
[[guardrails.maintenance]]
name = "freeze"
starts_at = "2026-12-24T00:00:00Z"
ends_at = "2026-12-27T00:00:00Z"
[[guardrails.maintenance]]
name = "sat"
days = ["sat", "Sun"]
start_utc = "02:30"
duration_mins = 90
[verify]
window_secs = 10
settle_secs = 2
"#,
        )
        .expect("parse");
        let p = f.validate().expect("valid");
        assert!(!p.dry_run);
        let Playbook::ScaleOut(s) = &p.playbooks[&Family::Cpu] else {
            panic!("cpu scales");
        };
        assert_eq!((s.step, s.max_replicas, s.hold_ms), (2, 8, 60_000));
        assert_eq!(p.guardrails.maintenance.len(), 2);
        let Maintenance::Weekly(w) = &p.guardrails.maintenance[1] else {
            panic!("weekly");
        };
        assert_eq!(w.start_minute, 150);
        assert_eq!(w.days, BTreeSet::from([5, 6]));
    }

    fn field_of(text: &str) -> &'static str {
        match PolicyFile::parse(text).and_then(|f| f.validate()) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.field,
        }
    }

    #[test]
    fn every_bad_value_names_its_field() {
        assert_eq!(
            field_of("[playbooks.cpu]\naction = \"scale_out\"\nmax_replicas = 0"),
            "playbooks.cpu.max_replicas"
        );
        assert_eq!(
            field_of("[playbooks.memory]\naction = \"rollout_restart\"\nstep = 2"),
            "playbooks.memory.step"
        );
        assert_eq!(
            field_of("[playbooks.traffic]\naction = \"stabilize\"\nstabilize_for_secs = -1"),
            "playbooks.traffic.stabilize_for_secs"
        );
        assert_eq!(
            field_of("[guardrails]\nmax_unavailable_share = 1.5"),
            "guardrails.max_unavailable_share"
        );
        assert_eq!(
            field_of("[guardrails]\nallow_namespaces = [\"Shop!\"]"),
            "guardrails.allow_namespaces"
        );
        assert_eq!(
            field_of(
                "[[guardrails.maintenance]]\nname = \"x\"\ndays = [\"funday\"]\nstart_utc = \"02:00\"\nduration_mins = 5"
            ),
            "guardrails.maintenance"
        );
        assert_eq!(
            field_of("[verify]\nwindow_secs = 5\nsettle_secs = 10"),
            "verify.settle_secs"
        );
        // Unknown keys and wrong types are refused by the parser, naming where.
        assert_eq!(field_of("[guardrails]\ncooldown = 5"), "guardrails");
        assert_eq!(
            field_of("[playbooks.cpu]\naction = \"explode\""),
            "playbooks.cpu"
        );
        assert_eq!(field_of("dry_run = \"yes\""), "dry_run");
    }
}
