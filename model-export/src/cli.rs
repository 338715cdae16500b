//! `selfheal model ...`: the binary's edge for model work (may use anyhow).
//!
//! `train` reads series and labels ([`crate::dataset`]), trains a detector ([`crate::detect`])
//! and writes a model directory ([`crate::artifact`]); `score` and `eval` run a model directory
//! on a CSV exactly as the agent decides (same features, threshold and k-of-n rule); `publish`
//! versions a model directory into a store ([`crate::publish`]).

use crate::artifact::{read_model_dir, sha256_files, write_model_dir};
use crate::dataset::{Windows, read_input, read_labels, read_series};
use crate::detect::{
    DEFAULT_ALARM, DEFAULT_LAYOUT, DEFAULT_RANGE_WEIGHT, DEFAULT_SENSITIVITY, DEFAULT_SPIKE_RATIO,
    ThresholdRule, TrainConfig, sensitivity_contamination, train_model,
};
use crate::eval::Counts;
use crate::train::{
    DEFAULT_MAX_SAMPLES, DEFAULT_TREES, ForestLayout, ForestParams, PER_SIGNAL_OFFSET_QUANTILE,
};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use selfheal_core::Family;
use selfheal_core::features::{FEATURE_SCHEMA_VERSION, FeatureSpec};
use selfheal_core::model::{AlarmRule, MODEL_FILE, ModelManifest, family_metrics};
use selfheal_core::store::S3Store;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `selfheal model` subcommands.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Train an isolation-forest detector on a CSV file or a directory of them.
    Train(TrainArgs),
    /// Score a CSV with a model: one score and one 0/1 alarm per row.
    Score(ScoreArgs),
    /// Evaluate a model on a labelled CSV: precision, recall, F1, windows hit, false alarms.
    Eval(EvalArgs),
    /// Publish a model directory into a versioned store (`<family>/<version>/` and `latest`).
    Publish(PublishArgs),
    /// Make an Ed25519 key pair for signing models (`model-signing.key`, `model-signing.pub`).
    Keygen(KeygenArgs),
    /// Sign a model directory in place (`signature.json`), e.g. for a ConfigMap.
    Sign(SignArgs),
}

/// `selfheal model train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Metric family (or series name) the model is for; names the store directory.
    #[arg(long)]
    pub family: String,
    /// A CSV (or SMD `.txt`) file, a directory of them with identical columns, or the data lake
    /// (a directory of the aggregator's Parquet, or `s3://bucket/prefix`) to read `--family` from.
    #[arg(long)]
    pub input: PathBuf,
    /// Label windows (NAB JSON) or SMD point labels; enables the best-F1 threshold.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Model directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Model version; default: UTC creation time and a digest of the forest.
    #[arg(long)]
    pub version: Option<String>,
    /// Number of trees (of each forest, with `--layout per-signal`).
    #[arg(long, default_value_t = DEFAULT_TREES)]
    pub trees: usize,
    /// `per-signal`: one forest per input column over that column's features, the score being
    /// the largest excess of a forest's score over its 99th training percentile (an anomaly in a
    /// few of many signals stands out; the model is that many times larger). `joint`: one forest
    /// over every feature.
    #[arg(long, value_enum, default_value_t = LayoutArg::PerSignal)]
    pub layout: LayoutArg,
    /// With `--layout per-signal`: scale each forest's excess so that its ordinary variation
    /// on the training rows (offset minus median score) is the model's median one, so that no
    /// signal wins the maximum on ordinary data by varying more (`true` or `false`).
    #[arg(long, action = clap::ArgAction::Set, default_value_t = DEFAULT_LAYOUT.normalizes())]
    pub normalize: bool,
    /// With `--layout per-signal`: the forests read each signal's derived features (delta,
    /// rolling statistics) but not its raw value, leaving levels outside the training range to
    /// the range guard (`true` or `false`).
    #[arg(long, action = clap::ArgAction::Set, default_value_t = DEFAULT_LAYOUT.is_level_free())]
    pub level_free: bool,
    /// Sub-sample size per tree (ψ).
    #[arg(long, default_value_t = DEFAULT_MAX_SAMPLES)]
    pub max_samples: usize,
    /// Maximum tree depth; default ceil(log2 ψ).
    #[arg(long)]
    pub max_depth: Option<usize>,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How readily the model alarms, from 0 to 1: the threshold is placed so that a share
    /// 0.001 × 100^s of the training samples reach it (0.001 at 0, 0.01 at 0.5, 0.1 at 1).
    /// Higher catches more incidents for more false alarms; docs/benchmarks.md ("Detection
    /// quality") gives the operating curve, windows hit against false-alarm events per 1000
    /// samples, measured leave-one-machine-out, and how the default was chosen.
    #[arg(long, default_value_t = DEFAULT_SENSITIVITY)]
    pub sensitivity: f64,
    /// Share of training points expected anomalous; overrides --sensitivity.
    #[arg(long)]
    pub contamination: Option<f64>,
    /// With --labels: share of each series held back to choose the threshold on.
    #[arg(long, default_value_t = 0.3)]
    pub validation_fraction: f64,
    /// With --labels: false-alarm ceiling for the threshold, in events per 1000 points.
    #[arg(long, default_value_t = 2.5)]
    pub max_false_alarm_events_per_1000: f64,
    /// Alarm rule: alarms needed ...
    #[arg(long, default_value_t = DEFAULT_ALARM.k)]
    pub alarm_k: u32,
    /// ... out of this many consecutive samples.
    #[arg(long, default_value_t = DEFAULT_ALARM.n)]
    pub alarm_n: u32,
    /// Half-life, in samples, of the moving average of scores compared with the threshold
    /// (0: raw scores).
    #[arg(long, default_value_t = DEFAULT_ALARM.smoothing_half_life)]
    pub smoothing_half_life: u32,
    /// Samples over which the alarm learns a new normal: a score level held for three quarters
    /// of them raises the threshold by as much as it exceeds the ordinary score (0: never).
    #[arg(long, default_value_t = DEFAULT_ALARM.adapt_window)]
    pub adapt_window: u32,
    /// Score per training span a signal's value lies outside the range it held in training
    /// (an isolation forest scores a value beyond its training range like the range's edge);
    /// 0: no range guard.
    #[arg(long, default_value_t = DEFAULT_RANGE_WEIGHT)]
    pub range_weight: f32,
    /// Share of the raw training scores that reach the spike threshold, at which one sample
    /// alarms at once (0: none); default a quarter of the threshold's contamination. Set only
    /// when at least 20 training rows reach it.
    #[arg(long)]
    pub spike_contamination: Option<f64>,
    /// Feature spec as JSON (a `FeatureSpec`; its `signals` are replaced by the input's
    /// columns). Default: the standard spec.
    #[arg(long)]
    pub features: Option<PathBuf>,
}

/// The most a ConfigMap holds (`data` plus `binaryData`, 1 MiB); `model train` warns when a
/// model is larger (docs/models.md, "ConfigMap").
pub const CONFIGMAP_MAX_BYTES: u64 = 1 << 20;

/// `--layout` of `selfheal model train`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LayoutArg {
    /// One forest over every feature.
    Joint,
    /// One forest per signal.
    PerSignal,
}

/// `selfheal model score`.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// CSV (or SMD `.txt`) to score.
    #[arg(long)]
    pub input: PathBuf,
    /// Output CSV: `[timestamp,]score,alarm`.
    #[arg(long)]
    pub out: PathBuf,
}

/// `selfheal model eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// CSV (or SMD `.txt`) file, or a directory of them (metrics pooled over the files).
    #[arg(long)]
    pub input: PathBuf,
    /// Label windows (NAB JSON) or SMD point labels.
    #[arg(long)]
    pub labels: PathBuf,
    /// Print the metrics as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `selfheal model publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Model directory to publish.
    pub model_dir: PathBuf,
    /// Store: a directory, or `s3://bucket/prefix` (credentials, region and `AWS_ENDPOINT_URL`
    /// from the standard AWS chain).
    #[arg(long)]
    pub to: String,
    /// Sign the model with this Ed25519 key (64 hex digits, from `selfheal model keygen`):
    /// `signature.json` is written beside the manifest in the store.
    #[arg(long)]
    pub sign_key: Option<PathBuf>,
    /// With --sign-key: this version is meant to replace a newer one. Agents refuse an older
    /// version whose signature does not say so.
    #[arg(long, requires = "sign_key")]
    pub rollback: bool,
}

/// `selfheal model keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Directory to write `model-signing.key` (mode 0600) and `model-signing.pub` into;
    /// existing keys are never overwritten.
    #[arg(long)]
    pub out: PathBuf,
}

/// `selfheal model sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// Model directory to sign: `signature.json` is written into it.
    pub model_dir: PathBuf,
    /// The Ed25519 signing key (from `selfheal model keygen`).
    #[arg(long)]
    pub sign_key: PathBuf,
    /// This version is meant to replace a newer one (see `model publish --rollback`).
    #[arg(long)]
    pub rollback: bool,
}

/// Runs a `selfheal model` subcommand.
pub fn main(cmd: ModelCommand) -> Result<ExitCode> {
    match cmd {
        ModelCommand::Train(a) => train(a),
        ModelCommand::Score(a) => score(a),
        ModelCommand::Eval(a) => eval(a),
        ModelCommand::Publish(a) => publish(a),
        ModelCommand::Keygen(a) => keygen(a),
        ModelCommand::Sign(a) => sign(a),
    }
}

fn keygen(a: KeygenArgs) -> Result<ExitCode> {
    let pair = crate::publish::signing::keygen(&a.out)
        .with_context(|| format!("making a model signing key in {}", a.out.display()))?;
    tracing::info!(
        signing_key = %pair.signing_key.display(),
        public_key = %pair.public_key.display(),
        key_id = %pair.key_id,
        "ModelKeyGenerated: keep the signing key with the publisher only; give agents the public key"
    );
    println!("{}", pair.public_key.display());
    Ok(ExitCode::SUCCESS)
}

fn sign(a: SignArgs) -> Result<ExitCode> {
    let context = || format!("signing {}", a.model_dir.display());
    let signing = crate::publish::Signing::from_key_file(&a.sign_key, a.rollback)
        .with_context(|| format!("reading the signing key {}", a.sign_key.display()))?;
    let path = a.model_dir.join(selfheal_core::signature::SIGNATURE_FILE);
    let previous = match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let sig = signing
        .sign_dir(&a.model_dir, previous.as_deref())
        .with_context(context)?;
    selfheal_runtime::atomic::write(&path, &sig).with_context(context)?;
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}

fn publish(a: PublishArgs) -> Result<ExitCode> {
    let context = || format!("publishing {} to {}", a.model_dir.display(), a.to);
    let signing = match &a.sign_key {
        Some(path) => Some(
            crate::publish::Signing::from_key_file(path, a.rollback)
                .with_context(|| format!("reading the signing key {}", path.display()))?,
        ),
        None => None,
    };
    let dest = match S3Store::parse(&a.to).with_context(context)? {
        Some(store) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            rt.block_on(async {
                let client = crate::publish::s3::client_from_env().await;
                crate::publish::s3::publish(&client, &a.model_dir, &store, signing.as_ref()).await
            })
            .with_context(context)?
        }
        None => crate::publish::publish(&a.model_dir, Path::new(&a.to), signing.as_ref())
            .with_context(context)?
            .display()
            .to_string(),
    };
    println!("{dest}");
    Ok(ExitCode::SUCCESS)
}

fn input_files(input: &Path) -> Result<Vec<PathBuf>> {
    if !input.is_dir() {
        return Ok(vec![input.to_owned()]);
    }
    let mut files = Vec::new();
    for e in std::fs::read_dir(input).with_context(|| format!("reading {}", input.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|e| e == "csv" || e == "txt") {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

fn train(a: TrainArgs) -> Result<ExitCode> {
    let (series, lake_digest) = if crate::lake::is_lake(&a.input) {
        let family: Family = a
            .family
            .parse()
            .context("--family must name a metric family to train from a lake")?;
        if a.labels.is_some() {
            bail!("--labels is not supported with lake input yet (label windows name CSV series)");
        }
        let lake = crate::lake::read_lake(&a.input.to_string_lossy(), family)?;
        tracing::info!(
            objects = lake.objects,
            rows = lake.rows,
            duplicates = lake.duplicates,
            subjects = lake.subjects,
            runs = lake.series.len(),
            "LakeRead"
        );
        (lake.series, Some(lake.digest))
    } else {
        let series = read_input(&a.input)?;
        // A model for a metric family is read by metric name on the node: every column must
        // be one of the family's metrics (any subset, any order).
        if let Ok(family) = a.family.parse::<Family>()
            && let Some(first) = series.first()
        {
            family_metrics(family, &first.columns).with_context(|| {
                format!(
                    "{}: the columns cannot train a {family} model",
                    a.input.display()
                )
            })?;
        }
        (series, None)
    };
    let labels = match &a.labels {
        Some(p) => Some(
            series
                .iter()
                .map(|s| read_labels(p, s))
                .collect::<Result<Vec<Windows>, _>>()?,
        ),
        None => None,
    };
    let features = match &a.features {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str::<FeatureSpec>(&text)
                .with_context(|| format!("{}: not a feature spec", p.display()))?
        }
        None => FeatureSpec::standard(Vec::new()),
    };
    if features.schema_version != FEATURE_SCHEMA_VERSION {
        bail!(
            "feature spec schema_version {} differs from this build's {FEATURE_SCHEMA_VERSION}",
            features.schema_version
        );
    }
    if !(0.0..=1.0).contains(&a.sensitivity) {
        bail!("--sensitivity must be in [0, 1], got {}", a.sensitivity);
    }
    let contamination = a
        .contamination
        .unwrap_or_else(|| sensitivity_contamination(a.sensitivity));
    let cfg = TrainConfig {
        forest: ForestParams {
            n_trees: a.trees,
            max_samples: a.max_samples,
            max_depth: a.max_depth,
            seed: a.seed,
        },
        layout: match a.layout {
            LayoutArg::Joint => ForestLayout::Joint,
            LayoutArg::PerSignal => ForestLayout::PerSignal {
                offset_quantile: PER_SIGNAL_OFFSET_QUANTILE,
                normalize: a.normalize,
                level_free: a.level_free,
            },
        },
        features,
        alarm: AlarmRule::k_of_n(a.alarm_k, a.alarm_n)
            .smoothed(a.smoothing_half_life)
            .adapting(a.adapt_window),
        threshold: if a.labels.is_some() {
            ThresholdRule::BestF1 {
                validation_fraction: a.validation_fraction,
                max_false_alarm_events_per_1000: a.max_false_alarm_events_per_1000,
                fallback_contamination: contamination,
            }
        } else {
            ThresholdRule::Contamination(contamination)
        },
        range_weight: a.range_weight,
        spike_contamination: a
            .spike_contamination
            .unwrap_or(contamination * DEFAULT_SPIKE_RATIO),
    };
    let (detector, report) = train_model(&series, labels.as_deref(), &cfg)?;
    let now = OffsetDateTime::now_utc();
    let created_at = now.format(&Rfc3339)?;
    let forest_json = serde_json::to_vec(&detector.forest)?;
    let version = match a.version {
        Some(v) => v,
        None => {
            use sha2::Digest;
            let digest = hex::encode(sha2::Sha256::digest(&forest_json));
            format!(
                "{:04}{:02}{:02}T{:02}{:02}{:02}Z-{}",
                now.year(),
                u8::from(now.month()),
                now.day(),
                now.hour(),
                now.minute(),
                now.second(),
                &digest[..8]
            )
        }
    };
    let manifest = ModelManifest {
        family: a.family,
        version,
        feature_names: detector.spec.names(),
        features: detector.spec.clone(),
        threshold: detector.threshold,
        alarm: detector.alarm,
        ordinary_score: Some(detector.ordinary),
        spike_threshold: detector.spike,
        n_trees: detector.forest.members[0].forest.trees.len(),
        forests: detector.forest.members.len(),
        max_samples: detector.forest.members[0].forest.max_samples,
        seed: a.seed,
        training_data_sha256: match lake_digest {
            Some(d) => d,
            None => sha256_files(&input_files(&a.input)?)?,
        },
        created_at,
        model_sha256: String::new(),
    };
    let manifest = write_model_dir(&a.out, &detector, manifest)?;
    if let Some(m) = report.validation {
        tracing::info!(
            f1 = m.f1,
            precision = m.precision,
            recall = m.recall,
            false_alarm_events_per_1000 = m.false_alarm_events_per_1000,
            "validation at chosen threshold"
        );
    }
    tracing::info!(out = %a.out.display(), version = %manifest.version, threshold = manifest.threshold, "model written");
    let bytes = std::fs::metadata(a.out.join(MODEL_FILE))?.len();
    if bytes > CONFIGMAP_MAX_BYTES {
        tracing::warn!(
            bytes,
            limit = CONFIGMAP_MAX_BYTES,
            "model.onnx is too big for a ConfigMap: publish it to a directory or S3, or train \
             fewer trees (--trees) or one forest (--layout joint) for ConfigMap delivery"
        );
    }
    println!("{}", a.out.display());
    Ok(ExitCode::SUCCESS)
}

fn score(a: ScoreArgs) -> Result<ExitCode> {
    let (detector, _) =
        read_model_dir(&a.model).with_context(|| format!("loading model {}", a.model.display()))?;
    let series = read_series(&a.input)?.select_columns(&detector.spec.signals)?;
    let scored = detector.run(&series)?;
    let file =
        std::fs::File::create(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let ts = series.timestamps.as_deref();
    writeln!(
        w,
        "{}score,alarm",
        if ts.is_some() { "timestamp," } else { "" }
    )?;
    for (i, (s, al)) in scored.scores.iter().zip(&scored.alarms).enumerate() {
        if let Some(ts) = ts {
            write!(w, "{},", ts[i])?;
        }
        writeln!(w, "{s},{}", u8::from(*al))?;
    }
    w.flush()
        .with_context(|| format!("writing {}", a.out.display()))?;
    let alarmed = scored.alarms.iter().filter(|&&x| x).count();
    tracing::info!(rows = scored.scores.len(), alarmed, out = %a.out.display(), "scored");
    Ok(ExitCode::SUCCESS)
}

fn eval(a: EvalArgs) -> Result<ExitCode> {
    let (detector, _) =
        read_model_dir(&a.model).with_context(|| format!("loading model {}", a.model.display()))?;
    let mut counts = Counts::default();
    for series in read_input(&a.input)? {
        let series = series.select_columns(&detector.spec.signals)?;
        let windows = read_labels(&a.labels, &series)?;
        let scored = detector.run(&series)?;
        counts.add(&Counts::of(&scored.alarms, &windows));
    }
    let m = counts.metrics();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        print!("{m}");
    }
    Ok(ExitCode::SUCCESS)
}
