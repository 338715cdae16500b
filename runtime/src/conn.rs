//! The ingest server's connection loop: what `axum::serve` does, plus the bounds a port anyone
//! can reach needs. Each connection is its own task, so one slow client never delays another:
//!
//! - at most `max_connections` at once; one over that is closed at accept, counted;
//! - TLS (rustls, aws-lc-rs), when configured, with the handshake bounded by `header_timeout`;
//! - a request head must arrive whole within `header_timeout` of the connection waiting for one,
//!   which also closes idle keep-alive connections after that long (hyper starts the head timer
//!   as soon as the connection is ready for its next request);
//! - the body is bounded by the ingest handler itself (`body_timeout`, `max_body_bytes`, a
//!   memory budget taken as bytes arrive), not here.
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
use std::sync::Arc;
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

/// Connection counters (`selfheal_aggregator_http_*`).
#[derive(Debug, Default)]
pub struct ConnMetrics {
    /// Connections open now.
    pub open: Gauge,
    /// Connections closed at accept because `max_connections` were open.
    pub refused: Counter,
    /// TLS handshakes that failed or timed out.
    pub tls_failed: Counter,
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
    }
}

/// What the bounded loop needs: its settings, the TLS configuration built from them, and its
/// counters.
#[derive(Debug, Clone)]
pub struct Bounded {
    /// Cap and timeouts.
    pub settings: ConnSettings,
    /// TLS, if configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
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
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
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
        let acceptor = acceptor.clone();
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
