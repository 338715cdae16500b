//! A TCP proxy on loopback that can pass traffic, refuse connections, or black-hole them (accept
//! and never answer), to simulate a network outage in front of a real server that keeps its
//! state. Switching away from `Pass` cuts open connections too, as a real outage would.

use std::net::SocketAddr;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward to the upstream.
    Pass,
    /// Close each connection at once.
    Refuse,
    /// Accept, read and discard, never answer.
    BlackHole,
}

/// A running proxy; stops when dropped.
pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Starts a proxy to `upstream` in `Pass` mode (call inside a tokio runtime).
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (mode, rx) = watch::channel(Mode::Pass);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(client, upstream, rx.clone()));
            }
        });
        TcpProxy { addr, mode, task }
    }

    /// Switches the mode for new and open connections.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// `http://<addr>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let current = *mode.borrow_and_update();
    match current {
        Mode::Refuse => {}
        Mode::BlackHole => {
            let mut sink = [0u8; 4096];
            loop {
                tokio::select! {
                    r = client.read(&mut sink) => if matches!(r, Ok(0) | Err(_)) { return },
                    r = mode.changed() => if r.is_err() { return },
                }
            }
        }
        Mode::Pass => {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = mode.wait_for(|m| *m != Mode::Pass) => {}
            }
        }
    }
}
