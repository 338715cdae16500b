//! selfheal-heal-api: the hands of the loop.
//!
//! It owns carrying out a [`selfheal_core::action::ActionRequest`] on a cluster through the
//! `kube` crate (scale subresource, rollout-restart annotation, pod delete, HPA floor), exactly
//! once (the request id travels on the object), and the HMAC-signed HTTPS server that runs it
//! inside the target cluster with least-privilege RBAC (`selfheal heal-api`). The aggregator uses
//! the same action code for its kube-direct executor, and the signing code for its remote
//! executor. See docs/ARCHITECTURE.md for why this is a crate of its own.
//!
//! - [`sign`]: the request signature (HMAC-SHA256), shared by client and server;
//! - [`keys`]: the signing keys, from a Secret file or Secrets Manager, rotated live;
//! - [`server`]: the HTTPS server, generic over any [`selfheal_core::action::Executor`];
//! - [`audit`]: the JSON-lines audit log of every request;
//! - [`client`]: the remote executor the aggregator uses;
//! - [`config`] and [`cli`]: `selfheal heal-api [--config FILE]`.

pub mod audit;
pub mod cli;
pub mod client;
pub mod config;
pub mod keys;
pub mod kube;
pub mod server;
pub mod sign;
