//! The engine: records in, incident changes out. It holds the active incidents, the seen-id
//! set, the recent-subjects view and the silences in memory, and returns each change as an
//! [`Update`] for the store to write in one go; it never does I/O and never reads a clock (every
//! call takes `now_ms`), so every rule here is tested with plain numbers.
//!
//! Timing is Alertmanager's: an incident's first notification is due `group_wait` after it
//! opened; then every `group_interval` a flush notifies if the incident changed (more pods or
//! nodes, another severity) or, unchanged, if `repeat_interval` passed since the last one. An
//! incident with no new anomaly for `resolve_timeout` resolves (the lease agents renew by
//! re-sending, like Prometheus' `EndsAt`), and is notified as resolved only if it was notified
//! as open: one that resolves inside `group_wait` is never sent. A muted incident's due
//! notifications are recorded as suppressed instead.

use super::IncidentSettings;
use super::dedup::{Seen, SeenId, SeenIds};
use super::key::{group, pod_name};
use super::mute::{self, BadMatcher, CompiledRule, Silences};
use super::subjects::RecentSubjects;
use selfheal_core::incident::{
    Actor, Event, EventKind, Incident, IncidentId, MutedBy, NotifyReason, Observation, Scope,
    SeverityInputs, Silence, State, TransitionError, assess_severity,
};
use selfheal_core::schema::{Envelope, Payload, Subject};
use std::collections::{BTreeSet, HashMap};

/// How often at most an `anomalies` event is added to a timeline when no new pod or node joined.
const ANOMALIES_EVENT_EVERY_MS: i64 = 60_000;

/// Changes to write, all at once.
#[derive(Debug, Default, Clone)]
pub struct Update {
    /// Incidents changed (whole documents; the store upserts).
    pub incidents: Vec<Incident>,
    /// Timeline events to append.
    pub events: Vec<Event>,
    /// Record ids newly seen.
    pub seen: Vec<SeenId>,
    /// Silences created or changed.
    pub silences: Vec<Silence>,
}

impl Update {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.incidents.is_empty()
            && self.events.is_empty()
            && self.seen.is_empty()
            && self.silences.is_empty()
    }
}

/// What one batch did, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    /// Anomalies counted.
    pub anomalies: u64,
    /// Anomalies dropped as duplicates.
    pub duplicates: u64,
    /// Anomalies that joined a muted incident.
    pub muted: u64,
    /// Of those, anomalies that joined a silenced incident.
    pub silenced: u64,
    /// Of those, anomalies that joined an inhibited incident.
    pub inhibited: u64,
    /// Samples seen.
    pub samples: u64,
    /// Anomalies refused: a score or threshold that is not a finite number.
    pub invalid: u64,
    /// Incidents opened.
    pub opened: u64,
}

/// Notifications a tick decided, for metrics and, with healing, the notifier.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The incident, as it was notified.
    pub incident: IncidentId,
    /// Why.
    pub reason: NotifyReason,
    /// Whether a mute held it back.
    pub suppressed: bool,
}

/// What is restored from the store at start.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Every incident not resolved.
    pub active: Vec<Incident>,
    /// Silences not yet expired (and recently expired ones).
    pub silences: Vec<Silence>,
    /// Ids within the dedup window.
    pub seen: Vec<SeenId>,
}

/// Why an API or healing request was refused.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No active incident has that id (unknown, or already resolved).
    #[error("no active incident {0}")]
    NotActive(IncidentId),
    /// The lifecycle does not allow the move.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// A silence's matcher does not compile.
    #[error(transparent)]
    Matcher(#[from] BadMatcher),
    /// No silence has that id.
    #[error("no silence {0}")]
    NoSilence(String),
}

/// The incident engine.
#[derive(Debug)]
pub struct Engine {
    settings: IncidentSettings,
    rules: Vec<CompiledRule>,
    active: HashMap<String, Incident>,
    by_id: HashMap<IncidentId, String>,
    seen: SeenIds,
    subjects: RecentSubjects,
    silences: Silences,
}

impl Engine {
    /// An engine restored from `snap`.
    pub fn new(settings: IncidentSettings, snap: Snapshot) -> Result<Engine, BadMatcher> {
        let rules = settings
            .inhibit_rules
            .iter()
            .map(CompiledRule::new)
            .collect::<Result<_, _>>()?;
        let mut seen = SeenIds::new(
            settings.dedup_window_ms,
            settings.dedup_bucket_ms,
            settings.dedup_max_ids,
        );
        for s in snap.seen {
            seen.restore(s);
        }
        let mut silences = Silences::default();
        for s in snap.silences {
            silences.put(s)?;
        }
        let subjects = RecentSubjects::new(settings.subjects_window_ms, settings.subjects_max);
        let mut e = Engine {
            settings,
            rules,
            active: HashMap::new(),
            by_id: HashMap::new(),
            seen,
            subjects,
            silences,
        };
        for i in snap.active {
            if i.state.is_active() {
                e.by_id.insert(i.id.clone(), i.key.clone());
                e.active.insert(i.key.clone(), i);
            }
        }
        Ok(e)
    }

    /// The settings.
    pub fn settings(&self) -> &IncidentSettings {
        &self.settings
    }

    /// Active incidents.
    pub fn active(&self) -> impl Iterator<Item = &Incident> {
        self.active.values()
    }

    /// An active incident by id.
    pub fn get(&self, id: &IncidentId) -> Option<&Incident> {
        self.by_id.get(id).and_then(|k| self.active.get(k))
    }

    /// The seen-id set (for metrics and the store's pruning horizon).
    pub fn seen(&self) -> &SeenIds {
        &self.seen
    }

    /// The recent-subjects view.
    pub fn subjects(&self) -> &RecentSubjects {
        &self.subjects
    }

    /// The silences.
    pub fn silences(&self) -> &Silences {
        &self.silences
    }

    /// Applies one batch of records at `now_ms`.
    pub fn apply<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a Envelope>,
        now_ms: i64,
    ) -> (Update, BatchStats) {
        let mut up = Update::default();
        let mut stats = BatchStats::default();
        // Per touched incident: (subjects before the batch, largest new score and its threshold).
        let mut touched: HashMap<String, (u64, u64, f64, f64)> = HashMap::new();
        // Anomalies counted per incident key, attributed to its mute once the batch decided it
        // (so the anomalies of a batch that opens a silenced incident count as silenced).
        let mut added: HashMap<String, u64> = HashMap::new();
        for env in records {
            let a = match &env.payload {
                Payload::Sample { record, .. } => {
                    stats.samples += 1;
                    self.subjects.observe(record, now_ms);
                    continue;
                }
                Payload::Anomaly(a) => a,
            };
            if !(a.score.is_finite() && a.threshold.is_finite()) {
                stats.invalid += 1;
                continue;
            }
            self.subjects.observe(&a.record, now_ms);
            match self.seen.insert(a.record.id, a.record.ts_ms, now_ms) {
                Seen::Duplicate => {
                    stats.duplicates += 1;
                    continue;
                }
                Seen::New(s) => up.seen.push(s),
            }
            stats.anomalies += 1;
            let g = group(a, &self.settings.group_by);
            if !self.active.contains_key(&g.key) {
                let (i, ev) = Incident::open(
                    g.key.clone(),
                    g.labels,
                    g.scope,
                    g.family,
                    g.workload_key,
                    now_ms,
                    now_ms + self.settings.group_wait_ms,
                );
                stats.opened += 1;
                up.events.push(ev);
                self.by_id.insert(i.id.clone(), g.key.clone());
                self.active.insert(g.key.clone(), i);
            }
            let Some(inc) = self.active.get_mut(&g.key) else {
                continue;
            };
            *added.entry(g.key.clone()).or_default() += 1;
            let t = touched.entry(g.key).or_insert((
                inc.pod_count,
                inc.node_count,
                f64::NEG_INFINITY,
                0.0,
            ));
            if a.score > t.2 {
                t.2 = a.score;
                t.3 = a.threshold;
            }
            let pod = match &a.record.subject {
                Subject::Pod(p) => Some(pod_name(p)),
                Subject::Node => None,
            };
            inc.observe(
                &Observation {
                    ts_ms: a.record.ts_ms,
                    pod: pod.as_deref(),
                    node: &a.record.node,
                    score: a.score,
                    threshold: a.threshold,
                    model_version: &a.model_version,
                    top_features: &a.top_features,
                },
                now_ms,
            );
        }
        let mut touched_ids = Vec::with_capacity(touched.len());
        for (key, (pods0, nodes0, peak, thr)) in touched {
            let Some(inc) = self.active.get_mut(&key) else {
                continue;
            };
            touched_ids.push(inc.id.clone());
            inc.sort_features();
            let joined = inc.pod_count > pods0 || inc.node_count > nodes0;
            if joined
                || now_ms.saturating_sub(inc.anomalies_event_at_ms) >= ANOMALIES_EVENT_EVERY_MS
            {
                push_anomalies_event(inc, now_ms, peak, thr, &mut up.events);
            }
            self.reassess(&key, now_ms, &mut up.events);
        }
        self.remute(now_ms, &mut up);
        for (key, n) in added {
            match self.active.get(&key).and_then(|i| i.muted.as_ref()) {
                Some(MutedBy::Silence { .. }) => stats.silenced += n,
                Some(MutedBy::Inhibition { .. }) => stats.inhibited += n,
                None => continue,
            }
            stats.muted += n;
        }
        self.collect_changed(&mut up, &touched_ids);
        (up, stats)
    }

    fn reassess(&mut self, key: &str, now_ms: i64, events: &mut Vec<Event>) {
        let Some(inc) = self.active.get(key) else {
            return;
        };
        let (affected, known) = match inc.scope {
            Scope::Pod => (
                inc.pod_count,
                self.subjects.pods_of(&inc.workload_key, now_ms),
            ),
            Scope::Node => (inc.node_count, self.subjects.nodes(now_ms)),
        };
        let (level, score) = assess_severity(SeverityInputs {
            peak_score: inc.peak.score,
            peak_threshold: inc.peak.threshold,
            affected,
            known,
            duration_ms: inc.last_seen_ms.saturating_sub(inc.first_seen_ms),
        });
        let Some(inc) = self.active.get_mut(key) else {
            return;
        };
        inc.severity_score = score;
        if level != inc.severity {
            let from = inc.severity;
            inc.severity = level;
            let ev = inc.event(
                now_ms,
                EventKind::SeverityChanged {
                    from,
                    to: level,
                    score,
                },
                format!(
                    "{affected} of {known} known subjects, peak {:.3} vs {:.3}",
                    inc.peak.score, inc.peak.threshold
                ),
                Actor::System,
            );
            events.push(ev);
        }
    }

    /// Re-decides every active incident's mute, with events for changes.
    fn remute(&mut self, now_ms: i64, up: &mut Update) {
        let decisions: Vec<(String, Option<selfheal_core::incident::MutedBy>)> = {
            let all: Vec<&Incident> = self
                .active
                .values()
                .filter(|i| i.state.is_active())
                .collect();
            all.iter()
                .map(|i| {
                    (
                        i.key.clone(),
                        mute::decide(i, &all, &self.silences, &self.rules, now_ms),
                    )
                })
                .collect()
        };
        for (key, m) in decisions {
            let Some(inc) = self.active.get_mut(&key) else {
                continue;
            };
            if inc.muted == m {
                continue;
            }
            if let Some(was) = inc.muted.take() {
                let ev = inc.event(
                    now_ms,
                    EventKind::Unmuted { was: was.clone() },
                    format!("{was} no longer applies"),
                    Actor::System,
                );
                up.events.push(ev);
            }
            if let Some(by) = m {
                let ev = inc.event(
                    now_ms,
                    EventKind::Muted { by: by.clone() },
                    format!("muted by {by}"),
                    Actor::System,
                );
                up.events.push(ev);
                inc.muted = Some(by);
            }
        }
    }

    /// Adds every incident an event of `up` names, and those in `touched`, to `up.incidents`,
    /// and forgets the resolved ones.
    fn collect_changed(&mut self, up: &mut Update, touched: &[IncidentId]) {
        let ids: BTreeSet<IncidentId> = up
            .events
            .iter()
            .map(|e| e.incident.clone())
            .chain(touched.iter().cloned())
            .collect();
        for id in ids {
            let Some(key) = self.by_id.get(&id).cloned() else {
                continue;
            };
            let Some(inc) = self.active.get(&key) else {
                continue;
            };
            up.incidents.push(inc.clone());
            if !inc.state.is_active() {
                self.active.remove(&key);
                self.by_id.remove(&id);
            }
        }
    }

    /// Runs the timers at `now_ms`: resolve timeouts, due notifications, expired silences and
    /// bookkeeping windows.
    pub fn tick(&mut self, now_ms: i64) -> (Update, Vec<Notification>) {
        let mut up = Update::default();
        let mut notes = Vec::new();
        self.seen.expire(now_ms);
        self.subjects.expire(now_ms);
        let keys: Vec<String> = self.active.keys().cloned().collect();
        for key in &keys {
            let Some(inc) = self.active.get_mut(key) else {
                continue;
            };
            let lease_over = now_ms >= inc.last_arrival_ms + self.settings.resolve_timeout_ms;
            // Acting and verifying belong to healing: its verification decides how they end.
            let may_time_out = matches!(
                inc.state,
                State::Open | State::Acknowledged | State::Escalated
            );
            if lease_over && may_time_out {
                if inc.pending_anomalies > 0 {
                    let (score, thr) = (inc.latest.score, inc.latest.threshold);
                    push_anomalies_event(inc, now_ms, score, thr, &mut up.events);
                }
                if let Ok(ev) = inc.transition(
                    State::Resolved,
                    now_ms,
                    "no anomaly for resolve_timeout",
                    Actor::System,
                ) {
                    up.events.push(ev);
                }
                if inc.notify.last_notified_ms.is_some() {
                    notify(
                        inc,
                        NotifyReason::Resolved,
                        now_ms,
                        &mut up.events,
                        &mut notes,
                    );
                }
                continue;
            }
            if now_ms < inc.notify.next_flush_ms {
                continue;
            }
            let n = &inc.notify;
            let reason = match n.last_notified_ms {
                None => Some(NotifyReason::Opened),
                Some(_)
                    if inc.pod_count > n.notified_pods
                        || inc.node_count > n.notified_nodes
                        || n.notified_severity != Some(inc.severity) =>
                {
                    Some(NotifyReason::Updated)
                }
                Some(last) if now_ms - last >= self.settings.repeat_interval_ms => {
                    Some(NotifyReason::Repeat)
                }
                Some(_) => None,
            };
            // Flushes keep their phase: due every group_interval from the first one.
            let gi = self.settings.group_interval_ms;
            let behind = (now_ms - inc.notify.next_flush_ms) / gi + 1;
            inc.notify.next_flush_ms += behind * gi;
            if let Some(r) = reason {
                notify(inc, r, now_ms, &mut up.events, &mut notes);
            }
        }
        // Expired silences unmute; keep them in memory a while for the API's list.
        self.remute(now_ms, &mut up);
        self.silences
            .forget_expired(now_ms - self.settings.retention_ms);
        // Every notification and flush-phase change that matters comes with an event, except a
        // flush with nothing to say: its new phase is written with the next change.
        self.collect_changed(&mut up, &[]);
        (up, notes)
    }

    /// Moves an active incident through the lifecycle (the API's ack/resolve, healing's
    /// acting/verifying/escalated).
    pub fn transition(
        &mut self,
        id: &IncidentId,
        to: State,
        cause: &str,
        actor: Actor,
        now_ms: i64,
    ) -> Result<Update, EngineError> {
        let key = self
            .by_id
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::NotActive(id.clone()))?;
        let inc = self
            .active
            .get_mut(&key)
            .ok_or_else(|| EngineError::NotActive(id.clone()))?;
        let mut up = Update::default();
        if to == State::Resolved && inc.pending_anomalies > 0 {
            let (score, thr) = (inc.latest.score, inc.latest.threshold);
            push_anomalies_event(inc, now_ms, score, thr, &mut up.events);
        }
        let ev = inc.transition(to, now_ms, cause, actor)?;
        up.events.push(ev);
        let notified = inc.notify.last_notified_ms.is_some();
        let mut notes = Vec::new();
        if to == State::Resolved && notified {
            notify(
                inc,
                NotifyReason::Resolved,
                now_ms,
                &mut up.events,
                &mut notes,
            );
        }
        self.remute(now_ms, &mut up);
        self.collect_changed(&mut up, &[]);
        Ok(up)
    }

    /// Appends healing's `events` to an active incident and, with `to`, moves it (the move
    /// checked first, so a refused move adds nothing): one update, one store write.
    pub fn annotate(
        &mut self,
        id: &IncidentId,
        events: Vec<(EventKind, String)>,
        to: Option<(State, String)>,
        actor: Actor,
        now_ms: i64,
    ) -> Result<Update, EngineError> {
        let inc = self
            .by_id
            .get(id)
            .and_then(|k| self.active.get_mut(k))
            .ok_or_else(|| EngineError::NotActive(id.clone()))?;
        if let Some((to, _)) = &to
            && !inc.state.can_become(*to)
        {
            return Err(EngineError::Transition(TransitionError {
                id: id.clone(),
                from: inc.state,
                to: *to,
            }));
        }
        let mut up = Update::default();
        for (kind, cause) in events {
            up.events
                .push(inc.event(now_ms, kind, cause, actor.clone()));
        }
        match to {
            // Resolving ends what the incident inhibits and may notify: the full path.
            Some((State::Resolved, cause)) => {
                let mut moved = self.transition(id, State::Resolved, &cause, actor, now_ms)?;
                up.events.append(&mut moved.events);
                up.incidents = moved.incidents;
            }
            // Acting, verifying, escalated: still active, so no mute changes; skipping the
            // re-mute of every incident keeps a 10,000-incident storm linear.
            Some((to, cause)) => {
                up.events.push(inc.transition(to, now_ms, cause, actor)?);
                self.collect_changed(&mut up, &[]);
            }
            None => self.collect_changed(&mut up, &[]),
        }
        Ok(up)
    }

    /// Adds a silence (or replaces one with the same id) and re-decides mutes.
    pub fn put_silence(&mut self, s: Silence, now_ms: i64) -> Result<Update, EngineError> {
        self.silences.put(s.clone())?;
        let mut up = Update {
            silences: vec![s],
            ..Update::default()
        };
        self.remute(now_ms, &mut up);
        self.collect_changed(&mut up, &[]);
        Ok(up)
    }

    /// Expires a silence now.
    pub fn expire_silence(
        &mut self,
        id: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<Update, EngineError> {
        let mut s = self
            .silences
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::NoSilence(id.to_owned()))?;
        if s.ends_at_ms > now_ms {
            s.ends_at_ms = now_ms;
            s.expired_by = Some(by.to_owned());
        }
        self.put_silence(s, now_ms)
    }
}

fn push_anomalies_event(
    inc: &mut Incident,
    now_ms: i64,
    peak: f64,
    thr: f64,
    events: &mut Vec<Event>,
) {
    let added = inc.pending_anomalies;
    inc.pending_anomalies = 0;
    inc.anomalies_event_at_ms = now_ms;
    let ev = inc.event(
        now_ms,
        EventKind::Anomalies {
            added,
            pods: inc.pod_count,
            nodes: inc.node_count,
            peak_score: peak,
            threshold: thr,
        },
        format!("{added} anomalies"),
        Actor::System,
    );
    events.push(ev);
}

fn notify(
    inc: &mut Incident,
    reason: NotifyReason,
    now_ms: i64,
    events: &mut Vec<Event>,
    notes: &mut Vec<Notification>,
) {
    let suppressed = inc.muted.is_some();
    let ev = match &inc.muted {
        Some(by) => {
            let by = by.clone();
            inc.event(
                now_ms,
                EventKind::NotificationSuppressed {
                    reason,
                    by: by.clone(),
                },
                format!("muted by {by}"),
                Actor::System,
            )
        }
        None => {
            inc.notify.last_notified_ms = Some(now_ms);
            inc.notify.notified_pods = inc.pod_count;
            inc.notify.notified_nodes = inc.node_count;
            inc.notify.notified_severity = Some(inc.severity);
            inc.notify.sent += 1;
            inc.event(
                now_ms,
                EventKind::Notified { reason },
                "alertmanager timing",
                Actor::System,
            )
        }
    };
    events.push(ev);
    notes.push(Notification {
        incident: inc.id.clone(),
        reason,
        suppressed,
    });
}
