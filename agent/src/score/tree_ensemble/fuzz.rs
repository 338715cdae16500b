//! Property tests of the tree-ensemble attribute parser: random bytes would never be a node
//! whose dozen attributes agree on their lengths, so these grow valid random forests (node ids
//! shuffled and spread, mixed branch modes, leaves crediting several targets), write them as
//! `TreeEnsembleRegressor` and `TreeEnsembleClassifier` attributes, then corrupt a few entries
//! (an id, a child, a count, a mode, `n_targets` up to 2^62) before parsing. Parsing must never
//! panic; what it accepts must be within `selfheal_core::model_bounds` and evaluate on a batch
//! without panicking; nothing is allocated from a count before its bound is checked (an
//! `n_targets` of 2^40 reaching an allocation would abort the test process).

use super::flat::{FlatEnsemble, RawEnsemble};
use super::regressor::regressor_kernel;
use proptest::prelude::*;
use selfheal_core::model_bounds::{MAX_GRAPH_TREE_NODES, MAX_TARGETS, MAX_TREE_DEPTH};
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::{AttributeProto, NodeProto};

const MODES: [&str; 7] = [
    "BRANCH_LEQ",
    "BRANCH_LT",
    "BRANCH_GTE",
    "BRANCH_GT",
    "BRANCH_EQ",
    "BRANCH_NEQ",
    "LEAF",
];

/// The attribute vectors of a forest.
#[derive(Debug, Clone, Default)]
struct Forest {
    tree: Vec<i64>,
    node: Vec<i64>,
    feature: Vec<i64>,
    value: Vec<f32>,
    mode: Vec<&'static str>,
    t: Vec<i64>,
    f: Vec<i64>,
    nan: Vec<i64>,
    leaf_tree: Vec<i64>,
    leaf_node: Vec<i64>,
    leaf_target: Vec<i64>,
    leaf_weight: Vec<f32>,
    n_targets: i64,
}

/// A valid random forest from `seed`: up to 6 trees of up to 40 nodes over 4 features.
fn grow(seed: u64, plain: bool) -> Forest {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut f = Forest {
        n_targets: rng.i64(1..4),
        ..Forest::default()
    };
    for tree in 0..rng.i64(1..7) {
        let spread = rng.i64(1..1000);
        let base = rng.i64(0..1 << 40);
        // Grow breadth-first: each node becomes a branch (two new children) or a leaf.
        let mut ids: Vec<i64> = Vec::new();
        let mut queue = vec![0usize];
        let mut next = 1usize;
        let mut kids: Vec<Option<(usize, usize)>> = vec![None];
        while let Some(i) = queue.pop() {
            if next + 2 <= 40 && rng.f32() < 0.6 {
                kids[i] = Some((next, next + 1));
                kids.extend([None, None]);
                queue.extend([next, next + 1]);
                next += 2;
            }
        }
        let mut order: Vec<usize> = (0..next).collect();
        rng.shuffle(&mut order);
        ids.extend((0..next).map(|i| base + spread * order[i] as i64));
        for (i, k) in kids.iter().enumerate() {
            f.tree.push(tree);
            f.node.push(ids[i]);
            f.feature.push(rng.i64(0..4));
            f.value.push(rng.f32() * 2.0 - 1.0);
            f.nan.push(i64::from(rng.bool()));
            match k {
                Some((a, b)) => {
                    f.mode.push(if plain {
                        "BRANCH_LEQ"
                    } else {
                        MODES[rng.usize(0..6)]
                    });
                    f.t.push(ids[*a]);
                    f.f.push(ids[*b]);
                }
                None => {
                    f.mode.push("LEAF");
                    f.t.push(0);
                    f.f.push(0);
                    for _ in 0..rng.usize(0..3) {
                        f.leaf_tree.push(tree);
                        f.leaf_node.push(ids[i]);
                        f.leaf_target.push(rng.i64(0..f.n_targets));
                        f.leaf_weight.push(rng.f32());
                    }
                }
            }
        }
    }
    f
}

/// One corruption of a forest's attributes.
#[derive(Debug, Clone)]
enum Edit {
    /// Sets entry `at` of integer attribute `which` to `value`.
    Int {
        which: usize,
        at: prop::sample::Index,
        value: i64,
    },
    /// Drops the last entry of attribute `which`.
    Truncate { which: usize },
    /// A mode that is no mode, or a leaf turned branch.
    Mode {
        at: prop::sample::Index,
        mode: String,
    },
    /// `n_targets` set to `value`.
    Targets(i64),
}

fn edit() -> impl Strategy<Value = Edit> {
    let value = prop_oneof![
        -2i64..50,
        Just(i64::MAX),
        Just(i64::MIN),
        Just(1 << 40),
        Just(u32::MAX as i64),
        any::<i64>(),
    ];
    prop_oneof![
        (0usize..10, any::<prop::sample::Index>(), value.clone())
            .prop_map(|(which, at, value)| Edit::Int { which, at, value }),
        (0usize..12).prop_map(|which| Edit::Truncate { which }),
        (
            any::<prop::sample::Index>(),
            prop_oneof![
                prop::sample::select(MODES.to_vec()).prop_map(str::to_owned),
                "\\PC{0,12}"
            ]
        )
            .prop_map(|(at, mode)| Edit::Mode { at, mode }),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(1 << 40),
            Just(1 << 62),
            Just(MAX_TARGETS as i64 + 1),
            Just(MAX_TARGETS as i64),
        ]
        .prop_map(Edit::Targets),
    ]
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn floats(name: &str, v: &[f32]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Floats as i32,
        floats: v.to_vec(),
        ..Default::default()
    }
}

/// The forest as a node of `op` (`target` or `class` leaf attributes), after `edits`.
fn node(mut f: Forest, edits: &[Edit], leaf: &str) -> NodeProto {
    let mut modes: Vec<String> = f.mode.iter().map(|m| (*m).to_owned()).collect();
    for e in edits {
        match e {
            Edit::Int { which, at, value } => {
                let v = match which {
                    0 => &mut f.tree,
                    1 => &mut f.node,
                    2 => &mut f.feature,
                    3 => &mut f.t,
                    4 => &mut f.f,
                    5 => &mut f.nan,
                    6 => &mut f.leaf_tree,
                    7 => &mut f.leaf_node,
                    _ => &mut f.leaf_target,
                };
                if !v.is_empty() {
                    let i = at.index(v.len());
                    v[i] = *value;
                }
            }
            Edit::Truncate { which } => match which {
                0 => drop(f.tree.pop()),
                1 => drop(f.node.pop()),
                2 => drop(f.feature.pop()),
                3 => drop(f.t.pop()),
                4 => drop(f.f.pop()),
                5 => drop(f.nan.pop()),
                6 => drop(f.leaf_tree.pop()),
                7 => drop(f.leaf_node.pop()),
                8 => drop(f.leaf_target.pop()),
                9 => drop(f.leaf_weight.pop()),
                10 => drop(f.value.pop()),
                _ => drop(modes.pop()),
            },
            Edit::Mode { at, mode } => {
                if !modes.is_empty() {
                    let i = at.index(modes.len());
                    modes[i] = mode.clone();
                }
            }
            Edit::Targets(n) => f.n_targets = *n,
        }
    }
    let op = if leaf == "target" {
        "TreeEnsembleRegressor"
    } else {
        "TreeEnsembleClassifier"
    };
    let mut attribute = vec![
        ints("nodes_treeids", &f.tree),
        ints("nodes_nodeids", &f.node),
        ints("nodes_featureids", &f.feature),
        floats("nodes_values", &f.value),
        AttributeProto {
            name: "nodes_modes".into(),
            r#type: AttributeType::Strings as i32,
            strings: modes.into_iter().map(String::into_bytes).collect(),
            ..Default::default()
        },
        ints("nodes_truenodeids", &f.t),
        ints("nodes_falsenodeids", &f.f),
        ints("nodes_missing_value_tracks_true", &f.nan),
        ints(&format!("{leaf}_treeids"), &f.leaf_tree),
        ints(&format!("{leaf}_nodeids"), &f.leaf_node),
        ints(&format!("{leaf}_ids"), &f.leaf_target),
        floats(&format!("{leaf}_weights"), &f.leaf_weight),
    ];
    if leaf == "target" {
        attribute.push(AttributeProto {
            name: "n_targets".into(),
            r#type: AttributeType::Int as i32,
            i: f.n_targets,
            ..Default::default()
        });
    }
    NodeProto {
        op_type: op.into(),
        attribute,
        ..Default::default()
    }
}

/// An accepted ensemble is within its bounds and evaluates a batch without panicking.
fn check_accepted(flat: &FlatEnsemble, n_nodes: usize) {
    assert!((1..=MAX_TARGETS).contains(&flat.n_targets()));
    assert!(n_nodes <= MAX_GRAPH_TREE_NODES);
    if flat.min_input_width() > 64 {
        return; // a feature id far past any input: the input-width check refuses every batch.
    }
    let width = flat.min_input_width().max(4);
    let n_rows = 11;
    let rows: Vec<f32> = (0..n_rows * width)
        .map(|i| {
            if i % 7 == 3 {
                f32::NAN
            } else {
                (i % 5) as f32 * 0.4 - 1.0
            }
        })
        .collect();
    let mut out = vec![0.0; n_rows * flat.n_targets()];
    flat.accumulate(&rows, width, &mut out);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn regressor_attributes_never_panic_and_stay_bounded(
        seed in any::<u64>(),
        plain in any::<bool>(),
        edits in proptest::collection::vec(edit(), 0..3),
    ) {
        let forest = grow(seed, plain);
        let n_nodes = forest.tree.len();
        let node = node(forest, &edits, "target");
        if let Ok(kernel) = regressor_kernel(&node) {
            check_accepted(kernel.ensemble(), n_nodes);
            let width = kernel.ensemble().min_input_width();
            if width <= 64 {
                let rows = vec![0.25f32; 3 * width];
                prop_assert_eq!(
                    kernel.eval(&rows, 3, width).len(),
                    3 * kernel.ensemble().n_targets()
                );
            }
        } else {
            // The unedited forest is valid: only an edit can make it fail.
            prop_assert!(!edits.is_empty());
        }
    }

    #[test]
    fn classifier_attributes_never_panic_and_stay_bounded(
        seed in any::<u64>(),
        edits in proptest::collection::vec(edit(), 0..3),
        labels in prop_oneof![1usize..4, Just(MAX_TARGETS + 1)],
    ) {
        let forest = grow(seed, false);
        let n_nodes = forest.tree.len();
        let node = node(forest, &edits, "class");
        let built = RawEnsemble::parse(&node, "class")
            .and_then(|raw| FlatEnsemble::build(&raw, labels));
        if let Ok(flat) = built {
            check_accepted(&flat, n_nodes);
        }
    }
}

#[test]
fn depth_beyond_the_bound_is_refused() {
    // A chain: each branch's false child is the next branch, MAX_TREE_DEPTH + 1 deep.
    let depth = MAX_TREE_DEPTH as i64 + 1;
    let mut f = Forest {
        n_targets: 1,
        ..Forest::default()
    };
    for i in 0..=depth {
        f.tree.push(0);
        f.node.push(i);
        f.feature.push(0);
        f.value.push(0.0);
        f.nan.push(0);
        if i < depth {
            f.mode.push("BRANCH_LEQ");
            f.t.push(depth + 1 + i);
            f.f.push(i + 1);
        } else {
            f.mode.push("LEAF");
            f.t.push(0);
            f.f.push(0);
        }
    }
    for i in 0..depth {
        f.tree.push(0);
        f.node.push(depth + 1 + i);
        f.feature.push(0);
        f.value.push(0.0);
        f.nan.push(0);
        f.mode.push("LEAF");
        f.t.push(0);
        f.f.push(0);
    }
    let err = regressor_kernel(&node(f, &[], "target")).expect_err("too deep");
    assert!(err.to_string().contains("deeper than"), "{err}");
}
