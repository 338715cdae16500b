//! The agent binary forwarding end to end: `selfheal agent --config ...` samples, spools and
//! sends to a real moto Kinesis stream, through a proxy that cuts the network for 30 s, and
//! across a SIGKILL. Records are counted by id against what the agent printed (`--print` shows
//! every record, after it was spooled), with `sampling.min_probability = 1` so every record is
//! forwarded and the two sets must match.

use crate::support::cgroup_fixture::write_v2_pod;
use crate::support::forest::{self, Rng, dataset, grow_forest};
use crate::support::kube_double::KubeDouble;
use crate::support::moto::{Moto, aws_env, create_stream, kinesis_client, read_stream};
use crate::support::netproxy::{Mode, TcpProxy};
use crate::support::{
    KillOnDrop, fixture, free_port, http_get, selfheal, signal, stdout_of, write_file,
};
use selfheal_agent::config::AgentConfig;
use selfheal_agent::detect::family_signals;
use selfheal_agent::forward::SinkKind;
use selfheal_core::features::FeatureSpec;
use selfheal_core::model::AlarmRule;
use selfheal_core::schema::decode_wire;
use selfheal_core::{Envelope, Family, Payload};
use selfheal_model_export::onnx::write_model_dir;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The UID of the `web` pod of `shop/Deployment/web` in `tests/fixtures/kube/pods.json`.
const WEB_UID: &str = "0f6c1d3a-2b4e-4c8a-9e71-5a2d7c4b8e01";

/// One agent's files: config, spool, stdout.
pub(crate) struct AgentFiles {
    dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
}

impl AgentFiles {
    /// A config forwarding everything to `endpoint`/`stream` every 0.2 s. `extra` is appended.
    pub(crate) fn new(endpoint: &str, stream: &str, extra: &str) -> AgentFiles {
        AgentFiles::with_sink(
            &format!(
                r#"sink = "kinesis"
[forward.kinesis]
stream_name = "{stream}"
endpoint_url = "{endpoint}"
region = "us-east-1"
connect_timeout_ms = 500"#
            ),
            extra,
        )
    }

    /// A config forwarding everything to the HTTP ingest endpoint `url` every 0.2 s, with
    /// node-a's token [`crate::ingest::NODE_A_TOKEN`] (see [`crate::ingest::token_file`]).
    pub(crate) fn http(url: &str, extra: &str) -> AgentFiles {
        let files = AgentFiles::with_sink(
            &format!(
                r#"sink = "http"
[forward.http]
url = "{url}"
connect_timeout_ms = 500
token_file = "{{TOKEN_FILE}}""#
            ),
            extra,
        );
        let token = files.token_file();
        std::fs::write(&token, format!("{}\n", crate::ingest::NODE_A_TOKEN)).expect("agent token");
        let text = std::fs::read_to_string(&files.config).expect("read agent config");
        std::fs::write(
            &files.config,
            text.replace("{TOKEN_FILE}", &token.to_string_lossy()),
        )
        .expect("write agent config");
        files
    }

    /// The file the HTTP sink reads its bearer token from.
    pub(crate) fn token_file(&self) -> PathBuf {
        self.dir.path().join("ingest-token")
    }

    /// `sink` is the `sink = ...` line of `[forward]` and the sink's own section.
    fn with_sink(sink: &str, extra: &str) -> AgentFiles {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let text = format!(
            r#"node_name = "node-a"
interval_secs = 0.2
listen_addr = "127.0.0.1:{port}"
shutdown_grace_secs = 5
{extra}
[spool]
dir = "{spool}"
[forward]
linger_ms = 20
retry_initial_ms = 50
retry_max_ms = 500
request_timeout_ms = 1000
{sink}
[sampling]
min_probability = 1.0
"#,
            spool = dir.path().join("spool").display(),
        );
        let config = write_file(dir.path(), "agent.toml", &text);
        AgentFiles { dir, config, port }
    }

    /// Starts the agent with `--print` into `stdout_name`.
    pub(crate) fn start(&self, stdout_name: &str) -> KillOnDrop {
        let out = std::fs::File::create(self.dir.path().join(stdout_name)).expect("stdout file");
        let mut cmd = selfheal();
        aws_env(&mut cmd)
            .args(["agent", "--print", "--config"])
            .arg(&self.config)
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(
                std::fs::File::create(self.dir.path().join(format!("{stdout_name}.log")))
                    .expect("log file"),
            ));
        KillOnDrop(cmd.spawn().expect("start selfheal agent"))
    }

    /// Ids of the envelopes printed into `stdout_name` (a line cut by SIGKILL is ignored), and
    /// how many were anomalies.
    pub(crate) fn printed(&self, stdout_name: &str) -> (HashSet<u128>, usize) {
        let text = std::fs::read_to_string(self.dir.path().join(stdout_name)).expect("read stdout");
        let mut ids = HashSet::new();
        let mut anomalies = 0;
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            let env: Envelope = serde_json::from_str(line).expect("a JSON envelope per line");
            anomalies += usize::from(matches!(env.payload, Payload::Anomaly(_)));
            ids.insert(env.record().id.as_u128());
        }
        (ids, anomalies)
    }

    pub(crate) fn metrics(&self) -> Option<String> {
        http_get(self.port, "/metrics").map(|(_, body)| body)
    }

    pub(crate) fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

/// Sum of every series of metric `name` in an exposition (0 when absent).
pub(crate) fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls the agent's `/metrics` until `cond` holds.
pub(crate) fn wait_metrics(
    agent: &AgentFiles,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&str) -> bool,
) {
    let start = Instant::now();
    loop {
        if let Some(m) = agent.metrics()
            && cond(&m)
        {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}; last metrics:\n{}",
            agent.metrics().unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM, then the exit status within `timeout`.
pub(crate) fn stop(child: &mut KillOnDrop, timeout: Duration) -> std::process::ExitStatus {
    signal(child.0.id(), "TERM");
    let start = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().expect("wait agent") {
            return status;
        }
        assert!(
            start.elapsed() < timeout,
            "agent still running {timeout:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every wire record on the stream: id → (times seen, partition key, envelope).
fn on_stream(
    rt: &tokio::runtime::Runtime,
    endpoint: &str,
    stream: &str,
) -> HashMap<u128, (usize, String, Envelope)> {
    let mut out: HashMap<u128, (usize, String, Envelope)> = HashMap::new();
    for (key, data) in rt.block_on(read_stream(&kinesis_client(endpoint), stream)) {
        let env = decode_wire(&data).expect("a selfheal wire record");
        let id = env.record().id.as_u128();
        out.entry(id).or_insert((0, key, env)).0 += 1;
    }
    out
}

fn assert_all_arrived(printed: &HashSet<u128>, stream: &HashMap<u128, (usize, String, Envelope)>) {
    let missing: Vec<_> = printed
        .iter()
        .filter(|id| !stream.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} printed records never arrived, e.g. {:032x?}",
        missing.len(),
        printed.len(),
        &missing[..missing.len().min(5)]
    );
}

/// A node CPU model whose threshold every score reaches (1-of-1): one anomaly per cycle.
pub(crate) fn alarming_cpu_model(root: &Path) {
    let signals = family_signals(Family::Cpu);
    let n = signals.len();
    let mut rng = Rng::new(1);
    let train = dataset(&mut rng, 1024, n);
    let forest = grow_forest(&mut rng, &train, n, 20, 64);
    let manifest = forest::manifest(
        &forest,
        FeatureSpec::raw(signals),
        "cpu",
        "v1",
        0.0,
        AlarmRule::k_of_n(1, 1),
    );
    write_model_dir(&root.join("cpu/v1"), &forest, manifest).expect("write model dir");
    std::fs::write(root.join("cpu/latest"), "v1\n").expect("write latest");
}

/// An agent forwarding to `endpoint`/`stream` that sees one pod, `web` of `shop/Deployment/web`
/// (pod identity from the kube double, metrics from a cgroup tree), and its node, and scores CPU
/// with [`alarming_cpu_model`]: anomalies every cycle, samples of the other families.
pub(crate) struct PodAgent {
    /// The agent's files.
    pub(crate) files: AgentFiles,
    _double: KubeDouble,
    _cgroup: tempfile::TempDir,
    _models: tempfile::TempDir,
}

impl PodAgent {
    pub(crate) fn new(endpoint: &str, stream: &str) -> PodAgent {
        let pods: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture("kube/pods.json")).expect("pods fixture"),
        )
        .expect("pods json");
        let double = KubeDouble::with_pod_list(&pods);
        let cgroup = tempfile::tempdir().expect("cgroup dir");
        write_v2_pod(cgroup.path(), WEB_UID, 0, 1);
        let models = tempfile::tempdir().expect("models dir");
        alarming_cpu_model(models.path());
        let files = AgentFiles::new(
            endpoint,
            stream,
            &format!(
                "cgroup_root = \"{}\"\n[pods]\nsource = \"api\"\napi_url = \"{}\"\n[models]\nsource = \"{}\"\n",
                cgroup.path().display(),
                double.url(),
                models.path().display()
            ),
        );
        PodAgent {
            files,
            _double: double,
            _cgroup: cgroup,
            _models: models,
        }
    }
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn the_agent_forwards_samples_and_anomalies_to_kinesis_keyed_by_workload() {
    let rt = runtime();
    let moto = Moto::start();
    rt.block_on(create_stream(&kinesis_client(&moto.endpoint()), "agent", 2));
    let pod_agent = PodAgent::new(&moto.endpoint(), "agent");
    let agent = &pod_agent.files;
    let mut child = agent.start("out");
    wait_metrics(
        agent,
        "20 cycles and records sent",
        Duration::from_secs(30),
        |m| {
            metric(m, "selfheal_agent_cycles_total") >= 20.0
                && metric(m, "selfheal_agent_forward_sent_records_total") > 0.0
                && metric(m, "selfheal_agent_sample_anomaly_records_total") > 0.0
        },
    );
    let m = agent.metrics().expect("metrics");
    assert_eq!(
        metric(&m, "selfheal_agent_sample_inclusion_probability"),
        1.0
    );
    assert!(
        metric(&m, "selfheal_agent_forward_sent_bytes_total") > 0.0,
        "{m}"
    );
    assert!(
        m.contains("selfheal_agent_spool_depth_records{lane=\"anomaly\"}"),
        "{m}"
    );
    assert!(
        m.contains("selfheal_agent_spool_dropped_records_total{reason=\"sample_full\"} 0"),
        "{m}"
    );
    let status = stop(&mut child, Duration::from_secs(10));
    assert!(
        status.success(),
        "exit 0 after SIGTERM: {status:?}\n{}",
        agent.log("out")
    );

    let (printed, printed_anomalies) = agent.printed("out");
    let stream = on_stream(&rt, &moto.endpoint(), "agent");
    assert_all_arrived(&printed, &stream);
    let keys: HashSet<&str> = stream.values().map(|(_, k, _)| k.as_str()).collect();
    assert!(keys.contains("node/node-a"), "{keys:?}");
    assert!(
        keys.contains("shop/Deployment/web"),
        "pod records keyed by workload: {keys:?}"
    );
    let anomalies = stream
        .values()
        .filter(|(_, _, e)| matches!(e.payload, Payload::Anomaly(_)))
        .count();
    assert!(printed_anomalies > 0);
    assert_eq!(
        anomalies, printed_anomalies,
        "every anomaly arrived, once as an anomaly"
    );
    for (_, key, env) in stream.values() {
        let rec = env.record();
        assert_eq!(key, &rec.subject.workload_key(&rec.node));
        if let Payload::Sample {
            inclusion_probability,
            ..
        } = env.payload
        {
            assert_eq!(inclusion_probability, 1.0);
        }
    }
}

#[test]
fn records_the_agent_spools_during_a_30_s_kinesis_outage_all_arrive_afterwards() {
    let rt = runtime();
    let moto = Moto::start();
    rt.block_on(create_stream(
        &kinesis_client(&moto.endpoint()),
        "outage",
        1,
    ));
    let proxy = rt.block_on(TcpProxy::start(([127, 0, 0, 1], moto.port).into()));
    let agent = AgentFiles::new(&proxy.endpoint(), "outage", "[pods]\nsource = \"none\"\n");
    let mut child = agent.start("out");
    wait_metrics(&agent, "records sent", Duration::from_secs(30), |m| {
        metric(m, "selfheal_agent_forward_sent_records_total") > 0.0
    });
    // 30 s outage: connections hang for 15 s, then they are refused for 15 s.
    let at = |m: &str| {
        (
            metric(m, "selfheal_agent_cycles_total"),
            metric(m, "selfheal_agent_forward_sent_records_total"),
        )
    };
    proxy.set(Mode::BlackHole);
    std::thread::sleep(Duration::from_secs(2)); // calls in flight finish or time out
    let (cycles0, sent0) = at(&agent.metrics().expect("metrics"));
    std::thread::sleep(Duration::from_secs(13));
    proxy.set(Mode::Refuse);
    std::thread::sleep(Duration::from_secs(15));
    let m = agent.metrics().expect("metrics");
    let (cycles1, sent1) = at(&m);
    assert_eq!(sent1, sent0, "nothing gets through the outage");
    assert!(
        cycles1 - cycles0 >= 100.0,
        "collection went on at full pace: {} cycles in 28 s",
        cycles1 - cycles0
    );
    assert!(
        metric(&m, "selfheal_agent_spool_depth_records") > 500.0,
        "{m}"
    );
    assert!(
        metric(&m, "selfheal_agent_forward_call_errors_total") >= 2.0,
        "{m}"
    );
    proxy.set(Mode::Pass);
    wait_metrics(
        &agent,
        "the backlog drained",
        Duration::from_secs(60),
        |m| metric(m, "selfheal_agent_spool_depth_records") < 50.0,
    );
    let status = stop(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{status:?}\n{}", agent.log("out"));
    let (printed, _) = agent.printed("out");
    let stream = on_stream(&rt, &moto.endpoint(), "outage");
    assert_all_arrived(&printed, &stream);
    let files = std::fs::read_dir(agent.dir.path().join("spool/sample"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(
        files <= 2,
        "spool emptied down to its active segment and checkpoint"
    );
}

#[test]
fn an_agent_killed_during_an_outage_replays_its_spool_when_restarted() {
    let rt = runtime();
    let moto = Moto::start();
    rt.block_on(create_stream(
        &kinesis_client(&moto.endpoint()),
        "killed",
        1,
    ));
    let proxy = rt.block_on(TcpProxy::start(([127, 0, 0, 1], moto.port).into()));
    proxy.set(Mode::Refuse);
    let agent = AgentFiles::new(&proxy.endpoint(), "killed", "[pods]\nsource = \"none\"\n");
    let mut first = agent.start("first");
    wait_metrics(
        &agent,
        "a queue in the spool",
        Duration::from_secs(30),
        |m| metric(m, "selfheal_agent_spool_depth_records") >= 100.0,
    );
    signal(first.0.id(), "KILL");
    let _ = first.0.wait();
    let (printed, _) = agent.printed("first");
    assert!(printed.len() >= 100, "{}", printed.len());
    let inspect = stdout_of(
        selfheal()
            .args(["agent", "spool", "inspect", "--json", "--dir"])
            .arg(agent.dir.path().join("spool")),
    );
    let ins: serde_json::Value = serde_json::from_str(&inspect).expect("json");
    let queued = ins["sample"]["records"].as_u64().expect("records") as usize;
    assert!(
        queued >= printed.len(),
        "the spool holds at least what was printed: {ins}"
    );

    proxy.set(Mode::Pass);
    let mut second = agent.start("second");
    wait_metrics(&agent, "the replay", Duration::from_secs(60), |m| {
        metric(m, "selfheal_agent_forward_sent_records_total") >= queued as f64
    });
    let status = stop(&mut second, Duration::from_secs(10));
    assert!(status.success(), "{status:?}\n{}", agent.log("second"));
    let stream = on_stream(&rt, &moto.endpoint(), "killed");
    assert_all_arrived(&printed, &stream);
    assert_all_arrived(&agent.printed("second").0, &stream);
}

#[test]
fn the_daemonset_configmap_is_a_valid_agent_config_forwarding_to_kinesis() {
    let yaml = std::fs::read_to_string(
        crate::support::repo_root().join("daemonset/system/configmap.yaml"),
    )
    .expect("configmap");
    // The TOML block under `agent.toml: |`, de-indented.
    let toml: String = yaml
        .split_once("agent.toml: |\n")
        .expect("agent.toml key")
        .1
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l.trim()))
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_file(dir.path(), "agent.toml", &toml);
    let mut cfg = AgentConfig::load(Some(&file)).expect("the ConfigMap parses");
    // Not on a node here: point the host mounts at this host's.
    cfg.proc_root = "/proc".into();
    cfg.sys_root = "/sys".into();
    // In a pod, KUBERNETES_SERVICE_HOST names the API server.
    cfg.pods.api_url = Some("https://10.96.0.1:443".into());
    let daemonset =
        std::fs::read_to_string(crate::support::repo_root().join("daemonset/agent/daemonset.yaml"))
            .expect("daemonset");
    // The models directory is the models volume's mount; here it is a directory of this host.
    let models = cfg
        .models
        .source
        .clone()
        .expect("the ConfigMap names a models source");
    assert!(
        daemonset.contains(&format!(
            "{{name: models, mountPath: {models}, readOnly: true}}"
        )),
        "the models source {models} is the models volume's mount"
    );
    cfg.models.source = Some(dir.path().display().to_string());
    let settings = cfg.validate().expect("the ConfigMap validates");
    assert_eq!(settings.forward.sink, SinkKind::Kinesis);
    assert!(!settings.forward.kinesis.stream_name.is_empty());
    let spool = settings.spool.dir.display().to_string();
    assert!(
        daemonset.contains(&format!("{{name: spool, mountPath: {spool}}}")),
        "the spool dir {spool} is the spool volume's mount"
    );
    assert!(settings.sampling.budget_bytes_per_hour * 20.0 <= 115e6);
}
