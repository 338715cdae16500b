//! Property tests of the manifest path the agent runs on a downloaded `manifest.json`: parse,
//! [`check_manifest`], then what the fields size (the feature extractor's rolling windows, the
//! alarm state), and the signature's canonical form and verification. Random bytes would almost
//! never be a JSON object with the manifest's thirteen fields, so these generate manifests
//! field by field over the whole range of each type (huge windows, versions of kilobytes,
//! non-finite and out-of-range thresholds, counts near `usize::MAX`), write them as JSON, and
//! also mutate that JSON byte by byte. Nothing may panic, and nothing may allocate what a field
//! asks for before the bounds accepted it: a window of 2^40 samples reaching the extractor would
//! abort the test process.

use super::*;
use crate::features::{FeatureExtractor, FeatureSpec};
use crate::model::{AlarmRule, AlarmState, ModelManifest};
use crate::signature::{self, SigningKey, Statement};
use proptest::prelude::*;

/// Mostly a value `valid` gives, sometimes anything of the type: most generated manifests
/// differ from an accepted one in a field or two, so the checks after the first are reached.
fn mostly<T: std::fmt::Debug + Clone + 'static>(
    valid: impl Strategy<Value = T> + 'static,
    wide: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    prop_oneof![12 => valid, 1 => wide].boxed()
}

fn wide_usize() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..4,
        0usize..2000,
        Just(MAX_WINDOW_SAMPLES),
        Just(MAX_WINDOW_SAMPLES + 1),
        Just(1usize << 40),
        Just(usize::MAX),
        any::<usize>(),
    ]
}

fn wide_u32() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..8, 0u32..200, Just(u32::MAX), any::<u32>()]
}

fn score() -> impl Strategy<Value = f64> {
    prop_oneof![
        -1.5f64..1.5,
        Just(1e300),
        Just(-1e300),
        Just(f64::MAX),
        Just(1.0),
        Just(-1.0),
        any::<f64>(),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => "[a-z0-9][a-z0-9._-]{0,23}",
        1 => "\\PC{0,24}",
        1 => (1usize..4096).prop_map(|n| "v".repeat(n)),
        1 => Just("latest".to_owned()),
        1 => Just("../x".to_owned()),
    ]
}

fn spec() -> impl Strategy<Value = FeatureSpec> {
    (
        mostly(Just(crate::features::FEATURE_SCHEMA_VERSION), any::<u32>()),
        mostly(
            proptest::collection::vec("[a-z_]{1,12}", 1..6),
            proptest::collection::vec("[a-z_]{0,12}|\\PC{0,140}", 0..70),
        ),
        any::<[bool; 5]>(),
        mostly(
            proptest::collection::vec(2usize..200, 0..3),
            proptest::collection::vec(wide_usize(), 0..10),
        ),
    )
        .prop_map(|(schema_version, signals, flags, windows)| FeatureSpec {
            schema_version,
            signals,
            value: flags[0],
            delta: flags[1],
            windows,
            mean: flags[2],
            std: flags[3],
            zscore: flags[4],
        })
}

fn manifest() -> impl Strategy<Value = ModelManifest> {
    (
        (name(), name(), spec(), any::<bool>()),
        (
            mostly(0.5f64..0.99, score()),
            proptest::option::of(mostly(-0.9f64..0.49, score())),
            proptest::option::of(mostly(-0.9f64..0.99, score())),
        ),
        (
            mostly(1u32..5, wide_u32()),
            mostly(5u32..20, wide_u32()),
            mostly(0u32..100, wide_u32()),
            mostly(0u32..5000, wide_u32()),
        ),
        (
            mostly(1usize..200, wide_usize()),
            Just(1usize),
            mostly(2usize..1024, wide_usize()),
            any::<u64>(),
        ),
        (
            mostly("[0-9a-f]{64}", "\\PC{0,70}"),
            mostly("[0-9a-f]{64}", "\\PC{0,70}"),
            mostly("2026-[0-9]{2}-[0-9]{2}T00:00:00Z", "[0-9TZ:.+-]{0,70}"),
        ),
    )
        .prop_map(
            |(
                (family, version, features, names_match),
                (threshold, ordinary_score, spike_threshold),
                (k, n, half_life, adapt),
                (n_trees, forests, max_samples, seed),
                (training, model, created_at),
            )| {
                // Names computed only for specs that cannot be huge: `names()` on a spec
                // the bounds refuse is what the bounds exist to prevent.
                let small =
                    features.signals.len() <= MAX_SIGNALS && features.windows.len() <= MAX_WINDOWS;
                let feature_names = if names_match && small {
                    features.names()
                } else {
                    vec!["x".to_owned(); features.signals.len().min(3)]
                };
                ModelManifest {
                    family,
                    version,
                    feature_names,
                    features,
                    threshold,
                    alarm: AlarmRule::k_of_n(k, n).smoothed(half_life).adapting(adapt),
                    ordinary_score,
                    spike_threshold,
                    n_trees,
                    forests,
                    max_samples,
                    seed,
                    training_data_sha256: training,
                    created_at,
                    model_sha256: model,
                }
            },
        )
}

/// What the agent does with a manifest's bytes, minus the graph: parse, bound, then build
/// what the fields size and score a few samples through it; and the signature path.
fn agent_path(bytes: &[u8]) {
    let key = SigningKey::from_bytes(&[9; 32]);
    // Canonical form and a verification attempt on any bytes: errors, never panics.
    let _ = signature::canonical_manifest(bytes);
    let _ = signature::verify(&[key.verifying_key()], b"{}", bytes, &[0; 32]);
    let Ok(m) = serde_json::from_slice::<ModelManifest>(bytes) else {
        return;
    };
    if check_manifest(&m).is_err() {
        return;
    }
    // Accepted: every bound holds, and what the fields size is small.
    assert!(m.version.len() <= MAX_NAME_LEN && m.family.len() <= MAX_NAME_LEN);
    assert!(m.threshold.is_finite() && m.threshold.abs() < 1.0);
    assert!(m.features.windows.iter().all(|&w| w <= MAX_WINDOW_SAMPLES));
    assert!(
        m.features.signals.len() * m.features.windows.iter().sum::<usize>() <= MAX_WINDOW_VALUES
    );
    assert!(m.n_trees <= MAX_TREES && m.max_samples <= MAX_SAMPLES);
    let mut extractor = FeatureExtractor::new(m.features.clone());
    let row = vec![1.0; m.features.signals.len()];
    for _ in 0..3 {
        let f = extractor.push(&row).expect("a row of the spec's width");
        assert_eq!(f.len(), m.features.len());
    }
    let mut alarm = AlarmState::new(m.alarm)
        .with_spike(m.spike_threshold)
        .with_ordinary(m.ordinary_score.unwrap_or(f64::NAN));
    for s in [0.0, 0.5, f64::NAN] {
        let _ = alarm.push_scored(s, m.threshold);
    }
    // A manifest the bounds accept signs and verifies from its own bytes.
    let st = Statement {
        serial: 1,
        signed_at_ms: 1,
        rollback: false,
    };
    let mut digest = [0u8; 32];
    hex::decode_to_slice(&m.model_sha256, &mut digest).expect("bounded to 64 hex digits");
    let file = signature::sign(&key, bytes, &digest, st).expect("sign");
    let sig = serde_json::to_vec(&file).expect("json");
    let v = signature::verify(&[key.verifying_key()], &sig, bytes, &digest).expect("verifies");
    assert_eq!(v.manifest, m);
}

#[test]
fn the_generator_reaches_past_the_bounds() {
    // A share of generated manifests must be accepted, or the tests above would only ever
    // exercise the first refusal.
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = manifest();
    let accepted = (0..1000)
        .filter(|_| {
            let m = strategy.new_tree(&mut runner).expect("tree").current();
            check_manifest(&m).is_ok()
        })
        .count();
    assert!(accepted >= 50, "{accepted} of 1000 accepted");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn generated_manifests_never_panic_or_allocate_past_their_bounds(m in manifest()) {
        let bytes = serde_json::to_vec_pretty(&m).expect("json");
        agent_path(&bytes);
        // The structured value itself, as a trainer would hand it over.
        if check_manifest(&m).is_ok() {
            prop_assert!(m.features.per_signal() > 0);
        }
    }

    #[test]
    fn mutated_manifest_json_never_panics(
        m in manifest(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let mut bytes = serde_json::to_vec(&m).expect("json");
        for (at, byte, op) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => {
                    bytes.remove(i);
                }
            }
        }
        agent_path(&bytes);
    }

    #[test]
    fn numbers_spliced_into_a_valid_manifest_never_panic(
        field in prop::sample::select(vec![
            "threshold", "n_trees", "max_samples", "forests", "seed", "k", "n",
            "smoothing_half_life", "adapt_window", "windows", "ordinary_score",
        ]),
        number in prop_oneof![
            Just("1e300".to_owned()), Just("-1e300".to_owned()), Just("1e999".to_owned()),
            Just("18446744073709551616".to_owned()), Just("-1".to_owned()),
            Just("1099511627776".to_owned()), Just("[1000000000000]".to_owned()),
            Just("null".to_owned()), any::<i64>().prop_map(|v| v.to_string()),
            any::<f64>().prop_map(|v| format!("{v:e}")),
        ],
    ) {
        let spec = FeatureSpec::standard(vec!["a".into(), "b".into()]);
        let valid = ModelManifest {
            family: "cpu".into(),
            version: "v1".into(),
            feature_names: spec.names(),
            features: spec,
            threshold: 0.6,
            alarm: AlarmRule::k_of_n(3, 5).smoothed(4).adapting(100),
            ordinary_score: Some(0.4),
            spike_threshold: Some(0.8),
            n_trees: 10,
            forests: 2,
            max_samples: 64,
            seed: 1,
            training_data_sha256: String::new(),
            created_at: "2026-12-01T00:00:00Z".into(),
            model_sha256: "ab".repeat(32),
        };
        let mut value = serde_json::to_value(&valid).expect("value");
        let parsed: serde_json::Value =
            serde_json::from_str(&number).unwrap_or(serde_json::Value::Null);
        let slot = match field {
            "k" | "n" | "smoothing_half_life" | "adapt_window" => &mut value["alarm"][field],
            "windows" => &mut value["features"]["windows"],
            other => &mut value[other],
        };
        *slot = parsed;
        let text = serde_json::to_string(&value).expect("json");
        // Also the number as written, where JSON allows it (1e999 does not survive a Value).
        let raw = text.replacen("null", &number, 1);
        agent_path(text.as_bytes());
        agent_path(raw.as_bytes());
    }
}
