//! Score: run a family's isolation-forest model on feature vectors, on the node.
//!
//! Sits between `normalize` (which produces feature vectors with `selfheal_core::features`) and
//! `forward` (which ships anomalies). A model directory (`model.onnx` + `manifest.json`, written
//! by `selfheal_model_export::onnx::write_model_dir`, and `signature.json` when signed) is
//! loaded by [`Scorer::load_trusted`] (or [`Scorer::load`], trusting no key), which refuses it
//! unless, in this order: each file is within its size bound (read no further than it); with
//! model keys configured, `signature.json` verifies with one of them over the manifest and the
//! model's digest (`selfheal_core::signature`); the file's sha256, the feature schema version
//! and the alarm rule match; the graph is within its bounds ([`graph_bounds`], then the tree
//! ensembles' own as they are parsed); the input width matches; and every manifest field is
//! within `selfheal_core::model_bounds`. The caller then keeps its previous scorer. The graph
//! runs in tract with our fast tree-ensemble kernel registered ([`tree_ensemble`]), and
//! [`AlarmState`] applies the manifest's k-of-n rule to each series' scores.

pub mod alarm;
pub mod graph_bounds;
pub mod label_encoder;
pub mod tree_ensemble;

pub use alarm::{AlarmDecision, AlarmRuleError, AlarmState};

use graph_bounds::GraphBoundsError;
use selfheal_core::features::FEATURE_SCHEMA_VERSION;
use selfheal_core::model::{MANIFEST_FILE, MODEL_FILE, ModelManifest};
use selfheal_core::model_bounds::{
    self, BoundsError, MAX_GRAPH_ROW_VALUES, MAX_MANIFEST_BYTES, MAX_MODEL_BYTES,
    MAX_SIGNATURE_BYTES,
};
use selfheal_core::signature::{self, SIGNATURE_FILE, SignatureError, Signed, VerifyingKey};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// A boxed cause from tract (whose errors are `anyhow` values).
type TractCause = Box<dyn std::error::Error + Send + Sync>;

/// Why a model directory was refused or a batch could not be scored.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// A file of the model directory could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file of the model directory is larger than its bound (`model_bounds`): reading
    /// stopped one byte past it.
    #[error("{path} is larger than {max} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its bound.
        max: u64,
    },
    /// Model keys are configured and the directory has no `signature.json`.
    #[error("{path} is missing: model keys are configured, so unsigned models are refused")]
    Unsigned {
        /// Where the signature was looked for.
        path: PathBuf,
    },
    /// `signature.json` does not verify (another key, an edited manifest or model, a bad file).
    #[error("model signature refused")]
    Signature(#[source] SignatureError),
    /// A manifest field is outside its bounds.
    #[error("manifest out of bounds")]
    Bounds(#[source] BoundsError),
    /// The graph is outside its bounds (an operator, a sub-graph, a constant tensor).
    #[error("model.onnx out of bounds")]
    Graph(#[source] GraphBoundsError),
    /// `manifest.json` is not a valid manifest (truncated, not JSON, unknown or missing fields).
    #[error("{path} is not a valid model manifest")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// `model.onnx` does not hash to the manifest's `model_sha256`.
    #[error("model.onnx has sha256 {actual}, the manifest expects {expected}")]
    Checksum {
        /// `manifest.model_sha256`.
        expected: String,
        /// sha256 of the file read.
        actual: String,
    },
    /// The model was built with other feature definitions than this agent computes.
    #[error("model uses feature schema version {model}, this agent computes version {agent}")]
    FeatureSchema {
        /// `manifest.features.schema_version`.
        model: u32,
        /// [`FEATURE_SCHEMA_VERSION`].
        agent: u32,
    },
    /// The manifest's feature spec, its feature name list and the model input disagree on the
    /// number of features.
    #[error(
        "feature count mismatch: feature spec gives {spec}, feature_names lists {names}, \
         model input is {model} wide"
    )]
    FeatureCount {
        /// `manifest.features.len()`.
        spec: usize,
        /// `manifest.feature_names.len()`.
        names: usize,
        /// Width of the model's input, if the model declares it.
        model: String,
    },
    /// The manifest's alarm rule cannot be applied.
    #[error("manifest alarm rule")]
    AlarmRule(#[source] AlarmRuleError),
    /// `model.onnx` is not an ONNX model tract can run (corrupt protobuf, unknown operator,
    /// inconsistent tree ensemble, wrong output).
    #[error("model.onnx cannot be loaded")]
    Onnx(#[source] TractCause),
    /// A batch has another length than `n_rows × n_features`.
    #[error("{len} values is not {n_rows} rows of {n_features} features")]
    BatchShape {
        /// Values passed.
        len: usize,
        /// Rows claimed.
        n_rows: usize,
        /// Features per row the model takes.
        n_features: usize,
    },
    /// tract failed while running the model.
    #[error("running the model")]
    Run(#[source] TractCause),
}

fn onnx_error(e: TractError) -> ScoreError {
    ScoreError::Onnx(e.into())
}

impl ScoreError {
    /// A short, stable name for the kind of refusal: the `reason` label of the agent's
    /// refusal counter.
    pub fn reason(&self) -> &'static str {
        match self {
            ScoreError::Read { .. } => "read",
            ScoreError::TooLarge { .. } => "too_large",
            ScoreError::Unsigned { .. } => "unsigned",
            ScoreError::Signature(SignatureError::UnknownKey(_)) => "unknown_key",
            ScoreError::Signature(SignatureError::DigestMismatch { .. }) => "checksum",
            ScoreError::Signature(SignatureError::Manifest(_)) => "manifest",
            ScoreError::Signature(SignatureError::TooLarge { .. }) => "too_large",
            ScoreError::Signature(_) => "bad_signature",
            ScoreError::Bounds(_) => "bounds",
            ScoreError::Graph(_) => "graph_bounds",
            ScoreError::Manifest { .. } => "manifest",
            ScoreError::Checksum { .. } => "checksum",
            ScoreError::FeatureSchema { .. } => "feature_schema",
            ScoreError::FeatureCount { .. } => "feature_count",
            ScoreError::AlarmRule(_) => "alarm_rule",
            ScoreError::Onnx(_) => "onnx",
            ScoreError::BatchShape { .. } | ScoreError::Run(_) => "run",
        }
    }
}

/// Reads `dir/name`, no further than `max` bytes plus one: a larger file is refused without
/// being read whole. `None` when the file does not exist and `optional`.
fn read_bounded(
    dir: &Path,
    name: &str,
    max: u64,
    optional: bool,
) -> Result<Option<Vec<u8>>, ScoreError> {
    let path = dir.join(name);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ScoreError::Read { path, source }),
    };
    let mut bytes = Vec::new();
    if let Err(source) = file.take(max + 1).read_to_end(&mut bytes) {
        return Err(ScoreError::Read { path, source });
    }
    if bytes.len() as u64 > max {
        return Err(ScoreError::TooLarge { path, max });
    }
    Ok(Some(bytes))
}

fn read_required(dir: &Path, name: &str, max: u64) -> Result<Vec<u8>, ScoreError> {
    read_bounded(dir, name, max, false)?.ok_or_else(|| ScoreError::Read {
        path: dir.join(name),
        source: std::io::ErrorKind::NotFound.into(),
    })
}

/// A loaded, checked model, ready to score. Shareable between threads (`&self` methods).
#[derive(Debug)]
pub struct Scorer {
    manifest: ModelManifest,
    n_features: usize,
    /// The graph for batches of any size, one row included. One plan, not a second one fixed
    /// at one row: a second optimization of the graph cost as much memory and load time again
    /// for a gain of about a microsecond per lone row, and the agent scores a family's series
    /// in one batch per cycle.
    batch: PlanWithState,
}

/// A runnable plan and one run state kept between calls: spawning a state allocates per node,
/// which would dominate a single-row score. A caller that finds the state busy (another thread
/// scoring) spawns its own.
#[derive(Debug)]
struct PlanWithState {
    plan: Arc<TypedRunnableModel>,
    idle: Mutex<Option<TypedSimpleState>>,
}

impl PlanWithState {
    fn new(plan: Arc<TypedRunnableModel>) -> Self {
        PlanWithState {
            plan,
            idle: Mutex::new(None),
        }
    }

    /// Runs the plan on `input` and returns its first output as a vector.
    fn run(&self, input: Tensor) -> Result<Vec<f32>, ScoreError> {
        let run_error = |e: TractError| ScoreError::Run(e.into());
        // A poisoned lock only means a panic elsewhere while it was held: just spawn a state.
        let cached = self.idle.try_lock().ok().and_then(|mut idle| idle.take());
        let mut state = match cached {
            Some(state) => state,
            None => self.plan.spawn().map_err(run_error)?,
        };
        let outputs = state.run(tvec!(input.into_tvalue())).map_err(run_error)?;
        if let Ok(mut idle) = self.idle.try_lock() {
            *idle = Some(state);
        }
        let scores = outputs
            .first()
            .ok_or_else(|| ScoreError::Run("model returned no output".into()))?
            .try_as_plain_ram()
            .and_then(|v| v.as_slice::<f32>().map(<[f32]>::to_vec))
            .map_err(run_error)?;
        Ok(scores)
    }
}

impl Clone for Scorer {
    fn clone(&self) -> Self {
        Scorer {
            manifest: self.manifest.clone(),
            n_features: self.n_features,
            batch: PlanWithState::new(self.batch.plan.clone()),
        }
    }
}

impl Scorer {
    /// Loads and checks the model directory `dir` trusting no key: `signature.json` is not
    /// read (see [`Scorer::load_trusted`]).
    pub fn load(dir: &Path) -> Result<Scorer, ScoreError> {
        Scorer::load_trusted(dir, &[]).map(|(scorer, _)| scorer)
    }

    /// Loads and checks the model directory `dir` (see the module docs and
    /// [`Scorer::from_parts`]). With `keys`, the model must be signed by one of them, and the
    /// manifest used is the one parsed from the very bytes verified; the signature's facts come
    /// back to order the next model (`selfheal_core::signature::check_succession`). Without
    /// keys nothing is verified and `None` comes back.
    pub fn load_trusted(
        dir: &Path,
        keys: &[VerifyingKey],
    ) -> Result<(Scorer, Option<Signed>), ScoreError> {
        let manifest_bytes = read_required(dir, MANIFEST_FILE, MAX_MANIFEST_BYTES)?;
        let parse = |bytes: &[u8]| {
            serde_json::from_slice::<ModelManifest>(bytes).map_err(|source| ScoreError::Manifest {
                path: dir.join(MANIFEST_FILE),
                source,
            })
        };
        if keys.is_empty() {
            let manifest = parse(&manifest_bytes)?;
            let model = read_required(dir, MODEL_FILE, MAX_MODEL_BYTES)?;
            return Ok((Scorer::from_parts(manifest, &model)?, None));
        }
        let model = read_required(dir, MODEL_FILE, MAX_MODEL_BYTES)?;
        let Some(sig) = read_bounded(dir, SIGNATURE_FILE, MAX_SIGNATURE_BYTES, true)? else {
            return Err(ScoreError::Unsigned {
                path: dir.join(SIGNATURE_FILE),
            });
        };
        let digest: [u8; 32] = Sha256::digest(&model).into();
        let verified = signature::verify(keys, &sig, &manifest_bytes, &digest)
            .map_err(ScoreError::Signature)?;
        let scorer = Scorer::from_parts(verified.manifest, &model)?;
        Ok((scorer, Some(verified.signed)))
    }

    /// Checks `model` (the bytes of `model.onnx`) against `manifest` and prepares it to run.
    ///
    /// Refused, in this order: a checksum that differs from `manifest.model_sha256`, a feature
    /// schema version other than [`FEATURE_SCHEMA_VERSION`], an invalid alarm rule, a graph
    /// outside its bounds ([`graph_bounds`], the tree ensembles' limits), bytes that are not a
    /// runnable ONNX model, a feature count on which the feature spec, the feature name list and
    /// the model's input width do not all agree, and a manifest field outside
    /// `selfheal_core::model_bounds`.
    pub fn from_parts(manifest: ModelManifest, model: &[u8]) -> Result<Scorer, ScoreError> {
        let actual = sha256_hex(model);
        if !actual.eq_ignore_ascii_case(&manifest.model_sha256) {
            return Err(ScoreError::Checksum {
                expected: manifest.model_sha256.clone(),
                actual,
            });
        }
        if manifest.features.schema_version != FEATURE_SCHEMA_VERSION {
            return Err(ScoreError::FeatureSchema {
                model: manifest.features.schema_version,
                agent: FEATURE_SCHEMA_VERSION,
            });
        }
        alarm::validate_rule(
            manifest.alarm,
            manifest.ordinary_score,
            manifest.spike_threshold,
        )
        .map_err(ScoreError::AlarmRule)?;
        let spec = manifest.features.len();
        let names = manifest.feature_names.len();
        let mismatch = |model: String| ScoreError::FeatureCount { spec, names, model };

        let onnx = tree_ensemble::onnx();
        let proto = onnx
            .proto_model_for_read(&mut &model[..])
            .map_err(onnx_error)?;
        graph_bounds::check_graph(&proto).map_err(ScoreError::Graph)?;
        let mut inference = onnx.model_for_proto_model(&proto).map_err(onnx_error)?;
        drop(proto);
        let n_inputs = inference.input_outlets().map_err(onnx_error)?.len();
        if n_inputs != 1 {
            return Err(ScoreError::Onnx(
                format!("expected one input (the features), the model has {n_inputs}").into(),
            ));
        }
        let declared = inference
            .input_fact(0)
            .map_err(onnx_error)?
            .shape
            .dims()
            .nth(1)
            .and_then(|d| d.concretize())
            .and_then(|d| d.to_i64().ok())
            .and_then(|w| usize::try_from(w).ok());
        if spec != names || declared.is_some_and(|w| w != spec) {
            return Err(mismatch(
                declared.map_or("undeclared".into(), |w| w.to_string()),
            ));
        }
        // After the checks above, whose errors existing callers match on; nothing so far was
        // sized by a manifest field (the feature extractors that windows size come later).
        model_bounds::check_manifest(&manifest).map_err(ScoreError::Bounds)?;
        let batch = inference.symbols.sym("N");
        inference
            .set_input_fact(0, f32::fact([batch.to_dim(), spec.to_dim()]).into())
            .map_err(onnx_error)?;
        let typed = inference.into_optimized().map_err(onnx_error)?;
        check_row_values(&typed, &batch)?;
        let outputs = typed.output_outlets().map_err(onnx_error)?;
        let [output] = outputs else {
            return Err(ScoreError::Onnx(
                format!(
                    "expected one output (the score), the model has {}",
                    outputs.len()
                )
                .into(),
            ));
        };
        let out = typed.outlet_fact(*output).map_err(onnx_error)?;
        if out.datum_type != f32::datum_type() || out.rank() != 2 || out.shape[1] != 1.to_dim() {
            return Err(ScoreError::Onnx(
                format!("expected one f32 [N, 1] score output, got {out:?}").into(),
            ));
        }
        let batch = typed.into_runnable().map_err(onnx_error)?;
        Ok(Scorer {
            manifest,
            n_features: spec,
            batch: PlanWithState::new(batch),
        })
    }

    /// The manifest the model was loaded with.
    pub fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    /// Features per row.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Scores `n_rows` rows laid out row-major in `rows`: one score per row, in (0, 1], higher is
    /// more anomalous (compare with `manifest().threshold`).
    pub fn score_batch(&self, rows: &[f32], n_rows: usize) -> Result<Vec<f32>, ScoreError> {
        if n_rows.checked_mul(self.n_features) != Some(rows.len()) {
            return Err(ScoreError::BatchShape {
                len: rows.len(),
                n_rows,
                n_features: self.n_features,
            });
        }
        let input = Tensor::from_shape(&[n_rows, self.n_features], rows)
            .map_err(|e| ScoreError::Run(e.into()))?;
        self.batch.run(input)
    }

    /// Scores one feature vector (a batch of one row).
    pub fn score_one(&self, row: &[f32]) -> Result<f32, ScoreError> {
        if row.len() != self.n_features {
            return Err(ScoreError::BatchShape {
                len: row.len(),
                n_rows: 1,
                n_features: self.n_features,
            });
        }
        let input = Tensor::from_shape(&[1, self.n_features], row)
            .map_err(|e| ScoreError::Run(e.into()))?;
        let scores = self.batch.run(input)?;
        scores
            .first()
            .copied()
            .ok_or_else(|| ScoreError::Run("model returned no score".into()))
    }

    /// A fresh k-of-n alarm state for one series, with this model's rule and threshold.
    pub fn alarm_state(&self) -> AlarmState {
        match AlarmState::new(
            self.manifest.alarm,
            self.manifest.threshold,
            self.manifest.ordinary_score,
            self.manifest.spike_threshold,
        ) {
            Ok(state) => state,
            // `from_parts` validated the rule; a failure here is a broken invariant.
            Err(e) => unreachable!("alarm rule validated at load: {e}"),
        }
    }
}

/// Refuses a plan any of whose values holds more than [`MAX_GRAPH_ROW_VALUES`] elements per
/// input row (its shape at a batch of one): each is allocated once per batch, so a constant
/// broadcast or a `Gather` of millions of columns would cost gigabytes on a batch of a few
/// hundred series. The trainer's widest value is the range guard's, one per feature.
fn check_row_values(typed: &TypedModel, batch: &Symbol) -> Result<(), ScoreError> {
    let one_row = SymbolValues::default().with(batch, 1);
    for node in typed.nodes() {
        for outlet in &node.outputs {
            let mut per_row: usize = 1;
            for dim in outlet.fact.shape.iter() {
                let d = dim
                    .eval(&one_row)
                    .to_i64()
                    .ok()
                    .and_then(|d| usize::try_from(d).ok())
                    .and_then(|d| per_row.checked_mul(d));
                per_row = match d {
                    Some(n) if n <= MAX_GRAPH_ROW_VALUES => n,
                    _ => {
                        return Err(ScoreError::Graph(GraphBoundsError(format!(
                            "{} ({}) computes a value of shape {:?}: more than \
                             {MAX_GRAPH_ROW_VALUES} elements per input row",
                            node.name, node.op, outlet.fact.shape
                        ))));
                    }
                };
            }
        }
    }
    Ok(())
}

/// Lower-case hex sha256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// The agent scores from several tasks: a Scorer must stay shareable between threads.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<Scorer>();
};
