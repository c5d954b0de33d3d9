#!/usr/bin/env bash
# Install (or upgrade to) the appliance release in an offline bundle (deploy/RELEASES.md):
#   install.sh BUNDLE [--root DIR] [--no-systemd] [--release-only] [--key PUB]
#     --root DIR      install below DIR instead of / (a test install: no user, no systemd)
#     --no-systemd    leave systemd alone (units are copied, nothing is enabled or started)
#     --release-only  only verify and install ROOT/opt/appliance/releases/VERSION (the update
#                     command uses this); the running release, configuration and units stay
#     --key PUB       the release public key to check the bundle with when this box has none
#                     yet in ROOT/etc/appliance/release-key.pub
# Needs no network: the bundle carries every wheel, pip included. Needs python3 of the bundle's
# version (its venv module; ensurepip and python3-venv are not needed), openssl 3, tar,
# sha256sum. Take it from the bundle: tar -xf appliance-V-TARGET.bundle install.sh
set -euo pipefail
umask 022

fail() {
  echo "install: $*" >&2
  exit 2
}
note() { echo "install: $*" >&2; }

bundle=""
root=""
systemd=1
release_only=0
key_arg=""
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="${2:?--root needs a folder}"; shift 2 ;;
    --no-systemd) systemd=0; shift ;;
    --release-only) release_only=1; shift ;;
    --key) key_arg="${2:?--key needs a file}"; shift 2 ;;
    -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) fail "unknown option $1 (see --help)" ;;
    *) [ -z "$bundle" ] || fail "one bundle at a time ($bundle and $1)"; bundle="$1"; shift ;;
  esac
done
[ -n "$bundle" ] || fail "which bundle? install.sh BUNDLE [--root DIR] (see --help)"
[ -f "$bundle" ] || fail "no such bundle: $bundle"
for tool in openssl sha256sum tar; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (it comes with every supported system)"
done
if [ -n "$root" ]; then
  mkdir -p "$root"
  root="$(cd "$root" && pwd)"
  [ "$root" = / ] && root=""
fi
[ -n "$key_arg" ] && { [ -r "$key_arg" ] || fail "cannot read the key $key_arg"; }
bundle="$(cd "$(dirname "$bundle")" && pwd)/$(basename "$bundle")"
opt="$root/opt/appliance"
etc="$root/etc/appliance"
is_root=0
[ "$(id -u)" -eq 0 ] && is_root=1

fingerprint() {
  openssl pkey -pubin -in "$1" -outform DER 2>/dev/null | sha256sum | cut -d' ' -f1
}

# --- look at the members before anything is unpacked -------------------------------------------
listing=$(tar -tvf "$bundle" 2>/dev/null) || fail "$bundle is not a bundle (tar cannot read it)"
# grep reads all its input (no -q): under pipefail an early exit would make echo fail and
# the refusal be skipped.
if cut -c1 <<<"$listing" | grep -v '[-d]' >/dev/null; then
  fail "$bundle holds links or devices: not a bundle made by bundle.sh; refused"
fi
names=$(tar -tf "$bundle")
if grep -E '^/|(^|/)\.\.(/|$)' <<<"$names" >/dev/null; then
  fail "$bundle names files outside its own folder; refused"
fi
[ "$(echo "$names" | head -1)" = install.sh ] || fail "$bundle does not start with install.sh: not a bundle"

mkdir -p "$opt/releases"
incoming=$(mktemp -d "$opt/releases/.incoming.XXXXXX")
partial=""
cleanup() {
  rm -rf "$incoming"
  [ -n "$partial" ] && rm -rf "$partial"
  return 0
}
trap cleanup EXIT
tar -xf "$bundle" -C "$incoming" --no-same-owner
for member in SHA256SUMS SHA256SUMS.sig release-key.pub bundle.json; do
  [ -f "$incoming/$member" ] || fail "$bundle is incomplete: it has no $member"
done

# --- the signature: this box's key, else --key, else the bundle's own (trust on first install)
if [ -f "$etc/release-key.pub" ]; then
  key="$etc/release-key.pub"
  whose="this box's release key $key"
elif [ -n "$key_arg" ]; then
  key="$key_arg"
  whose="the key $key"
else
  key="$incoming/release-key.pub"
  whose="the bundle's own key"
  note "this box has no release key yet: trusting the key that came with the bundle."
  note "  its fingerprint is $(fingerprint "$key")"
  note "  compare it with the fingerprint in your release notes before you go on using this box."
fi
if ! openssl pkeyutl -verify -pubin -inkey "$key" -rawin -in "$incoming/SHA256SUMS" \
  -sigfile "$incoming/SHA256SUMS.sig" >/dev/null 2>&1; then
  fail "the signature of $bundle does not match $whose (fingerprint $(fingerprint "$key")): the bundle was changed after it was signed, or another key signed it; refused"
fi
# Every member must be listed and match: an unlisted extra wheel would be installed too.
# Only plain files and folders may have come out of the tar, whatever its listing said.
[ -z "$(find "$incoming" ! -type f ! -type d -print -quit)" ] || fail "$bundle unpacked into links or devices; refused"
(cd "$incoming" && find . -type f ! -path ./SHA256SUMS ! -path ./SHA256SUMS.sig -printf '%P\n' | LC_ALL=C sort) >"$incoming/.members"
sed 's/^[0-9a-f]\{64\} [ *]//' "$incoming/SHA256SUMS" | LC_ALL=C sort >"$incoming/.listed"
unlisted=$(LC_ALL=C comm -23 "$incoming/.members" "$incoming/.listed" | grep -vxE '\.members|\.listed' || true)
[ -z "$unlisted" ] || fail "$bundle holds files its signed SHA256SUMS does not list: $(echo $unlisted); refused"
if ! bad=$(cd "$incoming" && sha256sum --check --strict --quiet SHA256SUMS 2>&1); then
  fail "checksums of $bundle do not match its signed SHA256SUMS (the bundle was changed or damaged): $(echo "$bad" | tr '\n' ' ')refused"
fi
rm -f "$incoming/.members" "$incoming/.listed"
note "signature and checksums of $(basename "$bundle") verified with $whose"

# --- what the bundle is for ---------------------------------------------------------------------
read_info() {
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$incoming/bundle.json" "$1"
}
command -v python3 >/dev/null || fail "python3 is not installed"
version=$(read_info version)
machine=$(read_info machine)
pyver=$(read_info python)
app_wheel=$(read_info appliance_wheel)
[[ "$version" =~ ^[A-Za-z0-9][A-Za-z0-9._+-]*$ ]] || fail "bundle.json has an odd version '$version'; refused"
[ "$machine" = "$(uname -m)" ] || fail "this bundle is for $machine; this machine is $(uname -m): take the bundle of its target"
python=""
for candidate in "${PYTHON:-}" "python$pyver" python3; do
  [ -n "$candidate" ] && command -v "$candidate" >/dev/null || continue
  if [ "$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$pyver" ]; then
    python=$(command -v "$candidate")
    break
  fi
done
[ -n "$python" ] || fail "this bundle is for Python $pyver and this machine has no python$pyver: take the bundle of its target (deploy/locks/)"

# --- the release: unpacked beside its final place, renamed when complete -----------------------
release="$opt/releases/$version"
if [ -f "$release/share/SHA256SUMS" ] && cmp -s "$release/share/SHA256SUMS" "$incoming/SHA256SUMS"; then
  note "release $version is installed already from this very bundle: kept"
else
  partial="$release.partial"
  rm -rf "$partial"
  mkdir -p "$partial/share"
  if [ -d "$incoming/models" ]; then mv "$incoming/models" "$partial/models"; else mkdir "$partial/models"; fi
  [ -d "$incoming/share" ] && cp -a "$incoming/share/." "$partial/share/"
  cp "$incoming"/{install.sh,bundle.json,release-key.pub,SHA256SUMS,SHA256SUMS.sig} "$partial/share/"
  # Nothing from this machine's pip configuration (indexes, constraints) may take part.
  while read -r var; do unset "$var"; done < <(env | sed -n 's/^\(PIP_[A-Z_]*\)=.*/\1/p')
  export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
  wheels="$incoming/wheels"
  "$python" -m venv --without-pip "$partial/venv" || fail "$python could not make a virtual environment"
  pip_wheel=$(find "$wheels" -name 'pip-*.whl' | head -1)
  [ -n "$pip_wheel" ] || fail "the bundle has no pip wheel"
  note "installing release $version (Python $pyver) into $release"
  quiet=(-q --no-index --no-cache-dir --find-links "$wheels")
  "$partial/venv/bin/python" "$pip_wheel/pip" install "${quiet[@]}" pip || fail "could not install pip from the bundle"
  app_version=$(echo "$app_wheel" | cut -d- -f2)
  "$partial/venv/bin/python" -m pip install "${quiet[@]}" "appliance==$app_version" ||
    fail "could not install the appliance from the bundle's wheels"
  "$partial/venv/bin/python" -m pip check >/dev/null || fail "the installed packages do not fit together: $("$partial/venv/bin/python" -m pip check)"
  # The venv was made under the .partial name: its scripts' first lines name that path.
  grep -rlI --null -F "$partial/venv" "$partial/venv/bin" "$partial/venv/pyvenv.cfg" |
    xargs -0 -r sed -i "s#$partial/venv#$release/venv#g"
  if [ -e "$release" ]; then
    old="$opt/releases/.replaced.$version.$$"
    mv -T "$release" "$old"
    mv -T "$partial" "$release"
    rm -rf "$old"
  else
    mv -T "$partial" "$release"
  fi
  partial=""
  note "release $version installed in $release"
fi
if [ $release_only -eq 1 ]; then
  echo "install: release $version is ready in $release (--release-only: nothing else changed)"
  exit 0
fi

# --- the appliance user ---------------------------------------------------------------------------
if [ -n "$root" ]; then
  note "--root: the appliance user is not made (this machine's accounts stay as they are)"
elif [ $is_root -eq 0 ]; then
  note "not root: the appliance user is not made (run as root to make it)"
elif ! getent passwd appliance >/dev/null; then
  groups=()
  for group in video render; do getent group "$group" >/dev/null && groups+=("$group"); done
  extra=()
  [ ${#groups[@]} -gt 0 ] && extra=(--groups "$(IFS=,; echo "${groups[*]}")")
  useradd --system --user-group "${extra[@]}" --home-dir /var/lib/appliance --no-create-home \
    --shell /usr/sbin/nologin --comment "Edge inference appliance" appliance
  note "made the system user appliance"
fi

# --- configuration, key, units, the proxy's certificate ---------------------------------------
mkdir -p "$etc"
config="$etc/appliance.yaml"
# Other screens reach the UI through Debian's nginx as a TLS proxy when it is installed (apt-get
# install nginx before this script, see deploy/RELEASES.md); the UI then marks its cookies Secure.
proxy=0
[ -z "$root" ] && [ $is_root -eq 1 ] && [ $systemd -eq 1 ] && command -v nginx >/dev/null && proxy=1
if [ -f "$config" ]; then
  note "$config is there already: kept"
else
  example="$release/share/appliance.example.yaml"
  if [ -n "$root" ]; then
    # A test install keeps its data inside ROOT: only storage.data_dir, storage.cache_dir and
    # export.folders change (keys at the top of their section; comments and the rest stay).
    mkdir -p "$root/var/lib/appliance" "$root/var/cache/appliance" "$root/media"
    awk -v data="$root/var/lib/appliance" -v cache="$root/var/cache/appliance" -v media="$root/media" '
      /^[^ #]/ { section = $1 }
      section == "storage:" && /^  data_dir:/ { print "  data_dir: \"" data "\""; next }
      section == "storage:" && /^  cache_dir:/ { print "  cache_dir: \"" cache "\""; next }
      section == "export:" && /^  folders:/ { print "  folders: [\"" media "\"]"; next }
      { print }' "$example" >"$config.new"
  elif [ $proxy -eq 1 ]; then
    awk '/^[^ #]/ { section = $1 }
      section == "ui:" && /^  behind_tls:/ { print "  behind_tls: true"; next }
      { print }' "$example" >"$config.new"
  else
    cp "$example" "$config.new"
  fi
  "$release/venv/bin/appliance" check-config "$config.new" >/dev/null ||
    fail "the example configuration does not pass check-config"
  mv -f "$config.new" "$config"
  note "wrote $config from the example: edit it for this site (appliance check-config checks it)"
fi
if [ ! -f "$etc/release-key.pub" ]; then
  cp "$key" "$etc/release-key.pub"
  chmod 0644 "$etc/release-key.pub"
  note "this box now checks updates with the release key $(fingerprint "$etc/release-key.pub")"
fi
units=()
if [ -d "$release/share/systemd" ]; then
  mkdir -p "$root/etc/systemd/system"
  for unit in "$release"/share/systemd/*; do
    cp "$unit" "$root/etc/systemd/system/"
    # Units without an [Install] section are started by another (a timer, a path) only.
    grep -q '^\[Install\]' "$unit" && units+=("$(basename "$unit")")
  done
fi
if [ -f "$release/share/tls.sh" ] && [ ! -s "$etc/tls/appliance.crt" ]; then
  tls_args=()
  [ -n "$root" ] && tls_args=(--root "$root")
  bash "$release/share/tls.sh" "${tls_args[@]}" || note "could not make the proxy's certificate (run share/tls.sh later)"
fi

if [ $proxy -eq 1 ] && [ -f "$release/share/nginx/appliance.conf" ]; then
  if [ ! -f /etc/nginx/conf.d/appliance.conf ]; then
    cp "$release/share/nginx/appliance.conf" /etc/nginx/conf.d/appliance.conf
    # Debian's default site also claims port 80 as default_server.
    [ -L /etc/nginx/sites-enabled/default ] && rm -f /etc/nginx/sites-enabled/default
    note "installed the TLS proxy /etc/nginx/conf.d/appliance.conf"
  fi
  if nginx -t >/dev/null 2>&1; then
    systemctl enable nginx >/dev/null 2>&1 || true
    systemctl reload-or-restart nginx || note "nginx did not start: see journalctl -u nginx"
  else
    note "nginx refuses its configuration (nginx -t): other screens cannot reach the UI yet"
  fi
fi

# --- switch to the new release: a new link renamed over the old one (atomic) -------------------
ln -sfn "releases/$version" "$opt/.current.new"
mv -T "$opt/.current.new" "$opt/current"
note "$opt/current now points at releases/$version"

ui_address() {
  "$release/venv/bin/python" - "$config" <<'EOF'
import sys
from pathlib import Path
from appliance.config import load_settings
ui = load_settings(Path(sys.argv[1])).ui
host = "127.0.0.1" if ui.bind_address in ("0.0.0.0", "::") else ui.bind_address
print(f"http://{host}:{ui.port}/")
EOF
}
address=$(ui_address)

if [ $systemd -eq 0 ] || [ -n "$root" ] || [ $is_root -eq 0 ] || [ ! -d /run/systemd/system ]; then
  echo "install: release $version installed; services not started (no systemd here, --root or --no-systemd)."
  echo "install: start them with: systemctl daemon-reload && systemctl enable --now ${units[*]}"
  echo "install: the UI will be at $address"
  exit 0
fi

started=$(date +%s)
systemctl daemon-reload
systemctl enable "${units[@]}" >/dev/null 2>&1
systemctl restart "${units[@]}"
note "waiting for the UI at $address"
if ! "$release/venv/bin/python" - "$address" <<'EOF'; then
import sys
import time
import urllib.error
import urllib.request

deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    try:
        urllib.request.urlopen(sys.argv[1], timeout=3).close()
        raise SystemExit(0)
    except urllib.error.HTTPError:
        raise SystemExit(0)  # it answered
    except OSError:
        time.sleep(1)
raise SystemExit(1)
EOF
  fail "the UI did not answer at $address within 90 s: see journalctl -u appliance-ui"
fi
code=$(journalctl -u appliance-ui.service --since "@$started" -o cat 2>/dev/null |
  sed -n 's/.*the set-up code \([0-9]*\).*/\1/p' | tail -1 || true)
if [ -z "$code" ]; then
  # The UI printed none this start (an admin exists, or the journal is not readable): ask the
  # store, as the appliance user, and make a fresh code when there is no admin yet.
  code=$(runuser -u appliance -- env STATE_DIRECTORY=/var/lib/appliance CACHE_DIRECTORY=/var/cache/appliance \
    "$release/venv/bin/python" - "$config" <<'EOF' || true
import sys
from pathlib import Path
from appliance.config import load_settings
from appliance.store import open_store, users
store = open_store(load_settings(Path(sys.argv[1])))
try:
    print("" if users.has_admin(store.conn) else users.new_setup_code(store.conn))
finally:
    store.close()
EOF
  )
fi
echo "install: appliance $version is running: ${units[*]}"
echo "install: the UI is at $address (on this box's screen)"
if [ -f /etc/nginx/conf.d/appliance.conf ]; then
  echo "install: other screens: https://$(hostname -I 2>/dev/null | awk '{print $1}')/"
fi
if [ -n "$code" ]; then
  echo "install: first start: open ${address}setup and enter the set-up code $code to create the administrator"
else
  echo "install: an administrator exists already: sign in as usual"
fi
