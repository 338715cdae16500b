#!/usr/bin/env bash
# Installs what the tests need (idempotent; silent unless something fails) and runs every check
# CI runs: formatting, the dependency policy (deny.toml), clippy and rustdoc with warnings denied,
# and the whole test suite.
#
#   scripts/test.sh            everything
#   scripts/test.sh -- FILTER  only tests matching FILTER (after the checks)
set -euo pipefail
cd "$(dirname "$0")/.."

# Re-runs are incremental: the build lives outside the clone.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/selfheal/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
quiet() {
  if ! "$@" >"$log" 2>&1; then
    echo "scripts/test.sh: '$*' failed:" >&2
    cat "$log" >&2
    exit 1
  fi
}

# Debian packages the tests drive for real.
missing=()
command -v kubectl >/dev/null 2>&1 || missing+=(kubectl)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)
# The incident page's test drives a real headless browser; the TLS ingest test makes its
# certificates with openssl.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  quiet apt-get update
  quiet apt-get install -y --no-install-recommends "${missing[@]}"
fi

# Python tools (moto, onnxruntime, scikit-learn, ...) in a venv under the ignored .venv/,
# rebuilt only when the pinned list changes.
req=scripts/requirements-test.txt
if [ ! -x .venv/bin/python ] || ! cmp -s "$req" .venv/.installed-requirements; then
  quiet python3 -m venv .venv
  quiet .venv/bin/python -m pip install --disable-pip-version-check -q -r "$req"
  cp "$req" .venv/.installed-requirements
fi
export SELFHEAL_PYTHON="$PWD/.venv/bin/python"

quiet cargo fmt --all -- --check

# The dependency policy (deny.toml). cargo-deny is installed once (skipped when present), built
# outside the project's target directory so it never shares a build with the workspace; from
# scratch the install costs a few minutes of CI (docs/benchmarks.md, "CI cost").
if ! command -v cargo-deny >/dev/null 2>&1; then
  quiet env -u CARGO_TARGET_DIR cargo install --locked --quiet cargo-deny
fi
quiet cargo deny --log-level error check licenses bans sources
# Advisories need the RustSec database, a git clone from github.com. Where it cannot be fetched,
# an earlier clone is used as it is (with its date said), and without one the check is skipped
# with one line saying so: never a silent pass. SELFHEAL_REQUIRE_ADVISORIES=1 (CI) makes a failed
# fetch fatal.
if ! cargo deny --log-level error check advisories >"$log" 2>&1; then
  if [ "${SELFHEAL_REQUIRE_ADVISORIES:-0}" != 1 ] && grep -q "failed to fetch advisory database" "$log"; then
    cached=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/advisory-dbs/*/.git 2>/dev/null | head -1 || true)
    if [ -n "$cached" ]; then
      quiet cargo deny --log-level error check --disable-fetch advisories
      echo "scripts/test.sh: advisories checked against the cached database of $(git -C "${cached%/.git}" log -1 --format=%cs) (github.com unreachable)" >&2
    else
      echo "scripts/test.sh: advisories NOT checked: the RustSec database cannot be fetched from github.com and none is cached" >&2
    fi
  else
    echo "scripts/test.sh: 'cargo deny check advisories' failed:" >&2
    cat "$log" >&2
    exit 1
  fi
fi

quiet cargo clippy --workspace --all-targets -- -D warnings
# Public docs build without a broken link or a malformed doc comment.
quiet env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
filter=()
if [ "${1:-}" = "--" ]; then shift; filter=("$@"); fi
results=$(mktemp)
trap 'rm -f "$log" "$results"' EXIT
status=0
cargo test --workspace --no-fail-fast -q -- "${filter[@]}" 2>&1 | tee "$results" || status=$?
# One closing line for the whole run (cargo prints one per test binary, the last often a crate
# with no doc-tests).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i == "passed;") p += $(i-1); if ($i == "failed;") f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$results"
exit "$status"
