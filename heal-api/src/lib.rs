//! selfheal-heal-api: the hands of the loop.
//!
//! It owns carrying out a [`selfheal_core::action::ActionRequest`] on a cluster through the
//! `kube` crate (scale subresource, rollout-restart annotation, pod delete, HPA floor), exactly
//! once (the request id travels on the object): [`kube::KubeExecutor`]. It will also own the
//! HMAC-signed HTTPS server that runs it inside the target cluster with least-privilege RBAC
//! (`selfheal heal-api`). The aggregator uses the same action code for its kube-direct executor,
//! and the signing code for its remote executor. See docs/ARCHITECTURE.md for why this is a
//! crate of its own.

pub mod kube;
