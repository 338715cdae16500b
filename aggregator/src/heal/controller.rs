//! The healing controller. One pass ([`Healer::tick`]) every `heal.interval_ms`:
//!
//! 1. **Resume** every unfinished action record: an intent without an outcome is sent again
//!    with the same request id (after a crash, or when its retry is due; the executor
//!    recognises a request it applied); an applied step 1 is verified; a held value whose time
//!    is up is restored as step 2.
//! 2. **Decide** for each open or acknowledged incident not yet acted on and due for a look:
//!    [`reconcile()`] (observing the workload through the executor when it asks), then record a
//!    refusal, escalate, or carry out the plan.
//!
//! Carrying out a plan: the intent is written to the store with a conditional insert first
//! (losing the race means another pass, replica or earlier life recorded it: follow the stored
//! record), then the incident moves to `acting` with the intent on its timeline, then the
//! request goes to the executor, then the outcome is recorded and the incident moves to
//! `verifying`. A crash anywhere leaves a record the next start resumes from.
//!
//! The controller's memory (recent actions for the guardrails, unfinished records, when to look
//! at an incident again, the last refusal per incident) is rebuilt from the store at start; the
//! only thing lost in a restart is refusal de-duplication, so a refusal may be recorded once
//! more.

use super::executor::AnyExecutor;
use super::metrics::{
    ActionLabels, DecisionLabels, GuardrailLabels, HealMetrics, PlaybookLabels, VerifyLabels,
};
use super::{DryRunExecutor, describe};
use crate::incident::Incidents;
use crate::incident::handler::IncidentError;
use crate::policy::guard::{self, Recent};
use crate::policy::reconcile::{RECHECK_MS, RestoreDecision, restore};
use crate::policy::{
    Decision, ErrorAction, GuardState, Guardrail, Plan, Policy, PolicySource, Refusal, Verdict,
    World, error_policy, reconcile, verify,
};
use crate::store::{
    ActionRecord, ActionStore, IncidentStore, RecordedOutcome, RecordedRestore,
    RecordedVerification, StoreError, efficacy,
};
use selfheal_core::action::{ActionError, ActionErrorKind, Executor};
use selfheal_core::incident::{EventKind, Incident, IncidentId, State};
use selfheal_runtime::chain::ErrorChain;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{Mutex, watch};

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum HealError {
    /// The action records could not be read.
    #[error("cannot read healing's action records")]
    Store(#[source] StoreError),
}

#[derive(Debug, Default)]
struct Memory {
    guard: GuardState,
    /// Unfinished records by request id.
    open: HashMap<String, ActionRecord>,
    /// Highest step recorded per incident.
    steps: HashMap<IncidentId, u32>,
    /// Do not decide for these before the time given.
    next_look: HashMap<IncidentId, i64>,
    /// The last refusal recorded per incident, to record a repeated one once.
    last_refusal: HashMap<IncidentId, (Guardrail, String)>,
    /// When an unanswered request is sent again.
    resend_at: HashMap<String, i64>,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TickStats {
    /// Decisions made (reconcile results other than wait).
    pub decisions: u64,
    /// Intents recorded.
    pub intents: u64,
    /// Store writes (action records and incident updates).
    pub store_writes: u64,
}

/// The healing controller.
#[derive(Debug)]
pub struct Healer<S> {
    incidents: Incidents<S>,
    policy: Arc<PolicySource>,
    executor: AnyExecutor,
    /// Used instead of `executor` while the policy says dry-run.
    dry: Arc<DryRunExecutor>,
    metrics: Arc<HealMetrics>,
    mem: Mutex<Memory>,
}

fn request_step(id: &str) -> u32 {
    id.rsplit_once('/')
        .and_then(|(_, s)| s.parse().ok())
        .unwrap_or(0)
}

impl<S: IncidentStore + ActionStore + Clone> Healer<S> {
    /// A controller over `incidents`, its memory restored from the store.
    pub async fn start(
        incidents: Incidents<S>,
        policy: Arc<PolicySource>,
        executor: AnyExecutor,
        dry: Arc<DryRunExecutor>,
        metrics: Arc<HealMetrics>,
    ) -> Result<Healer<S>, HealError> {
        let now = incidents.now_ms();
        let store = incidents.store();
        let recent = store
            .actions_since(now - guard::REMEMBER_MS)
            .await
            .map_err(HealError::Store)?;
        let open = store.unfinished_actions().await.map_err(HealError::Store)?;
        let mut mem = Memory {
            guard: GuardState::from_actions(recent.iter().map(recent_of).collect()),
            ..Memory::default()
        };
        for r in recent.iter().chain(open.iter()) {
            let s = mem.steps.entry(r.incident.clone()).or_default();
            *s = (*s).max(r.step);
        }
        let all = store.actions_since(0).await.map_err(HealError::Store)?;
        for (playbook, e) in efficacy(&all) {
            if let Some(share) = e.share() {
                metrics
                    .efficacy
                    .get_or_create(&PlaybookLabels { playbook })
                    .set(share);
            }
        }
        tracing::info!(
            recent = recent.len(),
            unfinished = open.len(),
            executor = executor.name(),
            dry_run = policy.current().dry_run,
            "HealerRestored"
        );
        for r in open {
            mem.open.insert(r.request_id.clone(), r);
        }
        Ok(Healer {
            incidents,
            policy,
            executor,
            dry,
            metrics,
            mem: Mutex::new(mem),
        })
    }

    /// The policy source.
    pub fn policy(&self) -> &Arc<PolicySource> {
        &self.policy
    }

    /// The incidents.
    pub fn incidents(&self) -> &Incidents<S> {
        &self.incidents
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<HealMetrics> {
        &self.metrics
    }

    /// The dry-run executor when `dry_run` (a dry-run policy, or a record made under one),
    /// else the configured one.
    fn executor_for(&self, dry_run: bool) -> AnyExecutor {
        if dry_run {
            AnyExecutor::DryRun(Arc::clone(&self.dry))
        } else {
            self.executor.clone()
        }
    }

    /// What the policy would decide for `id` now, observing the workload but changing
    /// nothing (`selfheal heal dry-run`).
    pub async fn plan(&self, id: &IncidentId) -> Option<(Incident, Decision)> {
        let inc = match self.incidents.active(id).await {
            Some(i) => i,
            None => self.incidents.store().get(id).await.ok().flatten()?,
        };
        let policy = self.policy.current();
        let mem = self.mem.lock().await;
        let steps = mem.steps.get(id).copied().unwrap_or(0);
        let now = self.incidents.now_ms();
        let exec = self.executor_for(policy.dry_run);
        let mut observed = None;
        loop {
            let w = World {
                policy: &policy,
                guard: &mem.guard,
                observed: observed.as_ref(),
                steps_taken: steps,
                now_ms: now,
            };
            match reconcile(&inc, &w) {
                Decision::Observe { target } if observed.is_none() => {
                    exec.assume(&target, inc.pod_count.min(i32::MAX as u64) as i32);
                    match exec.observe(&target).await {
                        Ok(s) => observed = Some(s),
                        Err(e) => {
                            return Some((
                                inc,
                                Decision::Wait {
                                    why: format!("cannot observe {target}: {e}"),
                                },
                            ));
                        }
                    }
                }
                d => return Some((inc, d)),
            }
        }
    }

    /// The controller loop, until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        interval: std::time::Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => { self.tick().await; }
                () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
            }
        }
    }

    /// One pass: resume unfinished records, then decide for new incidents.
    pub async fn tick(&self) -> TickStats {
        let mut stats = TickStats::default();
        let policy = self.policy.current();
        let mut mem = self.mem.lock().await;
        let now = self.incidents.now_ms();
        mem.guard.expire(now);
        let mut open: Vec<ActionRecord> = mem.open.values().cloned().collect();
        open.sort_by(|a, b| (a.intent_at_ms, &a.request_id).cmp(&(b.intent_at_ms, &b.request_id)));
        for r in open {
            self.resume(&mut mem, &policy, r, &mut stats).await;
        }
        let due = {
            let m = &*mem;
            self.incidents
                .select(|i| {
                    matches!(i.state, State::Open | State::Acknowledged)
                        && !m.steps.contains_key(&i.id)
                        && m.next_look.get(&i.id).is_none_or(|t| *t <= now)
                })
                .await
        };
        for inc in due {
            self.decide(&mut mem, &policy, inc, &mut stats).await;
        }
        // Forget what no longer matters: incidents no longer active.
        if mem.next_look.len() > 4096 || mem.last_refusal.len() > 4096 {
            let active: std::collections::HashSet<IncidentId> = self
                .incidents
                .select(|_| true)
                .await
                .into_iter()
                .map(|i| i.id)
                .collect();
            mem.next_look.retain(|k, _| active.contains(k));
            mem.last_refusal.retain(|k, _| active.contains(k));
        }
        stats
    }

    async fn decide(
        &self,
        mem: &mut Memory,
        policy: &Policy,
        inc: Incident,
        stats: &mut TickStats,
    ) {
        let now = self.incidents.now_ms();
        let exec = self.executor_for(policy.dry_run);
        let mut observed = None;
        let decision = loop {
            let w = World {
                policy,
                guard: &mem.guard,
                observed: observed.as_ref(),
                steps_taken: 0,
                now_ms: now,
            };
            match reconcile(&inc, &w) {
                Decision::Observe { target } if observed.is_none() => {
                    exec.assume(&target, inc.pod_count.min(i32::MAX as u64) as i32);
                    match exec.observe(&target).await {
                        Ok(s) => observed = Some(s),
                        Err(e) => {
                            tracing::warn!(incident = %inc.id, %target, error = %e, "HealObserveError");
                            mem.next_look.insert(inc.id.clone(), now + RECHECK_MS);
                            return;
                        }
                    }
                }
                d => break d,
            }
        };
        let playbook = policy
            .playbooks
            .get(&inc.family)
            .map_or("none", |p| p.name());
        match decision {
            Decision::Wait { .. } | Decision::Observe { .. } => {
                mem.next_look.insert(inc.id.clone(), now + RECHECK_MS);
            }
            Decision::Refuse(r) => {
                stats.decisions += 1;
                self.refuse(mem, &inc, playbook, r, stats).await;
            }
            Decision::Escalate { reason } => {
                stats.decisions += 1;
                self.count_decision("escalate");
                tracing::info!(incident = %inc.id, playbook, %reason, "HealEscalated");
                let ev = EventKind::HealDecided {
                    playbook: playbook.into(),
                    decision: format!("escalate: {reason}"),
                };
                stats.store_writes += 1;
                if let Err(e) = self
                    .incidents
                    .annotate(
                        &inc.id,
                        vec![(ev, reason.clone())],
                        Some((State::Escalated, reason)),
                    )
                    .await
                {
                    self.annotate_failed(&inc.id, &e);
                    mem.next_look.insert(inc.id.clone(), now + RECHECK_MS);
                }
            }
            Decision::Act(plan) => {
                stats.decisions += 1;
                self.count_decision("act");
                self.carry_out(mem, policy, &inc, plan, stats).await;
            }
        }
    }

    fn count_decision(&self, d: &'static str) {
        self.metrics
            .decisions
            .get_or_create(&DecisionLabels { decision: d })
            .inc();
    }

    fn annotate_failed(&self, id: &IncidentId, e: &IncidentError) {
        match e {
            IncidentError::Store(_) => {
                self.metrics.store_errors.inc();
            }
            IncidentError::Engine(_) => {}
        }
        tracing::warn!(incident = %id, error = %ErrorChain::new(e), "HealTimelineWriteError");
    }

    async fn refuse(
        &self,
        mem: &mut Memory,
        inc: &Incident,
        playbook: &str,
        r: Refusal,
        stats: &mut TickStats,
    ) {
        let now = self.incidents.now_ms();
        let key = (r.guardrail, r.reason.clone());
        let repeated = mem.last_refusal.get(&inc.id) == Some(&key);
        if let Some(t) = r.retry_at_ms {
            mem.next_look.insert(inc.id.clone(), t.max(now + 1000));
        }
        if repeated && r.retry_at_ms.is_some() {
            return;
        }
        self.count_decision("refuse");
        self.metrics
            .refusals
            .get_or_create(&GuardrailLabels {
                guardrail: r.guardrail.as_str(),
            })
            .inc();
        tracing::info!(incident = %inc.id, playbook, guardrail = r.guardrail.as_str(), reason = %r.reason, retry_at_ms = ?r.retry_at_ms, "HealRefused");
        let ev = EventKind::HealRefused {
            guardrail: r.guardrail.as_str().into(),
            reason: r.reason.clone(),
            retry_at_ms: r.retry_at_ms,
        };
        let to = r.retry_at_ms.is_none().then(|| {
            (
                State::Escalated,
                format!("refused by {}: {}", r.guardrail, r.reason),
            )
        });
        stats.store_writes += 1;
        match self
            .incidents
            .annotate(
                &inc.id,
                vec![(ev, format!("guardrail {}", r.guardrail))],
                to,
            )
            .await
        {
            Ok(_) => {
                mem.last_refusal.insert(inc.id.clone(), key);
            }
            Err(e) => {
                self.annotate_failed(&inc.id, &e);
                mem.next_look.insert(inc.id.clone(), now + RECHECK_MS);
            }
        }
    }

    async fn carry_out(
        &self,
        mem: &mut Memory,
        policy: &Policy,
        inc: &Incident,
        plan: Plan,
        stats: &mut TickStats,
    ) {
        let now = self.incidents.now_ms();
        let exec = self.executor_for(policy.dry_run);
        let record = ActionRecord {
            request_id: plan.request.request_id.clone(),
            incident: inc.id.clone(),
            step: plan.step,
            playbook: plan.playbook.clone(),
            executor: exec.name().into(),
            dry_run: policy.dry_run || matches!(exec, AnyExecutor::DryRun(_)),
            request: plan.request.clone(),
            intent_at_ms: now,
            attempts: 0,
            outcome: None,
            verification: None,
            restore: plan.restore.as_ref().map(|r| RecordedRestore {
                due_at_ms: now + r.after_ms,
                previous: r.previous,
                done: None,
            }),
        };
        let Some(record) = self.record_intent(mem, record, stats).await else {
            return;
        };
        let what = describe(&record.request);
        tracing::info!(incident = %inc.id, request_id = %record.request_id, playbook = %record.playbook, executor = %record.executor, dry_run = record.dry_run, action = %what, "HealActionIntent");
        self.metrics
            .opened_to_intent
            .observe(((now - inc.opened_at_ms).max(0)) as f64 / 1000.0);
        let events = vec![
            (
                EventKind::HealDecided {
                    playbook: record.playbook.clone(),
                    decision: what.clone(),
                },
                format!("the {} playbook", record.playbook),
            ),
            (
                EventKind::ActionIntent {
                    request_id: record.request_id.clone(),
                    executor: record.executor.clone(),
                    dry_run: record.dry_run,
                    request: record.request.clone(),
                },
                "intent recorded before sending".into(),
            ),
        ];
        stats.store_writes += 1;
        if let Err(e) = self
            .incidents
            .annotate(&inc.id, events, Some((State::Acting, what)))
            .await
        {
            // The intent is durable; the timeline catches up when the outcome is recorded.
            self.annotate_failed(&inc.id, &e);
        }
        self.send(mem, policy, record, stats).await;
    }

    /// Writes the intent with a conditional insert; returns the record to follow (this one,
    /// or the one already stored under its key).
    async fn record_intent(
        &self,
        mem: &mut Memory,
        record: ActionRecord,
        stats: &mut TickStats,
    ) -> Option<ActionRecord> {
        let store = self.incidents.store();
        stats.store_writes += 1;
        let record = match store.insert_intent(&record).await {
            Ok(true) => {
                stats.intents += 1;
                record
            }
            Ok(false) => match store.action(&record.request_id).await {
                Ok(Some(stored)) => {
                    tracing::info!(request_id = %stored.request_id, "HealIntentExisted");
                    stored
                }
                Ok(None) | Err(_) => {
                    self.metrics.store_errors.inc();
                    return None;
                }
            },
            Err(e) => {
                self.metrics.store_errors.inc();
                tracing::warn!(request_id = %record.request_id, error = %ErrorChain::new(&e), "HealIntentWriteError");
                mem.next_look.insert(
                    record.incident.clone(),
                    self.incidents.now_ms() + RECHECK_MS,
                );
                return None;
            }
        };
        mem.guard.push(recent_of(&record));
        let s = mem.steps.entry(record.incident.clone()).or_default();
        *s = (*s).max(record.step);
        mem.open.insert(record.request_id.clone(), record.clone());
        Some(record)
    }

    /// Sends `record`'s request and records the answer.
    async fn send(
        &self,
        mem: &mut Memory,
        policy: &Policy,
        mut record: ActionRecord,
        stats: &mut TickStats,
    ) {
        let exec = self.executor_for(record.dry_run);
        if record.dry_run {
            // A re-send after a restart may find the dry-run's view empty: seed it from the
            // request, so its version check passes as it did the first time.
            self.dry.assume(&record.request.target, 1);
        }
        let kind = record.request.action.kind().as_str();
        let result = exec.apply(&record.request).await;
        let now = self.incidents.now_ms();
        let id = record.incident.clone();
        match result {
            Ok(outcome) => {
                let label = if outcome.already_applied {
                    "already_applied"
                } else if outcome.dry_run {
                    "dry_run"
                } else {
                    "applied"
                };
                self.metrics
                    .actions
                    .get_or_create(&ActionLabels {
                        kind,
                        result: label,
                    })
                    .inc();
                self.metrics
                    .intent_to_outcome
                    .observe(((now - record.intent_at_ms).max(0)) as f64 / 1000.0);
                tracing::info!(request_id = %record.request_id, already_applied = outcome.already_applied, dry_run = outcome.dry_run, detail = %outcome.detail, "HealActionApplied");
                record.outcome = Some(RecordedOutcome {
                    at_ms: now,
                    result: Ok(outcome.clone()),
                });
                if !self.update(mem, &record, stats).await {
                    return;
                }
                let mut events = vec![(
                    EventKind::ActionApplied {
                        request_id: record.request_id.clone(),
                        outcome,
                    },
                    format!("via {}", record.executor),
                )];
                let to = if record.step == 1 {
                    let until_ms = now + policy.verify.window_ms;
                    events.push((
                        EventKind::VerificationStarted {
                            request_id: record.request_id.clone(),
                            until_ms,
                        },
                        format!(
                            "anomalies must stop within {}s",
                            policy.verify.window_ms / 1000
                        ),
                    ));
                    Some((State::Verifying, "action applied".to_owned()))
                } else {
                    None
                };
                stats.store_writes += 1;
                let to = match self.incidents.active(&id).await.map(|i| i.state) {
                    // A crash between the intent and its timeline left it open: catch up.
                    Some(State::Open | State::Acknowledged) if to.is_some() => {
                        let _ = self
                            .incidents
                            .annotate(&id, vec![], Some((State::Acting, "resumed".into())))
                            .await;
                        to
                    }
                    Some(State::Acting) => to,
                    _ => None,
                };
                if let Err(e) = self.incidents.annotate(&id, events, to).await {
                    self.annotate_failed(&id, &e);
                }
            }
            Err(err) => {
                record.attempts += 1;
                let then = error_policy(&err, record.attempts);
                self.metrics
                    .actions
                    .get_or_create(&ActionLabels {
                        kind,
                        result: if matches!(then, ErrorAction::Escalate { .. }) {
                            "failed"
                        } else {
                            "retry"
                        },
                    })
                    .inc();
                tracing::warn!(request_id = %record.request_id, error = %err, retryable = err.is_retryable(), then = ?then, "HealActionError");
                match then {
                    ErrorAction::Retry { after_ms } => {
                        mem.resend_at
                            .insert(record.request_id.clone(), now + after_ms);
                        self.retry_later(mem, record, err, Some(now + after_ms), stats)
                            .await;
                    }
                    ErrorAction::Redecide => {
                        // Same plan on the object's new version, next pass.
                        match exec.observe(&record.request.target).await {
                            Ok(s) => {
                                record.request.expect = match (&record.request.action, &s.hpa) {
                                    (
                                        selfheal_core::action::Action::SetHpaMinReplicas { .. },
                                        Some(h),
                                    ) => h.version.clone(),
                                    _ => s.version.clone(),
                                };
                            }
                            Err(e) => {
                                tracing::warn!(request_id = %record.request_id, error = %e, "HealObserveError")
                            }
                        }
                        mem.resend_at.insert(record.request_id.clone(), now);
                        self.retry_later(mem, record, err, Some(now), stats).await;
                    }
                    ErrorAction::Escalate { reason } => {
                        record.outcome = Some(RecordedOutcome {
                            at_ms: now,
                            result: Err(err.clone()),
                        });
                        record.verification = Some(RecordedVerification {
                            at_ms: now,
                            healed: None,
                            detail: format!("not verified: the action failed ({reason})"),
                        });
                        if let Some(r) = record.restore.as_mut() {
                            r.done = Some("nothing to restore: the action failed".into());
                        }
                        if !self.update(mem, &record, stats).await {
                            return;
                        }
                        stats.store_writes += 1;
                        if let Err(e) = self
                            .incidents
                            .annotate(
                                &id,
                                vec![(
                                    EventKind::ActionFailed {
                                        request_id: record.request_id.clone(),
                                        error: err,
                                        retry_at_ms: None,
                                    },
                                    reason.clone(),
                                )],
                                Some((State::Escalated, reason)),
                            )
                            .await
                        {
                            self.annotate_failed(&id, &e);
                        }
                    }
                }
            }
        }
    }

    async fn retry_later(
        &self,
        mem: &mut Memory,
        record: ActionRecord,
        err: ActionError,
        at: Option<i64>,
        stats: &mut TickStats,
    ) {
        let id = record.incident.clone();
        let request_id = record.request_id.clone();
        if !self.update(mem, &record, stats).await {
            return;
        }
        stats.store_writes += 1;
        if let Err(e) = self
            .incidents
            .annotate(
                &id,
                vec![(
                    EventKind::ActionFailed {
                        request_id,
                        error: err,
                        retry_at_ms: at,
                    },
                    "retried by the error policy".into(),
                )],
                None,
            )
            .await
        {
            self.annotate_failed(&id, &e);
        }
    }

    /// Writes `record`; keeps it in memory (or forgets it once finished). `false` if the write
    /// failed (the pass after retries from memory).
    async fn update(&self, mem: &mut Memory, record: &ActionRecord, stats: &mut TickStats) -> bool {
        stats.store_writes += 1;
        match self.incidents.store().update_action(record).await {
            Ok(()) => {
                if record.is_finished() {
                    mem.open.remove(&record.request_id);
                    mem.resend_at.remove(&record.request_id);
                } else {
                    mem.open.insert(record.request_id.clone(), record.clone());
                }
                true
            }
            Err(e) => {
                self.metrics.store_errors.inc();
                tracing::warn!(request_id = %record.request_id, error = %ErrorChain::new(&e), "HealRecordWriteError");
                false
            }
        }
    }

    async fn resume(
        &self,
        mem: &mut Memory,
        policy: &Policy,
        r: ActionRecord,
        stats: &mut TickStats,
    ) {
        let now = self.incidents.now_ms();
        if r.outcome.is_none() {
            if mem.resend_at.get(&r.request_id).is_none_or(|t| *t <= now) {
                tracing::info!(request_id = %r.request_id, attempts = r.attempts, "HealActionResent");
                self.send(mem, policy, r, stats).await;
            }
            return;
        }
        if r.step == 1 && r.verification.is_none() {
            self.verify_step(mem, policy, r.clone(), stats).await;
        }
        let Some(r) = mem.open.get(&r.request_id).cloned() else {
            return;
        };
        if let Some(rs) = &r.restore
            && rs.done.is_none()
            && now >= rs.due_at_ms
        {
            self.restore_step(mem, policy, r, stats).await;
        }
    }

    async fn verify_step(
        &self,
        mem: &mut Memory,
        policy: &Policy,
        mut r: ActionRecord,
        stats: &mut TickStats,
    ) {
        let now = self.incidents.now_ms();
        let applied_at = r.outcome.as_ref().map_or(r.intent_at_ms, |o| o.at_ms);
        let Some(inc) = self.incidents.active(&r.incident).await else {
            r.verification = Some(RecordedVerification {
                at_ms: now,
                healed: None,
                detail: "not verified: the incident was closed first".into(),
            });
            self.update(mem, &r, stats).await;
            return;
        };
        if inc.state != State::Verifying {
            if inc.state == State::Acting {
                return;
            }
            // Resolved or escalated by a person meanwhile: not judged.
            r.verification = Some(RecordedVerification {
                at_ms: now,
                healed: None,
                detail: format!("not verified: the incident became {}", inc.state),
            });
            self.update(mem, &r, stats).await;
            return;
        }
        let (healed, detail) = match verify(&inc, applied_at, policy, now) {
            Verdict::Pending { .. } => return,
            Verdict::Healed { detail } => (true, detail),
            Verdict::NotHealed { detail } => (false, detail),
        };
        r.verification = Some(RecordedVerification {
            at_ms: now,
            healed: Some(healed),
            detail: detail.clone(),
        });
        if !self.update(mem, &r, stats).await {
            return;
        }
        let result = if healed { "healed" } else { "not_healed" };
        self.metrics
            .verifications
            .get_or_create(&VerifyLabels {
                playbook: r.playbook.clone(),
                result,
            })
            .inc();
        self.refresh_efficacy(&r.playbook).await;
        tracing::info!(incident = %r.incident, request_id = %r.request_id, healed, %detail, "HealVerified");
        let holding = r.restore.as_ref().is_some_and(|x| x.done.is_none());
        let to = match (healed, holding) {
            (true, false) => Some((State::Resolved, "verified: healed".to_owned())),
            (true, true) => None,
            (false, _) => Some((
                State::Escalated,
                "verification failed: the action did not heal; not repeated".to_owned(),
            )),
        };
        stats.store_writes += 1;
        if let Err(e) = self
            .incidents
            .annotate(
                &r.incident,
                vec![(
                    EventKind::Verified {
                        request_id: r.request_id.clone(),
                        healed,
                        detail: detail.clone(),
                    },
                    detail,
                )],
                to,
            )
            .await
        {
            self.annotate_failed(&r.incident, &e);
        }
    }

    async fn refresh_efficacy(&self, playbook: &str) {
        if let Ok(all) = self.incidents.store().actions_since(0).await
            && let Some(share) = efficacy(&all).get(playbook).and_then(|e| e.share())
        {
            self.metrics
                .efficacy
                .get_or_create(&PlaybookLabels {
                    playbook: playbook.to_owned(),
                })
                .set(share);
        }
    }

    async fn restore_step(
        &self,
        mem: &mut Memory,
        policy: &Policy,
        mut r: ActionRecord,
        stats: &mut TickStats,
    ) {
        let now = self.incidents.now_ms();
        let Some(rs) = r.restore.clone() else {
            return;
        };
        let exec = self.executor_for(r.dry_run);
        let state = match exec.observe(&r.request.target).await {
            Ok(s) => s,
            Err(e) if e.kind == ActionErrorKind::NotFound => {
                self.finish_restore(mem, &mut r, format!("not restored: {e}"), stats)
                    .await;
                return;
            }
            Err(e) => {
                tracing::warn!(request_id = %r.request_id, error = %e, "HealObserveError");
                return;
            }
        };
        match restore(&r.request, rs.previous, &state, now) {
            RestoreDecision::Wait { .. } => {}
            RestoreDecision::Skip { reason } => {
                tracing::info!(request_id = %r.request_id, %reason, "HealRestoreSkipped");
                self.finish_restore(mem, &mut r, reason, stats).await;
            }
            RestoreDecision::Act(req) => {
                let step2 = ActionRecord {
                    request_id: req.request_id.clone(),
                    incident: r.incident.clone(),
                    step: 2,
                    playbook: r.playbook.clone(),
                    executor: exec.name().into(),
                    dry_run: r.dry_run,
                    request: req.clone(),
                    intent_at_ms: now,
                    attempts: 0,
                    outcome: None,
                    verification: None,
                    restore: None,
                };
                let Some(step2) = self.record_intent(mem, step2, stats).await else {
                    return;
                };
                stats.store_writes += 1;
                let _ = self
                    .incidents
                    .annotate(
                        &r.incident,
                        vec![(
                            EventKind::ActionIntent {
                                request_id: step2.request_id.clone(),
                                executor: step2.executor.clone(),
                                dry_run: step2.dry_run,
                                request: step2.request.clone(),
                            },
                            "restoring the held value".into(),
                        )],
                        None,
                    )
                    .await;
                self.finish_restore(
                    mem,
                    &mut r,
                    format!("restored by {}", req.request_id),
                    stats,
                )
                .await;
                if step2.outcome.is_none() {
                    self.send(mem, policy, step2, stats).await;
                }
            }
        }
    }

    async fn finish_restore(
        &self,
        mem: &mut Memory,
        r: &mut ActionRecord,
        done: String,
        stats: &mut TickStats,
    ) {
        if let Some(x) = r.restore.as_mut() {
            x.done = Some(done.clone());
        }
        if !self.update(mem, r, stats).await {
            return;
        }
        // A verified incident that was waiting for its restore is now resolved.
        let healed = r.verification.as_ref().and_then(|v| v.healed) == Some(true);
        let state = self.incidents.active(&r.incident).await.map(|i| i.state);
        if healed && state == Some(State::Verifying) {
            stats.store_writes += 1;
            if let Err(e) = self
                .incidents
                .annotate(
                    &r.incident,
                    vec![(
                        EventKind::HealDecided {
                            playbook: r.playbook.clone(),
                            decision: done,
                        },
                        "hold over".into(),
                    )],
                    Some((
                        State::Resolved,
                        "verified: healed; held value restored".into(),
                    )),
                )
                .await
            {
                self.annotate_failed(&r.incident, &e);
            }
        }
    }
}

fn recent_of(r: &ActionRecord) -> Recent {
    Recent {
        request_id: r.request_id.clone(),
        incident: r.incident.0.clone(),
        target: r.request.target.clone(),
        kind: r.request.action.kind(),
        at_ms: r.intent_at_ms,
        restore: r.step > 1 || request_step(&r.request_id) > 1,
    }
}

/// Why [`start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The dry-run log could not be opened.
    #[error(transparent)]
    DryRunLog(#[from] super::dry_run::DryRunLogError),
    /// The action records could not be read.
    #[error(transparent)]
    Restore(#[from] HealError),
    /// The kube executor could not be set up (configuration, credentials, client).
    #[error("cannot set up the kube executor")]
    Kube(#[from] selfheal_heal_api::kube::KubeSetupError),
    /// The heal API's signing keys could not be loaded at start.
    #[error("cannot load the heal API signing keys ([heal.heal_api.keys])")]
    HealApiKeys(#[source] selfheal_heal_api::keys::KeysError),
    /// The heal API client could not be built (its CA bundle, TLS).
    #[error("cannot set up the heal API client ([heal.heal_api])")]
    HealApiClient(#[source] selfheal_heal_api::client::ClientError),
}

/// Starts the controller on `incidents`: registers its metrics (and the policy's), returns its
/// API routes and the tasks to run until shutdown (the controller loop and the policy watcher).
pub async fn start(
    incidents: Incidents<crate::store::AnyStore>,
    settings: &super::config::HealSettings,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<(axum::Router, Vec<(String, crate::run::ServiceTask)>), StartError> {
    let dry = Arc::new(DryRunExecutor::open(
        Some(&settings.dry_run_log),
        settings.dry_run_latency,
    )?);
    let mut key_reloader = None;
    let executor = match (settings.executor, &settings.heal_api) {
        (super::config::ExecutorKind::Kube, _) => AnyExecutor::Kube(Arc::new(
            selfheal_heal_api::kube::KubeExecutor::connect(&settings.kube).await?,
        )),
        (super::config::ExecutorKind::HealApi, Some(remote)) => {
            let (exec, reloader) = remote_executor(remote, registry).await?;
            key_reloader = Some(reloader);
            AnyExecutor::HealApi(Arc::new(exec))
        }
        // `HealConfig::validate` gives `heal_api` settings whenever the executor is `heal-api`.
        (super::config::ExecutorKind::DryRun | super::config::ExecutorKind::HealApi, _) => {
            AnyExecutor::DryRun(Arc::clone(&dry))
        }
    };
    let metrics = Arc::new(HealMetrics::default());
    {
        let r = registry.sub_registry_with_prefix("heal");
        settings.policy.register(r);
    }
    metrics.register(registry);
    let healer = Arc::new(
        Healer::start(
            incidents,
            Arc::clone(&settings.policy),
            executor,
            dry,
            metrics,
        )
        .await?,
    );
    let routes = super::api::router(Arc::clone(&healer));
    let interval = settings.interval;
    let poll = settings.policy_poll;
    let policy = Arc::clone(&settings.policy);
    let h = Arc::clone(&healer);
    let mut tasks: Vec<(String, crate::run::ServiceTask)> = vec![
        (
            "heal controller".into(),
            Box::new(move |stop| Box::pin(h.run(interval, stop))),
        ),
        (
            "heal policy watcher".into(),
            Box::new(move |stop| Box::pin(policy.watch(poll, stop))),
        ),
    ];
    if let Some(reloader) = key_reloader {
        tasks.push(("heal API key reloader".into(), reloader));
    }
    Ok((routes, tasks))
}

/// The remote executor on `remote`, with its keys loaded (fatal at start, so a missing Secret
/// stops the aggregator rather than failing every action), and the task that re-reads them so a
/// rotation needs no restart. Key reloads are on `/metrics` as
/// `selfheal_aggregator_heal_api_client_key_reloads_total{outcome}` (and `..._keys`).
async fn remote_executor(
    remote: &super::config::RemoteExecutorSettings,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<
    (
        selfheal_heal_api::client::RemoteExecutor,
        crate::run::ServiceTask,
    ),
    StartError,
> {
    use selfheal_heal_api::keys::{KeyLoader, Keyring};
    let mut loader = KeyLoader::new(remote.keys.clone()).await;
    let keys = loader.load().await.map_err(StartError::HealApiKeys)?;
    tracing::info!(url = %remote.client.base_url, keys = ?keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), "HealApiClientReady");
    let metrics = Arc::new(selfheal_heal_api::server::Metrics::default());
    metrics.keys.set(keys.len() as i64);
    let ring = Keyring::new(keys);
    {
        let r = registry.sub_registry_with_prefix("heal_api_client");
        r.register("keys", "Heal API signing keys in use", metrics.keys.clone());
        r.register(
            "key_reloads",
            "Heal API signing key reloads by outcome",
            metrics.key_reloads.clone(),
        );
    }
    let exec = selfheal_heal_api::client::RemoteExecutor::new(remote.client.clone(), ring.clone())
        .map_err(StartError::HealApiClient)?;
    let every = remote.keys_reload;
    let task: crate::run::ServiceTask =
        Box::new(move |stop| Box::pin(loader.watch(ring, every, metrics, stop)));
    Ok((exec, task))
}
