//! selfheal-runtime: the plumbing that every binary mode (agent, aggregator, heal API, trainer)
//! shares, written once so the copies cannot drift.
//!
//! Always built (no I/O beyond what the caller hands in, no async runtime):
//! - [`frame`]: the framing of one record in an append-only log segment (the agent's spool and
//!   the aggregator's ingest log), with a scanner that resynchronises after corruption.
//! - [`chain`]: an error with its causes on one line, for logs and the binary's exit message.
//! - [`config`]: the `{field, reason}` error every `validate()` returns, and the common checks.
//! - [`s3url`]: `s3://bucket/prefix` parsed and validated.
//!
//! Behind features, so a consumer compiles only what it uses:
//! - `fs` — `atomic`: temp-then-rename writes that fsync the file and the directory.
//! - `instance` — `instance`: the local instance's data directory and `instance.json`, by
//!   which `selfheal up` is found by the commands that talk to it.
//! - `service` — `shutdown` (SIGTERM/SIGINT fanned out on one watch channel), `backoff`
//!   (exponential, capped, jittered), `server` (the admin server: `/metrics`, `/healthz`), and
//!   `config::http_url` (also alone as `http`).
//! - `aws` — `aws`: the SDK config builder and the one path-style addressing rule.
//! - `tls` — `conn`: the bounded HTTP/1.1 connection loop (connection cap, head and idle
//!   timeouts) with TLS whose files are re-read when they change.
//!
//! It depends on no selfheal crate: `core` owns what the stages agree on (records, features,
//! models), this crate owns how a service runs.

#[cfg(feature = "fs")]
pub mod atomic;
#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "service")]
pub mod backoff;
pub mod chain;
pub mod config;
#[cfg(feature = "tls")]
pub mod conn;
pub mod frame;
#[cfg(feature = "instance")]
pub mod instance;
pub mod s3url;
#[cfg(feature = "service")]
pub mod server;
#[cfg(feature = "service")]
pub mod shutdown;
