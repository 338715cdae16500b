//! `selfheal heal dry-run ID`: what the policy would do about an incident now (the binary's
//! edge, so anyhow). It asks the aggregator (`GET /api/v1/incidents/{id}/plan`), which decides
//! with the policy in force, the guardrails' memory and the workload as observed, and changes
//! nothing.

use super::api::PlanBody;
use crate::policy::Decision;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use std::process::ExitCode;

/// `selfheal heal`.
#[derive(Debug, Args)]
pub struct HealArgs {
    /// The aggregator's base URL; default: the local instance `selfheal up` runs.
    #[arg(long, global = true, env = "SELFHEAL_URL")]
    pub url: Option<String>,
    /// The local instance's data directory (without --url); default:
    /// $XDG_DATA_HOME/selfheal, else ~/.local/share/selfheal.
    #[arg(long, global = true, env = "SELFHEAL_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    command: HealCommand,
}

#[derive(Debug, Subcommand)]
enum HealCommand {
    /// Print what the policy would do about an incident now, changing nothing.
    DryRun {
        /// The incident id.
        id: String,
    },
}

/// Runs `selfheal heal ...`.
pub fn main(args: HealArgs) -> anyhow::Result<ExitCode> {
    let HealCommand::DryRun { id } = &args.command;
    if !(id.len() == 20 && id.bytes().all(|b| b.is_ascii_hexdigit())) {
        bail!("{id:?} is not an incident id (20 hex digits)");
    }
    let (base, _) = crate::api::cli::api_target(args.url.as_deref(), args.data_dir.as_deref())?;
    let url = format!("{base}/api/v1/incidents/{id}/plan");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let body: serde_json::Value = rt.block_on(async {
        let r = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .context("HTTP client")?
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = r.status();
        let v: serde_json::Value = r.json().await.with_context(|| format!("GET {url}: body"))?;
        if !status.is_success() {
            bail!(
                "GET {url}: {status}: {}",
                v.get("error").and_then(|e| e.as_str()).unwrap_or("")
            );
        }
        anyhow::Ok(v)
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    let plan: PlanBody = serde_json::from_value(body).context("the aggregator's answer")?;
    print!("{}", render(&plan));
    Ok(ExitCode::SUCCESS)
}

/// The plan for people.
pub fn render(p: &PlanBody) -> String {
    let i = &p.incident;
    let mut s = format!(
        "incident  {} ({}, {} {}, {})\npolicy    {}\n",
        i.id,
        i.workload_key,
        i.family,
        i.scope.as_str(),
        i.state,
        if p.dry_run {
            "dry-run (records only)"
        } else {
            "enforcing"
        }
    );
    let d = match &p.decision {
        Decision::Wait { why } => format!("nothing now: {why}"),
        Decision::Observe { target } => format!("would observe {target} first"),
        Decision::Act(plan) => {
            let mut t = format!(
                "would {} [{}] via the {} playbook\nrequest   {}",
                super::describe(&plan.request),
                plan.request.request_id,
                plan.playbook,
                serde_json::to_string(&plan.request).unwrap_or_default()
            );
            if let Some(r) = &plan.restore {
                t.push_str(&format!(
                    "\nrestore   back to {} after {}s",
                    r.previous,
                    r.after_ms / 1000
                ));
            }
            t
        }
        Decision::Refuse(r) => format!(
            "refused by {}: {}{}",
            r.guardrail,
            r.reason,
            if r.retry_at_ms.is_some() {
                ""
            } else {
                " (would escalate)"
            }
        ),
        Decision::Escalate { reason } => format!("would escalate: {reason}"),
    };
    s.push_str(&format!("decision  {d}\n"));
    for a in &p.actions {
        let outcome = match &a.outcome {
            None => "intent recorded, no outcome yet".to_owned(),
            Some(o) => match &o.result {
                Ok(x) => x.detail.clone(),
                Err(e) => format!("failed: {e}"),
            },
        };
        s.push_str(&format!(
            "recorded  [{}] {}: {outcome}\n",
            a.request_id,
            super::describe(&a.request)
        ));
    }
    s
}
