//! End-to-end tests of selfheal: the binary and its libraries against real procfs, real cgroups,
//! recorded fixture trees, and real peers (moto, kubectl, onnxruntime) started by the tests
//! themselves.

mod support;

mod agent_cgroup_real;
mod agent_cli;
mod agent_collect;
mod agent_forward;
mod chaos;
mod dependencies;
mod detect;
mod forward;
mod heal;
mod heal_api;
mod heal_api_bin;
mod heal_kube;
mod heal_store;
mod incidents;
mod incidents_page;
mod incidents_store;
mod ingest;
mod ingest_agent;
mod ingest_auth;
mod kube_double;
mod lake;
mod manifests;
mod model;
mod model_lake_labels;
mod model_push;
mod model_signing;
mod notify;
mod pipeline;
mod pods;
mod score;
mod sklearn_onnx;
mod terraform;
mod up;
