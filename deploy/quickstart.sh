#!/usr/bin/env bash
# Set everything up and start the appliance on this machine (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/setup.sh
exec .venv/bin/appliance ${APPLIANCE_CONFIG:+--config "$APPLIANCE_CONFIG"} run
