#!/usr/bin/env bash
# The TLS proxy's certificate and key (deploy/nginx/appliance.conf), in ROOT/etc/appliance/tls/:
#   tls.sh [--root DIR]                       make a self-signed certificate for this box, unless
#                                             one is there already
#   tls.sh [--root DIR] --cert C --key K      install the site's own certificate (PEM, the chain
#                                             after the box's certificate) and key instead
#   --name NAME, --ip ADDR (repeatable)       more names or addresses the self-signed
#                                             certificate is valid for
#   --force                                   replace a certificate that is there
# The self-signed certificate names the host name (short and full), localhost, every address of
# `hostname -I` and 127.0.0.1; P-256 EC key (browsers take no ed25519 server certificate);
# valid 825 days, the most Apple's systems accept. Needs openssl (1.1.1 or later).
set -euo pipefail

root=""
cert=""
key=""
force=0
names=()
ips=()
fail() {
  echo "tls: $*" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="${2:?--root needs a folder}"; shift 2 ;;
    --cert) cert="${2:?--cert needs a file}"; shift 2 ;;
    --key) key="${2:?--key needs a file}"; shift 2 ;;
    --name) names+=("${2:?--name needs a host name}"); shift 2 ;;
    --ip) ips+=("${2:?--ip needs an address}"); shift 2 ;;
    --force) force=1; shift ;;
    -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) fail "unknown argument $1 (see --help)" ;;
  esac
done
[ -n "$cert" ] && [ -z "$key" ] && fail "--cert needs --key as well"
[ -n "$key" ] && [ -z "$cert" ] && fail "--key needs --cert as well"
command -v openssl >/dev/null || fail "openssl is not installed (apt-get install openssl)"

dir="${root%/}/etc/appliance/tls"
crt_out="$dir/appliance.crt"
key_out="$dir/appliance.key"
mkdir -p "$dir"
chmod 0755 "$dir"

# Write the key with no permission for others from its first byte (nginx reads it as root).
umask 077

install_own() {
  [ -r "$cert" ] || fail "cannot read the certificate $cert"
  [ -r "$key" ] || fail "cannot read the key $key"
  openssl x509 -in "$cert" -noout 2>/dev/null || fail "$cert is not a PEM certificate"
  local from_cert from_key
  from_cert=$(openssl x509 -in "$cert" -noout -pubkey 2>/dev/null | openssl pkey -pubin -outform DER 2>/dev/null | sha256sum)
  from_key=$(openssl pkey -in "$key" -pubout -outform DER 2>/dev/null | sha256sum) ||
    fail "$key is not a PEM private key (or it has a pass phrase: nginx cannot ask for one)"
  [ "$from_cert" = "$from_key" ] || fail "the key $key does not belong to the certificate $cert"
  if ! openssl x509 -in "$cert" -noout -checkend 0 >/dev/null; then
    fail "the certificate $cert has expired"
  fi
  cp "$key" "$key_out.new"
  cp "$cert" "$crt_out.new"
}

make_own() {
  local host fqdn san work
  host=$(hostname 2>/dev/null || echo appliance)
  fqdn=$(hostname -f 2>/dev/null || echo "$host")
  san="DNS:$host,DNS:localhost"
  [ "$fqdn" != "$host" ] && san="$san,DNS:$fqdn"
  for name in "${names[@]+"${names[@]}"}"; do san="$san,DNS:$name"; done
  local addresses
  addresses="127.0.0.1 $(hostname -I 2>/dev/null || true) ${ips[*]+"${ips[*]}"}"
  for ip in $(echo "$addresses" | tr ' ' '\n' | awk 'NF && !seen[$0]++'); do
    case "$ip" in fe80:*) continue ;; esac # link-local: no use in a certificate
    san="$san,IP:$ip"
  done
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  # A configuration of our own: the system's openssl.cnf would add CA:TRUE, which Firefox
  # refuses on a server's certificate.
  cat >"$work/req.cnf" <<EOF
[req]
distinguished_name = dn
x509_extensions = ext
prompt = no
[dn]
CN = $host
O = Appliance (self-signed)
[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
subjectAltName = $san
EOF
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$key_out.new" 2>"$work/err" ||
    { cat "$work/err" >&2; fail "could not make a key"; }
  openssl req -new -x509 -config "$work/req.cnf" -key "$key_out.new" -sha256 -days 825 \
    -out "$crt_out.new" 2>"$work/err" || { cat "$work/err" >&2; fail "could not make the certificate"; }
  echo "tls: made a self-signed certificate for $san (valid 825 days)" >&2
}

if [ -n "$cert" ]; then
  install_own
elif [ -s "$crt_out" ] && [ -s "$key_out" ] && [ $force -eq 0 ]; then
  echo "tls: $crt_out is there already (kept; --force makes a new one)" >&2
  exit 0
else
  make_own
fi
chmod 0600 "$key_out.new"
chmod 0644 "$crt_out.new"
# The key first: nginx never sees a new certificate beside the old key.
mv -f "$key_out.new" "$key_out"
mv -f "$crt_out.new" "$crt_out"
fp=$(openssl x509 -in "$crt_out" -noout -fingerprint -sha256 | cut -d= -f2)
echo "tls: $crt_out (SHA-256 fingerprint $fp)"
