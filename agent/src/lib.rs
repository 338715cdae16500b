//! selfheal-agent: the DaemonSet agent.
//!
//! The modules follow the data path, one typed stage after another:
//!
//! - [`collect`] reads raw counters from the host — [`collect::procfs`] for the node,
//!   [`collect::cgroup`] for each pod cgroup — and [`collect::pods`] names each cgroup after its
//!   pod;
//! - [`normalize`] turns two readings into schema-v1 records;
//! - [`detect`] scores them with the family models and raises anomalies ([`score`] runs one
//!   model; [`models`] keeps the models current: the S3 mirror and the poller);
//! - [`sample`] picks what is forwarded: every anomaly and a budgeted sample of normal records;
//! - [`forward`] appends that to its [`forward::spool`] and drains the spool to Kinesis or HTTP.
//!
//! [`run`] is the loop that calls them once per cycle, with one shutdown signal; [`config`] loads
//! and validates settings; every stage registers its own metrics in [`telemetry`]'s registry, and
//! the runtime crate's admin server exposes `/metrics` and `/healthz`.

pub mod cli;
pub mod collect;
pub mod config;
pub mod detect;
pub mod forward;
pub mod models;
pub mod normalize;
pub mod run;
pub mod sample;
pub mod score;
pub mod telemetry;
