//! Deterministic random isolation forests and data, for scoring tests and benches.
//!
//! Not a trainer (that is `selfheal_model_export`'s job): this grows isolation trees the textbook
//! way (random feature, random split between the sub-sample's min and max, until the point is
//! alone or the depth limit ⌈log2 ψ⌉ is reached) just well enough to give forests of realistic
//! shape — ~100 trees, depth ~8, ψ = 256 — whose leaves carry `depth + c(n)`. Shared with
//! `benches/score.rs` and `benches/detect.rs` through `#[path]`.

#![allow(dead_code)]

use selfheal_core::forest::{IsolationForest, Node, Tree, average_path_length};

/// splitmix64: tiny, fast and good enough to make test data; seeded so every run is identical.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Roughly normal (sum of uniforms), mean 0, sd 1.
    pub fn normalish(&mut self) -> f64 {
        (0..12).map(|_| self.unit()).sum::<f64>() - 6.0
    }
}

/// `n_rows × n_features` row-major data: mostly a correlated blob, 2% scattered outliers.
pub fn dataset(rng: &mut Rng, n_rows: usize, n_features: usize) -> Vec<f32> {
    let mut rows = Vec::with_capacity(n_rows * n_features);
    for _ in 0..n_rows {
        let outlier = rng.unit() < 0.02;
        let common = rng.normalish();
        for f in 0..n_features {
            let x = if outlier {
                (rng.unit() - 0.5) * 20.0
            } else {
                common * (1.0 + f as f64 * 0.1) + rng.normalish() * 0.5 + f as f64
            };
            rows.push(x as f32);
        }
    }
    rows
}

/// Grows an isolation forest of `n_trees` trees on sub-samples of `max_samples` rows of `rows`.
pub fn grow_forest(
    rng: &mut Rng,
    rows: &[f32],
    n_features: usize,
    n_trees: usize,
    max_samples: usize,
) -> IsolationForest {
    let n_rows = rows.len() / n_features;
    let psi = max_samples.min(n_rows);
    let depth_limit = (psi as f64).log2().ceil() as usize;
    let trees = (0..n_trees)
        .map(|_| {
            let sample: Vec<usize> = (0..psi).map(|_| rng.below(n_rows)).collect();
            let mut nodes = Vec::new();
            grow(rng, rows, n_features, &sample, 0, depth_limit, &mut nodes);
            Tree { nodes }
        })
        .collect();
    IsolationForest {
        n_features,
        max_samples: psi,
        trees,
    }
}

/// Appends the subtree over `sample` in preorder (children after their parent, as
/// `IsolationForest::validate` requires) and returns its index.
fn grow(
    rng: &mut Rng,
    rows: &[f32],
    n_features: usize,
    sample: &[usize],
    depth: usize,
    depth_limit: usize,
    nodes: &mut Vec<Node>,
) -> u32 {
    let at = nodes.len();
    let leaf = Node::Leaf {
        path_length: depth as f64 + average_path_length(sample.len() as f64),
    };
    nodes.push(leaf);
    if sample.len() <= 1 || depth >= depth_limit {
        return at as u32;
    }
    let feature = rng.below(n_features);
    let (lo, hi) = sample.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &r| {
        let x = rows[r * n_features + feature];
        (lo.min(x), hi.max(x))
    });
    if lo >= hi {
        return at as u32;
    }
    let threshold = lo + (hi - lo) * rng.unit() as f32;
    let (left, right): (Vec<usize>, Vec<usize>) = sample
        .iter()
        .partition(|&&r| rows[r * n_features + feature] <= threshold);
    let left = grow(rng, rows, n_features, &left, depth + 1, depth_limit, nodes);
    let right = grow(rng, rows, n_features, &right, depth + 1, depth_limit, nodes);
    nodes[at] = Node::Split {
        feature: feature as u32,
        threshold,
        left,
        right,
    };
    at as u32
}

/// A forest of realistic size: 100 trees, ψ = 256, depth ≤ 8, grown on `n_features` features.
pub fn standard_forest(seed: u64, n_features: usize) -> (IsolationForest, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let train = dataset(&mut rng, 4096, n_features);
    let forest = grow_forest(&mut rng, &train, n_features, 100, 256);
    (forest, train)
}

/// A manifest for a test or bench model: `forest` over `features`, with the given family,
/// version, threshold and alarm rule. The checksum is left for `write_model_dir` to fill in.
pub fn manifest(
    forest: &IsolationForest,
    features: selfheal_core::features::FeatureSpec,
    family: &str,
    version: &str,
    threshold: f64,
    alarm: selfheal_core::model::AlarmRule,
) -> selfheal_core::model::ModelManifest {
    selfheal_core::model::ModelManifest {
        family: family.into(),
        version: version.into(),
        feature_names: features.names(),
        features,
        threshold,
        alarm,
        ordinary_score: None,
        spike_threshold: None,
        n_trees: forest.trees.len(),
        forests: 1,
        max_samples: forest.max_samples,
        seed: 1,
        training_data_sha256: String::new(),
        created_at: "2026-01-01T00:00:00Z".into(),
        model_sha256: String::new(),
    }
}

/// A per-signal model as the trainer's default layout shapes it: `signals` forests of `n_trees`
/// trees (ψ = 256), forest `g` grown on columns `g * width .. (g + 1) * width` of a dataset of
/// `signals * width` features, its offset the 99th percentile of its training scores; and a
/// manifest for it (raw features `f0..`, threshold 0, default alarm rule).
pub fn forest_set(
    seed: u64,
    signals: usize,
    width: usize,
    n_trees: usize,
) -> (
    selfheal_core::forest::ForestSet,
    selfheal_core::model::ModelManifest,
) {
    let n_features = signals * width;
    let mut rng = Rng::new(seed);
    let train = dataset(&mut rng, 4096, n_features);
    let members: Vec<selfheal_core::forest::Member> = (0..signals)
        .map(|g| {
            let cols: Vec<f32> = train
                .chunks_exact(n_features)
                .flat_map(|row| row[g * width..(g + 1) * width].to_vec())
                .collect();
            let forest = grow_forest(&mut rng, &cols, width, n_trees, 256);
            let mut scores: Vec<f64> = cols.chunks_exact(width).map(|r| forest.score(r)).collect();
            scores.sort_by(f64::total_cmp);
            selfheal_core::forest::Member {
                first_feature: g * width,
                offset: scores[scores.len() * 99 / 100],
                // Scales other than 1 on some members, as a normalized set has, so the
                // equivalence tests cover the graph's scaling too.
                scale: [1.0, 1.25, 0.8][g % 3],
                forest,
            }
        })
        .collect();
    let features = selfheal_core::features::FeatureSpec::raw(
        (0..n_features).map(|i| format!("f{i}")).collect(),
    );
    let mut m = manifest(
        &members[0].forest,
        features,
        "test",
        "1",
        0.0,
        selfheal_core::model::AlarmRule::default(),
    );
    m.forests = signals;
    (
        selfheal_core::forest::ForestSet {
            n_features,
            members,
            range: None,
        },
        m,
    )
}
