//! selfheal-model-export: from chaos experiments and the lake to a model the agents run.
//!
//! Label windows, dataset building, isolation-forest training, ONNX export, evaluation and
//! publishing. The feature code is `selfheal_core::features`, shared with the agent.
//!
//! * [`dataset`] reads CSV / SMD series and NAB / SMD labels and computes features;
//! * [`lake`] reads the aggregator's Parquet lake as contiguous runs per subject;
//! * [`train`] grows the isolation forest;
//! * [`detect`] trains a whole detector (forest + threshold + k-of-n rule) and runs it;
//! * [`eval`] measures alarms against label windows;
//! * [`artifact`] writes and reads model directories, [`publish`] versions them into a store;
//! * [`quality`] runs the detection-quality benchmark protocols on NAB and SMD;
//! * [`cli`] is `selfheal model ...`.

pub mod artifact;
pub mod cli;
pub mod dataset;
pub mod detect;
pub mod eval;
pub mod lake;
pub mod onnx;
pub mod publish;
pub mod quality;
pub mod train;
