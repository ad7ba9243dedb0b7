#!/usr/bin/env bash
# Make a local certificate authority and a TLS server certificate for the Mosquitto broker.
#
#   deploy/make-certs.sh [--force] DIR [HOSTNAME_OR_IP...]
#
# Writes into DIR (created with mode 700 if missing):
#   ca.key      CA private key (EC P-256, mode 600). Keep it OFF the broker if you can: it is
#               only needed to issue certificates, and whoever holds it can impersonate the
#               broker to every agent.
#   ca.crt      CA certificate (10 years). Copy it to every agent and client (tls.ca_file).
#   server.key  broker private key (EC P-256, mode 600)
#   server.crt  broker certificate (825 days), signed by the CA, with a subjectAltName for
#               every name given (default: localhost 127.0.0.1). Clients must connect using
#               one of these names, or verification fails.
#
# Idempotent: an existing CA is kept (unless --force), and an existing server certificate is
# kept when it was issued by this CA for exactly these names; otherwise it is re-issued.
# --force replaces the CA too, which invalidates every ca.crt already copied to clients.
#
# Certificates satisfy Python's VERIFY_X509_STRICT (critical basicConstraints, key usage,
# subject/authority key identifiers), so the agent's ssl.create_default_context accepts them.
# Needs only openssl (1.1.1 or later).
set -euo pipefail

CA_DAYS=3650
SERVER_DAYS=825  # the longest validity many TLS clients accept for a leaf certificate

usage() {
    sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

force=0
args=()
while (($#)); do
    case "$1" in
        --force) force=1 ;;
        -h | --help) usage ;;
        --) shift; args+=("$@"); break ;;
        -*) echo "make-certs: unknown option $1" >&2; usage ;;
        *) args+=("$1") ;;
    esac
    shift
done
((${#args[@]} >= 1)) || usage
dir=${args[0]}
names=("${args[@]:1}")
((${#names[@]})) || names=(localhost 127.0.0.1)

command -v openssl >/dev/null || { echo "make-certs: openssl not found" >&2; exit 1; }

# subjectAltName entries: IPv4/IPv6 literals as IP, everything else as DNS.
san=()
for n in "${names[@]}"; do
    if [[ $n =~ ^[0-9]+(\.[0-9]+){3}$ || $n == *:* ]]; then
        san+=("IP:$n")
    elif [[ $n =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]; then
        san+=("DNS:$n")
    else
        echo "make-certs: not a host name or IP address: $n" >&2
        exit 2
    fi
done
san_csv=$(IFS=,; echo "${san[*]}")

umask 077  # keys, and the temporary files, are never readable by others
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Our own openssl config, so the system openssl.cnf cannot add or change extensions.
cat >"$tmp/openssl.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
subjectAltName = $san_csv
EOF

serial() { echo "0x$(openssl rand -hex 16)"; }

new_key() {  # new_key PATH: EC P-256 private key, mode 600
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.new" 2>/dev/null
    chmod 600 "$1.new"
    mv -f "$1.new" "$1"
}

# ---------------------------------------------------------------------------- CA
if ((force)) || [[ ! -s $dir/ca.key || ! -s $dir/ca.crt ]]; then
    new_key "$dir/ca.key"
    openssl req -config "$tmp/openssl.cnf" -new -x509 -key "$dir/ca.key" \
        -subj "/O=recp-monitor/CN=recp-monitor local CA $(date -u +%Y-%m-%d)" \
        -days "$CA_DAYS" -sha256 -extensions v3_ca -set_serial "$(serial)" \
        -out "$dir/ca.crt.new"
    chmod 644 "$dir/ca.crt.new"
    mv -f "$dir/ca.crt.new" "$dir/ca.crt"
    rm -f "$dir/server.crt"  # issued by the old CA: re-issue below
    echo "make-certs: created CA $dir/ca.crt (valid $CA_DAYS days)"
else
    echo "make-certs: keeping existing CA $dir/ca.crt"
fi

# ---------------------------------------------------------------------------- server
# Does the existing certificate name exactly the requested hosts? (openssl -checkhost and
# -checkip compare the way clients do, so "::1" matches the "0:0:0:0:0:0:0:1" openssl prints.)
san_matches() {
    local e out count
    for e in "${san[@]}"; do
        if [[ $e == IP:* ]]; then
            out=$(openssl x509 -in "$dir/server.crt" -noout -checkip "${e#IP:}")
        else
            out=$(openssl x509 -in "$dir/server.crt" -noout -checkhost "${e#DNS:}")
        fi
        [[ $out == *" does match "* ]] || return 1
    done
    count=$(openssl x509 -in "$dir/server.crt" -noout -ext subjectAltName 2>/dev/null |
        tail -n +2 | tr ',' '\n' | grep -c .)
    ((count == ${#san[@]}))
}
server_ok() {
    [[ -s $dir/server.key && -s $dir/server.crt ]] || return 1
    openssl verify -CAfile "$dir/ca.crt" "$dir/server.crt" >/dev/null 2>&1 || return 1
    san_matches || return 1
    # the certificate must belong to the key next to it
    [[ "$(openssl x509 -in "$dir/server.crt" -noout -pubkey)" == \
        "$(openssl pkey -in "$dir/server.key" -pubout)" ]]
}

if ((force)) || ! server_ok; then
    new_key "$dir/server.key"
    openssl req -config "$tmp/openssl.cnf" -new -key "$dir/server.key" \
        -subj "/O=recp-monitor/CN=${names[0]}" -out "$tmp/server.csr"
    openssl x509 -req -in "$tmp/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -set_serial "$(serial)" -days "$SERVER_DAYS" -sha256 \
        -extfile "$tmp/openssl.cnf" -extensions v3_server -out "$dir/server.crt.new" 2>/dev/null
    chmod 644 "$dir/server.crt.new"
    mv -f "$dir/server.crt.new" "$dir/server.crt"
    echo "make-certs: issued $dir/server.crt for ${names[*]} (valid $SERVER_DAYS days)"
else
    echo "make-certs: keeping existing $dir/server.crt for ${names[*]}"
fi
