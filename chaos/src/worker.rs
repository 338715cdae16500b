//! The fault workloads, run as `selfheal chaos worker <kind>` inside the pod's cgroup.
//!
//! A worker is started by [`crate::fault`], moved into the cgroup, and only then told to begin
//! (one line on its stdin), so all its work is charged to the pod. It ends by itself: at its
//! deadline (the run's duration cap), or as soon as its stdin reaches end of file, which is
//! what happens when the run that started it exits for any reason, SIGKILL included. So no
//! worker outlives its run even if the run could not clean up.
//!
//! The workloads are plain threads doing the simplest thing that produces the fault: busy
//! loops (CPU), allocating and touching pages up to a bound (memory), TCP writes to a loopback
//! port and a sink that discards them (traffic), and a process that only waits, for the
//! restart loop to kill.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Page size assumed when touching memory (the smallest on every Linux architecture we run).
const PAGE: usize = 4096;
/// Connections the traffic sink serves at once; more wait in the backlog. The port is on
/// loopback, but any local process can reach it.
pub const SINK_MAX_CONNECTIONS: usize = 16;
/// Size of one write of the flood.
const FLOOD_CHUNK: usize = 64 << 10;

/// What a worker does.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum WorkerKind {
    /// Busy-loop threads.
    Cpu {
        /// Number of threads.
        #[arg(long)]
        threads: usize,
    },
    /// Allocate and touch memory up to a bound, then hold it.
    Memory {
        /// Bytes to reach.
        #[arg(long)]
        bytes: u64,
        /// Bytes added per second.
        #[arg(long)]
        bytes_per_sec: u64,
    },
    /// Accept TCP connections on a loopback address and discard what they send; prints
    /// `listening <addr>` on stdout once bound.
    Sink {
        /// Address to listen on (127.0.0.0/8).
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Send as fast as the CPU quota allows to a loopback address over a few connections.
    Flood {
        /// Where to send (127.0.0.0/8).
        #[arg(long)]
        target: SocketAddr,
        /// Connections.
        #[arg(long, default_value_t = 4)]
        connections: usize,
    },
    /// Wait until stopped (the container the restart loop kills).
    Idle,
}

/// Arguments of `selfheal chaos worker`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Unix milliseconds at which the worker exits whatever happens.
    #[arg(long)]
    pub deadline_ms: i64,
    /// The workload.
    #[command(subcommand)]
    pub kind: WorkerKind,
}

/// True for an address the traffic fault may touch: IPv4 loopback, 127.0.0.0/8.
pub fn is_allowed_target(addr: &SocketAddr) -> bool {
    matches!(addr, SocketAddr::V4(a) if a.ip().is_loopback())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs a worker; returns only on a start-up error (otherwise the process exits at its end).
pub fn main(args: WorkerArgs) -> anyhow::Result<()> {
    // Wait to be moved into the cgroup: the parent writes one line when it has.
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != "go" {
        // The parent went away before starting us.
        std::process::exit(0);
    }
    std::thread::spawn(|| {
        // End of file on stdin: the run is gone.
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    let deadline = args.deadline_ms;
    std::thread::spawn(move || {
        loop {
            let left = deadline - now_ms();
            if left <= 0 {
                std::process::exit(0);
            }
            std::thread::sleep(Duration::from_millis(left.clamp(1, 1000) as u64));
        }
    });
    match args.kind {
        WorkerKind::Cpu { threads } => {
            for _ in 1..threads.max(1) {
                std::thread::spawn(burn);
            }
            burn();
        }
        WorkerKind::Memory {
            bytes,
            bytes_per_sec,
        } => leak(bytes, bytes_per_sec),
        WorkerKind::Sink { listen } => {
            anyhow::ensure!(is_allowed_target(&listen), "{listen} is not in 127.0.0.0/8");
            sink(listen)?;
        }
        WorkerKind::Flood {
            target,
            connections,
        } => {
            anyhow::ensure!(is_allowed_target(&target), "{target} is not in 127.0.0.0/8");
            for _ in 1..connections.max(1) {
                std::thread::spawn(move || flood(target));
            }
            flood(target);
        }
        WorkerKind::Idle => loop {
            std::thread::park();
        },
    }
    Ok(())
}

fn burn() -> ! {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    loop {
        // xorshift: work the optimiser cannot remove.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::hint::black_box(x);
    }
}

fn leak(bytes: u64, bytes_per_sec: u64) -> ! {
    let step = (bytes_per_sec / 10).max(PAGE as u64) as usize;
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut total: u64 = 0;
    loop {
        if total < bytes {
            let n = step.min((bytes - total) as usize);
            let mut chunk = vec![0u8; n];
            // Zeroed pages are not resident until written: touch one byte per page.
            for i in (0..n).step_by(PAGE) {
                chunk[i] = 1;
            }
            total += n as u64;
            held.push(std::hint::black_box(chunk));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sink(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening {addr}")?;
    out.flush()?;
    drop(out);
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        if active.load(Ordering::Relaxed) >= SINK_MAX_CONNECTIONS {
            // Over the cap: close at once rather than queue without bound.
            continue;
        }
        let active = active.clone();
        active.fetch_add(1, Ordering::Relaxed);
        std::thread::spawn(move || {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let mut buf = vec![0u8; FLOOD_CHUNK];
            while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            active.fetch_sub(1, Ordering::Relaxed);
        });
    }
    Ok(())
}

fn flood(target: SocketAddr) -> ! {
    let buf = vec![0x5au8; FLOOD_CHUNK];
    loop {
        match TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
            Ok(mut s) => while s.write_all(&buf).is_ok() {},
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ipv4_loopback_is_a_target() {
        for ok in ["127.0.0.1:80", "127.1.2.3:9"] {
            assert!(is_allowed_target(&ok.parse().expect("addr")), "{ok}");
        }
        for bad in ["10.0.0.1:80", "0.0.0.0:80", "[::1]:80", "192.168.1.1:443"] {
            assert!(!is_allowed_target(&bad.parse().expect("addr")), "{bad}");
        }
    }
}
