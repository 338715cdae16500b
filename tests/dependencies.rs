//! What the dependency graph must not hold: the issue-10 split is only real while the trainer
//! compiles none of the aggregator's service stack, nor the heal executor's Kubernetes client.

use std::process::Command;

/// `cargo tree -p selfheal-model-export` (normal edges, the features the trainer itself
/// enables) holds no aggregator, axum, Kinesis or Kubernetes-client crate: the trainer reads the
/// lake through `selfheal-lake`, not through the aggregator, and never acts on a cluster.
#[test]
fn the_trainer_depends_on_no_aggregator_axum_kinesis_or_kube_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "tree",
            "--offline",
            "-p",
            "selfheal-model-export",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"selfheal-lake"), "{tree}");
    for banned in [
        "selfheal-aggregator",
        "axum",
        "axum-core",
        "aws-sdk-kinesis",
        "selfheal-heal-api",
        "kube",
        "kube-client",
        "kube-core",
        "k8s-openapi",
    ] {
        assert!(
            !crates.contains(&banned),
            "selfheal-model-export depends on {banned}:\n{tree}"
        );
    }
}
