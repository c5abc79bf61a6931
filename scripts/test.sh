#!/usr/bin/env bash
# The project's test command, in one place: the README and .ci/run both use it.
set -euo pipefail

if [[ ${1-} == -h || ${1-} == --help ]]; then
  cat <<'HELP'
Usage: scripts/test.sh [ARGS...]

Builds the workspace (debug: the end-to-end tests start target/debug/proxy and
target/debug/shortener) and runs every test:
  cargo build --workspace && cargo test --workspace [ARGS...]
ARGS go to cargo test, e.g. scripts/test.sh -- --nocapture
HELP
  exit 0
fi

cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
cargo build --workspace
cargo test --workspace "$@"
