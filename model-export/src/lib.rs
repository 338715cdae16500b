//! selfheal-model-export: from chaos experiments and the lake to a model the agents run.
//!
//! Label windows, dataset building, isolation-forest training, ONNX export, evaluation and
//! publishing. The feature code is `selfheal_core::features`, shared with the agent.

pub mod cli;
pub mod onnx;
