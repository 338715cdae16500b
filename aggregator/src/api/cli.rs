//! `selfheal incidents ...` and `selfheal silences ...`: the API's command-line client (the
//! binary's edge, so anyhow). Human tables by default, `--json` for scripts; `--url` (or
//! `SELFHEAL_URL`) points at an aggregator; without it, the local instance `selfheal up` runs
//! (found through its `instance.json`, whose API token is then used unless `--token-file` says
//! otherwise), and a clear error when none is running.

use super::{ListBody, NewSilence, ShowBody, SilenceView};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use selfheal_core::incident::{Event, EventKind, Incident, MutedBy, Silence};
use std::process::ExitCode;
use std::time::Duration;

/// Where the API is.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The aggregator's base URL; default: the local instance `selfheal up` runs.
    #[arg(long, global = true, env = "SELFHEAL_URL")]
    pub url: Option<String>,
    /// The local instance's data directory, where its `instance.json` is (without --url);
    /// default: $XDG_DATA_HOME/selfheal, else ~/.local/share/selfheal.
    #[arg(long, global = true, env = "SELFHEAL_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// The file holding the API token (the aggregator's `incidents.api_token_file`), sent as a
    /// bearer token; acknowledge, resolve and silence changes need it. Default with the local
    /// instance: its own.
    #[arg(long, global = true, env = "SELFHEAL_API_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
}

/// `selfheal incidents`.
#[derive(Debug, Args)]
pub struct IncidentsArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: IncidentsCommand,
}

#[derive(Debug, Subcommand)]
enum IncidentsCommand {
    /// List incidents, newest first.
    List {
        /// Only these states (repeat or comma-separate): open, acknowledged, acting,
        /// verifying, resolved, escalated.
        #[arg(long, value_delimiter = ',')]
        state: Vec<String>,
        /// Only these severities: info, warning, critical.
        #[arg(long, value_delimiter = ',')]
        severity: Vec<String>,
        /// Only this namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Only this workload (`Deployment/checkout`).
        #[arg(long)]
        workload: Option<String>,
        /// Only this family.
        #[arg(long)]
        family: Option<String>,
        /// Only incidents seen since (RFC 3339 or unix ms).
        #[arg(long)]
        since: Option<String>,
        /// Most incidents to print.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One incident with its timeline.
    Show {
        /// The incident id.
        id: String,
    },
    /// Acknowledge an incident.
    Ack(ActArgs),
    /// Resolve an incident by hand.
    Resolve(ActArgs),
}

#[derive(Debug, Args)]
struct ActArgs {
    /// The incident id.
    id: String,
    /// Who you are (recorded on the timeline); default `$USER`.
    #[arg(long, env = "USER")]
    by: String,
    /// Why.
    #[arg(long, default_value = "")]
    comment: String,
}

/// `selfheal silences`.
#[derive(Debug, Args)]
pub struct SilencesArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: SilencesCommand,
}

#[derive(Debug, Subcommand)]
enum SilencesCommand {
    /// Create a silence: every matcher must match (`namespace=shop`, `workload=~Deploy.*`,
    /// `node!=n1`; labels namespace, workload, family, node, scope, key).
    Add {
        /// A matcher (repeat for more).
        #[arg(long = "matcher", short = 'm', required = true)]
        matchers: Vec<String>,
        /// How long: `90s`, `30m`, `2h`, `1d`.
        #[arg(long, default_value = "2h")]
        duration: String,
        /// Who you are; default `$USER`.
        #[arg(long, env = "USER")]
        by: String,
        /// Why (required).
        #[arg(long)]
        comment: String,
    },
    /// List silences.
    List,
    /// Expire a silence now.
    Expire {
        /// The silence id.
        id: String,
        /// Who you are; default `$USER`.
        #[arg(long, env = "USER")]
        by: String,
    },
}

fn parse_duration(s: &str) -> anyhow::Result<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("{s:?} is not a duration like 90s, 30m, 2h, 1d"))?;
    let mult = match unit {
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => bail!("{s:?}: unit must be s, m, h or d"),
    };
    Ok(n * mult)
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// The API to talk to: `url` when given, else the running local instance of `data_dir` (the
/// default data directory without it). The instance comes back too, for its token file.
pub fn api_target(
    url: Option<&str>,
    data_dir: Option<&std::path::Path>,
) -> anyhow::Result<(String, Option<selfheal_runtime::instance::Instance>)> {
    use selfheal_runtime::instance::{self, Instance};
    if let Some(u) = url {
        return Ok((u.trim_end_matches('/').to_owned(), None));
    }
    let dir = instance::data_dir(data_dir)?;
    let inst = Instance::find(&dir)?;
    Ok((inst.api_url.trim_end_matches('/').to_owned(), Some(inst)))
}

impl Client {
    fn new(t: &Target) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .context("cannot build the HTTP client")?;
        let (base, inst) = api_target(t.url.as_deref(), t.data_dir.as_deref())?;
        let token_file = t
            .token_file
            .clone()
            .or_else(|| inst.map(|i| i.api_token_file));
        let token = token_file
            .as_deref()
            .map(super::auth::read_token_file)
            .transpose()?;
        Ok(Client { http, base, token })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let r = req
            .send()
            .await
            .with_context(|| format!("cannot reach the aggregator at {}", self.base))?;
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
        if !status.is_success() {
            let msg = body
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("no error message");
            if status == reqwest::StatusCode::UNAUTHORIZED && self.token.is_none() {
                bail!("{status}: {msg} (pass --token-file or set SELFHEAL_API_TOKEN_FILE)");
            }
            bail!("{status}: {msg}");
        }
        Ok(body)
    }

    async fn get(&self, path: &str, q: &[(&str, String)]) -> anyhow::Result<serde_json::Value> {
        self.send(
            self.http
                .get(format!("{}{path}{}", self.base, query_string(q))),
        )
        .await
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn query_string(q: &[(&str, String)]) -> String {
    let parts: Vec<String> = q
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn fmt_time(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
}

fn muted(m: &Option<MutedBy>) -> String {
    m.as_ref().map_or(String::new(), |m| m.to_string())
}

fn where_(i: &Incident) -> String {
    match (
        i.labels.get("namespace"),
        i.labels.get("workload"),
        i.labels.get("node"),
    ) {
        (Some(ns), Some(w), _) => format!("{ns}/{w}"),
        (_, _, Some(n)) => format!("node/{n}"),
        _ => i.key.clone(),
    }
}

fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{v:<w$}", w = widths[i]))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

fn describe(e: &Event) -> String {
    match &e.kind {
        EventKind::Opened => "opened".into(),
        EventKind::Anomalies {
            added,
            pods,
            nodes,
            peak_score,
            threshold,
        } => format!(
            "+{added} anomalies ({pods} pods, {nodes} nodes; peak {peak_score:.3} vs {threshold:.3})"
        ),
        EventKind::StateChanged { from, to } => format!("{from} -> {to}: {}", e.cause),
        EventKind::SeverityChanged { from, to, score } => {
            format!("severity {from} -> {to} (score {score:.2})")
        }
        EventKind::Muted { by } => format!("muted by {by}"),
        EventKind::Unmuted { was } => format!("no longer muted by {was}"),
        EventKind::Notified { reason } => format!("notified ({reason:?})").to_lowercase(),
        EventKind::NotificationSuppressed { reason, by } => {
            format!("notification {reason:?} held back by {by}").to_lowercase()
        }
        EventKind::HealDecided { playbook, decision } => {
            format!("heal: {playbook}: {decision}")
        }
        EventKind::HealRefused {
            guardrail,
            reason,
            retry_at_ms,
        } => match retry_at_ms {
            Some(t) => format!(
                "heal refused by {guardrail}: {reason} (again at {})",
                fmt_time(*t)
            ),
            None => format!("heal refused by {guardrail}: {reason}"),
        },
        EventKind::ActionIntent {
            request_id,
            executor,
            dry_run,
            request,
        } => format!(
            "{}{} via {executor} [{request_id}]",
            if *dry_run { "dry-run: would " } else { "" },
            crate::heal::describe(request)
        ),
        EventKind::ActionApplied {
            request_id,
            outcome,
        } => format!("applied [{request_id}]: {}", outcome.detail),
        EventKind::ActionFailed {
            request_id,
            error,
            retry_at_ms,
        } => match retry_at_ms {
            Some(t) => format!("failed [{request_id}]: {error} (retry at {})", fmt_time(*t)),
            None => format!("failed [{request_id}]: {error}"),
        },
        EventKind::VerificationStarted {
            request_id,
            until_ms,
        } => format!("verifying [{request_id}] until {}", fmt_time(*until_ms)),
        EventKind::Verified {
            request_id,
            healed,
            detail,
        } => format!(
            "verification [{request_id}]: {}: {detail}",
            if *healed { "healed" } else { "not healed" }
        ),
    }
}

/// Runs `selfheal incidents ...`.
pub fn incidents_main(args: IncidentsArgs) -> anyhow::Result<ExitCode> {
    let c = Client::new(&args.target)?;
    let json = args.target.json;
    runtime()?.block_on(async move {
        match args.command {
            IncidentsCommand::List {
                state,
                severity,
                namespace,
                workload,
                family,
                since,
                limit,
            } => {
                let mut q = vec![("limit", limit.to_string())];
                if !state.is_empty() {
                    q.push(("state", state.join(",")));
                }
                if !severity.is_empty() {
                    q.push(("severity", severity.join(",")));
                }
                for (k, v) in [
                    ("namespace", namespace),
                    ("workload", workload),
                    ("family", family),
                    ("since", since),
                ] {
                    if let Some(v) = v {
                        q.push((k, v));
                    }
                }
                let v = c.get("/api/v1/incidents", &q).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                    return Ok(ExitCode::SUCCESS);
                }
                let body: ListBody = serde_json::from_value(v).context("unexpected answer")?;
                let mut rows = vec![vec![
                    "ID".into(),
                    "STATE".into(),
                    "SEVERITY".into(),
                    "FAMILY".into(),
                    "WHERE".into(),
                    "ANOMALIES".into(),
                    "PODS".into(),
                    "NODES".into(),
                    "PEAK/THRESHOLD".into(),
                    "LAST SEEN".into(),
                    "MUTED".into(),
                ]];
                for i in &body.incidents {
                    rows.push(vec![
                        i.id.to_string(),
                        i.state.to_string(),
                        i.severity.to_string(),
                        i.family.to_string(),
                        where_(i),
                        i.anomaly_count.to_string(),
                        i.pod_count.to_string(),
                        i.node_count.to_string(),
                        format!("{:.3}/{:.3}", i.peak.score, i.peak.threshold),
                        fmt_time(i.last_seen_ms),
                        muted(&i.muted),
                    ]);
                }
                print_table(&rows);
                if body.next.is_some() {
                    println!("(more: raise --limit)");
                }
                Ok(ExitCode::SUCCESS)
            }
            IncidentsCommand::Show { id } => {
                let v = c
                    .get(&format!("/api/v1/incidents/{}", encode(&id)), &[])
                    .await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                    return Ok(ExitCode::SUCCESS);
                }
                let b: ShowBody = serde_json::from_value(v).context("unexpected answer")?;
                let i = &b.incident;
                println!("incident   {}", i.id);
                println!("key        {}", i.key);
                println!("state      {}", i.state);
                println!("severity   {} (score {:.2})", i.severity, i.severity_score);
                println!("first seen {}", fmt_time(i.first_seen_ms));
                println!("last seen  {}", fmt_time(i.last_seen_ms));
                println!("anomalies  {}", i.anomaly_count);
                println!(
                    "peak       {:.3} vs threshold {:.3}",
                    i.peak.score, i.peak.threshold
                );
                println!(
                    "latest     {:.3} vs threshold {:.3}",
                    i.latest.score, i.latest.threshold
                );
                println!(
                    "models     {}",
                    i.model_versions
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let feats: Vec<String> = i
                    .top_features()
                    .iter()
                    .map(|f| format!("{} x{}", f.name, f.count))
                    .collect();
                println!("features   {}", feats.join(", "));
                println!(
                    "pods ({})  {}",
                    i.pod_count,
                    i.pods.iter().cloned().collect::<Vec<_>>().join(" ")
                );
                println!(
                    "nodes ({}) {}",
                    i.node_count,
                    i.nodes.iter().cloned().collect::<Vec<_>>().join(" ")
                );
                if let Some(m) = &i.muted {
                    println!("muted      {m}");
                }
                println!("\ntimeline");
                for e in &b.events {
                    println!(
                        "  {}  {:<12} {}",
                        fmt_time(e.at_ms),
                        e.actor.to_string(),
                        describe(e)
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            IncidentsCommand::Ack(a) => act(&c, "ack", a, json).await,
            IncidentsCommand::Resolve(a) => act(&c, "resolve", a, json).await,
        }
    })
}

async fn act(c: &Client, what: &str, a: ActArgs, json: bool) -> anyhow::Result<ExitCode> {
    let body = super::ActBody {
        by: a.by,
        comment: a.comment,
    };
    let v = c
        .send(
            c.http
                .post(format!(
                    "{}/api/v1/incidents/{}/{what}",
                    c.base,
                    encode(&a.id)
                ))
                .json(&body),
        )
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let i: Incident = serde_json::from_value(v).context("unexpected answer")?;
        println!("{} is now {}", i.id, i.state);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `selfheal silences ...`.
pub fn silences_main(args: SilencesArgs) -> anyhow::Result<ExitCode> {
    let c = Client::new(&args.target)?;
    let json = args.target.json;
    runtime()?.block_on(async move {
        let v = match args.command {
            SilencesCommand::Add {
                matchers,
                duration,
                by,
                comment,
            } => {
                let body = NewSilence {
                    matchers,
                    duration_secs: Some(parse_duration(&duration)?),
                    created_by: by,
                    comment,
                    ..NewSilence::default()
                };
                let v = c
                    .send(
                        c.http
                            .post(format!("{}/api/v1/silences", c.base))
                            .json(&body),
                    )
                    .await?;
                if !json {
                    let s: Silence = serde_json::from_value(v).context("unexpected answer")?;
                    println!("silence {} until {}", s.id, fmt_time(s.ends_at_ms));
                    return Ok(ExitCode::SUCCESS);
                }
                v
            }
            SilencesCommand::List => {
                let v = c.get("/api/v1/silences", &[]).await?;
                if !json {
                    let list: Vec<SilenceView> =
                        serde_json::from_value(v).context("unexpected answer")?;
                    let mut rows = vec![vec![
                        "ID".into(),
                        "STATE".into(),
                        "MATCHERS".into(),
                        "STARTS".into(),
                        "ENDS".into(),
                        "BY".into(),
                        "COMMENT".into(),
                    ]];
                    for s in list {
                        rows.push(vec![
                            s.silence.id.clone(),
                            format!("{:?}", s.state).to_lowercase(),
                            s.silence
                                .matchers
                                .iter()
                                .map(|m| m.to_string())
                                .collect::<Vec<_>>()
                                .join(","),
                            fmt_time(s.silence.starts_at_ms),
                            fmt_time(s.silence.ends_at_ms),
                            s.silence.created_by.clone(),
                            s.silence.comment.clone(),
                        ]);
                    }
                    print_table(&rows);
                    return Ok(ExitCode::SUCCESS);
                }
                v
            }
            SilencesCommand::Expire { id, by } => {
                let v = c
                    .send(c.http.delete(format!(
                        "{}/api/v1/silences/{}{}",
                        c.base,
                        encode(&id),
                        query_string(&[("by", by)])
                    )))
                    .await?;
                if !json {
                    println!("silence {id} expired");
                    return Ok(ExitCode::SUCCESS);
                }
                v
            }
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").ok(), Some(90.0));
        assert_eq!(parse_duration("2h").ok(), Some(7200.0));
        assert_eq!(parse_duration("1d").ok(), Some(86_400.0));
        assert!(parse_duration("2w").is_err());
        assert!(parse_duration("h").is_err());
    }
}
