//! `[notify]`: the channels and how messages are delivered, validated at start.
//!
//! ```toml
//! [notify]
//! external_url = "https://selfheal.example"   # links each alert to its incident page
//! queue_capacity = 1024                        # per channel; more are dropped (counted)
//! max_attempts = 10
//! retry_initial_ms = 500
//! retry_max_ms = 60000
//! flush_timeout_secs = 10                      # keep it within shutdown_grace_secs
//!
//! [[notify.webhook]]
//! name = "oncall"
//! url = "https://hooks.example/selfheal"
//! bearer_token_file = "/etc/selfheal/webhook-token"   # optional; re-read for each attempt
//! timeout_secs = 10
//! send_resolved = true
//!
//! [[notify.sns]]
//! name = "seed"
//! topic_arn = "arn:aws:sns:eu-west-1:123456789012:selfheal"
//! region = "eu-west-1"                         # default: the standard chain
//! timeout_secs = 10
//! ```

use super::queue::Delivery;
use selfheal_runtime::config::{self, FieldError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

/// `[notify]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// The aggregator's URL as people reach it (no trailing slash): alerts link to
    /// `<external_url>/incidents/<id>`. Empty: no link.
    pub external_url: String,
    /// Messages each channel's queue holds while its receiver is slow or down; beyond it new
    /// messages are dropped, counted (`outcome="dropped"`) and logged.
    pub queue_capacity: usize,
    /// Attempts per message, the first included.
    pub max_attempts: u32,
    /// First retry delay, milliseconds (full jitter below the doubling ceiling).
    pub retry_initial_ms: u64,
    /// Largest retry delay, milliseconds.
    pub retry_max_ms: u64,
    /// Seconds the shutdown may spend delivering what is queued.
    pub flush_timeout_secs: f64,
    /// Generic JSON webhooks (Alertmanager's payload).
    pub webhook: Vec<WebhookConfig>,
    /// SNS topics.
    pub sns: Vec<SnsConfig>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            external_url: String::new(),
            queue_capacity: 1024,
            // With 0.5 s doubling to 60 s: about ten minutes of outage ridden out.
            max_attempts: 15,
            retry_initial_ms: 500,
            retry_max_ms: 60_000,
            flush_timeout_secs: 10.0,
            webhook: Vec::new(),
            sns: Vec::new(),
        }
    }
}

/// `[[notify.webhook]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The channel's name (`[a-z0-9_-]`, unique): the `receiver` in the payload and the
    /// `channel` label on metrics.
    pub name: String,
    /// Where to POST; `https://`, or `http://` (a bearer token only to a loopback host).
    pub url: String,
    /// A file holding the bearer token sent as `Authorization: Bearer`, re-read for each
    /// attempt so a rotated Secret is picked up.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Seconds one attempt may take (connect, send, answer).
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
    /// Whether resolved messages are sent.
    #[serde(default = "yes")]
    pub send_resolved: bool,
}

/// `[[notify.sns]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnsConfig {
    /// The channel's name (`[a-z0-9_-]`, unique).
    pub name: String,
    /// The topic, `arn:aws:sns:<region>:<account>:<name>`.
    pub topic_arn: String,
    /// AWS region; default: the standard chain.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint override (VPC endpoint, moto); `AWS_ENDPOINT_URL` works too.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Seconds one Publish call may take.
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
    /// Whether resolved messages are sent.
    #[serde(default = "yes")]
    pub send_resolved: bool,
}

fn default_timeout() -> f64 {
    10.0
}

fn yes() -> bool {
    true
}

/// A webhook, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// The token file.
    pub bearer_token_file: Option<PathBuf>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Send resolved messages.
    pub send_resolved: bool,
}

/// An SNS topic, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnsSettings {
    /// Its name.
    pub name: String,
    /// The topic.
    pub topic_arn: String,
    /// Region.
    pub region: Option<String>,
    /// Endpoint override.
    pub endpoint_url: Option<String>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Send resolved messages.
    pub send_resolved: bool,
}

/// `[notify]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifySettings {
    /// `external_url`, without a trailing slash.
    pub external_url: String,
    /// Retries and the flush; `attempt_timeout` is per channel.
    pub delivery: Delivery,
    /// Webhooks.
    pub webhooks: Vec<WebhookSettings>,
    /// SNS topics.
    pub sns: Vec<SnsSettings>,
}

impl NotifySettings {
    /// Whether any channel is configured.
    pub fn any(&self) -> bool {
        !self.webhooks.is_empty() || !self.sns.is_empty()
    }
}

fn channel_name(
    field: &'static str,
    name: &str,
    seen: &mut BTreeSet<String>,
) -> Result<String, FieldError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok {
        return Err(FieldError::new(
            field,
            format!("{name:?} must be 1 to 64 of [a-z0-9_-]"),
        ));
    }
    if !seen.insert(name.to_owned()) {
        return Err(FieldError::new(
            field,
            format!("{name:?} names two channels; names must be unique"),
        ));
    }
    Ok(name.to_owned())
}

impl NotifyConfig {
    /// Checks every field; the error names the first bad one (for a channel, with its name).
    pub fn validate(&self) -> Result<NotifySettings, FieldError> {
        let external_url = self.external_url.trim_end_matches('/').to_owned();
        if !external_url.is_empty() {
            config::http_url("notify.external_url", &external_url)?;
        }
        config::in_range("notify.queue_capacity", self.queue_capacity, 1..=1_000_000)?;
        config::in_range("notify.max_attempts", self.max_attempts, 1..=1000)?;
        let retry_initial =
            config::millis("notify.retry_initial_ms", self.retry_initial_ms, 600_000)?;
        let retry_max = config::millis("notify.retry_max_ms", self.retry_max_ms, 3_600_000)?;
        if retry_max < retry_initial {
            return Err(FieldError::new(
                "notify.retry_max_ms",
                format!(
                    "must be at least retry_initial_ms ({})",
                    self.retry_initial_ms
                ),
            ));
        }
        let flush_timeout =
            config::secs("notify.flush_timeout_secs", self.flush_timeout_secs, 600.0)?;
        let mut names = BTreeSet::new();
        let mut webhooks = Vec::new();
        for w in &self.webhook {
            let name = channel_name("notify.webhook.name", &w.name, &mut names)?;
            let uri = config::http_url("notify.webhook.url", &w.url)
                .map_err(|e| FieldError::new(e.field, format!("webhook {name:?}: {}", e.reason)))?;
            let plain = uri.scheme_str() == Some("http");
            let loopback = uri.host().is_some_and(config::is_loopback_host);
            if plain && w.bearer_token_file.is_some() && !loopback {
                return Err(FieldError::new(
                    "notify.webhook.url",
                    format!(
                        "webhook {name:?}: a bearer token is sent over https:// only (plain \
                         http:// to a loopback host), got {:?}",
                        w.url
                    ),
                ));
            }
            if let Some(f) = &w.bearer_token_file {
                // Fail at start on a token that cannot be read, rather than at the first
                // incident.
                super::webhook::read_token(f).map_err(|e| {
                    FieldError::new(
                        "notify.webhook.bearer_token_file",
                        format!("webhook {name:?}: {e}"),
                    )
                })?;
            }
            let timeout = config::secs("notify.webhook.timeout_secs", w.timeout_secs, 300.0)?;
            webhooks.push(WebhookSettings {
                name,
                url: w.url.clone(),
                bearer_token_file: w.bearer_token_file.clone(),
                timeout,
                send_resolved: w.send_resolved,
            });
        }
        let mut sns = Vec::new();
        for s in &self.sns {
            let name = channel_name("notify.sns.name", &s.name, &mut names)?;
            let parts: Vec<&str> = s.topic_arn.split(':').collect();
            let arn_ok = parts.len() == 6
                && parts[0] == "arn"
                && parts[1].starts_with("aws")
                && parts[2] == "sns"
                && parts[3..].iter().all(|p| !p.is_empty());
            if !arn_ok {
                return Err(FieldError::new(
                    "notify.sns.topic_arn",
                    format!(
                        "sns {name:?}: {:?} is not arn:aws:sns:<region>:<account>:<topic>",
                        s.topic_arn
                    ),
                ));
            }
            if let Some(u) = &s.endpoint_url {
                config::http_url("notify.sns.endpoint_url", u)?;
            }
            let timeout = config::secs("notify.sns.timeout_secs", s.timeout_secs, 300.0)?;
            sns.push(SnsSettings {
                name,
                topic_arn: s.topic_arn.clone(),
                region: s.region.clone(),
                endpoint_url: s.endpoint_url.clone(),
                timeout,
                send_resolved: s.send_resolved,
            });
        }
        Ok(NotifySettings {
            external_url,
            delivery: Delivery {
                queue_capacity: self.queue_capacity,
                max_attempts: self.max_attempts,
                retry_initial,
                retry_max,
                // Per channel: see the channels' settings.
                attempt_timeout: Duration::from_secs(10),
                flush_timeout,
            },
            webhooks,
            sns,
        })
    }
}
