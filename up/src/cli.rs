//! `selfheal up`: the binary's edge (so anyhow). It prepares the data directory (configs,
//! credentials, lock), starts the aggregator and then the agent in this process, printing a
//! line per component as it starts and when it is ready, writes `instance.json`, prints the
//! page's URL, and on SIGINT/SIGTERM stops them in order: the agent first (its last cycle is
//! spooled and forwarded while the aggregator still accepts), then the aggregator (open batches
//! written to the lake and the incident store, checkpoints saved). `instance.json` is removed on
//! every way out: a clean stop, an error, a panic's unwinding, and a second signal's forced exit.
//!
//! Readiness is observed from outside, as a supervisor would: the aggregator is ready when its
//! `/healthz` answers 200 (it opens the lake, the store, the healing controller and the ingest
//! log before it binds), the agent when its `/metrics` counts a completed cycle.

use crate::configs;
use crate::credentials;
use crate::datadir::{self, DataDir};
use anyhow::{Context, anyhow};
use clap::Args;
use selfheal_agent::run::Output;
use selfheal_core::Family;
use selfheal_runtime::instance::{FORMAT, Instance};
use selfheal_runtime::shutdown::{self, Shutdown};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// `selfheal up` arguments.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// The data directory (configs, credentials, lake, models, spool, incident store); default
    /// $XDG_DATA_HOME/selfheal, else ~/.local/share/selfheal. Reused as it is when it exists.
    #[arg(long, env = "SELFHEAL_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The aggregator's address (ingest, API, incident page) for this run, over aggregator.toml's
    /// listen_addr (127.0.0.1:9478 as generated). An address other than loopback exposes the
    /// page and the read API to whoever can reach it.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// The agent's address (/metrics, /healthz) for this run, over agent.toml's listen_addr
    /// (127.0.0.1:9477 as generated).
    #[arg(long, value_name = "ADDR:PORT")]
    pub agent_listen: Option<SocketAddr>,
}

/// How long a component may take to become ready.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// Beyond a component's own shutdown grace, before `up` stops waiting for it.
const STOP_MARGIN: Duration = Duration::from_secs(5);

fn say(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    // A closed stdout must not stop the instance; the logs still go to stderr.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn step(component: &str, text: impl std::fmt::Display) {
    say(format_args!("  {component:<12} {text}"));
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Removes `instance.json` when dropped, so no way out leaves it pointing at nothing.
struct InstanceFile(PathBuf);

impl Drop for InstanceFile {
    fn drop(&mut self) {
        Instance::remove_own(&self.0);
    }
}

/// Runs `selfheal up`.
pub fn main(args: UpArgs) -> anyhow::Result<ExitCode> {
    let began = Instant::now();
    let dir = selfheal_runtime::instance::data_dir(args.data_dir.as_deref())?;
    let dd = DataDir::create(&dir)?;
    let _lock = dd.lock()?;
    say(format_args!(
        "selfheal up: data directory {}",
        dd.root().display()
    ));
    if let Some(mode) = dd.loose_mode() {
        step(
            "data dir",
            format_args!(
                "WARNING: mode {mode:o}, others can list it (the credentials in it are 0600); \
                 `chmod 700 {}`",
                dd.root().display()
            ),
        );
    }
    let written = configs::write_missing(&dd)?;
    if written.is_empty() {
        step("configs", "agent.toml, aggregator.toml (as found)");
    } else {
        step(
            "configs",
            format_args!(
                "wrote {} (yours to edit: read at every start, never rewritten)",
                written.join(", ")
            ),
        );
    }

    let agg_cfg = configs::aggregator(&dd, args.listen)?;
    let listen: SocketAddr = agg_cfg.listen_addr.parse().map_err(|e| {
        anyhow!(
            "{}: listen_addr {:?} is not an address:port ({e})",
            dd.path(datadir::AGGREGATOR_CONFIG).display(),
            agg_cfg.listen_addr
        )
    })?;
    let flag = if args.listen.is_some() {
        "--listen"
    } else {
        "listen_addr"
    };
    let reach = configs::local_address(listen, flag)?;
    if !listen.ip().is_loopback() {
        warn_exposed(listen);
    }
    let api_url = format!("http://{reach}");
    let ingest_url = format!("{api_url}{}", agg_cfg.ingest.path);

    let ingest_token_file = dd.path(datadir::INGEST_TOKEN);
    let api_token_file = dd.path(datadir::API_TOKEN);
    // Before the agent's config is validated: it reads its token file.
    let (ingest_token, made_ingest) = credentials::ensure_token(&ingest_token_file)?;
    let agent = configs::agent(&dd, &ingest_url, args.agent_listen)?.validate()?;
    let agent_reach = configs::reachable(agent.listen_addr, "the agent's listen_addr")?;
    // Before the aggregator's config is validated: it loads the table.
    credentials::ensure_table_entry(
        &dd.path(datadir::INGEST_TOKENS),
        &agent.node_name,
        &ingest_token,
    )?;
    let (_, made_api) = credentials::ensure_token(&api_token_file)?;
    step(
        "credentials",
        match (made_ingest, made_api) {
            (true, true) => "made ingest-token and api-token (random, mode 0600)",
            (false, false) => "reused ingest-token and api-token (mode 0600)",
            (true, false) => "made ingest-token, reused api-token (mode 0600)",
            (false, true) => "reused ingest-token, made api-token (mode 0600)",
        },
    );
    let agg = agg_cfg.validate()?;

    let instance = Instance {
        format: FORMAT,
        pid: std::process::id(),
        pid_start_ticks: selfheal_runtime::instance::process_start_ticks(std::process::id()),
        started_at_ms: now_ms(),
        data_dir: dd.root().to_owned(),
        node: agent.node_name.clone(),
        page_url: format!("{api_url}/incidents"),
        api_url,
        ingest_url,
        ingest_token_file,
        api_token_file,
        agent_url: format!("http://{agent_reach}"),
    };
    // Two workers: a local instance serves one agent and one person.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("selfheal-up")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run(&dd, instance, agg, agent, began))?;
    Ok(ExitCode::SUCCESS)
}

fn warn_exposed(listen: SocketAddr) {
    tracing::warn!(%listen, "ListenNotLoopback");
    eprintln!(
        "\n  WARNING: --listen {listen} is not a loopback address. The incident page, the read API \
         and /metrics\n  are open to anyone who can reach it (the ingest and the API's writes \
         still need their tokens,\n  which travel in clear over HTTP). Use 127.0.0.1 unless you \
         mean it.\n"
    );
}

/// The aggregator running as a task of this runtime.
struct Aggregator {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<Result<(), selfheal_aggregator::run::RunError>>>,
    grace: Duration,
}

/// The agent running on a thread of its own, with the one-thread runtime it runs on as
/// `selfheal agent` (its cycle timing is then not shared with the aggregator's work).
struct Agent {
    stop: watch::Sender<bool>,
    done: Option<oneshot::Receiver<anyhow::Result<()>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    grace: Duration,
}

/// How waiting for a component to be ready ended.
enum Wait<T> {
    Ready,
    Ended(T),
    Asked,
    TimedOut,
}

async fn wait_ready<F: Future + Unpin>(
    ended: &mut F,
    asked: &mut Shutdown,
    mut probe: impl AsyncFnMut() -> bool,
) -> Wait<F::Output> {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if probe().await {
            return Wait::Ready;
        }
        if Instant::now() > deadline {
            return Wait::TimedOut;
        }
        tokio::select! {
            out = &mut *ended => return Wait::Ended(out),
            () = asked.requested() => return Wait::Asked,
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

async fn get(http: &reqwest::Client, url: &str) -> Option<(u16, String)> {
    let r = http.get(url).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// The agent's completed cycles, from its `/metrics`.
fn cycles(metrics: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("selfheal_agent_cycles_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn missing_models(models: &Path) -> Vec<Family> {
    Family::ALL
        .into_iter()
        .filter(|f| {
            !models
                .join(f.as_str())
                .join(selfheal_core::store::LATEST_FILE)
                .is_file()
        })
        .collect()
}

async fn run(
    dd: &DataDir,
    instance: Instance,
    agg: selfheal_aggregator::config::Settings,
    agent: selfheal_agent::config::Settings,
    began: Instant,
) -> anyhow::Result<()> {
    let (trigger, mut asked) = shutdown::channel();
    let root = dd.root().to_owned();
    trigger
        .on_signals_with(move |_| {
            // A forced exit skips the destructors: the file goes here.
            Instance::remove_own(&root);
        })
        .context("cannot install the SIGTERM and SIGINT handlers")?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .context("cannot build the HTTP client")?;

    let healing = match &agg.heal {
        Some(h)
            if h.policy.current().dry_run
                || h.executor == selfheal_aggregator::heal::config::ExecutorKind::DryRun =>
        {
            format!(
                "dry-run: each decision and the request it would send go on the incident's \
                 timeline and into {}; nothing is changed",
                h.dry_run_log.display()
            )
        }
        Some(h) => format!(
            "LIVE: actions are carried out through the {:?} executor",
            h.executor
        ),
        None => "off (heal.enabled = false in aggregator.toml)".to_owned(),
    };
    let (agg_stop, agg_rx) = watch::channel(false);
    let mut aggregator = Aggregator {
        stop: agg_stop,
        grace: agg.shutdown_grace,
        task: None,
    };
    step(
        "aggregator",
        format_args!("starting on {}", agg.listen_addr),
    );
    let t = Instant::now();
    let mut task = tokio::spawn(selfheal_aggregator::run::run(agg, agg_rx));
    let healthz = format!("{}/healthz", instance.api_url);
    match wait_ready(&mut task, &mut asked, async || {
        get(&http, &healthz).await.is_some_and(|(s, _)| s == 200)
    })
    .await
    {
        Wait::Ready => aggregator.task = Some(task),
        Wait::Ended(r) => return Err(ended("aggregator", joined(r))),
        Wait::Asked => {
            aggregator.task = Some(task);
            return stop(None, aggregator).await;
        }
        Wait::TimedOut => {
            aggregator.task = Some(task);
            let _ = stop(None, aggregator).await;
            return Err(anyhow!(
                "the aggregator did not answer {healthz} within {READY_WITHIN:?}"
            ));
        }
    }
    step(
        "aggregator",
        format_args!(
            "ready in {}: ingest {}, lake {}, incident store {}",
            secs(t.elapsed()),
            instance.ingest_url,
            dd.path(datadir::LAKE).display(),
            dd.path(datadir::STORE).display()
        ),
    );
    step("healing", healing);

    step(
        "agent",
        format_args!(
            "starting: node {}, every {} on this host's procfs and cgroups",
            agent.node_name,
            secs(agent.interval)
        ),
    );
    let t = Instant::now();
    let mut agent = start_agent(agent)?;
    let metrics = format!("{}/metrics", instance.agent_url);
    let mut done = agent
        .done
        .take()
        .ok_or_else(|| anyhow!("agent started twice"))?;
    match wait_ready(&mut done, &mut asked, async || {
        get(&http, &metrics)
            .await
            .is_some_and(|(s, body)| s == 200 && cycles(&body) >= 1.0)
    })
    .await
    {
        Wait::Ready => agent.done = Some(done),
        Wait::Ended(r) => {
            let err = ended(
                "agent",
                r.unwrap_or_else(|_| Err(anyhow!("its thread panicked"))),
            );
            let _ = stop(None, aggregator).await;
            return Err(err);
        }
        Wait::Asked => {
            agent.done = Some(done);
            return stop(Some(agent), aggregator).await;
        }
        Wait::TimedOut => {
            agent.done = Some(done);
            let _ = stop(Some(agent), aggregator).await;
            return Err(anyhow!(
                "the agent completed no cycle within {READY_WITHIN:?} ({metrics})"
            ));
        }
    }
    step(
        "agent",
        format_args!(
            "ready in {}: first cycle done; metrics {metrics}",
            secs(t.elapsed())
        ),
    );
    let models = dd.path(datadir::MODELS);
    let missing = missing_models(&models);
    if missing.is_empty() {
        step(
            "models",
            format_args!("a model for every family in {}", models.display()),
        );
    } else {
        let names: Vec<&str> = missing.iter().map(|f| f.as_str()).collect();
        tracing::info!(families = %names.join(","), dir = %models.display(), "ModelsMissing");
        step(
            "models",
            format_args!(
                "none for {} in {}: those families are not scored (no anomalies) until a model \
                 is published there (`selfheal model publish MODEL_DIR --to {}`)",
                names.join(", "),
                models.display(),
                models.display()
            ),
        );
    }

    instance
        .write()
        .context("cannot tell the other commands where this instance is")?;
    let _instance_file = InstanceFile(dd.root().to_owned());
    say("");
    say(format_args!(
        "selfheal is up in {}. The incident page: {}",
        secs(began.elapsed()),
        instance.page_url
    ));
    say(format_args!(
        "`selfheal incidents list` finds this instance by {}. Ctrl-C stops it.",
        Instance::path(dd.root()).display()
    ));

    let mut done = agent
        .done
        .take()
        .ok_or_else(|| anyhow!("agent not running"))?;
    let mut task = aggregator
        .task
        .take()
        .ok_or_else(|| anyhow!("aggregator not running"))?;
    tokio::select! {
        () = asked.requested() => {
            agent.done = Some(done);
            aggregator.task = Some(task);
            say("");
            say("selfheal up: stopping (the agent first, then the aggregator)");
            stop(Some(agent), aggregator).await
        }
        r = &mut task => {
            let err = ended("aggregator", joined(r));
            agent.done = Some(done);
            let _ = stop(Some(agent), aggregator).await;
            Err(err)
        }
        r = &mut done => {
            let err = ended("agent", r.unwrap_or_else(|_| Err(anyhow!("its thread panicked"))));
            aggregator.task = Some(task);
            let _ = stop(None, aggregator).await;
            Err(err)
        }
    }
}

/// The error for a component that ended by itself.
fn ended(what: &str, r: anyhow::Result<()>) -> anyhow::Error {
    match r {
        Ok(()) => anyhow!("the {what} stopped by itself"),
        Err(e) => e.context(format!("the {what} stopped")),
    }
}

/// The aggregator task's outcome, its panic as an error.
fn joined(
    r: Result<Result<(), selfheal_aggregator::run::RunError>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match r {
        Ok(r) => r.map_err(anyhow::Error::from),
        Err(e) => Err(anyhow!("it panicked: {e}")),
    }
}

fn start_agent(settings: selfheal_agent::config::Settings) -> anyhow::Result<Agent> {
    let (stop, rx) = watch::channel(false);
    let (done_tx, done_rx) = oneshot::channel();
    let grace = settings.shutdown_grace;
    let thread = std::thread::Builder::new()
        .name("agent".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the agent's runtime")
                .and_then(|rt| {
                    rt.block_on(selfheal_agent::run::run(settings, Output::Discard, rx))
                        .map_err(anyhow::Error::from)
                });
            let _ = done_tx.send(result);
        })
        .context("cannot start the agent's thread")?;
    Ok(Agent {
        stop,
        done: Some(done_rx),
        thread: Some(thread),
        grace,
    })
}

/// Stops the agent (if running) and then the aggregator, each within its grace; the first
/// failure comes back.
async fn stop(agent: Option<Agent>, mut aggregator: Aggregator) -> anyhow::Result<()> {
    let mut failure = None;
    if let Some(mut a) = agent {
        let t = Instant::now();
        a.stop.send_replace(true);
        if let Some(done) = a.done.take() {
            match tokio::time::timeout(a.grace + STOP_MARGIN, done).await {
                Ok(Ok(Ok(()))) => step(
                    "agent",
                    format_args!(
                        "stopped in {}: last cycle spooled and forwarded",
                        secs(t.elapsed())
                    ),
                ),
                Ok(Ok(Err(e))) => failure = Some(e.context("the agent failed while stopping")),
                Ok(Err(_)) => failure = Some(anyhow!("the agent's thread panicked")),
                Err(_) => {
                    failure = Some(anyhow!(
                        "the agent did not stop within {:?}",
                        a.grace + STOP_MARGIN
                    ))
                }
            }
        }
        if let Some(thread) = a.thread.take()
            && failure.is_none()
        {
            // It has sent its result: what is left is dropping its runtime.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
    let t = Instant::now();
    aggregator.stop.send_replace(true);
    if let Some(task) = aggregator.task.take() {
        match tokio::time::timeout(aggregator.grace + STOP_MARGIN, task).await {
            Ok(Ok(Ok(()))) => step(
                "aggregator",
                format_args!(
                    "stopped in {}: open batches written to the lake and the incident store",
                    secs(t.elapsed())
                ),
            ),
            Ok(Ok(Err(e))) => {
                failure.get_or_insert(
                    anyhow::Error::from(e).context("the aggregator failed while stopping"),
                );
            }
            Ok(Err(e)) => {
                failure.get_or_insert(anyhow!("the aggregator panicked: {e}"));
            }
            Err(_) => {
                failure.get_or_insert(anyhow!(
                    "the aggregator did not stop within {:?}",
                    aggregator.grace + STOP_MARGIN
                ));
            }
        }
    }
    match failure {
        None => {
            say("selfheal up: stopped");
            Ok(())
        }
        Some(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_are_read_from_the_agents_metrics() {
        let body = "# HELP selfheal_agent_cycles Collection cycles completed.\n\
                    # TYPE selfheal_agent_cycles counter\nselfheal_agent_cycles_total 3\n";
        assert_eq!(cycles(body), 3.0);
        assert_eq!(cycles("nothing"), 0.0);
    }

    #[test]
    fn families_without_a_latest_pointer_are_missing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert_eq!(missing_models(tmp.path()).len(), Family::ALL.len());
        std::fs::create_dir_all(tmp.path().join("cpu")).expect("mkdir");
        std::fs::write(tmp.path().join("cpu/latest"), "v1\n").expect("latest");
        assert!(!missing_models(tmp.path()).contains(&Family::Cpu));
    }
}
