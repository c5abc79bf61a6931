#!/usr/bin/env bash
# The project's test command, in one place: the README and .ci/run both use it.
set -euo pipefail

if [[ ${1-} == -h || ${1-} == --help ]]; then
  cat <<'HELP'
Usage: scripts/test.sh [ARGS...]

Installs the Debian packages the tests need when missing (scripts/test-deps.sh),
builds the workspace (debug: the end-to-end tests start target/debug/proxy and
target/debug/shortener) and runs every test:
  cargo build --workspace && cargo test --workspace [ARGS...]
ARGS go to cargo test, e.g. scripts/test.sh -- --nocapture
HELP
  exit 0
fi

cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
scripts/test-deps.sh
cargo build --workspace
cargo test --workspace "$@"
