//! Detect: the loop's "score" stage, between `normalize` and the output.
//!
//! [`ModelRegistry`] watches a models directory laid out as `selfheal model publish` writes it —
//! `<dir>/<family>/latest` naming a version, the model in `<dir>/<family>/<version>/` — or with
//! `model.onnx` + `manifest.json` directly in `<dir>/<family>/` (a mounted ConfigMap). An S3
//! store is read through the same code: [`crate::models::mirror`] keeps a local copy of it in the
//! publish layout and the registry watches that copy. A Kubernetes volume (ConfigMap, Secret,
//! projected) is updated by the kubelet by writing a new hidden timestamped directory and
//! swapping the `..data` symlink to it; the visible files are symlinks through `..data`. The
//! registry resolves `..data` once per poll (at the mount root and in each family directory)
//! and reads both files from that one resolved directory, so a swap between reading
//! `model.onnx` and `manifest.json` cannot pair files of two updates. It loads a
//! changed model with [`Scorer::load_trusted`] and refuses (logs, counts, keeps the previous one) any model
//! that does not load or names a signal that is not one of its family's metrics (a model may
//! take any subset of them, in any order: rows are read by metric name). Loading does file I/O and
//! compiles the graph, so the loop runs [`ModelRegistry::poll`] off the hot path and hands the
//! results to the [`SeriesDetector`] between cycles: a cycle sees the old model or the new one, never a
//! mix.
//!
//! With model keys configured ([`ModelRegistry::with_keys`], from `models.public_keys`), a model
//! must carry a `signature.json` by one of them and succeed the loaded one
//! (`selfheal_core::signature::check_succession`: no replayed older signature, no older version
//! unless signed as a rollback); without keys, each load is logged as unverified. Every refusal
//! carries a [`DetectError::reason`], the label of the poller's refusal counter.
//!
//! [`SeriesDetector`] keeps, per (subject, family) series, a [`FeatureExtractor`], an [`AlarmState`] and
//! a ring of the last raw records (the flight recorder, kept as columns, see `ring.rs`). Each cycle it scores every series of a
//! family in one batch and turns k-of-n alarms into [`Anomaly`] values. A series stays anomalous
//! while `k` alarms remain in its window, and each such cycle's anomaly copies the whole ring:
//! `benches/detect.rs` measures a quiet 200-pod cycle at ~0.9 ms and one where every pod is
//! anomalous at ~13 ms, almost all of it those copies.

mod ring;
mod stage;
pub use stage::DetectStage;

use ring::FlightRing;

use crate::score::{AlarmState, ScoreError, Scorer};
use selfheal_core::family::{Family, Metric};
use selfheal_core::features::{FeatureExtractor, FeatureSpec};
use selfheal_core::model::{AlarmRule, MANIFEST_FILE, MODEL_FILE, SignalError, family_metrics};
use selfheal_core::schema::{Anomaly, Record, Subject};
use selfheal_core::signature::{
    SIGNATURE_FILE, Signed, SuccessionError, VerifyingKey, check_succession,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

pub use selfheal_core::store::LATEST_FILE;
use selfheal_core::store::{S3Store, S3UrlError, is_plain_name};

/// The kubelet's symlink, in an atomically updated volume, to the current timestamped directory.
pub const KUBELET_DATA_LINK: &str = "..data";
/// Features reported in [`Anomaly::top_features`].
pub const TOP_FEATURES: usize = 3;

/// Where the agent finds its models (`[models]` in the agent config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Where models come from: a directory (a store `selfheal model publish` writes, or a mounted
    /// ConfigMap with one sub-directory per family) or `s3://bucket/prefix`. Unset disables
    /// scoring.
    pub source: Option<String>,
    /// Local directory an S3 source is mirrored into (created if missing); unused otherwise.
    pub cache_dir: PathBuf,
    /// AWS region of an S3 source; defaults to the standard chain (`AWS_REGION`, profile, IMDS).
    pub region: Option<String>,
    /// Endpoint of an S3 source (MinIO, a VPC endpoint, moto); `AWS_ENDPOINT_URL` works too.
    /// With an endpoint set, requests use path-style addressing.
    pub endpoint_url: Option<String>,
    /// Seconds between checks of the source for a new version.
    pub poll_secs: f64,
    /// Raw records kept per series and attached to an anomaly (the flight recorder).
    pub window_records: usize,
    /// Ed25519 public keys models must be signed by, inline: 64 hex digits or 44 characters of
    /// base64 each (`selfheal model keygen` writes them). With any key here or in
    /// `public_key_files`, an unsigned or badly signed model is refused; with none, models
    /// load unverified and each load logs a warning.
    pub public_keys: Vec<String>,
    /// Files holding one public key each (same forms), e.g. a mounted Secret. Never inside the
    /// models source or cache: a key must not come from where the models come from.
    pub public_key_files: Vec<PathBuf>,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            source: None,
            cache_dir: PathBuf::from("/var/lib/selfheal/models"),
            region: None,
            endpoint_url: None,
            poll_secs: 30.0,
            window_records: 60,
            public_keys: Vec::new(),
            public_key_files: Vec::new(),
        }
    }
}

impl ModelsConfig {
    /// The parsed `source`, `None` when scoring is off.
    pub fn parsed_source(&self) -> Result<Option<ModelSource>, S3UrlError> {
        let Some(source) = &self.source else {
            return Ok(None);
        };
        Ok(Some(match S3Store::parse(source)? {
            Some(store) => ModelSource::S3(store),
            None => ModelSource::Dir(PathBuf::from(source)),
        }))
    }
}

/// Where models come from, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A local directory: a published store, or a mounted ConfigMap.
    Dir(PathBuf),
    /// An S3 store, mirrored into `models.cache_dir`.
    S3(S3Store),
}

/// Why a family's model was refused or could not score.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The `latest` file could not be read or names no usable version.
    #[error("reading {path}")]
    Latest {
        /// The `latest` file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The model directory was refused by [`Scorer::load`].
    #[error("loading the model in {dir}")]
    Load {
        /// The model directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: ScoreError,
    },
    /// The manifest names a signal that is not a metric of the family, or one twice.
    #[error("model signals {model:?} cannot be read from {family} records")]
    Signals {
        /// The family.
        family: Family,
        /// `manifest.features.signals`.
        model: Vec<String>,
        /// Which signal, and why.
        #[source]
        source: SignalError,
    },
    /// The model verified but may not replace the loaded one: an older signature (a replay)
    /// or an older version not signed as a rollback.
    #[error("model {version:?} may not replace the loaded model")]
    Succession {
        /// The refused version.
        version: String,
        /// Why.
        #[source]
        source: SuccessionError,
    },
    /// Loading the model panicked (inside the ONNX runtime): refused, the previous model stays.
    #[error("loading the model in {dir} panicked: {message}")]
    Panicked {
        /// The model directory.
        dir: PathBuf,
        /// The panic's message.
        message: String,
    },
    /// Scoring a cycle's batch failed; the family's records pass through unscored.
    #[error("scoring {family}")]
    Score {
        /// The family.
        family: Family,
        /// The cause.
        #[source]
        source: ScoreError,
    },
}

impl DetectError {
    /// A short, stable name for the kind of refusal: the `reason` label of
    /// `selfheal_agent_model_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            DetectError::Latest { .. } => "latest",
            DetectError::Load { source, .. } => source.reason(),
            DetectError::Signals { .. } => "signals",
            DetectError::Succession {
                source: SuccessionError::Stale { .. },
                ..
            } => "stale_signature",
            DetectError::Succession {
                source: SuccessionError::UnsignedRollback { .. },
                ..
            } => "unsigned_rollback",
            DetectError::Panicked { .. } => "panic",
            DetectError::Score { .. } => "score",
        }
    }
}

/// The message of a caught panic, when it is a string.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// What a poll found for one family.
#[derive(Debug)]
pub enum ModelEvent {
    /// A new model was loaded; the detector should use it from the next cycle.
    Loaded {
        /// The family.
        family: Family,
        /// The model.
        scorer: Arc<Scorer>,
    },
    /// A changed model directory was refused; the previous model stays.
    Refused {
        /// The family.
        family: Family,
        /// The version `latest` named, if any.
        version: Option<String>,
        /// Why.
        error: DetectError,
    },
}

/// What identifies one state of a family's model files: a change means "load again".
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    dir: PathBuf,
    files: [(Option<SystemTime>, u64); 3],
}

fn fingerprint(dir: &Path) -> Fingerprint {
    let stat = |name: &str| {
        std::fs::metadata(dir.join(name))
            .map(|m| (m.modified().ok(), m.len()))
            .unwrap_or((None, 0))
    };
    Fingerprint {
        dir: dir.to_owned(),
        files: [stat(MODEL_FILE), stat(MANIFEST_FILE), stat(SIGNATURE_FILE)],
    }
}

/// The names of a family's metrics, in schema order: a model for the family may take any of
/// them, in any order (see [`model_metrics`]).
pub fn family_signals(family: Family) -> Vec<String> {
    family.metrics().map(|m| m.as_str().to_owned()).collect()
}

/// The family metric each of a model's `signals` names, in the model's order (see
/// [`family_metrics`]): a model trained on any subset of a family's metrics, in any column
/// order, reads each row by metric name.
pub fn model_metrics(family: Family, signals: &[String]) -> Result<Vec<Metric>, DetectError> {
    family_metrics(family, signals).map_err(|source| DetectError::Signals {
        family,
        model: signals.to_vec(),
        source,
    })
}

/// Watches the models directory; see the module docs.
#[derive(Debug)]
pub struct ModelRegistry {
    root: PathBuf,
    /// The fingerprint last tried per family, loaded or refused: a refused model is not retried
    /// until its files change.
    tried: HashMap<Family, Fingerprint>,
    /// Keys a model must be signed by; empty: models load unverified, with a warning.
    keys: Arc<[VerifyingKey]>,
    /// The signature of each family's loaded model: what the next one must succeed.
    signed: HashMap<Family, Signed>,
    /// Where `signed` is kept across restarts ([`ModelRegistry::with_state`]).
    state: Option<PathBuf>,
}

/// One family's entry in the registry's state file: the [`Signed`] facts of its loaded model.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedState {
    key_id: String,
    serial: u64,
    signed_at_ms: u64,
    rollback: bool,
    signature: Vec<u8>,
}

/// Largest state file read: five families' entries are a few hundred bytes.
const MAX_STATE_BYTES: u64 = 64 * 1024;

fn read_state(path: &Path) -> Result<HashMap<Family, Signed>, String> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e.to_string()),
    };
    let mut bytes = Vec::new();
    file.take(MAX_STATE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    let entries: HashMap<Family, SignedState> =
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    entries
        .into_iter()
        .map(|(family, e)| {
            let signature: [u8; 64] = e
                .signature
                .try_into()
                .map_err(|_| format!("{family}: the signature is not 64 bytes"))?;
            let statement = selfheal_core::signature::Statement {
                serial: e.serial,
                signed_at_ms: e.signed_at_ms,
                rollback: e.rollback,
            };
            Ok((
                family,
                Signed {
                    key_id: e.key_id,
                    statement,
                    signature,
                },
            ))
        })
        .collect()
}

impl ModelRegistry {
    /// A registry over `root` trusting no key; nothing is loaded until [`ModelRegistry::poll`].
    pub fn new(root: PathBuf) -> Self {
        ModelRegistry::with_keys(root, Arc::from(Vec::new()))
    }

    /// A registry over `root` that loads only models signed by one of `keys` (none: any
    /// model, each load warned about), in succession ([`check_succession`]).
    pub fn with_keys(root: PathBuf, keys: Arc<[VerifyingKey]>) -> Self {
        ModelRegistry {
            root,
            tried: HashMap::new(),
            keys,
            signed: HashMap::new(),
            state: None,
        }
    }

    /// This registry keeping the signatures of its loaded models in `path` (read now,
    /// rewritten after each signed load), so that a restarted agent still refuses a replay of
    /// a model signed before the one it ran. An unreadable file is logged and ignored: the
    /// agent then accepts any validly signed first model, as without a state file.
    pub fn with_state(mut self, path: PathBuf) -> Self {
        match read_state(&path) {
            Ok(signed) => self.signed = signed,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "ModelStateUnreadable");
            }
        }
        self.state = Some(path);
        self
    }

    /// Writes `signed` to the state file, by a rename so a crash leaves the old or the new.
    fn save_state(&self) {
        let Some(path) = &self.state else {
            return;
        };
        let entries: HashMap<Family, SignedState> = self
            .signed
            .iter()
            .map(|(family, s)| {
                (
                    *family,
                    SignedState {
                        key_id: s.key_id.clone(),
                        serial: s.statement.serial,
                        signed_at_ms: s.statement.signed_at_ms,
                        rollback: s.statement.rollback,
                        signature: s.signature.to_vec(),
                    },
                )
            })
            .collect();
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_vec(&entries)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(error) = written {
            tracing::warn!(path = %path.display(), %error, "ModelStateWriteFailed");
        }
    }

    /// Checks every family and loads what changed. Blocking (file reads, graph compilation):
    /// call it from `spawn_blocking` or between cycles. Each refusal is logged once here.
    pub fn poll(&mut self) -> Vec<ModelEvent> {
        let mut events = Vec::new();
        let root = resolve_data_link(&self.root);
        for family in Family::ALL {
            let family_dir = resolve_data_link(&root.join(family.as_str()));
            let latest = family_dir.join(LATEST_FILE);
            let (dir, version) = if latest.is_file() {
                match std::fs::read_to_string(&latest) {
                    Ok(v) if is_plain_name(v.trim()) => {
                        (family_dir.join(v.trim()), Some(v.trim().to_owned()))
                    }
                    Ok(v) => {
                        let source = std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("{:?} is not a version name", v.trim()),
                        );
                        self.refuse(&mut events, family, None, latest, source);
                        continue;
                    }
                    Err(source) => {
                        self.refuse(&mut events, family, None, latest, source);
                        continue;
                    }
                }
            } else if family_dir.join(MANIFEST_FILE).is_file() {
                (family_dir, None)
            } else {
                continue;
            };
            let print = fingerprint(&dir);
            if self.tried.get(&family) == Some(&print) {
                continue;
            }
            self.tried.insert(family, print);
            // A panic in the ONNX runtime on a hostile graph must not take the poller down and
            // come back every poll: it is a refusal like any other, remembered until the files
            // change.
            let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                load_trusted_for(family, &dir, &self.keys)
            }));
            let loaded = attempt
                .unwrap_or_else(|payload| {
                    Err(DetectError::Panicked {
                        dir: dir.clone(),
                        message: panic_message(payload.as_ref()),
                    })
                })
                .and_then(|(scorer, signed)| {
                let Some(signed) = signed else {
                    tracing::warn!(%family, version = %scorer.manifest().version, dir = %dir.display(), "ModelUnverified: no model public key is configured (models.public_keys), so this model's signature was not checked");
                    return Ok(scorer);
                };
                check_succession(self.signed.get(&family), &signed).map_err(|source| {
                    DetectError::Succession {
                        version: scorer.manifest().version.clone(),
                        source,
                    }
                })?;
                tracing::info!(%family, version = %scorer.manifest().version, key_id = %signed.key_id, serial = signed.statement.serial, signed_at_ms = signed.statement.signed_at_ms, rollback = signed.statement.rollback, "ModelSignatureVerified");
                self.signed.insert(family, signed);
                self.save_state();
                Ok(scorer)
            });
            let event = match loaded {
                Ok(scorer) => {
                    tracing::info!(%family, version = %scorer.manifest().version, dir = %dir.display(), "ModelLoaded");
                    ModelEvent::Loaded {
                        family,
                        scorer: Arc::new(scorer),
                    }
                }
                Err(error) => {
                    log_refused(family, version.as_deref(), &error);
                    ModelEvent::Refused {
                        family,
                        version,
                        error,
                    }
                }
            };
            events.push(event);
        }
        events
    }

    fn refuse(
        &mut self,
        events: &mut Vec<ModelEvent>,
        family: Family,
        version: Option<String>,
        path: PathBuf,
        source: std::io::Error,
    ) {
        // Remember the bad `latest` so it is reported once, not every poll.
        let print = fingerprint(&path);
        if self.tried.get(&family) == Some(&print) {
            return;
        }
        self.tried.insert(family, print);
        let error = DetectError::Latest { path, source };
        log_refused(family, version.as_deref(), &error);
        events.push(ModelEvent::Refused {
            family,
            version,
            error,
        });
    }
}

/// `dir/..data` resolved when `dir` is a kubelet-managed volume (the timestamped directory of
/// the current update), else `dir` itself.
fn resolve_data_link(dir: &Path) -> PathBuf {
    let link = dir.join(KUBELET_DATA_LINK);
    match std::fs::canonicalize(&link) {
        Ok(target) if target.is_dir() => target,
        _ => dir.to_owned(),
    }
}

fn log_refused(family: Family, version: Option<&str>, error: &DetectError) {
    let chain = selfheal_runtime::chain::ErrorChain::causes(error).to_string();
    tracing::warn!(%family, version = version.unwrap_or("-"), reason = error.reason(), error = %error, cause = %chain, "ModelRefused");
}

/// Loads `dir` and checks it is a model for `family` (no key: nothing verified).
pub fn load_for(family: Family, dir: &Path) -> Result<Scorer, DetectError> {
    load_trusted_for(family, dir, &[]).map(|(scorer, _)| scorer)
}

/// Loads `dir` with [`Scorer::load_trusted`] and checks it is a model for `family`.
pub fn load_trusted_for(
    family: Family,
    dir: &Path,
    keys: &[VerifyingKey],
) -> Result<(Scorer, Option<Signed>), DetectError> {
    let (scorer, signed) = Scorer::load_trusted(dir, keys).map_err(|source| DetectError::Load {
        dir: dir.to_owned(),
        source,
    })?;
    model_metrics(family, &scorer.manifest().features.signals)?;
    Ok((scorer, signed))
}

/// A family's model and the metric each of its signals reads.
#[derive(Debug)]
struct FamilyModel {
    scorer: Arc<Scorer>,
    metrics: Vec<Metric>,
}

/// One (subject, family) series' state.
#[derive(Debug)]
struct Series {
    extractor: FeatureExtractor,
    alarm: AlarmState,
    /// What the alarm state was made from: rule, threshold, ordinary and spike scores (bits).
    alarm_key: (AlarmRule, u64, Option<u64>, Option<u64>),
    ring: FlightRing,
}

/// What one cycle of detection produced.
#[derive(Debug, Default)]
pub struct Detection {
    /// Anomalies raised this cycle.
    pub anomalies: Vec<Anomaly>,
    /// Series scored, per family.
    pub scored: Vec<(Family, usize)>,
    /// Families whose batch could not be scored (already logged).
    pub errors: Vec<DetectError>,
}

/// Scores each cycle's records; see the module docs.
#[derive(Debug)]
pub struct SeriesDetector {
    models: HashMap<Family, FamilyModel>,
    series: HashMap<(Subject, Family), Series>,
    window_records: usize,
}

impl SeriesDetector {
    /// A detector with no model, keeping `window_records` raw records per series.
    pub fn new(window_records: usize) -> Self {
        SeriesDetector {
            models: HashMap::new(),
            series: HashMap::new(),
            window_records,
        }
    }

    /// Uses `scorer` for `family` from the next cycle on, unless one of its signals is not a
    /// metric of the family (then the previous model stays).
    pub fn set_model(&mut self, family: Family, scorer: Arc<Scorer>) -> Result<(), DetectError> {
        let metrics = model_metrics(family, &scorer.manifest().features.signals)?;
        self.models.insert(family, FamilyModel { scorer, metrics });
        Ok(())
    }

    /// Applies a poll's events: loaded models replace the old ones, refusals change nothing.
    pub fn apply(&mut self, events: &[ModelEvent]) {
        for e in events {
            if let ModelEvent::Loaded { family, scorer } = e {
                // The registry loaded it with `load_for`, which checked the signals already.
                if let Err(error) = self.set_model(*family, scorer.clone()) {
                    log_refused(*family, Some(&scorer.manifest().version), &error);
                }
            }
        }
    }

    /// The model in use for `family`.
    pub fn model(&self, family: Family) -> Option<&Arc<Scorer>> {
        self.models.get(&family).map(|m| &m.scorer)
    }

    /// Series with state held.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Scores one cycle's records. Records of families without a model are ignored (they pass
    /// through the loop unchanged); series absent from this cycle are forgotten.
    pub fn detect(&mut self, records: &[Record]) -> Detection {
        let mut out = Detection::default();
        let mut seen: std::collections::HashSet<(Subject, Family)> = Default::default();
        for family in Family::ALL {
            let Some(FamilyModel { scorer, metrics }) = self.models.get(&family) else {
                continue;
            };
            let scorer = scorer.clone();
            let manifest = scorer.manifest();
            let spec = &manifest.features;
            let alarm_key = (
                manifest.alarm,
                manifest.threshold.to_bits(),
                manifest.ordinary_score.map(f64::to_bits),
                manifest.spike_threshold.map(f64::to_bits),
            );
            let batch: Vec<&Record> = records.iter().filter(|r| r.family == family).collect();
            if batch.is_empty() {
                continue;
            }
            let mut rows = Vec::with_capacity(batch.len() * spec.len());
            let mut features: Vec<Vec<f64>> = Vec::with_capacity(batch.len());
            // Whether each row's features came from full windows: the model was trained only on
            // such rows, so a series' first `spec.warmup()` samples (a new pod, or one back after
            // a gap) are scored but neither alarm nor feed the alarm state.
            let mut warm: Vec<bool> = Vec::with_capacity(batch.len());
            let mut signals = Vec::with_capacity(spec.signals.len());
            for r in &batch {
                let key = (r.subject.clone(), family);
                seen.insert(key.clone());
                let series = self.series.entry(key).or_insert_with(|| Series {
                    extractor: FeatureExtractor::new(spec.clone()),
                    alarm: scorer.alarm_state(),
                    alarm_key,
                    ring: FlightRing::new(family, self.window_records),
                });
                if series.extractor.spec() != spec {
                    series.extractor = FeatureExtractor::new(spec.clone());
                }
                if series.alarm_key != alarm_key {
                    series.alarm = scorer.alarm_state();
                    series.alarm_key = alarm_key;
                }
                series.ring.push(r);
                signals.clear();
                // The model's signals by name, in its order; a metric the record lacks is NaN:
                // the extractor imputes it.
                signals.extend(
                    metrics
                        .iter()
                        .map(|m| r.values.get(m).copied().unwrap_or(f64::NAN)),
                );
                let f = match series.extractor.push(&signals) {
                    Ok(f) => f,
                    // `set_model` resolved one metric per signal of the model's spec, and the
                    // extractor follows that spec, so the lengths always match.
                    Err(e) => unreachable!("signals checked at load: {e}"),
                };
                rows.extend(f.iter().map(|&x| x as f32));
                features.push(f);
                warm.push(series.extractor.warmed_up());
            }
            let scores = match scorer.score_batch(&rows, batch.len()) {
                Ok(s) => s,
                Err(source) => {
                    tracing::warn!(%family, error = %source, "ScoreFailed");
                    out.errors.push(DetectError::Score { family, source });
                    continue;
                }
            };
            out.scored.push((family, batch.len()));
            let names = &manifest.feature_names;
            for (((r, f), score), warm) in batch.into_iter().zip(features).zip(scores).zip(warm) {
                if !warm {
                    continue;
                }
                let Some(series) = self.series.get_mut(&(r.subject.clone(), family)) else {
                    continue;
                };
                let decision = series.alarm.push(score);
                if decision.anomalous {
                    out.anomalies.push(Anomaly {
                        record: r.clone(),
                        // The score that decided and the threshold it was compared with (the
                        // model's, or its spike threshold; raised when the series has moved
                        // to a new normal).
                        score: decision.compared_score,
                        threshold: decision.threshold,
                        model_version: manifest.version.clone(),
                        top_features: top_features(spec, names, &f),
                        features: f,
                        window: series.ring.records(&r.node, &r.subject),
                    });
                }
            }
        }
        self.series.retain(|k, _| seen.contains(k));
        out
    }
}

/// The [`TOP_FEATURES`] features that stand out most: the z-score features (`<signal>_z<w>`)
/// with the largest |z|, since a z-score already says how unusual a value is for its series. A
/// spec without z-scores falls back to all features by |value|. Each comes with its signed value.
pub fn top_features(spec: &FeatureSpec, names: &[String], features: &[f64]) -> Vec<(String, f64)> {
    let is_z = |n: &str| {
        n.rsplit_once("_z")
            .is_some_and(|(_, w)| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()))
    };
    let mut ranked: Vec<(&String, f64)> = names
        .iter()
        .zip(features.iter().copied())
        .filter(|(n, _)| !spec.zscore || is_z(n))
        .collect();
    ranked.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    ranked
        .into_iter()
        .take(TOP_FEATURES)
        .map(|(n, v)| (n.clone(), v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_features_rank_z_scores_by_magnitude() {
        let spec = FeatureSpec::standard(vec!["a".into(), "b".into()]);
        let names = spec.names();
        let mut f = vec![0.0; names.len()];
        for (i, n) in names.iter().enumerate() {
            f[i] = match n.as_str() {
                "a" => 1e9, // a raw value is never ranked when z-scores exist
                "a_z12" => -7.0,
                "b_z60" => 5.0,
                "b_z12" => 1.0,
                _ => 0.0,
            };
        }
        let top = top_features(&spec, &names, &f);
        assert_eq!(
            top,
            vec![
                ("a_z12".to_owned(), -7.0),
                ("b_z60".to_owned(), 5.0),
                ("b_z12".to_owned(), 1.0)
            ]
        );
    }

    #[test]
    fn top_features_without_z_scores_rank_values() {
        let spec = FeatureSpec::raw(vec!["a".into(), "b".into()]);
        let top = top_features(&spec, &spec.names(), &[2.0, -3.0]);
        assert_eq!(top, vec![("b".to_owned(), -3.0), ("a".to_owned(), 2.0)]);
    }

    #[test]
    fn empty_models_dir_loads_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut reg = ModelRegistry::new(dir.path().to_owned());
        assert!(reg.poll().is_empty());
    }
}
