//! selfheal-chaos: real faults on this machine, and the ground truth of when they ran.
//!
//! `selfheal chaos run cpu|memory|traffic|restart` lays a workload out as a pod would be on a
//! node (a cgroup `<parent>/kubepods/burstable/pod<uid>/app` in the v1 `cpu`, `cpuacct` and
//! `memory` hierarchies, or the v2 tree; a kubelet-format Pod JSON in the data directory's
//! `pods/`, which the agent's `dir` pod source reads), starts the fault inside it, and when it
//! ends (its duration, Ctrl-C or SIGTERM) kills every process and removes the cgroup and the
//! pod file. Each run's window (kind, target workload, node, start, end, run id) goes to the
//! lake's `labels/` partition ([`selfheal_lake::labels`]) and, if asked, to a label windows file
//! that `selfheal model train --labels` reads.
//!
//! Modules: [`cgroup`] (the pod's cgroups, their limits and removal), [`pod`] (the Pod JSON),
//! [`worker`] (the fault workloads, run as `selfheal chaos worker` inside the cgroup),
//! [`fault`] (one run: caps, start, the restart loop, the clean stop), [`schedule`] (a series
//! of runs with quiet gaps), [`label_file`] (the label windows file `model train --labels`
//! reads), and
//! [`cli`], the binary's edge. The data directory and the running local instance are
//! `selfheal_runtime::instance`'s, shared with `selfheal up`.
//!
//! Why a crate and not a module of the trainer: this code starts processes, creates cgroups and
//! handles signals on the machine it runs on, none of which the trainer does, and the scorecard
//! that comes next reads the incident store, which lives in the aggregator; the trainer's
//! dependency graph is kept free of the aggregator (`tests/dependencies.rs`).

pub mod cgroup;
pub mod cli;
pub mod fault;
pub mod label_file;
pub mod pod;
pub mod schedule;
pub mod worker;
