#!/usr/bin/env bash
# Installs the Debian packages the tests need (beyond the Rust toolchain),
# saying what it installs; as non-root it only says what is missing.
set -euo pipefail

if [[ ${1-} == -h || ${1-} == --help ]]; then
  cat <<'HELP'
Usage: scripts/test-deps.sh [PACKAGE...]

Checks for the Debian packages the test suite uses (chromium for the status
page test, curl and python3 for the release scripts the tests run, procps and
util-linux for process tools, postgresql for the shortener's tests on
PostgreSQL, which start servers of their own) plus any PACKAGE given, and
installs the missing ones with apt-get when run as root. As another user it
lists what is missing and exits 1.
HELP
  exit 0
fi

packages=(chromium curl python3 procps util-linux postgresql "$@")
missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
  [[ $status == 'install ok installed' ]] || missing+=("$package")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
if ((EUID != 0)); then
  echo "the tests need these Debian packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing the packages the tests need: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq -o Dpkg::Use-Pty=0 "${missing[@]}"
