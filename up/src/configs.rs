//! The generated configs of a local instance: `agent.toml` and `aggregator.toml` in the data
//! directory, written when missing (commented, every path inside the data directory) and from
//! then on the user's: `selfheal up` reads them at every start, through the same loaders as
//! `selfheal agent|aggregator --config` (so `SELFHEAL_AGENT_*` and `SELFHEAL_AGGREGATOR_*`
//! variables override them too), and never rewrites them.
//!
//! What `up` sets itself, whatever the files say: the agent forwards to its own aggregator
//! (`forward.sink = "http"`, the ingest URL, the node's credential) and the flags `--listen` and
//! `--agent-listen` override the two listen addresses. What it refuses: an aggregator that does
//! not take HTTP ingest or serves no incidents, since then there is no loop.

use crate::datadir::{self, DataDir};
use anyhow::{Context, bail};
use selfheal_agent::config::AgentConfig;
use selfheal_aggregator::config::{AggregatorConfig, SourceKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The aggregator's address when neither the file nor `--listen` says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9478";
/// The agent's likewise.
pub const DEFAULT_AGENT_LISTEN: &str = "127.0.0.1:9477";

/// A TOML basic string holding `s`.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn header(what: &str, dd: &DataDir) -> String {
    format!(
        "# The {what} of the local instance `selfheal up` runs on {dir}.\n\
         # `selfheal up` wrote this file because it was missing, reads it at every start and never\n\
         # rewrites it: edit it freely (delete it to get the defaults back). Every field is\n\
         # documented in {src}.\n",
        dir = dd.root().display(),
        src = if what == "agent" {
            "agent/src/config.rs"
        } else {
            "aggregator/src/config.rs"
        },
    )
}

/// The generated `agent.toml`.
pub fn agent_toml(dd: &DataDir) -> String {
    let p = |name| toml_str(&dd.text(name));
    format!(
        r#"{header}#
# [forward] is not here: `selfheal up` always sends to its own aggregator (sink "http", its
# ingest URL, the credential in {ingest_token}), whatever this file says.

# Seconds between collection cycles.
interval_secs = 1
# /metrics and /healthz; `selfheal up --agent-listen` overrides it.
listen_addr = "{agent_listen}"
shutdown_grace_secs = 5

# Where the agent finds pod cgroups, under each hierarchy: the kubelet's, and the parent
# `selfheal chaos run` lays its pods out under (`--cgroup-parent`, default selfheal-chaos).
kubepods_paths = ["kubepods.slice", "kubepods", "selfheal-chaos/kubepods"]

[pods]
# No Kubernetes API on this machine: pod names, namespaces and owners come from one
# kubelet-format Pod JSON object per file in {pods_dir}, which `selfheal chaos run` writes for
# the workloads it starts. A pod cgroup with no file there is known by its UID only.
source = "dir"
dir = {pods}

[models]
# The model registry: `selfheal model publish MODEL_DIR --to {models_dir}`. A family with no
# model here is not scored, so it raises no anomaly; a model published here is picked up
# within poll_secs.
source = {models}
poll_secs = 10
cache_dir = {model_cache}

[spool]
# The outage buffer in front of the aggregator, bounded.
dir = {spool}
max_bytes = 268435456
"#,
        header = header("agent", dd),
        ingest_token = dd.path(datadir::INGEST_TOKEN).display(),
        agent_listen = DEFAULT_AGENT_LISTEN,
        pods_dir = dd.path(datadir::PODS).display(),
        pods = p(datadir::PODS),
        models_dir = dd.path(datadir::MODELS).display(),
        models = p(datadir::MODELS),
        model_cache = p(datadir::MODEL_CACHE),
        spool = p(datadir::SPOOL),
    )
}

/// The generated `aggregator.toml`.
pub fn aggregator_toml(dd: &DataDir) -> String {
    let p = |name| toml_str(&dd.text(name));
    format!(
        r#"{header}
# The ingest, the API, the incident page, /metrics and /healthz; `selfheal up --listen`
# overrides it. Loopback only: on another address the page and the read API are open to
# whoever can reach it (the ingest and the API's writes need their tokens).
listen_addr = "{listen}"
shutdown_grace_secs = 20

[ingest]
# `selfheal up` needs "http": its agent posts here.
source = "http"
log_dir = {ingest_log}

[ingest.auth]
# "<node> sha256:<digest>" lines; `selfheal up` keeps this node's line in step with
# {ingest_token}. An agent on another machine can be added, one line each.
token_file = {ingest_tokens}

[lake]
location = {lake}

[incidents]
# The token the API's writes (acknowledge, resolve, silences) need; `selfheal incidents`
# and `selfheal silences` read it through instance.json.
api_token_file = {api_token}

[incidents.store]
dir = {store}

[heal]
# Healing on, in dry-run: every decision and the request it would send is on the incident's
# timeline and in dry_run_log; nothing is changed. Real actions need a policy file with
# `dry_run = false` and `executor = "kube"`.
enabled = true
executor = "dry-run"
dry_run_log = {dry_run_log}
"#,
        header = header("aggregator", dd),
        listen = DEFAULT_LISTEN,
        ingest_log = p(datadir::INGEST_LOG),
        ingest_token = dd.path(datadir::INGEST_TOKEN).display(),
        ingest_tokens = p(datadir::INGEST_TOKENS),
        lake = p(datadir::LAKE),
        api_token = p(datadir::API_TOKEN),
        store = p(datadir::STORE),
        dry_run_log = toml_str(
            &dd.path(datadir::HEAL)
                .join("dry-run.jsonl")
                .to_string_lossy()
        ),
    )
}

/// Writes each config that is missing; the names of those written.
pub fn write_missing(dd: &DataDir) -> anyhow::Result<Vec<&'static str>> {
    let mut written = Vec::new();
    for (name, text) in [
        (datadir::AGENT_CONFIG, agent_toml(dd)),
        (datadir::AGGREGATOR_CONFIG, aggregator_toml(dd)),
    ] {
        let path = dd.path(name);
        // The data directory's lock is held: nobody else creates it meanwhile.
        if !path.exists() {
            selfheal_runtime::atomic::write(&path, text.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            written.push(name);
        }
    }
    Ok(written)
}

/// The aggregator's config: the file, `--listen` over it, and the two things `up` needs of it
/// checked.
pub fn aggregator(dd: &DataDir, listen: Option<SocketAddr>) -> anyhow::Result<AggregatorConfig> {
    let path = dd.path(datadir::AGGREGATOR_CONFIG);
    let mut cfg = AggregatorConfig::load(Some(&path))?;
    if let Some(l) = listen {
        cfg.listen_addr = l.to_string();
    }
    if cfg.ingest.source != SourceKind::Http {
        bail!(
            "{}: ingest.source must be \"http\" under `selfheal up` (its agent posts to the \
             aggregator's ingest)",
            path.display()
        );
    }
    if !cfg.incidents.enabled {
        bail!(
            "{}: incidents.enabled must be true under `selfheal up` (it serves the incident page)",
            path.display()
        );
    }
    Ok(cfg)
}

/// The agent's config: the file, `--agent-listen` over it, and forwarding to `ingest_url` with
/// the node's credential.
pub fn agent(
    dd: &DataDir,
    ingest_url: &str,
    listen: Option<SocketAddr>,
) -> anyhow::Result<AgentConfig> {
    let mut cfg = AgentConfig::load(Some(&dd.path(datadir::AGENT_CONFIG)))?;
    if let Some(l) = listen {
        cfg.listen_addr = l.to_string();
    }
    cfg.forward.sink = selfheal_agent::forward::SinkKind::Http;
    cfg.forward.http.url = ingest_url.to_owned();
    cfg.forward.http.token_file = Some(dd.path(datadir::INGEST_TOKEN));
    Ok(cfg)
}

/// Where a client on this machine reaches a server listening on `listen`: loopback when it
/// listens on every interface, else the address itself.
pub fn reachable(listen: SocketAddr, what: &str) -> anyhow::Result<SocketAddr> {
    if listen.port() == 0 {
        bail!("{what} {listen}: give a port (its URL is printed and recorded with it)");
    }
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(SocketAddr::new(ip, listen.port()))
}

/// [`reachable`] for the aggregator, which the agent posts its credential to: a specific
/// address other than loopback is refused, since the credential would travel to it in clear
/// (the agent's HTTP sink refuses that too).
pub fn local_address(listen: SocketAddr, flag: &str) -> anyhow::Result<SocketAddr> {
    let reach = reachable(listen, flag)?;
    if !reach.ip().is_loopback() {
        let any = match listen.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        bail!(
            "{flag} {listen}: the agent would send its credential to that address in clear; \
             listen on every interface instead ({}), which the agent reaches over loopback",
            SocketAddr::new(any, listen.port())
        );
    }
    Ok(reach)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_configs_load_and_validate_as_written() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dd = DataDir::create(&tmp.path().join("sh \"quoted\" dir")).expect("data dir");
        assert_eq!(
            write_missing(&dd).expect("write"),
            [datadir::AGENT_CONFIG, datadir::AGGREGATOR_CONFIG]
        );
        assert!(
            write_missing(&dd).expect("again").is_empty(),
            "never rewritten"
        );
        crate::credentials::ensure_token(&dd.path(datadir::INGEST_TOKEN)).expect("token");
        let agent = agent(&dd, "http://127.0.0.1:9478/v1/ingest", None)
            .expect("agent.toml loads")
            .validate()
            .expect("agent.toml validates");
        assert_eq!(agent.interval, std::time::Duration::from_secs(1));
        assert_eq!(agent.spool.dir, dd.path(datadir::SPOOL));
        assert_eq!(agent.forward.sink, selfheal_agent::forward::SinkKind::Http);
        std::fs::write(
            dd.path(datadir::INGEST_TOKENS),
            format!("n {}\n", "x".repeat(32)),
        )
        .expect("table");
        let listen: SocketAddr = "127.0.0.1:19478".parse().expect("addr");
        let agg = aggregator(&dd, Some(listen))
            .expect("aggregator.toml loads")
            .validate()
            .expect("aggregator.toml validates");
        assert_eq!(agg.listen_addr, listen);
        assert!(agg.http_ingest.is_some() && agg.incidents.is_some());
        let heal = agg.heal.expect("healing on");
        assert!(heal.policy.current().dry_run);
        assert_eq!(
            heal.dry_run_log,
            dd.path(datadir::HEAL).join("dry-run.jsonl")
        );
        let store = dd.path(datadir::STORE);
        let text = std::fs::read_to_string(dd.path(datadir::AGGREGATOR_CONFIG)).expect("read");
        assert!(text.contains(&toml_str(&store.to_string_lossy())), "{text}");
    }

    #[test]
    fn an_aggregator_without_http_ingest_is_refused_naming_the_field() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dd = DataDir::create(tmp.path()).expect("data dir");
        std::fs::write(
            dd.path(datadir::AGGREGATOR_CONFIG),
            "[ingest]\nsource = \"kinesis\"\n",
        )
        .expect("write");
        let err = aggregator(&dd, None).expect_err("kinesis").to_string();
        assert!(err.contains("ingest.source"), "{err}");
    }

    #[test]
    fn local_addresses() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert_eq!(
            local_address(a("127.0.0.1:9"), "--listen").expect("lo"),
            a("127.0.0.1:9")
        );
        assert_eq!(
            local_address(a("0.0.0.0:9"), "--listen").expect("any"),
            a("127.0.0.1:9")
        );
        assert_eq!(
            local_address(a("[::]:9"), "--listen").expect("any6"),
            a("[::1]:9")
        );
        let err = local_address(a("10.1.2.3:9"), "--listen")
            .expect_err("specific")
            .to_string();
        assert!(err.contains("0.0.0.0:9"), "{err}");
        assert!(local_address(a("127.0.0.1:0"), "--listen").is_err());
    }
}
