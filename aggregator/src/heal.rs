//! Heal executors (not written yet): how an action [`crate::policy`] allowed is carried out and
//! verified. It will own one executor interface and its implementations: dry-run (records what
//! it would do; the default), kube direct (the aggregator patches, scales or restarts through
//! the Kubernetes API itself, for a single-cluster install), and the remote heal API (the action
//! is sent to the heal API server running in the target cluster with the write RBAC, see
//! docs/ARCHITECTURE.md), each reporting the outcome back to the incident.
