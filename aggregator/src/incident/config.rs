//! `[incidents]`: the incident pipeline's configuration as written, and its validation into
//! [`IncidentSettings`] and [`StoreSettings`]. Kept here, beside what it configures; the
//! aggregator's config embeds it as one section.

use super::IncidentSettings;
use super::key::GroupLabel;
use selfheal_core::incident::{InhibitRule, Matcher};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[incidents]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentsConfig {
    /// Run the incident pipeline (and its API and page).
    pub enabled: bool,
    /// Labels pod-level anomalies are grouped by: any of `namespace`, `workload` (the
    /// identity `<ns>/<kind>/<name>`), `family`, `node`, `pod`. Node-level anomalies are always
    /// grouped by node and family.
    pub group_by: Vec<GroupLabel>,
    /// Seconds before a new incident's first notification (Alertmanager `group_wait`).
    pub group_wait_secs: f64,
    /// Seconds between an incident's flushes (`group_interval`).
    pub group_interval_secs: f64,
    /// Seconds before an unchanged notification is repeated (`repeat_interval`), rounded up to
    /// a multiple of `group_interval_secs`.
    pub repeat_interval_secs: f64,
    /// Seconds without a new anomaly after which an incident resolves (`resolve_timeout`).
    pub resolve_timeout_secs: f64,
    /// Seconds record ids are remembered, to drop redeliveries.
    pub dedup_window_secs: f64,
    /// Most record ids remembered (about 40 bytes each).
    pub dedup_max_ids: usize,
    /// Seconds a pod or node seen in a sample counts as present, for severity's breadth.
    pub subjects_window_secs: f64,
    /// Days resolved incidents, their timelines and expired silences are kept.
    pub retention_days: f64,
    /// Inhibition rules; the default mutes pod incidents on a node with a node incident.
    /// `inhibit_rules = []` turns inhibition off.
    pub inhibit_rules: Vec<InhibitRuleConfig>,
    /// Where incidents are kept.
    pub store: StoreConfig,
    /// Milliseconds the incident handler's open batch may wait before it is handled (the lake's
    /// `batch.flush_interval_ms` when that is shorter). Short: an anomaly reaches its incident
    /// within about this; each batch is one store write.
    pub flush_interval_ms: u64,
    /// A file holding the bearer token the API's write routes (acknowledge, resolve, silences)
    /// require (one line, at least 32 characters; keep it mode 0600). Unset, those routes
    /// refuse every request: nothing on the network can mute or close an incident by default.
    /// The `selfheal incidents|silences` CLI reads the same file (`--token-file`).
    pub api_token_file: Option<PathBuf>,
}

/// One `[[incidents.inhibit_rules]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InhibitRuleConfig {
    /// Shown on the incidents the rule mutes.
    pub name: String,
    /// Matchers of the inhibiting incident, e.g. `["scope=node"]`.
    pub source: Vec<String>,
    /// Matchers of the inhibited incidents.
    pub target: Vec<String>,
    /// Labels that must be equal on both (`node` compares nodes, see the docs).
    #[serde(default)]
    pub equal: Vec<String>,
}

/// Which store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// A SQLite file under `dir`.
    #[default]
    Sqlite,
    /// A DynamoDB table.
    Dynamodb,
}

/// `[incidents.store]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite` (default) or `dynamodb`.
    pub kind: StoreKind,
    /// SQLite: the directory of `incidents.db` (a persistent volume). Default: `incidents` in
    /// the aggregator's data directory, the parent of `checkpoint.dir` (Kinesis source) or of a
    /// local `lake.location` (HTTP source); `/var/lib/selfheal/incidents` with the defaults.
    pub dir: Option<PathBuf>,
    /// DynamoDB: the table (created, pay per request, if missing).
    pub table: String,
    /// DynamoDB: region; default the standard chain.
    pub region: Option<String>,
    /// DynamoDB: endpoint override.
    pub endpoint_url: Option<String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Sqlite,
            dir: None,
            table: "selfheal-incidents".into(),
            region: None,
            endpoint_url: None,
        }
    }
}

impl Default for IncidentsConfig {
    fn default() -> Self {
        let d = IncidentSettings::default();
        IncidentsConfig {
            enabled: true,
            group_by: d.group_by,
            group_wait_secs: 30.0,
            group_interval_secs: 300.0,
            repeat_interval_secs: 4.0 * 3600.0,
            resolve_timeout_secs: 300.0,
            dedup_window_secs: 3600.0,
            dedup_max_ids: d.dedup_max_ids,
            subjects_window_secs: 600.0,
            retention_days: 30.0,
            inhibit_rules: vec![InhibitRuleConfig {
                name: "node-inhibits-pods".into(),
                source: vec!["scope=node".into()],
                target: vec!["scope=pod".into()],
                equal: vec!["node".into()],
            }],
            store: StoreConfig::default(),
            flush_interval_ms: 1000,
            api_token_file: None,
        }
    }
}

/// The validated `[incidents]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// The engine's settings.
    pub engine: IncidentSettings,
    /// The store.
    pub store: StoreSettings,
    /// The incident handler's batch interval.
    pub flush_interval: std::time::Duration,
    /// The API token's file (read at start).
    pub api_token_file: Option<PathBuf>,
}

/// Validated store settings.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreSettings {
    /// SQLite in this directory.
    Sqlite {
        /// The directory.
        dir: PathBuf,
    },
    /// DynamoDB.
    Dynamodb {
        /// The table.
        table: String,
        /// Region override.
        region: Option<String>,
        /// Endpoint override.
        endpoint_url: Option<String>,
    },
}

/// A field that is not acceptable: its dotted name and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct FieldError {
    /// The dotted field.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

fn bad(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: format!("incidents.{field}"),
        reason: reason.into(),
    }
}

fn ms(field: &str, secs: f64, min: f64, max: f64) -> Result<i64, FieldError> {
    if secs.is_finite() && secs >= min && secs <= max {
        Ok((secs * 1000.0).round() as i64)
    } else {
        Err(bad(
            field,
            format!("must be seconds in [{min}, {max}], got {secs}"),
        ))
    }
}

impl IncidentsConfig {
    /// Checks every field.
    pub fn validate(&self, data_dir: &std::path::Path) -> Result<Validated, FieldError> {
        if self.group_by.is_empty() {
            return Err(bad("group_by", "must name at least one label"));
        }
        let mut group_by = Vec::new();
        for g in &self.group_by {
            if group_by.contains(g) {
                return Err(bad("group_by", format!("{g:?} is listed twice")));
            }
            group_by.push(*g);
        }
        let group_wait_ms = ms("group_wait_secs", self.group_wait_secs, 0.0, 86_400.0)?;
        let group_interval_ms = ms(
            "group_interval_secs",
            self.group_interval_secs,
            1.0,
            86_400.0,
        )?;
        let repeat = ms(
            "repeat_interval_secs",
            self.repeat_interval_secs,
            1.0,
            30.0 * 86_400.0,
        )?;
        // Alertmanager: repeat_interval is effectively a multiple of group_interval.
        let repeat_interval_ms =
            (repeat + group_interval_ms - 1) / group_interval_ms * group_interval_ms;
        let resolve_timeout_ms = ms(
            "resolve_timeout_secs",
            self.resolve_timeout_secs,
            1.0,
            86_400.0,
        )?;
        let dedup_window_ms = ms(
            "dedup_window_secs",
            self.dedup_window_secs,
            60.0,
            7.0 * 86_400.0,
        )?;
        if !(1_000..=100_000_000).contains(&self.dedup_max_ids) {
            return Err(bad(
                "dedup_max_ids",
                format!("must be in 1000..=100000000, got {}", self.dedup_max_ids),
            ));
        }
        let subjects_window_ms = ms(
            "subjects_window_secs",
            self.subjects_window_secs,
            10.0,
            86_400.0,
        )?;
        let retention_ms = ms(
            "retention_days",
            self.retention_days * 86_400.0,
            3600.0,
            3650.0 * 86_400.0,
        )
        .map_err(|_| {
            bad(
                "retention_days",
                format!("must be in [1/24, 3650] days, got {}", self.retention_days),
            )
        })?;
        let mut inhibit_rules = Vec::new();
        for (i, r) in self.inhibit_rules.iter().enumerate() {
            let parse = |which: &str, v: &[String]| -> Result<Vec<Matcher>, FieldError> {
                v.iter()
                    .map(|m| {
                        m.parse::<Matcher>()
                            .map_err(|e| bad(&format!("inhibit_rules[{i}].{which}"), e.to_string()))
                    })
                    .collect()
            };
            let rule = InhibitRule {
                name: r.name.clone(),
                source: parse("source", &r.source)?,
                target: parse("target", &r.target)?,
                equal: r.equal.clone(),
            };
            if rule.name.is_empty() {
                return Err(bad(&format!("inhibit_rules[{i}].name"), "must be set"));
            }
            if rule.source.is_empty() || rule.target.is_empty() {
                // An empty matcher list matches everything: a rule that mutes every incident
                // while any is open is a mistake, not a policy.
                return Err(bad(
                    &format!("inhibit_rules[{i}]"),
                    "source and target need at least one matcher each",
                ));
            }
            if let Err(e) = super::mute::CompiledRule::new(&rule) {
                return Err(bad(&format!("inhibit_rules[{i}]"), e.to_string()));
            }
            inhibit_rules.push(rule);
        }
        let store = match self.store.kind {
            StoreKind::Sqlite => {
                let dir = match &self.store.dir {
                    Some(d) if d.as_os_str().is_empty() => {
                        return Err(bad("store.dir", "must not be empty"));
                    }
                    Some(d) => d.clone(),
                    None => data_dir.join("incidents"),
                };
                StoreSettings::Sqlite { dir }
            }
            StoreKind::Dynamodb => {
                let t = &self.store.table;
                let ok = (3..=255).contains(&t.len())
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
                if !ok {
                    return Err(bad(
                        "store.table",
                        format!("{t:?} is not a DynamoDB table name (3-255 of a-z A-Z 0-9 _ - .)"),
                    ));
                }
                StoreSettings::Dynamodb {
                    table: t.clone(),
                    region: self.store.region.clone(),
                    endpoint_url: self.store.endpoint_url.clone(),
                }
            }
        };
        if self
            .api_token_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(bad("api_token_file", "must not be empty (leave it unset)"));
        }
        if !(10..=600_000).contains(&self.flush_interval_ms) {
            return Err(bad(
                "flush_interval_ms",
                format!("must be in 10..=600000, got {}", self.flush_interval_ms),
            ));
        }
        let d = IncidentSettings::default();
        Ok(Validated {
            engine: IncidentSettings {
                group_by,
                group_wait_ms,
                group_interval_ms,
                repeat_interval_ms,
                resolve_timeout_ms,
                dedup_window_ms,
                dedup_bucket_ms: (dedup_window_ms / 60).clamp(1_000, d.dedup_bucket_ms),
                dedup_max_ids: self.dedup_max_ids,
                subjects_window_ms,
                subjects_max: d.subjects_max,
                inhibit_rules,
                retention_ms,
                tick_ms: d.tick_ms,
            },
            store,
            flush_interval: std::time::Duration::from_millis(self.flush_interval_ms),
            api_token_file: self.api_token_file.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_alertmanagers() {
        let Validated {
            engine: s,
            store,
            flush_interval,
            api_token_file,
        } = IncidentsConfig::default()
            .validate(std::path::Path::new("/d"))
            .expect("valid");
        assert_eq!(api_token_file, None);
        assert_eq!(flush_interval, std::time::Duration::from_secs(1));
        assert_eq!(s, IncidentSettings::default());
        assert_eq!(
            store,
            StoreSettings::Sqlite {
                dir: PathBuf::from("/d/incidents")
            }
        );
    }

    #[test]
    fn repeat_interval_rounds_up_to_group_interval() {
        let c = IncidentsConfig {
            group_interval_secs: 300.0,
            repeat_interval_secs: 301.0,
            ..IncidentsConfig::default()
        };
        assert_eq!(
            c.validate(std::path::Path::new("/d"))
                .expect("valid")
                .engine
                .repeat_interval_ms,
            600_000
        );
    }

    #[test]
    fn errors_name_the_field() {
        let c = IncidentsConfig {
            group_interval_secs: 0.0,
            ..IncidentsConfig::default()
        };
        assert_eq!(
            c.validate(std::path::Path::new("/d"))
                .expect_err("zero")
                .field,
            "incidents.group_interval_secs"
        );
        let mut c = IncidentsConfig::default();
        c.inhibit_rules[0].source = vec!["bogus=1".into()];
        assert_eq!(
            c.validate(std::path::Path::new("/d"))
                .expect_err("label")
                .field,
            "incidents.inhibit_rules[0].source"
        );
        let mut c = IncidentsConfig::default();
        c.inhibit_rules[0].target.clear();
        assert_eq!(
            c.validate(std::path::Path::new("/d"))
                .expect_err("empty")
                .field,
            "incidents.inhibit_rules[0]"
        );
        let mut c = IncidentsConfig::default();
        c.store.kind = StoreKind::Dynamodb;
        c.store.table = "x".into();
        assert_eq!(
            c.validate(std::path::Path::new("/d"))
                .expect_err("table")
                .field,
            "incidents.store.table"
        );
        let c = IncidentsConfig {
            group_by: vec![GroupLabel::Family, GroupLabel::Family],
            ..IncidentsConfig::default()
        };
        assert_eq!(
            c.validate(std::path::Path::new("/d"))
                .expect_err("twice")
                .field,
            "incidents.group_by"
        );
    }
}
