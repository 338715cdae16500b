//! selfheal-aggregator: the cloud side of the loop.
//!
//! Records flow source → pipeline → handlers:
//!
//! - [`sources`]: [`sources::kinesis`] reads every shard of the agents' stream;
//!   [`sources::http`] takes agents' POSTs into a durable local log that is read the same way.
//! - [`pipeline`]: the seam. [`pipeline::Batch`], the [`pipeline::Handler`] trait, the
//!   [`pipeline::HandlerError`] retry class (retryable, or poison: set aside as a dead letter),
//!   and per-handler checkpoints, so each handler reads at its own pace and one failing handler
//!   never stalls another.
//! - Handlers: [`lake`] writes the data lake ([`selfheal_lake`], shared with the trainer);
//!   [`incident`] groups and deduplicates anomalies into incidents (severity, Alertmanager
//!   timing, silences, inhibition, lifecycle) and keeps them in its [`store`] (SQLite or
//!   DynamoDB); [`api`] serves them (`/api/v1`, the page, and the `incidents`/`silences` CLI).
//! - [`notify`] sends the incidents' notification moments (opened, updated, repeat, escalated,
//!   resolved) to webhooks (Alertmanager's payload) and SNS topics, queued and retried.
//! - [`policy`] decides what to do about an incident (playbooks, guardrails, a pure
//!   `reconcile`); [`heal`] carries it out exactly once through an executor (dry-run by
//!   default), verifies it and keeps the efficacy per playbook.
//!
//! [`run`] wires the stages and exits non-zero when any task panics, [`config`] validates their
//! settings, the runtime crate's admin server serves `/metrics` and `/healthz`, and [`cli`] is the
//! binary's edge.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod heal;
pub mod incident;
pub mod lake;
pub mod notify;
pub mod pipeline;
pub mod policy;
pub mod run;
pub mod sources;
pub mod store;
