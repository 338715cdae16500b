//! What the pod source is and how to reach it: [`PodsConfig`] as the agent's config file and
//! environment give it, checked by [`PodsConfig::validate`], and `auto` resolved against the
//! environment the agent runs in.

use reqwest::Url;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Default path of the service-account token mounted into every pod.
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// Default path of the cluster CA bundle mounted next to the token.
pub const DEFAULT_CA_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// Default kubelet endpoint (the kubelet's authenticated port on the node itself).
pub const DEFAULT_KUBELET_URL: &str = "https://127.0.0.1:10250";

/// Which source pod identities come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodSource {
    /// `api` when `KUBERNETES_SERVICE_HOST` is set (running in a cluster), else `none`.
    #[default]
    Auto,
    /// The API server: list and watch this node's pods.
    Api,
    /// The kubelet's `/pods` endpoint, polled. The kubelet authorizes `/pods` as `get` on
    /// `nodes/proxy` (or `nodes/pods` with the `KubeletFineGrainedAuthz` feature), which is
    /// broader than the `api` source's get/list/watch on pods: prefer `api`.
    Kubelet,
    /// A local directory of kubelet-format Pod JSON files, one object per file (`<uid>.json`),
    /// re-read every `dir_poll_ms`: for pods a program on this machine lays out in cgroups
    /// (`selfheal chaos run`, `selfheal up`) where there is no kubelet to ask.
    Dir,
    /// No pod identity: records carry only the UID from the cgroup path.
    None,
}

/// Where pod identities come from and how to reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PodsConfig {
    /// `auto` (default), `api`, `kubelet`, `dir` or `none`. `auto` means `api` inside a cluster
    /// (`KUBERNETES_SERVICE_HOST` set) and `none` elsewhere.
    pub source: PodSource,
    /// The directory of Pod JSON files for the `dir` source (required there; must exist).
    pub dir: Option<PathBuf>,
    /// Milliseconds between two reads of `dir` (100..=60000). A read lists the directory and
    /// parses only the files whose size, modification time or inode changed.
    pub dir_poll_ms: u64,
    /// API server base URL. Defaults to `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    pub api_url: Option<String>,
    /// Kubelet base URL for the `kubelet` source.
    pub kubelet_url: String,
    /// File holding the bearer token; read again on every (re)connect because projected tokens
    /// rotate. A missing file means requests go without a token.
    pub token_file: PathBuf,
    /// PEM bundle of the CA that signs the API server's (or kubelet's) certificate; used for
    /// `https` URLs unless `insecure_skip_tls_verify` is set.
    pub ca_file: PathBuf,
    /// Accept any server certificate. DANGEROUS: anyone on the path can impersonate the server
    /// and read the token. Only for kubelets with self-signed serving certificates: refused at
    /// start unless the source's host is node-local (loopback, `localhost` or `$NODE_IP`), as
    /// is a plain `http://` URL.
    pub insecure_skip_tls_verify: bool,
    /// Seconds between full re-lists: the kubelet source polls this often, and the API source
    /// asks the server to end each watch after this long, then lists again.
    pub resync_secs: u64,
    /// Seconds allowed for one list request, and for a watch stream to stay silent beyond
    /// `resync_secs` before the connection is considered dead.
    pub request_timeout_secs: u64,
    /// Fewest seconds between two re-lists asked for by [`PodDirectory::request_relist`](super::PodDirectory::request_relist) (a
    /// cgroup of a pod not yet known), so a burst of new pods costs one list.
    pub min_relist_interval_secs: u64,
}

impl Default for PodsConfig {
    fn default() -> Self {
        PodsConfig {
            source: PodSource::Auto,
            dir: None,
            dir_poll_ms: 1000,
            api_url: None,
            kubelet_url: DEFAULT_KUBELET_URL.into(),
            token_file: PathBuf::from(DEFAULT_TOKEN_FILE),
            ca_file: PathBuf::from(DEFAULT_CA_FILE),
            insecure_skip_tls_verify: false,
            resync_secs: 300,
            request_timeout_secs: 30,
            min_relist_interval_secs: 5,
        }
    }
}

/// A [`PodsConfig`] value that cannot be used: the runtime's field error (the agent's `ConfigError` adds
/// "invalid agent configuration").
pub type PodsConfigError = selfheal_runtime::config::FieldError;

impl PodsConfig {
    /// The source in effect: `auto` resolved against the environment.
    pub fn resolved_source(&self) -> PodSource {
        self.resolve_source_with(std::env::var("KUBERNETES_SERVICE_HOST").ok().as_deref())
    }

    fn resolve_source_with(&self, service_host: Option<&str>) -> PodSource {
        match self.source {
            PodSource::Auto if service_host.is_some_and(|h| !h.is_empty()) => PodSource::Api,
            PodSource::Auto => PodSource::None,
            other => other,
        }
    }

    /// The API server URL in effect: `api_url`, or the in-cluster service address.
    pub fn resolved_api_url(&self) -> Option<String> {
        self.api_url.clone().or_else(|| {
            let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
            let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
            Some(in_cluster_url(&host, &port))
        })
    }

    /// Checks every field; the error names the field. Called by the agent's config validation.
    pub fn validate(&self) -> Result<(), PodsConfigError> {
        let bad = |field, reason: String| Err(PodsConfigError { field, reason });
        if !(1..=86_400).contains(&self.resync_secs) {
            return bad(
                "pods.resync_secs",
                format!("must be in 1..=86400, got {}", self.resync_secs),
            );
        }
        if !(1..=600).contains(&self.request_timeout_secs) {
            return bad(
                "pods.request_timeout_secs",
                format!("must be in 1..=600, got {}", self.request_timeout_secs),
            );
        }
        if self.min_relist_interval_secs > 3600 {
            return bad(
                "pods.min_relist_interval_secs",
                format!(
                    "must be at most 3600, got {}",
                    self.min_relist_interval_secs
                ),
            );
        }
        let kubelet = check_url("pods.kubelet_url", &self.kubelet_url)?;
        let api = self
            .api_url
            .as_deref()
            .map(|u| check_url("pods.api_url", u))
            .transpose()?;
        let node_ip = std::env::var(NODE_IP_ENV).ok();
        // The bearer token goes with every request: never in clear, and never to a server whose
        // certificate is not checked, unless the server is on this node (loopback, or the
        // node's own address from the downward API) where nobody else is on the path.
        match self.resolved_source() {
            PodSource::Api => {
                if let Some(api) = &api {
                    refuse_unless_node_local(
                        "pods.api_url",
                        api,
                        self.insecure_skip_tls_verify,
                        node_ip.as_deref(),
                    )?;
                } else if self.insecure_skip_tls_verify {
                    return bad(
                        "pods.insecure_skip_tls_verify",
                        "the in-cluster API server is not node-local: its certificate must be \
                         checked against pods.ca_file"
                            .into(),
                    );
                }
            }
            PodSource::Kubelet => refuse_unless_node_local(
                "pods.kubelet_url",
                &kubelet,
                self.insecure_skip_tls_verify,
                node_ip.as_deref(),
            )?,
            PodSource::Dir => {
                if !(100..=60_000).contains(&self.dir_poll_ms) {
                    return bad(
                        "pods.dir_poll_ms",
                        format!("must be in 100..=60000, got {}", self.dir_poll_ms),
                    );
                }
                match self.dir.as_deref() {
                    None => {
                        return bad(
                            "pods.dir",
                            "source is `dir` but no directory is given".into(),
                        );
                    }
                    Some(d) if !d.is_dir() => {
                        return bad("pods.dir", format!("{} is not a directory", d.display()));
                    }
                    Some(_) => {}
                }
            }
            PodSource::Auto | PodSource::None => {}
        }
        if self.resolved_source() == PodSource::Api && self.resolved_api_url().is_none() {
            return bad(
                "pods.api_url",
                "source is `api` but api_url is unset and KUBERNETES_SERVICE_HOST is empty".into(),
            );
        }
        if self.token_file.as_os_str().is_empty() {
            return bad("pods.token_file", "must not be empty".into());
        }
        Ok(())
    }
}

/// Environment variable holding the node's own IP address (the DaemonSet sets it from the
/// downward API's `status.hostIP`): a pod source at that address counts as node-local.
pub const NODE_IP_ENV: &str = "NODE_IP";

/// Refuses `url` when it is plain `http://` or `insecure` skips certificate checks, unless
/// its host is node-local: a loopback address, `localhost`, or `node_ip`.
fn refuse_unless_node_local(
    field: &'static str,
    url: &Url,
    insecure: bool,
    node_ip: Option<&str>,
) -> Result<(), PodsConfigError> {
    let plaintext = url.scheme() == "http";
    if !plaintext && !insecure {
        return Ok(());
    }
    if is_node_local(url, node_ip) {
        return Ok(());
    }
    let what = if plaintext {
        "is plain http:// to a host that is not node-local: the service-account token would \
         travel in clear (use https://)"
    } else {
        "is not node-local, so pods.insecure_skip_tls_verify would let anyone on the path read \
         the service-account token (give pods.ca_file instead)"
    };
    Err(PodsConfigError {
        field,
        reason: format!("{url} {what}; node-local means loopback, localhost or ${NODE_IP_ENV}"),
    })
}

fn is_node_local(url: &Url, node_ip: Option<&str>) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let is_node_ip = || {
        let ip = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>();
        ip.is_ok_and(|ip| node_ip.and_then(|n| n.parse().ok()) == Some(ip))
    };
    selfheal_runtime::config::is_loopback_host(host) || is_node_ip()
}

fn in_cluster_url(host: &str, port: &str) -> String {
    if host.contains(':') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    }
}

fn check_url(field: &'static str, url: &str) -> Result<Url, PodsConfigError> {
    let parsed = Url::parse(url).map_err(|e| PodsConfigError {
        field,
        reason: format!("{url:?} is not a URL ({e})"),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(PodsConfigError {
            field,
            reason: format!("{url:?} must be an http:// or https:// URL with a host"),
        });
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_source_follows_the_environment() {
        let c = PodsConfig::default();
        assert_eq!(c.resolve_source_with(Some("10.96.0.1")), PodSource::Api);
        assert_eq!(c.resolve_source_with(None), PodSource::None);
        assert_eq!(c.resolve_source_with(Some("")), PodSource::None);
        let k = PodsConfig {
            source: PodSource::Kubelet,
            ..c
        };
        assert_eq!(k.resolve_source_with(Some("10.96.0.1")), PodSource::Kubelet);
        assert_eq!(in_cluster_url("fd00::1", "443"), "https://[fd00::1]:443");
    }

    #[test]
    fn invalid_values_name_their_field() {
        let field = |c: PodsConfig| c.validate().expect_err("invalid").field;
        let base = PodsConfig {
            source: PodSource::None,
            ..PodsConfig::default()
        };
        base.validate().expect("defaults are valid");
        assert_eq!(
            field(PodsConfig {
                resync_secs: 0,
                ..base.clone()
            }),
            "pods.resync_secs"
        );
        assert_eq!(
            field(PodsConfig {
                request_timeout_secs: 0,
                ..base.clone()
            }),
            "pods.request_timeout_secs"
        );
        assert_eq!(
            field(PodsConfig {
                kubelet_url: "127.0.0.1:10250".into(),
                ..base.clone()
            }),
            "pods.kubelet_url"
        );
        assert_eq!(
            field(PodsConfig {
                api_url: Some("ftp://x".into()),
                ..base.clone()
            }),
            "pods.api_url"
        );
        let msg = PodsConfig {
            resync_secs: 0,
            ..base
        }
        .validate()
        .expect_err("invalid")
        .to_string();
        assert!(msg.contains("`pods.resync_secs`"), "{msg}");
    }

    #[test]
    fn tokens_never_travel_in_clear_or_unverified_except_to_this_node() {
        let api = |url: &str, insecure: bool| PodsConfig {
            source: PodSource::Api,
            api_url: Some(url.into()),
            insecure_skip_tls_verify: insecure,
            ..PodsConfig::default()
        };
        let kubelet = |url: &str, insecure: bool| PodsConfig {
            source: PodSource::Kubelet,
            kubelet_url: url.into(),
            insecure_skip_tls_verify: insecure,
            ..PodsConfig::default()
        };
        // Refused: clear text or unchecked TLS to another host.
        for (c, field) in [
            (api("http://10.96.0.1:443", false), "pods.api_url"),
            (api("https://10.96.0.1:443", true), "pods.api_url"),
            (api("http://kubernetes.default.svc", false), "pods.api_url"),
            (kubelet("http://10.0.0.7:10255", false), "pods.kubelet_url"),
            (kubelet("https://10.0.0.7:10250", true), "pods.kubelet_url"),
        ] {
            let e = c.validate().expect_err("refused");
            assert_eq!(e.field, field, "{e}");
            assert!(e.reason.contains("node-local"), "{e}");
        }
        // Allowed: verified TLS anywhere; clear or unchecked only on this node.
        for c in [
            api("https://10.96.0.1:443", false),
            api("http://127.0.0.1:8001", false),
            api("http://[::1]:8001", true),
            kubelet("https://127.0.0.1:10250", true),
            kubelet("http://localhost:10255", false),
            kubelet("https://10.0.0.7:10250", false),
        ] {
            c.validate().expect("allowed");
        }
        let e = PodsConfig {
            source: PodSource::Api,
            api_url: Some("https://10.96.0.1:443".into()),
            insecure_skip_tls_verify: true,
            ..PodsConfig::default()
        }
        .validate()
        .expect_err("refused")
        .to_string();
        assert!(e.contains("insecure_skip_tls_verify"), "{e}");
        // The node's own address counts as node-local.
        let local = |ip: &str| {
            refuse_unless_node_local(
                "pods.kubelet_url",
                &Url::parse("https://10.0.0.7:10250").expect("url"),
                true,
                Some(ip),
            )
        };
        local("10.0.0.7").expect("the node's own IP");
        local("10.0.0.8").expect_err("another node");
    }

    #[test]
    fn the_dir_source_needs_an_existing_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = |d: Option<PathBuf>, poll| PodsConfig {
            source: PodSource::Dir,
            dir: d,
            dir_poll_ms: poll,
            ..PodsConfig::default()
        };
        dir(Some(tmp.path().to_owned()), 1000)
            .validate()
            .expect("valid");
        for (c, field) in [
            (dir(None, 1000), "pods.dir"),
            (dir(Some(tmp.path().join("absent")), 1000), "pods.dir"),
            (dir(Some(tmp.path().to_owned()), 10), "pods.dir_poll_ms"),
        ] {
            assert_eq!(c.validate().expect_err("refused").field, field);
        }
        let c: PodsConfig = serde_json::from_str(r#"{"source":"dir","dir":"/x"}"#).expect("valid");
        assert_eq!(c.resolved_source(), PodSource::Dir);
    }

    #[test]
    fn unknown_config_fields_are_refused() {
        let err = serde_json::from_str::<PodsConfig>(r#"{"sorce":"api"}"#)
            .expect_err("typo")
            .to_string();
        assert!(err.contains("sorce"), "{err}");
        let c: PodsConfig = serde_json::from_str(r#"{"source":"kubelet"}"#).expect("valid");
        assert_eq!(c.source, PodSource::Kubelet);
        assert_eq!(c.kubelet_url, DEFAULT_KUBELET_URL);
    }
}
