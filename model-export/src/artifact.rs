//! Model directories: writing a trained [`Detector`] and reading it back.
//!
//! A model directory holds `manifest.json` (`selfheal_core::model::ModelManifest`), `model.onnx`
//! (written by the ONNX exporter) and `forest.json`, the same forest (or forest set) as data. `forest.json` is
//! what `selfheal model score|eval` run through the reference scorer
//! `ForestSet::score`, which the ONNX graph reproduces by construction; it also lets tests
//! and tools compare forests without an ONNX runtime.

use crate::detect::Detector;
use selfheal_core::features::FEATURE_SCHEMA_VERSION;
use selfheal_core::forest::{ForestSet, ForestSetError, IsolationForest};
use selfheal_core::model::{MANIFEST_FILE, ModelManifest};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// File name of the forest as JSON in a model directory.
pub const FOREST_FILE: &str = "forest.json";

/// A model directory that cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file that is not the JSON it should be.
    #[error("{path}: invalid JSON")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A forest that fails structural validation.
    #[error("{path}: invalid forest")]
    Forest {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: ForestSetError,
    },
    /// Manifest and forest disagree, or the manifest is of another feature schema.
    #[error("{dir}: {what}")]
    Mismatch {
        /// The model directory.
        dir: PathBuf,
        /// What disagrees.
        what: String,
    },
    /// The ONNX exporter failed, or could not write the directory.
    #[error("writing model.onnx and manifest.json into {dir}")]
    Export {
        /// The model directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: Box<crate::onnx::WriteModelError>,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.to_owned(),
        source,
    }
}

/// sha256 (hex) of the files' bytes, in the order given; each file's name (without directory)
/// and length are hashed before its bytes, so renaming or splitting data changes the digest.
pub fn sha256_files(paths: &[PathBuf]) -> Result<String, ArtifactError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    for p in paths {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        h.update(name.unwrap_or_default().as_bytes());
        let meta = std::fs::metadata(p).map_err(io(p))?;
        h.update(meta.len().to_le_bytes());
        let mut f = std::fs::File::open(p).map_err(io(p))?;
        loop {
            let n = f.read(&mut buf).map_err(io(p))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// sha256 (hex) of one file.
pub fn sha256_file(path: &Path) -> Result<String, ArtifactError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    Ok(sha256_bytes(&bytes))
}

/// sha256 (hex) of `bytes`, as a manifest's `model_sha256` holds it.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes `detector` into `dir` (created if needed): `forest.json`, then `model.onnx` and
/// `manifest.json` through [`crate::onnx::write_model_dir`] (manifest last, so a reader never
/// sees a manifest without its model). `manifest` carries everything but `model_sha256`, which
/// is filled in there; the manifest written is returned.
pub fn write_model_dir(
    dir: &Path,
    detector: &Detector,
    mut manifest: ModelManifest,
) -> Result<ModelManifest, ArtifactError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let forest_path = dir.join(FOREST_FILE);
    let json = serde_json::to_vec(&detector.forest).map_err(|source| ArtifactError::Json {
        path: forest_path.clone(),
        source,
    })?;
    std::fs::write(&forest_path, json).map_err(io(&forest_path))?;
    // The exporter writes model.onnx, then the manifest with its checksum, each atomically.
    manifest.model_sha256 = String::new();
    crate::onnx::write_set_dir(dir, &detector.forest, manifest).map_err(|source| {
        ArtifactError::Export {
            dir: dir.to_owned(),
            source: Box::new(source),
        }
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ArtifactError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(|source| ArtifactError::Json {
        path: path.to_owned(),
        source,
    })
}

/// Reads the manifest of a model directory.
pub fn read_manifest(dir: &Path) -> Result<ModelManifest, ArtifactError> {
    read_json(&dir.join(MANIFEST_FILE))
}

/// Reads a model directory back into a detector, refusing one whose forest is malformed or
/// disagrees with its manifest (feature count, names, schema version).
pub fn read_model_dir(dir: &Path) -> Result<(Detector, ModelManifest), ArtifactError> {
    let manifest = read_manifest(dir)?;
    let forest_path = dir.join(FOREST_FILE);
    // A forest set; model directories written before sets existed hold one plain forest.
    let bytes = std::fs::read(&forest_path).map_err(io(&forest_path))?;
    let forest = match serde_json::from_slice::<ForestSet>(&bytes) {
        Ok(set) => set,
        Err(source) => match serde_json::from_slice::<IsolationForest>(&bytes) {
            Ok(forest) => ForestSet::single(forest),
            Err(_) => {
                return Err(ArtifactError::Json {
                    path: forest_path,
                    source,
                });
            }
        },
    };
    forest.validate().map_err(|source| ArtifactError::Forest {
        path: forest_path,
        source,
    })?;
    let mismatch = |what: String| ArtifactError::Mismatch {
        dir: dir.to_owned(),
        what,
    };
    let spec = &manifest.features;
    if spec.schema_version != FEATURE_SCHEMA_VERSION {
        return Err(mismatch(format!(
            "feature schema {} (this build reads {FEATURE_SCHEMA_VERSION})",
            spec.schema_version
        )));
    }
    if forest.members.len() != manifest.forests {
        return Err(mismatch(format!(
            "forest.json holds {} forest(s), the manifest says {}",
            forest.members.len(),
            manifest.forests
        )));
    }
    if forest.n_features != spec.len() || manifest.feature_names != spec.names() {
        return Err(mismatch(format!(
            "forest has {} features, manifest spec has {}",
            forest.n_features,
            spec.len()
        )));
    }
    Ok((
        Detector {
            forest,
            spec: spec.clone(),
            threshold: manifest.threshold,
            alarm: manifest.alarm,
            ordinary: manifest.ordinary_score.unwrap_or(f64::NAN),
            spike: manifest.spike_threshold,
        },
        manifest,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Series;
    use crate::detect::{TrainConfig, train_model};
    use crate::train::ForestParams;

    fn trained(dir: &Path) -> (Detector, ModelManifest) {
        // Enough rows after the feature warm-up to place the default threshold.
        let rows = (0..1200)
            .map(|i| {
                let x = f64::from(i % 17) / 17.0;
                vec![x, 1.0 - x, (x * 7.0).fract()]
            })
            .collect();
        let series = Series {
            name: "s".into(),
            columns: vec!["a".into(), "b".into(), "c".into()],
            timestamps: None,
            rows,
        };
        // The plain per-signal layout: each member reads its whole block, so one member
        // stands for a forest of the old one-forest layout below.
        let cfg = TrainConfig {
            forest: ForestParams {
                n_trees: 10,
                ..ForestParams::default()
            },
            layout: crate::train::ForestLayout::per_signal(),
            ..TrainConfig::default()
        };
        let (det, _) = train_model(&[series], None, &cfg).expect("trained");
        let first = &det.forest.members[0].forest;
        let manifest = ModelManifest {
            family: "demo".into(),
            version: "v1".into(),
            feature_names: det.spec.names(),
            features: det.spec.clone(),
            threshold: det.threshold,
            alarm: det.alarm,
            ordinary_score: Some(det.ordinary),
            spike_threshold: det.spike,
            n_trees: first.trees.len(),
            forests: det.forest.members.len(),
            max_samples: first.max_samples,
            seed: 0,
            training_data_sha256: String::new(),
            created_at: "2026-11-30T00:00:00Z".into(),
            model_sha256: String::new(),
        };
        let manifest = write_model_dir(dir, &det, manifest).expect("written");
        (det, manifest)
    }

    #[test]
    fn a_forest_set_reads_back_and_a_disagreeing_manifest_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (det, manifest) = trained(dir.path());
        assert_eq!(manifest.forests, 3);
        let (read, _) = read_model_dir(dir.path()).expect("reads back");
        assert_eq!(read, det);

        let mut wrong = manifest.clone();
        wrong.forests = 1;
        std::fs::write(
            dir.path().join(MANIFEST_FILE),
            serde_json::to_vec(&wrong).expect("json"),
        )
        .expect("write manifest");
        let err = read_model_dir(dir.path()).expect_err("forest count disagrees");
        assert!(err.to_string().contains("3 forest(s)"), "{err}");
    }

    #[test]
    fn a_plain_forest_json_from_before_sets_reads_as_a_single_forest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (det, mut manifest) = trained(dir.path());
        let plain = det.forest.members[0].forest.clone();
        std::fs::write(
            dir.path().join(FOREST_FILE),
            serde_json::to_vec(&plain).expect("json"),
        )
        .expect("write forest.json");
        // The old layout: one forest over every feature.
        manifest.forests = 1;
        manifest.features.signals.truncate(1);
        manifest.feature_names = manifest.features.names();
        std::fs::write(
            dir.path().join(MANIFEST_FILE),
            serde_json::to_vec(&manifest).expect("json"),
        )
        .expect("write manifest");
        let (read, _) = read_model_dir(dir.path()).expect("reads");
        assert_eq!(read.forest, ForestSet::single(plain));
        std::fs::write(dir.path().join(FOREST_FILE), b"{\"not\": 1}").expect("write");
        assert!(matches!(
            read_model_dir(dir.path()),
            Err(ArtifactError::Json { .. })
        ));
    }
}
