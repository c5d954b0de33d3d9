#!/usr/bin/env bash
# Prepare this checkout: system packages, a virtual environment in .venv and the appliance in it.
#   deploy/setup.sh          runtime only
#   deploy/setup.sh --test   plus what the tests need (DCMTK, pytest, ruff, mypy)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq || echo "setup: apt-get update failed; trying the cached lists" >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

if command -v apt-get >/dev/null; then
  packages=(python3-venv)
  [ $want_test -eq 1 ] && packages+=(dcmtk)
  apt_install "${packages[@]}"
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
if [ $want_test -eq 1 ]; then
  .venv/bin/python -m pip install -q -e '.[test]'
else
  .venv/bin/python -m pip install -q -e .
fi
