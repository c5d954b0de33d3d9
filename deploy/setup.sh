#!/usr/bin/env bash
# Prepare this checkout: system packages, a virtual environment in .venv and the appliance in it.
#   deploy/setup.sh          runtime only
#   deploy/setup.sh --test   plus what the tests need (DCMTK, Debian's Chromium, Playwright,
#                            pytest, ruff, mypy)
# Idempotent and quiet: packages already installed are not touched, and apt's chatter is shown
# only when an install fails. The browser tests drive Debian's Chromium through Playwright's
# Python package with an explicit executable_path: nothing here downloads a browser build
# (never `playwright install`).
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

installed() {
  # `dpkg -s` also succeeds for a removed package whose config files remain: ask for the state.
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

apt_install() {
  local missing=()
  for pkg in "$@"; do installed "$pkg" || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing ${missing[*]}" >&2
  local log
  log=$(mktemp)
  $sudo apt-get update -qq >"$log" 2>&1 || echo "setup: apt-get update failed; trying the cached lists" >&2
  if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "setup: could not install ${missing[*]}" >&2
    return 1
  fi
  rm -f "$log"
}

if command -v apt-get >/dev/null; then
  # The PDF report embeds DejaVu Sans, which covers the patients' names in Latin, Greek and
  # Cyrillic scripts.
  packages=(python3-venv fonts-dejavu-core)
  # Tests: DCMTK as a DICOM peer and SR reader; Orthanc as the clinic's PACS; dicom3tools'
  # dciodvfy to validate every object the box writes; poppler's pdftotext to read reports
  # back; Chromium as the browser.
  [ $want_test -eq 1 ] && packages+=(dcmtk orthanc dicom3tools poppler-utils chromium nginx)
  apt_install "${packages[@]}"
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv

# The runtime dependencies at the versions of this target's lock file (deploy/lock.sh), so that
# a developer, CI and the offline bundle run the same releases. pip takes no hashes with an
# editable install, so the pins go in as constraints without them.
constraints=()
target="$(uname -m)-py$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ -f "deploy/locks/$target.txt" ]; then
  grep -vE '^[[:space:]]*(--hash|#)' "deploy/locks/$target.txt" | sed 's/ *\\$//' >.venv/constraints.txt
  constraints=(-c .venv/constraints.txt)
else
  echo "setup: no lock file for $target in deploy/locks/: taking the newest allowed releases" >&2
fi
# The editable install is built inside this venv (--no-build-isolation) with its own setuptools
# and wheel, fetched once: pip's default build isolation fetches setuptools from the index at
# every run, which fails on a machine without a network even when everything is installed.
if ! .venv/bin/python - <<'PY'; then
import importlib.metadata as md

def version(name):
    try:
        return tuple(int(p) for p in md.version(name).split(".")[:2])
    except (md.PackageNotFoundError, ValueError):
        return None

tools = version("setuptools")
raise SystemExit(0 if tools and tools >= (68, 0) and version("wheel") else 1)
PY
  .venv/bin/python -m pip install -q 'setuptools>=68' wheel
fi
extras=""
[ $want_test -eq 1 ] && extras="[test]"
.venv/bin/python -m pip install -q --no-build-isolation "${constraints[@]}" -e ".$extras"
