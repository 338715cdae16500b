//! selfheal-runtime: the plumbing that every binary mode (agent, aggregator, heal API, trainer)
//! shares, written once so the copies cannot drift.
//!
//! - [`frame`]: the framing of one record in an append-only log segment (the agent's spool and
//!   the aggregator's ingest log), with a scanner that resynchronises after corruption.
//!
//! It depends on no selfheal crate: `core` owns what the stages agree on (records, features,
//! models), this crate owns how a service runs.

pub mod frame;
