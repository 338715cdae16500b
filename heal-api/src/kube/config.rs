//! Where the kube executor finds the API server and its credentials: the pod's service
//! account (in the cluster, the default), a kubeconfig file and context (an operator's
//! workstation, an aggregator outside the cluster), or an explicit API URL with a CA bundle and
//! a bearer-token file (tests, unusual setups). Validated before anything connects.

use std::path::PathBuf;
use std::time::Duration;

use selfheal_runtime::config::{FieldError, http_url, in_range, is_loopback_host, non_empty};
use serde::{Deserialize, Serialize};

/// The kube executor's configuration (`[heal.kube]` or wherever the embedding service puts
/// it; field names in errors are relative to it, prefixed `kube.`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeConfig {
    /// Where the API server and the credentials come from.
    #[serde(default)]
    pub connection: Connection,
    /// Timeout of each API request (connect, then each read and write), in seconds.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// The field manager named on every write (`kubectl get -o yaml --show-managed-fields`
    /// shows who changed what).
    #[serde(default = "default_field_manager")]
    pub field_manager: String,
}

fn default_timeout_secs() -> u64 {
    10
}

fn default_field_manager() -> String {
    "selfheal".into()
}

impl Default for KubeConfig {
    fn default() -> KubeConfig {
        KubeConfig {
            connection: Connection::default(),
            timeout_secs: default_timeout_secs(),
            field_manager: default_field_manager(),
        }
    }
}

/// Where the API server and the credentials come from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "source", rename_all = "snake_case")]
pub enum Connection {
    /// The pod's service account: `KUBERNETES_SERVICE_HOST`/`_PORT`, the mounted token (re-read
    /// as the kubelet rotates it) and CA bundle (re-read as it rotates).
    #[default]
    InCluster,
    /// A kubeconfig file and context.
    Kubeconfig {
        /// The file (`None`: `$KUBECONFIG`, else `~/.kube/config`).
        #[serde(default)]
        path: Option<PathBuf>,
        /// The context (`None`: the file's current context).
        #[serde(default)]
        context: Option<String>,
    },
    /// An explicit API server.
    Url {
        /// `https://host:port` (plain `http://` only to a loopback address: a bearer token
        /// must not cross a network in clear).
        url: String,
        /// PEM CA bundle that signs the API server's certificate (`None`: the system roots).
        #[serde(default)]
        ca_file: Option<PathBuf>,
        /// File holding the bearer token, re-read as it changes (`None`: no credentials).
        #[serde(default)]
        token_file: Option<PathBuf>,
    },
}

impl KubeConfig {
    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<(), FieldError> {
        in_range("kube.timeout_secs", self.timeout_secs, 1..=300)?;
        non_empty("kube.field_manager", &self.field_manager)?;
        if self.field_manager.len() > 128 {
            return Err(FieldError::new(
                "kube.field_manager",
                "must be at most 128 characters (the API server's limit)",
            ));
        }
        match &self.connection {
            Connection::InCluster => {}
            Connection::Kubeconfig { path, context } => {
                if let Some(p) = path
                    && p.as_os_str().is_empty()
                {
                    return Err(FieldError::new("kube.connection.path", "must not be empty"));
                }
                if let Some(c) = context {
                    non_empty("kube.connection.context", c)?;
                }
            }
            Connection::Url {
                url,
                ca_file,
                token_file,
            } => {
                let uri = http_url("kube.connection.url", url)?;
                let loopback = uri.host().is_some_and(is_loopback_host);
                if uri.scheme_str() == Some("http") && !loopback {
                    return Err(FieldError::new(
                        "kube.connection.url",
                        format!("{url:?}: plain http:// is allowed only to a loopback address"),
                    ));
                }
                if uri.scheme_str() == Some("http") && ca_file.is_some() {
                    return Err(FieldError::new(
                        "kube.connection.ca_file",
                        "set for an http:// URL, where there is no certificate to check",
                    ));
                }
                for (field, file) in [
                    ("kube.connection.ca_file", ca_file),
                    ("kube.connection.token_file", token_file),
                ] {
                    if let Some(f) = file
                        && !f.is_file()
                    {
                        return Err(FieldError::new(
                            field,
                            format!("{} is not a readable file", f.display()),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(url: &str) -> KubeConfig {
        KubeConfig {
            connection: Connection::Url {
                url: url.into(),
                ca_file: None,
                token_file: None,
            },
            ..KubeConfig::default()
        }
    }

    #[test]
    fn the_default_is_in_cluster_and_valid() {
        let c: KubeConfig = serde_json::from_str("{}").expect("empty config");
        assert_eq!(c, KubeConfig::default());
        assert_eq!(c.connection, Connection::InCluster);
        c.validate().expect("default validates");
    }

    #[test]
    fn unknown_fields_and_sources_are_refused() {
        assert!(serde_json::from_str::<KubeConfig>(r#"{"timeout": 3}"#).is_err());
        assert!(
            serde_json::from_str::<KubeConfig>(r#"{"connection": {"source": "magic"}}"#).is_err()
        );
        assert!(
            serde_json::from_str::<KubeConfig>(
                r#"{"connection": {"source": "url", "url": "https://k", "insecure": true}}"#
            )
            .is_err()
        );
    }

    #[test]
    fn a_token_crosses_plain_http_only_on_loopback() {
        url("http://127.0.0.1:6443").validate().expect("loopback");
        url("https://10.0.0.1:6443").validate().expect("https");
        let e = url("http://10.0.0.1:6443")
            .validate()
            .expect_err("http to a network");
        assert_eq!(e.field, "kube.connection.url");
        assert_eq!(
            url("ftp://k").validate().expect_err("scheme").field,
            "kube.connection.url"
        );
    }

    #[test]
    fn bad_bounds_and_missing_files_name_their_field() {
        let c = KubeConfig {
            timeout_secs: 0,
            ..KubeConfig::default()
        };
        assert_eq!(c.validate().expect_err("0 s").field, "kube.timeout_secs");
        let c = KubeConfig {
            field_manager: " ".into(),
            ..KubeConfig::default()
        };
        assert_eq!(c.validate().expect_err("blank").field, "kube.field_manager");
        let c = KubeConfig {
            connection: Connection::Url {
                url: "https://k:6443".into(),
                ca_file: Some("/nonexistent/ca.pem".into()),
                token_file: None,
            },
            ..KubeConfig::default()
        };
        assert_eq!(
            c.validate().expect_err("no CA").field,
            "kube.connection.ca_file"
        );
    }
}
