#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh Debian machine, then runs every test.
# Usage: bash scripts/test.sh [extra cargo test arguments]
# Without arguments the suites run under cargo-nextest, several tests at once; with
# arguments, under `cargo test` with those arguments, one binary at a time, as before.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: a C compiler for crates that build C code (SQLite),
# kill(1) for the signal tests, and Prometheus with promtool for the metrics tests, which
# start their own Prometheus on a free loopback port.
if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
{ type -P kill && type -P pgrep; } >/dev/null 2>&1 || missing+=(procps)
# curl runs the README's examples (tests/it/readme.rs), as a reader would.
type -P curl >/dev/null 2>&1 || missing+=(curl)
{ type -P prometheus && type -P promtool; } >/dev/null 2>&1 || missing+=(prometheus)
# systemd-analyze checks the unit file; dpkg-deb inspects the package.
type -P systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
type -P dpkg-deb >/dev/null 2>&1 || missing+=(dpkg)
# The PostgreSQL tests start a private cluster of their own with Debian's initdb and
# postgres (never a server that happens to run); setpriv runs them unprivileged as root.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
type -P setpriv >/dev/null 2>&1 || missing+=(util-linux)
# The console's tests drive Debian's headless Chromium through its WebDriver server.
type -P chromium >/dev/null 2>&1 || missing+=(chromium)
type -P chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  echo "scripts/test.sh: installing ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Python tools from PyPI, installed with pip (and pip itself from Debian) when missing.
pip_install() {
  if ! command -v pip3 >/dev/null 2>&1; then
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends python3-pip
  fi
  pip3 install --quiet "$@" || pip3 install --quiet --break-system-packages "$@"
}
# The S3 tests start their own S3-protocol server, moto_server.
if ! command -v moto_server >/dev/null 2>&1; then
  echo "scripts/test.sh: installing moto[server] with pip"
  pip_install 'moto[server]>=5,<6'
fi
# The webhook tests' receiver verifies every delivery with the official Standard Webhooks
# library.
if ! python3 -c 'import standardwebhooks' >/dev/null 2>&1; then
  echo "scripts/test.sh: installing standardwebhooks with pip"
  pip_install 'standardwebhooks>=1.1,<2'
fi
# The API fuzz test runs schemathesis against a live jobd's /v1/openapi.json; its command
# line (checks, seeds, config file) is that of version 4.
if ! command -v schemathesis >/dev/null 2>&1; then
  echo "scripts/test.sh: installing schemathesis with pip"
  pip_install 'schemathesis>=4,<5'
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "scripts/test.sh: cargo not found; install Rust with rustup (https://rustup.rs) first" >&2
  exit 1
fi

# cargo-nextest runs each test in a process of its own, several at once: most of the
# suite's time is waiting (outages, timers, child processes), not CPU. Its maintainers'
# prebuilt binary is installed when it is missing, else it is built with cargo.
if [ $# -eq 0 ] && ! cargo nextest --version >/dev/null 2>&1; then
  echo "scripts/test.sh: installing cargo-nextest"
  mkdir -p "${CARGO_HOME:-$HOME/.cargo}/bin"
  curl -LsSf https://get.nexte.st/latest/linux | tar zxf - -C "${CARGO_HOME:-$HOME/.cargo}/bin" \
    || cargo install --locked cargo-nextest
fi

# tests/it/fuzz.rs runs each fuzz property for this many seconds.
export JOBD_FUZZ_SECONDS="${JOBD_FUZZ_SECONDS:-60}"

# The second pass runs the HTTP-level suites again, every daemon on PostgreSQL (a private
# cluster per test process) instead of SQLite. Tests of what only SQLite has (its file, its
# fsyncs) say so and skip themselves.
# Every integration suite is a module of one test binary, `it` (tests/it/main.rs).
postgres_suites=(backpressure bad_input concurrency durability failures logs metrics queues security shutdown tenants
  uploads webhooks s3 readme console)
if [ $# -eq 0 ]; then
  # Settings: .config/nextest.toml.
  cargo nextest run --no-fail-fast
  cargo test --doc
  filter=$(printf '%s|' "${postgres_suites[@]}")
  JOBD_TEST_POSTGRES=1 cargo nextest run --no-fail-fast --test it -E "test(/^(${filter%|})::/)"
else
  cargo test "$@"
  JOBD_TEST_POSTGRES=1 cargo test "$@" --test it -- "${postgres_suites[@]/%/::}"
fi

# The Debian package, made of the debug binary the tests ran (no release build), and its
# contents checked. `bash scripts/check-deb.sh` alone makes the release package.
bash scripts/check-deb.sh --profile dev --no-build
