//! Model plumbing: where the detect stage's models come from. [`mirror`] keeps a local copy of
//! an S3 model store; the registry ([`crate::detect::ModelRegistry`]) watches a directory (that
//! copy or a mounted ConfigMap) and loads what changed; [`poller`] runs the two off the loop's
//! path and swaps new models in between cycles.

pub mod mirror;
pub mod poller;
