//! The data path end to end, every part real: the agent binary scores a pod and its node with a
//! model, samples and spools, and forwards to a moto Kinesis stream; the aggregator binary reads
//! every shard of it into a Parquet lake in moto S3; the trainer trains a new model from that
//! lake. Every anomaly the agent raised must be in the lake, as an anomaly row carrying its
//! score, threshold and model version.

use crate::agent_forward::{PodAgent, metric, runtime, stop, wait_metrics};
use crate::lake::{start_aggregator, wait_for_ids};
use crate::support::moto::{
    Moto, aws_env, create_bucket, create_stream, kinesis_client, s3_client,
};
use crate::support::{selfheal, stdout_of};
use selfheal_aggregator::lake::LakeStore;
use selfheal_aggregator::lake::format::RowKind;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

#[test]
fn anomalies_from_the_agent_reach_the_s3_lake_through_kinesis_and_train_a_model() {
    let rt = runtime();
    let moto = Moto::start();
    rt.block_on(create_stream(
        &kinesis_client(&moto.endpoint()),
        "records",
        2,
    ));
    let s3 = s3_client(&moto.endpoint());
    rt.block_on(create_bucket(&s3, "lake-bucket"));

    // The agent sees one pod and its node, scores CPU with a model that alarms every cycle, and
    // forwards everything (probability 1) so ids can be counted.
    let pod_agent = PodAgent::new(&moto.endpoint(), "records");
    let agent = &pod_agent.files;
    let run = tempfile::tempdir().expect("aggregator dir");
    let aggregator = start_aggregator(
        run.path(),
        &moto.endpoint(),
        "records",
        "s3://lake-bucket/lake",
    );
    let mut child = agent.start("out");
    wait_metrics(
        agent,
        "30 cycles with anomalies sent",
        Duration::from_secs(60),
        |m| {
            metric(m, "selfheal_agent_cycles_total") >= 30.0
                && metric(m, "selfheal_agent_sample_anomaly_records_total") >= 10.0
        },
    );
    let status = stop(&mut child, Duration::from_secs(10));
    assert!(
        status.success(),
        "agent exit 0: {status:?}\n{}",
        agent.log("out")
    );
    let (printed, printed_anomalies) = agent.printed("out");
    assert!(
        printed_anomalies >= 10,
        "{printed_anomalies} anomalies printed"
    );

    // Everything the agent printed lands in the lake, each record once.
    let store = LakeStore::S3 {
        client: s3.clone(),
        bucket: "lake-bucket".into(),
        prefix: "lake/".into(),
    };
    let rows = rt.block_on(wait_for_ids(&store, &printed));
    aggregator.stop();
    let mut seen: HashMap<u128, usize> = HashMap::new();
    for (_, r) in rows.iter().filter(|(_, r)| r.kind != RowKind::Window) {
        *seen.entry(r.id.as_u128()).or_default() += 1;
    }
    assert!(seen.values().all(|&n| n == 1), "a record written twice");
    let anomalies: Vec<_> = rows
        .iter()
        .map(|(_, r)| r)
        .filter(|r| r.kind == RowKind::Anomaly)
        .collect();
    assert_eq!(
        anomalies.len(),
        printed_anomalies,
        "every anomaly the agent raised is an anomaly row of the lake"
    );
    for a in &anomalies {
        assert_eq!(a.model_version.as_deref(), Some("v1"));
        assert!(a.score.is_some_and(f64::is_finite) && a.threshold == Some(0.0));
        assert_eq!(a.inclusion_probability, Some(1.0));
    }
    let workloads: HashSet<&str> = rows.iter().map(|(_, r)| r.workload.as_str()).collect();
    assert!(
        workloads.contains("shop/Deployment/web") && workloads.contains("node/node-a"),
        "{workloads:?}"
    );

    // The trainer reads that lake and trains a model from the samples the agent collected:
    // memory, since with this alarming CPU model every CPU record is an anomaly, and the trainer
    // learns normal behaviour from samples only.
    let out = tempfile::tempdir().expect("model dir");
    let model = out.path().join("memory");
    let mut train = selfheal();
    aws_env(&mut train)
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .args(["model", "train", "--family", "memory", "--trees", "20"])
        .args(["--input", "s3://lake-bucket/lake", "--out"])
        .arg(&model);
    stdout_of(&mut train);
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(model.join("manifest.json")).expect("manifest written"),
    )
    .expect("manifest JSON");
    assert_eq!(manifest["family"], "memory");
    assert!(
        std::fs::metadata(model.join("model.onnx")).is_ok_and(|m| m.len() > 0),
        "model.onnx written"
    );
}
