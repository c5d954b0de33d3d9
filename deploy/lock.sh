#!/usr/bin/env bash
# Regenerate the lock files in deploy/locks/: one per supported target (machine and Python),
# every runtime dependency pinned with its hashes, wheels only (a package without a wheel for
# a target fails here, naming it, instead of on a box with no network and no compiler).
#   deploy/lock.sh            all targets
# Needs the network (a package index); run it when pyproject.toml's dependencies change and
# commit the result. The offline bundle and deploy/setup.sh install from these pins.
set -euo pipefail
cd "$(dirname "$0")/.."

# target name          python  platform (glibc 2.35: Ubuntu 22.04 / JetPack 6 and newer)
targets=(
  "x86_64-py3.10       3.10    x86_64-manylinux_2_35"
  "x86_64-py3.11       3.11    x86_64-manylinux_2_35"
  "x86_64-py3.12       3.12    x86_64-manylinux_2_35"
  "x86_64-py3.13       3.13    x86_64-manylinux_2_35"
  "aarch64-py3.10      3.10    aarch64-manylinux_2_35"
)

uv=$(command -v uv || true)
if [ -z "$uv" ]; then
  tool=$(mktemp -d)
  trap 'rm -rf "$tool"' EXIT
  python3 -m pip install -q --target "$tool" uv
  uv="$tool/bin/uv"
fi

for line in "${targets[@]}"; do
  read -r name python platform <<<"$line"
  "$uv" pip compile pyproject.toml --quiet --no-build --generate-hashes \
    --python-version "$python" --python-platform "$platform" \
    --custom-compile-command "deploy/lock.sh" -o "deploy/locks/$name.txt"
  echo "lock: deploy/locks/$name.txt"
done
