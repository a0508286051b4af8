#!/bin/bash
# nginx load-balancer entrypoint: install the handler config, render nginx.conf for the
# current state (on a fresh container: no servers, every request answered 503) and check
# it, then hand over to supervisord, which runs nginx, the serf agent (role=lb), the
# one-shot reconcile at start and the periodic one (LB_RECONCILE_INTERVAL).
#
#   LB_PORT               port nginx listens on (default 80)
#   SERF_HANDLERS_CONFIG  handler config (default /etc/serf-handlers/config.yml, which
#                         this script writes; point it elsewhere to use your own file)
# The SERF_* variables are read by /usr/local/bin/serf-agent.
set -euo pipefail
umask 022

die() { echo "docker-entrypoint: $*" >&2; exit 2; }

default_config=/etc/serf-handlers/config.yml
config=${SERF_HANDLERS_CONFIG:-$default_config}
export SERF_HANDLERS_CONFIG=$config

LB_PORT=${LB_PORT:-80}
[[ $LB_PORT =~ ^[0-9]{1,5}$ ]] && ((10#$LB_PORT >= 1 && 10#$LB_PORT <= 65535)) ||
    die "LB_PORT must be a TCP port number, got '$LB_PORT'"
export LB_PORT=$((10#$LB_PORT))

if [[ $config == "$default_config" ]]; then
    tmp=$(mktemp /etc/serf-handlers/.config.yml.XXXXXX)
    sed "s/@LB_PORT@/$LB_PORT/g" /usr/local/share/serf-handlers/config.yml.in >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$default_config"
elif [[ ! -r $config ]]; then
    die "SERF_HANDLERS_CONFIG=$config: no such readable file"
fi

install -d -m 0750 /var/lib/serf-handlers

if [[ $# -gt 0 ]]; then
    exec "$@"
fi

# The handler's whole nginx.conf, written and recorded before nginx first reads it.
serf-handle render --config "$config" --write >/dev/null
/usr/sbin/nginx -t -q -c /etc/nginx/nginx.conf
exec /usr/bin/supervisord -n -c /etc/supervisor/supervisord.conf
