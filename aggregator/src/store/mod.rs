//! The incident store behind one trait, [`IncidentStore`]: [`sqlite`] is the embedded default (a
//! file under the data directory), [`dynamodb`] the shared one for aggregators on AWS. One test
//! suite (`tests/incidents_store.rs`) runs against both.
//!
//! The write path is [`IncidentStore::apply`]: one call per incoming batch (or timer tick, or API
//! request) carrying every incident changed, every event and every record id newly seen, written
//! so that a crash leaves either all of it or none of it visible (SQLite: one transaction;
//! DynamoDB: the ids first, tagged with the update's commit id, then the incidents, events and
//! the commit marker in transactions; ids whose commit marker never landed are ignored on
//! load). The checkpoint of the batch advances only after `apply` returned, so a replay after a
//! crash finds the ids it had counted and counts nothing twice.
//!
//! The store also keeps silences, and prunes: resolved incidents and their events past the
//! retention, expired silences past it, seen-id buckets past the dedup window.
//!
//! Healing's records live beside them behind the sibling trait [`ActionStore`]: one
//! [`ActionRecord`] per action, keyed by its idempotency key `<incident>/<step>`, inserted with a
//! conditional write (SQLite: a primary-key insert that does nothing on conflict; DynamoDB:
//! `attribute_not_exists(pk)`) *before* the action is sent, and updated with its outcome,
//! verification and restore after. An intent without an outcome after a restart is an action
//! that may or may not have reached the cluster: it is re-sent with the same request id, which
//! the executor recognises.

pub mod dynamodb;
pub mod sqlite;

use crate::incident::Snapshot;
use crate::incident::Update;
use selfheal_core::Family;
use selfheal_core::action::{ActionError, ActionOutcome, ActionRequest};
use selfheal_core::incident::{Event, Incident, IncidentId, Severity, Silence, State};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;

/// Why the store failed. Every variant is worth retrying except [`StoreError::Corrupt`] (a
/// document this build cannot read) and [`StoreError::Schema`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("sqlite store: {context}")]
    Sqlite {
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// A DynamoDB call failed.
    #[error("dynamodb store: {context}: {message}")]
    Dynamo {
        /// What was being done.
        context: &'static str,
        /// The service's error code, when it answered with one.
        code: Option<String>,
        /// The SDK's error with its context.
        message: String,
    },
    /// A stored document does not parse.
    #[error("stored {what} does not parse")]
    Corrupt {
        /// Which kind of document.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The database was written by a newer build (its schema version is ahead).
    #[error("store schema version {found} is newer than this build's {supported}")]
    Schema {
        /// Version found.
        found: i64,
        /// Version this build writes.
        supported: i64,
    },
    /// The blocking task running a SQLite call died.
    #[error("sqlite worker task failed")]
    Join(#[source] tokio::task::JoinError),
    /// The data directory could not be created.
    #[error("cannot create {path}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, StoreError::Corrupt { .. } | StoreError::Schema { .. })
    }

    /// Whether the store refused what the write carried rather than failing on its own: SQLite
    /// finding a value too big or of the wrong type, or a constraint the update breaks;
    /// DynamoDB answering `ValidationException` (an item over 400 KB, a value it cannot hold).
    /// The same update is refused every time, so the batch that made it is poison. Everything
    /// else (I/O, a locked or busy database, a full disk, throttling, the network, a corrupt or
    /// newer store) is the store's state, not the batch's, and worth retrying: a corrupt store
    /// holds back the incident handler, loudly, rather than setting every batch aside.
    pub fn is_batch_fault(&self) -> bool {
        use rusqlite::ffi::ErrorCode;
        match self {
            StoreError::Sqlite { source, .. } => match source {
                rusqlite::Error::SqliteFailure(e, _) => matches!(
                    e.code,
                    ErrorCode::TooBig | ErrorCode::ConstraintViolation | ErrorCode::TypeMismatch
                ),
                rusqlite::Error::ToSqlConversionFailure(_) => true,
                _ => false,
            },
            StoreError::Dynamo { code, .. } => code.as_deref() == Some("ValidationException"),
            _ => false,
        }
    }
}

/// Filters and paging of [`IncidentStore::list`]. Empty fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// Any of these states.
    pub states: Vec<State>,
    /// Any of these severities.
    pub severities: Vec<Severity>,
    /// This namespace.
    pub namespace: Option<String>,
    /// This workload (`<kind>/<name>`).
    pub workload: Option<String>,
    /// This family.
    pub family: Option<Family>,
    /// Incidents whose last anomaly (record time) is at or after this, unix ms.
    pub since_ms: Option<i64>,
    /// Incidents opened at or before this, unix ms.
    pub until_ms: Option<i64>,
    /// Page size.
    pub limit: usize,
    /// Continue after this id (the previous page's `next`).
    pub after: Option<IncidentId>,
}

impl Query {
    /// Whether `i` passes the filters (the paging aside).
    pub fn matches(&self, i: &Incident) -> bool {
        (self.states.is_empty() || self.states.contains(&i.state))
            && (self.severities.is_empty() || self.severities.contains(&i.severity))
            && self
                .namespace
                .as_ref()
                .is_none_or(|n| i.labels.get("namespace") == Some(n))
            && self
                .workload
                .as_ref()
                .is_none_or(|w| i.labels.get("workload") == Some(w))
            && self.family.is_none_or(|f| i.family == f)
            && self.since_ms.is_none_or(|t| i.last_seen_ms >= t)
            && self.until_ms.is_none_or(|t| i.opened_at_ms <= t)
    }
}

/// One page of incidents, newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Page {
    /// The incidents.
    pub incidents: Vec<Incident>,
    /// The id to pass as `after` for the next page; `None` on the last.
    pub next: Option<IncidentId>,
}

/// Incidents by state and by severity (the active ones for severity).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// By state.
    pub by_state: BTreeMap<State, u64>,
    /// Active incidents by severity.
    pub by_severity: BTreeMap<Severity, u64>,
}

impl Counts {
    fn add(&mut self, state: State, severity: Severity) {
        *self.by_state.entry(state).or_default() += 1;
        if state.is_active() {
            *self.by_severity.entry(severity).or_default() += 1;
        }
    }
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pruned {
    /// Resolved incidents (with their events).
    pub incidents: u64,
    /// Expired silences.
    pub silences: u64,
    /// Seen-id entries.
    pub seen_ids: u64,
}

/// Where incidents, their timelines, silences and seen ids are kept.
pub trait IncidentStore: Send + Sync + 'static {
    /// What the engine restarts from: active incidents, silences ending at or after
    /// `silences_since_ms`, seen ids in buckets at or after `seen_since_ms`.
    fn load(
        &self,
        seen_since_ms: i64,
        silences_since_ms: i64,
    ) -> impl Future<Output = Result<Snapshot, StoreError>> + Send;
    /// Writes one update, all or nothing.
    fn apply(&self, update: &Update) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A page of incidents, newest first.
    fn list(&self, q: &Query) -> impl Future<Output = Result<Page, StoreError>> + Send;
    /// One incident.
    fn get(
        &self,
        id: &IncidentId,
    ) -> impl Future<Output = Result<Option<Incident>, StoreError>> + Send;
    /// An incident's timeline, in order, from `from_seq`, at most `limit` events.
    fn events(
        &self,
        id: &IncidentId,
        from_seq: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;
    /// Every silence kept, newest first.
    fn silences(&self) -> impl Future<Output = Result<Vec<Silence>, StoreError>> + Send;
    /// Incident counts.
    fn counts(&self) -> impl Future<Output = Result<Counts, StoreError>> + Send;
    /// Removes incidents resolved and silences ended before `before_ms`, and seen ids in
    /// buckets before `seen_before_ms`.
    fn prune(
        &self,
        before_ms: i64,
        seen_before_ms: i64,
    ) -> impl Future<Output = Result<Pruned, StoreError>> + Send;
}

/// The store chosen by configuration.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// Embedded SQLite.
    Sqlite(sqlite::SqliteStore),
    /// DynamoDB.
    Dynamo(dynamodb::DynamoStore),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Sqlite($s) => $e.await,
            AnyStore::Dynamo($s) => $e.await,
        }
    };
}

impl IncidentStore for AnyStore {
    async fn load(
        &self,
        seen_since_ms: i64,
        silences_since_ms: i64,
    ) -> Result<Snapshot, StoreError> {
        dispatch!(self, s => s.load(seen_since_ms, silences_since_ms))
    }
    async fn apply(&self, update: &Update) -> Result<(), StoreError> {
        dispatch!(self, s => s.apply(update))
    }
    async fn list(&self, q: &Query) -> Result<Page, StoreError> {
        dispatch!(self, s => s.list(q))
    }
    async fn get(&self, id: &IncidentId) -> Result<Option<Incident>, StoreError> {
        dispatch!(self, s => s.get(id))
    }
    async fn events(
        &self,
        id: &IncidentId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        dispatch!(self, s => s.events(id, from_seq, limit))
    }
    async fn silences(&self) -> Result<Vec<Silence>, StoreError> {
        dispatch!(self, s => s.silences())
    }
    async fn counts(&self) -> Result<Counts, StoreError> {
        dispatch!(self, s => s.counts())
    }
    async fn prune(&self, before_ms: i64, seen_before_ms: i64) -> Result<Pruned, StoreError> {
        dispatch!(self, s => s.prune(before_ms, seen_before_ms))
    }
}

/// What an executor answered, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedOutcome {
    /// When the answer was recorded, unix ms.
    pub at_ms: i64,
    /// The answer.
    pub result: Result<ActionOutcome, ActionError>,
}

/// A verification's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedVerification {
    /// When it was decided, unix ms.
    pub at_ms: i64,
    /// Whether the workload's anomalies stopped. `None`: not judged (the incident was closed by
    /// a person, or the action failed); not counted in the efficacy.
    pub healed: Option<bool>,
    /// What was seen.
    pub detail: String,
}

/// A value held by an action, to be put back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRestore {
    /// When it is due, unix ms.
    pub due_at_ms: i64,
    /// The value to put back.
    pub previous: i32,
    /// Once handled: what happened (restored by `<incident>/2`, or why it was left alone).
    pub done: Option<String>,
}

/// One healing action: intent, outcome, verification and restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// The idempotency key, `<incident>/<step>` (also `request.request_id`).
    pub request_id: String,
    /// The incident.
    pub incident: IncidentId,
    /// The step: 1 the playbook's action, 2 its restore.
    pub step: u32,
    /// The playbook that planned it.
    pub playbook: String,
    /// The executor that carries it out (`dry-run`, `kube`, `heal-api`).
    pub executor: String,
    /// Whether it was only recorded.
    pub dry_run: bool,
    /// The request, exactly as sent (re-sent unchanged after a crash).
    pub request: ActionRequest,
    /// When the intent was recorded, unix ms.
    pub intent_at_ms: i64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// The executor's answer, once it gave one.
    pub outcome: Option<RecordedOutcome>,
    /// Step 1: the verification.
    pub verification: Option<RecordedVerification>,
    /// Step 1 of a holding playbook: the restore.
    pub restore: Option<RecordedRestore>,
}

impl ActionRecord {
    /// Whether nothing more will happen to it: answered, and (step 1) verified and restored.
    pub fn is_finished(&self) -> bool {
        self.outcome.is_some()
            && (self.step != 1 || self.verification.is_some())
            && self.restore.as_ref().is_none_or(|r| r.done.is_some())
    }
}

/// Verified actions per playbook: the efficacy figure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Efficacy {
    /// Actions verified healed.
    pub healed: u64,
    /// Actions verified not healed.
    pub not_healed: u64,
}

impl Efficacy {
    /// The share verified healed; `None` before any verification.
    pub fn share(&self) -> Option<f64> {
        let n = self.healed + self.not_healed;
        (n > 0).then(|| self.healed as f64 / n as f64)
    }
}

/// Efficacy per playbook over `records`.
pub fn efficacy(records: &[ActionRecord]) -> BTreeMap<String, Efficacy> {
    let mut out: BTreeMap<String, Efficacy> = BTreeMap::new();
    for r in records.iter().filter(|r| r.step == 1) {
        match r.verification.as_ref().and_then(|v| v.healed) {
            Some(true) => out.entry(r.playbook.clone()).or_default().healed += 1,
            Some(false) => out.entry(r.playbook.clone()).or_default().not_healed += 1,
            None => {}
        }
    }
    out
}

/// Where healing's action records are kept: beside the incidents, in the same store.
pub trait ActionStore: Send + Sync + 'static {
    /// Records an intent unless one with the same key exists: `true` when this call wrote it,
    /// `false` when it was there already (a re-decision after a crash; the caller then follows
    /// the stored one).
    fn insert_intent(
        &self,
        record: &ActionRecord,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Writes the record's new outcome, verification or restore (the intent exists).
    fn update_action(
        &self,
        record: &ActionRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// One record.
    fn action(
        &self,
        request_id: &str,
    ) -> impl Future<Output = Result<Option<ActionRecord>, StoreError>> + Send;
    /// Records whose intent is at or after `since_ms`, oldest first.
    fn actions_since(
        &self,
        since_ms: i64,
    ) -> impl Future<Output = Result<Vec<ActionRecord>, StoreError>> + Send;
    /// Records not [`ActionRecord::is_finished`], oldest first: what the controller resumes.
    fn unfinished_actions(
        &self,
    ) -> impl Future<Output = Result<Vec<ActionRecord>, StoreError>> + Send;
    /// An incident's records, by step.
    fn actions_of(
        &self,
        incident: &IncidentId,
    ) -> impl Future<Output = Result<Vec<ActionRecord>, StoreError>> + Send;
}

impl ActionStore for AnyStore {
    async fn insert_intent(&self, record: &ActionRecord) -> Result<bool, StoreError> {
        dispatch!(self, s => s.insert_intent(record))
    }
    async fn update_action(&self, record: &ActionRecord) -> Result<(), StoreError> {
        dispatch!(self, s => s.update_action(record))
    }
    async fn action(&self, request_id: &str) -> Result<Option<ActionRecord>, StoreError> {
        dispatch!(self, s => s.action(request_id))
    }
    async fn actions_since(&self, since_ms: i64) -> Result<Vec<ActionRecord>, StoreError> {
        dispatch!(self, s => s.actions_since(since_ms))
    }
    async fn unfinished_actions(&self) -> Result<Vec<ActionRecord>, StoreError> {
        dispatch!(self, s => s.unfinished_actions())
    }
    async fn actions_of(&self, incident: &IncidentId) -> Result<Vec<ActionRecord>, StoreError> {
        dispatch!(self, s => s.actions_of(incident))
    }
}

fn corrupt(what: &'static str) -> impl FnOnce(serde_json::Error) -> StoreError {
    move |source| StoreError::Corrupt { what, source }
}
