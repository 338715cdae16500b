//! The message and its JSON body: Alertmanager's webhook payload (version 4), one alert per
//! incident, with a `selfheal` object beside it.
//!
//! ```json
//! {
//!   "version": "4",
//!   "groupKey": "family=cpu,namespace=shop,workload=Deployment/checkout",
//!   "truncatedAlerts": 0,
//!   "status": "firing",                       // "resolved" for the resolved moment
//!   "receiver": "oncall",                     // the channel's name
//!   "groupLabels": { "family": "cpu", "namespace": "shop", "workload": "Deployment/checkout" },
//!   "commonLabels": { "alertname": "SelfhealIncident", "severity": "warning", ... },
//!   "commonAnnotations": { "summary": "...", "description": "..." },
//!   "externalURL": "https://selfheal.example",
//!   "alerts": [{
//!     "status": "firing",
//!     "labels": { ... as commonLabels },
//!     "annotations": { ... as commonAnnotations },
//!     "startsAt": "2026-12-01T14:00:00.000Z",  // opened
//!     "endsAt": "0001-01-01T00:00:00Z",        // resolved time once resolved
//!     "generatorURL": "https://selfheal.example/incidents/<id>",
//!     "fingerprint": "<16 hex digits of sha256(groupKey)>"
//!   }],
//!   "selfheal": {
//!     "incident": "<id>", "moment": "opened|updated|repeat|escalated|resolved",
//!     "state": "open", "severity": "warning", "family": "cpu", "scope": "pod",
//!     "workload": "shop/Deployment/checkout", "anomalies": 3000, "pods": 15, "nodes": 3,
//!     "peak_score": 0.89, "threshold": 0.6, "opened_at": "...", "sent_at": "..."
//!   }
//! }
//! ```
//!
//! Labels: the incident's grouping labels, plus `alertname` (`SelfhealIncident`), `severity`,
//! `family`, `scope` and `incident` (its id; Alertmanager receivers dedupe on labels).

use selfheal_core::incident::Incident;
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;

/// Which moment of an incident's life a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Moment {
    /// First notification, `group_wait` after it opened.
    Opened,
    /// A flush found it grown or its severity changed.
    Updated,
    /// `repeat_interval` passed unchanged.
    Repeat,
    /// Healing gave up or may not act: a person must look.
    Escalated,
    /// Over.
    Resolved,
}

impl Moment {
    /// The name in JSON, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Moment::Opened => "opened",
            Moment::Updated => "updated",
            Moment::Repeat => "repeat",
            Moment::Escalated => "escalated",
            Moment::Resolved => "resolved",
        }
    }

    /// Alertmanager's `status`: `resolved` for [`Moment::Resolved`], else `firing`.
    pub fn status(self) -> &'static str {
        if self == Moment::Resolved {
            "resolved"
        } else {
            "firing"
        }
    }
}

impl fmt::Display for Moment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One notification: the incident as written at that moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The incident, as the store holds it after the update.
    pub incident: Incident,
    /// Which moment.
    pub moment: Moment,
    /// When the moment happened, unix ms (aggregator clock).
    pub at_ms: i64,
}

/// `endsAt` of a firing alert, as Alertmanager writes it (Go's zero time).
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Most characters of an SNS subject (the service's limit is 100).
pub const SNS_SUBJECT_MAX: usize = 100;

impl Message {
    /// A message about `incident` at `moment`.
    pub fn new(incident: Incident, moment: Moment, at_ms: i64) -> Message {
        Message {
            incident,
            moment,
            at_ms,
        }
    }

    /// The alert's labels (see the module docs).
    pub fn labels(&self) -> BTreeMap<String, String> {
        let i = &self.incident;
        let mut l = i.labels.clone();
        l.insert("alertname".into(), "SelfhealIncident".into());
        l.insert("severity".into(), i.severity.as_str().into());
        l.insert("family".into(), i.family.as_str().into());
        l.insert("scope".into(), i.scope.as_str().into());
        l.insert("incident".into(), i.id.to_string());
        l
    }

    /// One line for a subject or a chat message:
    /// `[FIRING:warning] cpu on shop/Deployment/checkout: 15 pods on 3 nodes (opened)`.
    pub fn summary(&self) -> String {
        let i = &self.incident;
        format!(
            "[{}:{}] {} on {}: {} pods on {} nodes ({})",
            self.moment.status().to_ascii_uppercase(),
            i.severity.as_str(),
            i.family.as_str(),
            i.workload_key,
            i.pod_count,
            i.node_count,
            self.moment
        )
    }

    /// [`Message::summary`] cut to SNS's subject limit, on a character boundary.
    pub fn subject(&self) -> String {
        let s = self.summary();
        if s.chars().count() <= SNS_SUBJECT_MAX {
            return s;
        }
        let mut out: String = s.chars().take(SNS_SUBJECT_MAX - 1).collect();
        out.push('…');
        out
    }

    /// The JSON body for the channel named `receiver` (see the module docs); `external_url`
    /// (no trailing slash) links the alert to the incident's page.
    pub fn body(&self, receiver: &str, external_url: &str) -> Value {
        let i = &self.incident;
        let labels = self.labels();
        let description = format!(
            "{} anomalies from {} pods on {} nodes since {}; peak score {:.3} over threshold \
             {:.3}; state {}",
            i.anomaly_count,
            i.pod_count,
            i.node_count,
            rfc3339(i.opened_at_ms),
            i.peak.score,
            i.peak.threshold,
            i.state.as_str()
        );
        let annotations = json!({ "summary": self.summary(), "description": description });
        let ends_at = match (self.moment, i.resolved_at_ms) {
            (Moment::Resolved, Some(t)) => rfc3339(t),
            (Moment::Resolved, None) => rfc3339(self.at_ms),
            _ => ZERO_TIME.to_owned(),
        };
        let generator = if external_url.is_empty() {
            String::new()
        } else {
            format!("{external_url}/incidents/{}", i.id)
        };
        let group_labels: Map<String, Value> = i
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        json!({
            "version": "4",
            "groupKey": i.key,
            "truncatedAlerts": 0,
            "status": self.moment.status(),
            "receiver": receiver,
            "groupLabels": group_labels,
            "commonLabels": labels,
            "commonAnnotations": annotations,
            "externalURL": external_url,
            "alerts": [{
                "status": self.moment.status(),
                "labels": labels,
                "annotations": annotations,
                "startsAt": rfc3339(i.opened_at_ms),
                "endsAt": ends_at,
                "generatorURL": generator,
                "fingerprint": fingerprint(&i.key),
            }],
            "selfheal": {
                "incident": i.id.to_string(),
                "moment": self.moment.as_str(),
                "state": i.state.as_str(),
                "severity": i.severity.as_str(),
                "family": i.family.as_str(),
                "scope": i.scope.as_str(),
                "workload": i.workload_key,
                "anomalies": i.anomaly_count,
                "pods": i.pod_count,
                "nodes": i.node_count,
                "peak_score": finite(i.peak.score),
                "threshold": finite(i.peak.threshold),
                "opened_at": rfc3339(i.opened_at_ms),
                "sent_at": rfc3339(self.at_ms),
            },
        })
    }
}

/// Alertmanager's fingerprint is a hash of the label set; this one hashes the grouping key,
/// which is what identifies an incident across its notifications.
fn fingerprint(key: &str) -> String {
    let d = Sha256::digest(key.as_bytes());
    hex::encode(&d[..8])
}

fn finite(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// Unix ms as RFC 3339 UTC (`Z`; fractional seconds when not whole); out-of-range times (never from the engine's
/// clock) render as the zero time rather than failing a notification.
pub fn rfc3339(ms: i64) -> String {
    let ns = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(ns)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ZERO_TIME.to_owned())
}
