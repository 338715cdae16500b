//! Where records come from: [`kinesis`] (the agents' stream, one reader per shard and handler)
//! and [`http`] (agents POSTing to the aggregator, appended to a durable log that handlers read
//! the same way). Both hand [`crate::pipeline::Batch`]es to handlers through
//! [`crate::pipeline::Delivery`], so retries, poison batches and checkpoints behave the same on
//! both.

pub mod http;
pub mod kinesis;
