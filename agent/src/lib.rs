//! selfheal-agent: the DaemonSet agent.
//!
//! A data path of typed stages: [`procfs`] and [`cgroup`] **collect** raw counters from the host,
//! [`pods`] names cgroups after their pods, [`normalize`] turns two readings into schema-v1
//! records and features, [`detect`] scores them with the family models ([`score`] runs one model;
//! [`model_mirror`] copies them down from S3) and raises anomalies, and `forward` ships
//! anomalies and a sample of normal records through the [`spool`] ([`forward`] drains it to
//! Kinesis or HTTP).
//! [`config`] loads and validates settings,
//! [`telemetry`] and [`server`] expose `/metrics` and `/healthz`, and [`run`] ties it together
//! with one shutdown signal.

pub mod cgroup;
pub mod cli;
pub mod collect;
pub mod config;
pub mod detect;
pub mod forward;
pub mod model_mirror;
pub mod normalize;
pub mod pods;
pub mod procfs;
pub mod run;
pub mod sample;
pub mod score;
pub mod server;
pub mod spool;
pub mod telemetry;
