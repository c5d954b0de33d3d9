#!/usr/bin/env bash
# Build the offline installation bundle of one target (deploy/RELEASES.md):
#   deploy/bundle.sh --target TARGET --key KEY.pem [--version V] [--out DIR] [--models DIR ...]
#     --target   one of deploy/locks/ (x86_64-py3.11, aarch64-py3.10, ...)
#     --key      the release signing key (ed25519 PEM, openssl genpkey -algorithm ed25519)
#     --version  the release's version (default: the package version in pyproject.toml)
#     --out      where the bundle goes (default: dist/)
#     --models   a model package folder to ship (repeatable; default: models/demo-*)
# Writes OUT/appliance-V-TARGET.bundle: an uncompressed tar with install.sh first, bundle.json,
# wheels/ (every pin of the target's lock file for that platform and Python, the appliance's
# own wheel, pip's wheel), models/, share/ (systemd units, the example configuration, the
# nginx proxy and tls.sh), release-key.pub, SHA256SUMS and its ed25519 signature SHA256SUMS.sig.
# Needs the network (a package index) for wheels it has not fetched before; fetched wheels are
# kept in $APPLIANCE_WHEEL_CACHE (default ~/.cache/appliance/wheels), so a second build of the
# same pins needs none.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

# pip's own wheel goes in the bundle so that a box needs neither ensurepip nor python3-venv;
# pinned with its hash like every other wheel.
PIP_PIN="pip==26.3 --hash=sha256:f3b60b20ffaadd4415ed7957212a38ac63fa4c5fa375bd0f4a797777940fad13"
# The oldest glibc of the supported systems (Ubuntu 22.04 / JetPack 6): as deploy/lock.sh.
GLIBC_MINOR=35

fail() {
  echo "bundle: $*" >&2
  exit 2
}

target=""
key=""
version=""
out="$repo/dist"
models=()
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target="${2:?--target needs a name}"; shift 2 ;;
    --key) key="${2:?--key needs a file}"; shift 2 ;;
    --version) version="${2:?--version needs a value}"; shift 2 ;;
    --out) out="${2:?--out needs a folder}"; shift 2 ;;
    --models) models+=("${2:?--models needs a folder}"); shift 2 ;;
    -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) fail "unknown argument $1 (see --help)" ;;
  esac
done

targets=$(cd "$repo/deploy/locks" && ls -- *.txt | sed 's/\.txt$//' | tr '\n' ' ')
[ -n "$target" ] || fail "--target is required (one of: $targets)"
lock="$repo/deploy/locks/$target.txt"
[ -f "$lock" ] || fail "no lock file for target $target (one of: $targets)"
machine="${target%%-py*}"
pyver="${target##*-py}"
[ -n "$key" ] || fail "--key is required (the release signing key; see deploy/RELEASES.md)"
[ -r "$key" ] || fail "cannot read the signing key $key"
command -v openssl >/dev/null || fail "openssl is not installed"
openssl pkey -in "$key" -noout -text 2>/dev/null | head -1 | grep -q 'ED25519 Private-Key' ||
  fail "$key is not an ed25519 private key in PEM (openssl genpkey -algorithm ed25519)"
if [ -z "$version" ]; then
  version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$repo/pyproject.toml" | head -1)
fi
[[ "$version" =~ ^[A-Za-z0-9][A-Za-z0-9._+-]*$ ]] || fail "the version '$version' is not a plain version"
if [ ${#models[@]} -eq 0 ]; then
  for dir in "$repo"/models/demo-*/; do models+=("${dir%/}"); done
fi
for dir in "${models[@]}"; do
  [ -f "$dir/manifest.yaml" ] || fail "$dir is not a model package (no manifest.yaml)"
done

python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi
"$python" -m pip --version >/dev/null 2>&1 || fail "$python has no pip (set PYTHON to one that has)"

cache="${APPLIANCE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/appliance/wheels}"
mkdir -p "$cache" "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage="$work/bundle"
mkdir -p "$stage/wheels" "$stage/models" "$stage/share/systemd"

# --- the dependencies' wheels, for the target's platform and Python ---------------------------
platforms=()
for ((minor = GLIBC_MINOR; minor >= 17; minor--)); do
  platforms+=(--platform "manylinux_2_${minor}_${machine}")
done
platforms+=(--platform "manylinux2014_${machine}")
[ "$machine" = x86_64 ] && platforms+=(--platform manylinux2010_x86_64 --platform manylinux1_x86_64)
cp "$lock" "$work/requirements.txt"
echo "$PIP_PIN" >>"$work/requirements.txt"
download=("$python" -m pip download --disable-pip-version-check --only-binary=:all: --no-deps
  --require-hashes "${platforms[@]}" --python-version "$pyver" --implementation cp
  --find-links "$cache" -d "$stage/wheels" -r "$work/requirements.txt")
echo "bundle: wheels for $target (Python $pyver on $machine)" >&2
# Offline first, from the wheels fetched before; the package index only when one is missing.
if ! "${download[@]}" --no-index >"$work/pip.log" 2>&1; then
  if ! "${download[@]}" >"$work/pip.log" 2>&1; then
    missing=$(sed -n 's/.*No matching distribution found for \([^ ]*\).*/\1/p' "$work/pip.log" | sort -u)
    if [ -n "$missing" ]; then
      fail "no wheel for $target (Python $pyver, $machine, glibc 2.$GLIBC_MINOR) of:" $missing
    fi
    cat "$work/pip.log" >&2
    fail "could not download the wheels of $lock (see pip's message above)"
  fi
fi
cp -n "$stage/wheels/"*.whl "$cache/" 2>/dev/null || true
pins=$(grep -cE '^[A-Za-z0-9]' "$lock")
got=$(find "$stage/wheels" -name '*.whl' | wc -l)
[ "$got" -eq $((pins + 1)) ] || fail "expected $((pins + 1)) wheels (the lock's $pins and pip), got $got"

# --- the appliance's own wheel (never editable), built from a clean copy of the source -------
mkdir -p "$work/src" "$work/appwheel"
cp "$repo/pyproject.toml" "$repo/README.md" "$work/src/"
tar -C "$repo" --exclude=__pycache__ --exclude='*.pyc' -cf - appliance | tar -C "$work/src" -xf -
isolation=()
# Without build isolation when this Python can build it (setuptools >= 68 and a bdist_wheel):
# no index is needed then.
if "$python" - <<'EOF'; then isolation=(--no-build-isolation); fi
import importlib.metadata as md
def version(name):
    try:
        return tuple(int(p) for p in md.version(name).split(".")[:2])
    except (md.PackageNotFoundError, ValueError):
        return None
tools = version("setuptools")
raise SystemExit(0 if tools and tools >= (68, 0) and (tools >= (70, 1) or version("wheel")) else 1)
EOF
if ! "$python" -m pip wheel --disable-pip-version-check --no-deps "${isolation[@]}" -q \
  -w "$work/appwheel" "$work/src" >"$work/wheel.log" 2>&1; then
  cat "$work/wheel.log" >&2
  fail "could not build the appliance's wheel"
fi
app_wheel=$(cd "$work/appwheel" && ls appliance-*.whl)
mv "$work/appwheel/$app_wheel" "$stage/wheels/"

# --- models, share/, the installer, the key ----------------------------------------------------
for dir in "${models[@]}"; do
  name=$(basename "$dir")
  tar -C "$(dirname "$dir")" --exclude=__pycache__ -cf - "$name" | tar -C "$stage/models" -xf -
done
cp "$repo"/systemd/* "$stage/share/systemd/"
cp "$repo/deploy/appliance.example.yaml" "$stage/share/"
[ -d "$repo/deploy/nginx" ] && cp -r "$repo/deploy/nginx" "$stage/share/nginx"
[ -f "$repo/deploy/tls.sh" ] && install -m 0755 "$repo/deploy/tls.sh" "$stage/share/tls.sh"
install -m 0755 "$repo/deploy/install.sh" "$stage/install.sh"
openssl pkey -in "$key" -pubout -out "$stage/release-key.pub"
"$python" - "$stage/bundle.json" "$version" "$target" "$pyver" "$machine" "$app_wheel" <<'EOF'
import datetime
import json
import sys

path, version, target, python, machine, wheel = sys.argv[1:]
created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
info = {"version": version, "target": target, "python": python, "machine": machine,
        "created": created, "appliance_wheel": wheel}
with open(path, "w", encoding="utf-8") as f:
    json.dump(info, f, indent=2)
    f.write("\n")
EOF

# --- checksums, signature, the tar --------------------------------------------------------------
chmod -R u+rwX,go+rX,go-w "$stage"
(cd "$stage" && find . -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 sha256sum >"$work/SHA256SUMS")
mv "$work/SHA256SUMS" "$stage/SHA256SUMS"
openssl pkeyutl -sign -inkey "$key" -rawin -in "$stage/SHA256SUMS" -out "$stage/SHA256SUMS.sig" ||
  fail "could not sign SHA256SUMS with $key"
bundle="$out/appliance-$version-$target.bundle"
tar -C "$stage" --owner=0 --group=0 --numeric-owner --sort=name -cf "$bundle.partial" \
  install.sh bundle.json wheels models share release-key.pub SHA256SUMS SHA256SUMS.sig
mv -f "$bundle.partial" "$bundle"

fingerprint=$(openssl pkey -pubin -in "$stage/release-key.pub" -outform DER | sha256sum | cut -d' ' -f1)
size=$(stat -c %s "$bundle")
echo "bundle: $bundle ($((size / 1048576)) MiB, $size bytes; $pins dependency wheels, pip, the appliance $app_wheel, ${#models[@]} model package(s))"
echo "bundle: signed by the release key with fingerprint $fingerprint"
