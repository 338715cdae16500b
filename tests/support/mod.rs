//! Shared test helpers: paths, the binary, fixtures, child processes that die with the test.

#![allow(dead_code)]

pub mod cgroup_fixture;
pub mod faultproxy;
pub mod forest;
pub mod kube_double;
pub mod moto;
pub mod netproxy;
pub mod records;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A recorded fixture directory.
pub fn fixture(rel: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(rel)
}

/// The `selfheal` binary built for this test run.
pub fn selfheal() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_selfheal"));
    c.env("SELFHEAL_LOG", "info").env_remove("NODE_NAME");
    c
}

/// The Python interpreter of the test venv (`$SELFHEAL_PYTHON`, else `.venv/bin/python`).
pub fn python() -> PathBuf {
    let py = match std::env::var_os("SELFHEAL_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => repo_root().join(".venv/bin/python"),
    };
    assert!(
        py.is_file(),
        "{} not found: run scripts/test.sh, which installs the test tools",
        py.display()
    );
    py
}

/// A tool installed in the test venv next to its Python; panics with the fix when missing.
pub fn venv_tool(name: &str) -> PathBuf {
    let py = python();
    let tool = py
        .parent()
        .map(|d| d.join(name))
        .unwrap_or_else(|| PathBuf::from(name));
    assert!(
        tool.is_file(),
        "{} not found: run scripts/test.sh, which installs the test tools",
        tool.display()
    );
    tool
}

/// A child process killed when dropped, so a failing test leaves nothing running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write test file");
    p
}

/// A free loopback port (bound and released; good enough for tests that start a server next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A minimal HTTP/1.1 GET on loopback: (status, body). `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// Sends a signal to a process with the system's `kill`.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

/// Runs `cmd`, fails the test with its stderr unless it succeeds, and returns its stdout.
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 stdout")
}

/// The JSON envelopes the agent printed, one per line.
pub fn envelopes(stdout: &str) -> Vec<selfheal_core::schema::Envelope> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is a JSON envelope"))
        .collect()
}
