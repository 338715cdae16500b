//! Shared test helpers: paths, the test venv's Python, fixtures.

#![allow(dead_code)]

pub mod forest;

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python interpreter of the test venv (`$SELFHEAL_PYTHON`, else `.venv/bin/python`); panics
/// with the fix when it is missing.
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
