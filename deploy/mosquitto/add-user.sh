#!/usr/bin/env bash
# Add a broker user, or change its password, in Mosquitto's password file.
#
#   deploy/mosquitto/add-user.sh [-f PASSWORD_FILE] [--acl ACL_FILE] USER
#
# The password comes from $RECP_MQTT_PASSWORD if set, else from the first line of stdin
# (asked for twice, without echo, on a terminal) - never from the command line, where `ps`
# and the shell history would show it. At least 12 characters.
#
#   PASSWORD_FILE  default /etc/mosquitto/passwd; created (mode 600, or 640 root:mosquitto
#                  when run as root on a box with a mosquitto group) if missing
#   --acl FILE     for USER = agent-<site>: append that site's ACL block to FILE unless the
#                  user already has one (without --acl the block is printed as a hint)
#
# Then reload the broker: systemctl reload mosquitto (SIGHUP re-reads passwords and ACL).
# Remove a user with: mosquitto_passwd -D PASSWORD_FILE USER (and delete its ACL block).
set -euo pipefail

ID_RE='^[a-z0-9][a-z0-9_-]{0,63}$'  # collector/contract.py ID_PATTERN (a site id)
MIN_LENGTH=12

usage() {
    sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

passwd_file=/etc/mosquitto/passwd
acl_file=
user=
while (($#)); do
    case "$1" in
        -f) (($# >= 2)) || usage; passwd_file=$2; shift ;;
        --acl) (($# >= 2)) || usage; acl_file=$2; shift ;;
        -h | --help) usage ;;
        -*) echo "add-user: unknown option $1" >&2; usage ;;
        *) [[ -z $user ]] || usage; user=$1 ;;
    esac
    shift
done
[[ -n $user ]] || usage
if [[ ! $user =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ ]]; then
    echo "add-user: user name must be letters, digits, '_', '.', '-' (got '$user')" >&2
    exit 2
fi
mosquitto_passwd=$(command -v mosquitto_passwd || echo /usr/bin/mosquitto_passwd)
[[ -x $mosquitto_passwd ]] || {
    echo "add-user: mosquitto_passwd not found (apt install mosquitto)" >&2
    exit 1
}

# ---------------------------------------------------------------------------- password
if [[ -n ${RECP_MQTT_PASSWORD+x} ]]; then
    password=$RECP_MQTT_PASSWORD
elif [[ -t 0 ]]; then
    read -rsp "Password for $user: " password; echo >&2
    read -rsp "Again: " again; echo >&2
    [[ $password == "$again" ]] || { echo "add-user: passwords differ" >&2; exit 1; }
else
    IFS= read -r password || [[ -n $password ]] || {
        echo "add-user: no password on stdin" >&2
        exit 1
    }
fi
if ((${#password} < MIN_LENGTH)); then
    echo "add-user: the password must have at least $MIN_LENGTH characters" >&2
    exit 1
fi

# ---------------------------------------------------------------------------- password file
if [[ ! -e $passwd_file ]]; then
    (umask 077 && : >"$passwd_file")
    if ((EUID == 0)) && getent group mosquitto >/dev/null; then
        chgrp mosquitto "$passwd_file"
        chmod 640 "$passwd_file"
    fi
fi
# mosquitto_passwd asks for the password twice on stdin; printf is a shell builtin, so the
# password never appears in a process's argv.
printf '%s\n%s\n' "$password" "$password" |
    "$mosquitto_passwd" "$passwd_file" "$user" >/dev/null
echo "add-user: $user set in $passwd_file"

# ---------------------------------------------------------------------------- ACL
[[ $user == agent-* ]] || exit 0
site=${user#agent-}
if [[ ! $site =~ $ID_RE ]]; then
    echo "add-user: '$site' is not a valid site id, so $user gets no ACL block" >&2
    exit 0
fi
block="user $user
topic write recp/v1/$site/+/reading
topic write recp/v1/$site/+/meta
topic write recp/v1/$site/_agent/status
topic write recp/v1/$site/_agent/health
topic read recp/v1/$site/+/ack"
if [[ -z $acl_file ]]; then
    printf 'add-user: the ACL needs this block for %s (or pass --acl FILE):\n\n%s\n' \
        "$user" "$block" >&2
elif grep -qx "user $user" "$acl_file" 2>/dev/null; then
    echo "add-user: $acl_file already has a block for $user (left unchanged)"
else
    printf '\n%s\n' "$block" >>"$acl_file"
    echo "add-user: appended the ACL block for $user to $acl_file"
fi
