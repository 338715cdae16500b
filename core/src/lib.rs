//! selfheal-core: the types every part of selfheal agrees on, and no I/O.
//!
//! The agent produces [`schema::Record`]s, the aggregator consumes them and the trainer learns from
//! them; all three compute features with the same [`features`] code so that what a model saw in
//! training is exactly what it sees on the node (no train/serve skew). Nothing here touches the
//! file system, the network or the clock: callers pass time and data in. [`batch`] frames wire
//! records into the HTTP transport's POST bodies, for the agent's sink and the aggregator's ingest.

pub mod action;
pub mod batch;
pub mod family;
pub mod features;
pub mod forest;
pub mod incident;
pub mod model;
pub mod model_bounds;
pub mod schema;
pub mod signature;
pub mod store;

pub use family::{Family, Metric};
pub use schema::{Envelope, Payload, PodRef, Record, RecordId, Subject};
