//! selfheal-aggregator: the cloud side of the loop.
//!
//! Today it owns the path from the stream to the data lake: [`consume`] reads every shard of the
//! agents' Kinesis stream with durable per-shard checkpoints and hands decoded batches to a
//! [`consume::BatchHandler`]; [`lake`] is the handler that writes them as partitioned Parquet to a
//! directory or S3, and the reader the trainer uses. The incident pipeline is a second handler on the same consumer; policy,
//! guardrails and healing will build on it. Without AWS, [`ingest`]
//! replaces the consumer: agents POST batches to the HTTP server, and each request is a batch for
//! the same handler. [`incident`] is the incident pipeline (grouping, dedup, severity, silences,
//! lifecycle) with its [`store`] (SQLite or DynamoDB) and its [`api`] and page. [`run`] wires
//! the stages,
//! [`config`] validates their settings, [`server`] serves `/metrics` and `/healthz`, and [`cli`]
//! is the binary's edge.

pub mod api;
pub mod cli;
pub mod config;
pub mod consume;
pub mod incident;
pub mod ingest;
pub mod lake;
pub mod run;
pub mod server;
pub mod store;
