//! selfheal-up: `selfheal up`, the whole loop on this machine from one command. The agent
//! (procfs and cgroups of this host, every second) posts over loopback HTTP to the aggregator's
//! ingest; the aggregator writes the local lake, keeps incidents in SQLite, heals in dry-run and
//! serves the incident page; all of it lives in one data directory ([`datadir`]) with generated,
//! editable configs ([`configs`]) and credentials made on first start ([`credentials`]).
//!
//! Both run in this one process, through the same `run` entry points as `selfheal agent` and
//! `selfheal aggregator`: the aggregator as a task of a two-worker runtime, the agent on a
//! thread of its own with the one-thread runtime it always runs on. One process means no child
//! to orphan, one signal handler, and an orderly stop (the agent flushes into an aggregator that
//! is still accepting). The crate depends on both programs' crates, which is why it is not
//! part of either.

pub mod cli;
pub mod configs;
pub mod credentials;
pub mod datadir;
