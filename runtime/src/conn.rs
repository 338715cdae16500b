//! A bounded HTTP/1.1 connection loop: what `axum::serve` does, plus the bounds a port anyone
//! can reach needs (the aggregator's ingest, the heal API). Each connection is its own task, so
//! one slow client never delays another:
//!
//! - at most `max_connections` at once; one over that is closed at accept, counted;
//! - TLS (rustls, aws-lc-rs), when configured, with the handshake bounded by `header_timeout`;
//!   the certificate, key and client CA files are re-read when they change ([`ReloadingTls`]),
//!   so a rotated Secret (cert-manager, a Kubernetes Secret volume's symlink swap) takes effect
//!   for new connections without a restart; files that do not load keep the old configuration,
//!   logged and counted;
//! - a request head must arrive whole within `header_timeout` of the connection waiting for one,
//!   which also closes idle keep-alive connections after that long (hyper starts the head timer
//!   as soon as the connection is ready for its next request);
//! - the body is bounded by the handler itself (a body timeout, a size cap), not here.
//!
//! Shutdown: the listener closes, idle connections close, and a request in flight has
//! `header_timeout` to finish; connections still open after that are dropped.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// TLS files of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Certificate chain, PEM, leaf first.
    pub cert_file: PathBuf,
    /// Private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// When set, clients must present a certificate signed by one of these CAs (PEM).
    pub client_ca_file: Option<PathBuf>,
}

/// Connection bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnSettings {
    /// Open connections at most.
    pub max_connections: usize,
    /// For the TLS handshake, and for a request head from the moment the connection waits
    /// for one (so also the keep-alive idle timeout).
    pub header_timeout: Duration,
    /// TLS, if any.
    pub tls: Option<TlsSettings>,
}

/// The TLS files could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the certificate, key or CA.
    #[error("TLS configuration refused")]
    Rustls(#[source] rustls::Error),
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// Builds the rustls server configuration (HTTP/1.1 only).
pub fn server_config(tls: &TlsSettings) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = certs(&tls.cert_file)?;
    let key =
        PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| file_err(&tls.key_file, e))?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(TlsError::Rustls)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| file_err(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(TlsError::Rustls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Connection counters (`<service prefix>_http_*`).
#[derive(Debug, Default)]
pub struct ConnMetrics {
    /// Connections open now.
    pub open: Gauge,
    /// Connections closed at accept because `max_connections` were open.
    pub refused: Counter,
    /// TLS handshakes that failed or timed out.
    pub tls_failed: Counter,
    /// TLS configurations loaded after a change of the files.
    pub tls_reloads: Counter,
    /// Changed TLS files that did not load (the previous configuration stays).
    pub tls_reload_failures: Counter,
}

impl ConnMetrics {
    /// Registers under `registry` (prefix `http`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("http");
        r.register("connections_open", "Connections open", self.open.clone());
        r.register(
            "connections_refused",
            "Connections closed at accept because max_connections were open",
            self.refused.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            self.tls_failed.clone(),
        );
        r.register(
            "tls_reloads",
            "TLS configurations loaded after the certificate, key or CA files changed",
            self.tls_reloads.clone(),
        );
        r.register(
            "tls_reload_failures",
            "Changed TLS files that did not load; the previous configuration stays in use",
            self.tls_reload_failures.clone(),
        );
    }
}

/// The server's TLS configuration, rebuilt when its files change.
///
/// Why by content and not by modification time: a Kubernetes Secret volume replaces its files
/// by swapping a symlink, and cert-manager may write a new pair within the same second; reading
/// three small PEM files every [`ReloadingTls::DEFAULT_CHECK_EVERY`] is cheap and never misses
/// a change.
#[derive(Debug)]
pub struct ReloadingTls {
    files: TlsSettings,
    current: RwLock<Arc<rustls::ServerConfig>>,
    loaded: Mutex<Vec<Option<Vec<u8>>>>,
}

impl ReloadingTls {
    /// How often [`ReloadingTls::watch`] looks at the files by default.
    pub const DEFAULT_CHECK_EVERY: Duration = Duration::from_secs(10);

    /// Loads the files once; an error here is a start-up error.
    pub fn load(files: TlsSettings) -> Result<ReloadingTls, TlsError> {
        let contents = read_all(&files);
        let config = server_config(&files)?;
        Ok(ReloadingTls {
            files,
            current: RwLock::new(config),
            loaded: Mutex::new(contents),
        })
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        match self.current.read() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Re-reads the files; rebuilds the configuration if any changed. `Ok(true)` when a new
    /// configuration is in use, `Ok(false)` when nothing changed, the error when the changed
    /// files do not load (the old configuration stays; the same files are not retried until
    /// they change again).
    pub fn check(&self) -> Result<bool, TlsError> {
        let contents = read_all(&self.files);
        let mut loaded = match self.loaded.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        if *loaded == contents {
            return Ok(false);
        }
        *loaded = contents;
        let config = server_config(&self.files)?;
        match self.current.write() {
            Ok(mut c) => *c = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
        Ok(true)
    }

    /// Checks the files every `every` until `shutdown`, counting and logging each reload and
    /// each failure.
    pub async fn watch(
        self: Arc<Self>,
        every: Duration,
        metrics: Arc<ConnMetrics>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            match self.check() {
                Ok(false) => {}
                Ok(true) => {
                    metrics.tls_reloads.inc();
                    tracing::info!(cert = %self.files.cert_file.display(), "TlsReloaded");
                }
                Err(e) => {
                    metrics.tls_reload_failures.inc();
                    tracing::warn!(error = %crate::chain::ErrorChain::new(&e), "TlsReloadFailed");
                }
            }
        }
    }
}

/// The three files' bytes (`None` for one that cannot be read, so a file appearing again is a
/// change too).
fn read_all(files: &TlsSettings) -> Vec<Option<Vec<u8>>> {
    [
        Some(&files.cert_file),
        Some(&files.key_file),
        files.client_ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| std::fs::read(p).ok())
    .collect()
}

/// What the bounded loop needs: its settings, the TLS configuration built from them, and its
/// counters.
#[derive(Debug, Clone)]
pub struct Bounded {
    /// Cap and timeouts.
    pub settings: ConnSettings,
    /// TLS, if configured: each connection takes the configuration current at accept.
    pub tls: Option<Arc<ReloadingTls>>,
    /// Counters.
    pub metrics: Arc<ConnMetrics>,
}

/// Serves `app` on `listener` until `shutdown` turns true, then lets open connections finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    bounded: Bounded,
    mut shutdown: watch::Receiver<bool>,
) {
    let Bounded {
        settings,
        tls,
        metrics,
    } = bounded;
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let graceful = GracefulShutdown::new();
    let mut refused_logged = false;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, mostly: pause rather than spin.
                tracing::warn!(error = %e, "HttpAcceptError");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics.refused.inc();
            if !refused_logged {
                // Once per burst: the counter has the rest.
                tracing::warn!(%peer, max = settings.max_connections, "HttpConnectionRefused");
                refused_logged = true;
            }
            drop(tcp);
            continue;
        };
        refused_logged = false;
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let acceptor = tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.current()));
        let watcher = graceful.watcher();
        let metrics = Arc::clone(&metrics);
        let header_timeout = settings.header_timeout;
        tokio::spawn(async move {
            metrics.open.inc();
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(64 * 1024);
            // Handlers that audit or rate-limit by client read the peer from the request
            // (`axum::extract::ConnectInfo<SocketAddr>`), as under `axum::serve`.
            let app = app.layer(axum::Extension(axum::extract::ConnectInfo(peer)));
            let service = TowerToHyperService::new(app);
            let result = match acceptor {
                None => {
                    watcher
                        .watch(http.serve_connection(TokioIo::new(tcp), service))
                        .await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            watcher
                                .watch(http.serve_connection(TokioIo::new(stream), service))
                                .await
                        }
                        Ok(Err(e)) => {
                            metrics.tls_failed.inc();
                            tracing::debug!(%peer, error = %e, "TlsHandshakeFailed");
                            Ok(())
                        }
                        Err(_) => {
                            metrics.tls_failed.inc();
                            tracing::debug!(%peer, "TlsHandshakeTimedOut");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HttpConnectionError");
            }
            metrics.open.dec();
        });
    }
    drop(listener);
    // Idle connections close at once; a request in flight gets the head timeout to finish, so a
    // client dribbling a body cannot hold shutdown past the service's grace period.
    let open = graceful.count();
    if tokio::time::timeout(settings.header_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(connections = open, "HttpConnectionsAbandonedAtShutdown");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A self-signed EC certificate and key for 127.0.0.1 under `name` in `dir`.
    fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (crt, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args([
                "-subj",
                "/CN=selfheal-test",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .output()
            .expect("run openssl (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (crt, key)
    }

    #[test]
    fn a_rotated_pair_is_picked_up_and_a_broken_one_keeps_the_old() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (a_crt, a_key) = self_signed(tmp.path(), "a");
        let (b_crt, b_key) = self_signed(tmp.path(), "b");
        let files = TlsSettings {
            cert_file: tmp.path().join("tls.crt"),
            key_file: tmp.path().join("tls.key"),
            client_ca_file: None,
        };
        std::fs::copy(&a_crt, &files.cert_file).expect("copy");
        std::fs::copy(&a_key, &files.key_file).expect("copy");
        let tls = ReloadingTls::load(files.clone()).expect("load a");
        let first = tls.current();
        assert!(!tls.check().expect("unchanged"), "nothing changed yet");
        assert!(Arc::ptr_eq(&first, &tls.current()));

        // Rotated: the new pair is in use for the next connection.
        std::fs::copy(&b_crt, &files.cert_file).expect("copy");
        std::fs::copy(&b_key, &files.key_file).expect("copy");
        assert!(tls.check().expect("rotated"));
        let second = tls.current();
        assert!(!Arc::ptr_eq(&first, &second));

        // Half-written (the key of another certificate): refused, the last good one stays,
        // and the same bad files are not reported again until they change.
        std::fs::copy(&a_key, &files.key_file).expect("copy");
        let e = tls.check().expect_err("mismatched pair");
        assert!(matches!(e, TlsError::Rustls(_)), "{e}");
        assert!(Arc::ptr_eq(&second, &tls.current()));
        assert!(!tls.check().expect("same bad files"));

        // A missing file is a change, and an error naming it.
        std::fs::remove_file(&files.cert_file).expect("rm");
        let e = tls.check().expect_err("missing cert");
        assert!(e.to_string().contains("tls.crt"), "{e}");
        assert!(Arc::ptr_eq(&second, &tls.current()));

        // Fixed: back in business.
        std::fs::copy(&a_crt, &files.cert_file).expect("copy");
        assert!(tls.check().expect("fixed"));
        assert!(!Arc::ptr_eq(&second, &tls.current()));
    }
}
