#!/usr/bin/env bash
# Install or update the recp-monitor edge agent on Raspberry Pi OS / Debian (run as root).
#
#   deploy/install-agent.sh [--site FILE] [--ca FILE] [--password-file FILE] [--no-start]
#
#   --site FILE           the site file (kind: site) -> /etc/recp/site.yaml
#   --ca FILE             the broker's CA certificate -> /etc/recp/ca.crt
#   --password-file FILE  the agent's broker password (first line) -> a systemd credential,
#                         /etc/recp/credentials/mqtt-password (root only); or set
#                         $RECP_MQTT_PASSWORD. Never given on the command line.
#   --no-start            install and enable, but do not (re)start the service
#   --prefix DIR, --etc DIR, --unit-dir DIR, --user NAME
#                         where the venv (/opt/recp), the configuration (/etc/recp) and the
#                         unit (/etc/systemd/system) go, and the service user (recp)
#
# What it does, each step only when needed, so running it again is safe (and is how to
# update): python3-venv from apt if missing; a system user "recp"; a venv in /opt/recp with
# this source tree's '.[edge]', pyserial and, where it has a wheel, uvloop (never numba);
# /etc/recp with the device profiles; the files
# given; deploy/systemd/recp-agent.service; `recp config check` on the site file; then
# systemctl enable and restart. Without a site file it installs the example
# (edge_config/sites/example_pi.yaml) for editing and does not start the agent.
# Details: docs/deploy.md, "Edge box".
set -euo pipefail

usage() {
    sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=/opt/recp
etc=/etc/recp
unit_dir=/etc/systemd/system
user=recp
site=
ca=
password_file=
start=1
while (($#)); do
    case "$1" in
        --site) (($# >= 2)) || usage; site=$2; shift ;;
        --ca) (($# >= 2)) || usage; ca=$2; shift ;;
        --password-file) (($# >= 2)) || usage; password_file=$2; shift ;;
        --prefix) (($# >= 2)) || usage; prefix=$2; shift ;;
        --etc) (($# >= 2)) || usage; etc=$2; shift ;;
        --unit-dir) (($# >= 2)) || usage; unit_dir=$2; shift ;;
        --user) (($# >= 2)) || usage; user=$2; shift ;;
        --no-start) start=0 ;;
        -h | --help) usage ;;
        *) echo "install-agent: unknown argument $1" >&2; usage ;;
    esac
    shift
done

say() { printf 'install-agent: %s\n' "$*"; }
die() { printf 'install-agent: %s\n' "$*" >&2; exit 1; }

((EUID == 0)) || die "run as root (sudo $0 ...)"
[[ -f $src/pyproject.toml && -d $src/collector ]] || die "no recp-monitor source tree at $src"
for f in "$site" "$ca" "$password_file"; do
    [[ -z $f || -r $f ]] || die "cannot read $f"
done

# ----------------------------------------------------------------------------- Python
command -v python3 >/dev/null || die "python3 not found (apt-get install python3)"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "Python 3.10 or later needed, found $(python3 -V 2>&1)"
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    say "installing python3-venv"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv
fi

# ----------------------------------------------------------------------------- user
if ! id -u "$user" >/dev/null 2>&1; then
    say "creating system user $user"
    useradd --system --user-group --home-dir /var/lib/recp --no-create-home \
        --shell /usr/sbin/nologin --comment "recp-monitor" "$user"
fi
group=$(id -gn "$user")

# ----------------------------------------------------------------------------- venv
if [[ ! -x $prefix/bin/python ]]; then
    say "creating venv $prefix"
    python3 -m venv "$prefix"
fi
say "installing recp-monitor[edge] from $src into $prefix"
# pyserial: RTU meters on the box's own RS485 adapter (pymodbus's serial client needs it;
# the edge extra does not pull it)
"$prefix/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade \
    "${src}[edge]" "pyserial>=3.5"
if "$prefix/bin/python" -c 'import numba' 2>/dev/null; then
    die "numba is installed in $prefix: the edge install must not pull it"
fi
# uvloop (the uvloop extra) about halves the agent's CPU per Modbus request; only as a
# ready-made wheel (x86-64, 64-bit ARM): a 32-bit Pi OS would have to compile it, and the
# agent runs well enough on asyncio's own loop
if "$prefix/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade \
        --only-binary uvloop "uvloop>=0.19,<1" 2>/dev/null; then
    say "uvloop installed: the agent runs on it"
else
    say "no uvloop wheel for this machine: the agent runs on asyncio's own event loop"
fi

# ----------------------------------------------------------------------------- files
credential=/run/credentials/recp-agent.service/mqtt-password
# /etc/recp: root-owned, readable by the service's group; credentials: root only
install -d -m 755 "$etc"
install -d -m 750 -o root -g "$group" "$etc/profiles"
install -d -m 700 -o root -g root "$etc/credentials"
install -m 644 -o root -g root "$src"/edge_config/profiles/*.yaml "$etc/profiles/"
if [[ -n $ca ]]; then
    install -m 644 -o root -g root "$ca" "$etc/ca.crt"
fi
if [[ -n $password_file ]]; then
    # first line only, without its newline
    (umask 077 && head -n 1 "$password_file" | tr -d '\r\n' >"$etc/credentials/mqtt-password")
elif [[ -n ${RECP_MQTT_PASSWORD:-} ]]; then
    (umask 077 && printf '%s' "$RECP_MQTT_PASSWORD" >"$etc/credentials/mqtt-password")
fi
if [[ -n $site ]]; then
    if [[ -f $etc/site.yaml ]] && ! cmp -s "$site" "$etc/site.yaml"; then
        cp -p "$etc/site.yaml" "$etc/site.yaml.$(date +%Y%m%dT%H%M%S).bak"
        say "kept the previous site file as $etc/site.yaml.*.bak"
    fi
    install -m 640 -o root -g "$group" "$site" "$etc/site.yaml"
elif [[ ! -f $etc/site.yaml ]]; then
    # the example, pointed at this install's credential and CA
    sed -e "s|password_file: /etc/recp/mqtt.password|password_file: $credential|" \
        -e "s|ca_file: /etc/recp/ca.pem|ca_file: $etc/ca.crt|" \
        "$src/edge_config/sites/example_pi.yaml" >"$etc/site.yaml"
    chown "root:$group" "$etc/site.yaml"
    chmod 640 "$etc/site.yaml"
    say "no --site given: installed the example as $etc/site.yaml; edit it, then run again"
    start=0
fi

# ----------------------------------------------------------------------------- unit
unit=$unit_dir/recp-agent.service
install -d -m 755 "$unit_dir"
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
sed -e "s|/opt/recp/|$prefix/|g" -e "s|/etc/recp/|$etc/|g" \
    -e "s|^User=recp\$|User=$user|" -e "s|^Group=recp\$|Group=$group|" \
    "$src/deploy/systemd/recp-agent.service" >"$tmp"
if ! cmp -s "$tmp" "$unit"; then
    install -m 644 -o root -g root "$tmp" "$unit"
    say "installed $unit"
fi

# ----------------------------------------------------------------------------- check
if ! grep -Eq "^[[:space:]]*password_file:[[:space:]]*${credential}[[:space:]]*(#.*)?\$" \
        "$etc/site.yaml"; then
    say "note: $etc/site.yaml should say mqtt.password_file: $credential"
fi
[[ -s $etc/credentials/mqtt-password ]] \
    || say "note: no broker password yet: run again with --password-file FILE"
config_ok=1
if ! RECP_PROFILES=$etc/profiles "$prefix/bin/recp" config check "$etc/site.yaml"; then
    config_ok=0
    say "fix $etc/site.yaml (see above), then run again"
fi

# ----------------------------------------------------------------------------- start
if [[ ! -d /run/systemd/system ]]; then
    say "systemd is not running here: not enabling the service"
    ((config_ok)) && exit 0
    exit 1
fi
systemctl daemon-reload
systemctl enable recp-agent.service
if ((start && config_ok)); then
    systemctl restart recp-agent.service
    say "started: journalctl -u recp-agent -f"
else
    say "not started; when ready: systemctl restart recp-agent"
fi
((config_ok)) || exit 1
