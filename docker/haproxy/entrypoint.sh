#!/bin/bash
# Load-balancer entrypoint: install the handler config, render a valid haproxy.cfg for
# the current state (an empty backend on a fresh container), then hand over to
# supervisord, which runs haproxy, the serf agent, the one-shot reconcile at start and
# the periodic one (LB_RECONCILE_INTERVAL); or, with LB_MODE=watch, `serf-handle watch`.
#
#   LB_MODE               how the handlers get Serf's events:
#                         handler (default): the agent starts `serf-handle` per event
#                         (-event-handler), one at a time;
#                         watch: one long-running `serf-handle watch` reads the agent's
#                         RPC event stream (supervisord program `watch`), and the agent
#                         runs no event handler. It reconciles on connect and every
#                         LB_RECONCILE_INTERVAL seconds itself (0 means its default, 60).
#   LB_PORT               port HAProxy listens on (default 80)
#   LB_STATS_PORT         port of HAProxy's stats page (/stats) and Prometheus metrics
#                         (/metrics, /metrics/serf-handlers); default 8404, "off": none
#   LB_STATS_AUTH         optional "user:password" for those (basic auth)
#   LB_TLS_CERTS          a mounted directory of PEM files: HTTPS on LB_HTTPS_PORT (443);
#                         LB_HTTPS_REDIRECT=true redirects plain HTTP there
#   LB_ROUTES_FROM_TAGS   true: web nodes' `host` and `path` tags route requests to their
#                         `backend` tag's backend (default false)
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
port=$((10#$LB_PORT))

# The stats frontend's template variables (`vars.stats_*`), or nothing with LB_STATS_PORT=off.
LB_STATS_PORT=${LB_STATS_PORT:-8404}
stats_vars=""
if [[ $LB_STATS_PORT != off ]]; then
    [[ $LB_STATS_PORT =~ ^[0-9]{1,5}$ ]] && ((10#$LB_STATS_PORT >= 1 && 10#$LB_STATS_PORT <= 65535)) ||
        die "LB_STATS_PORT must be a TCP port number or off, got '$LB_STATS_PORT'"
    stats_vars=", stats_bind: \"*:$((10#$LB_STATS_PORT))\", stats_lua: /usr/local/share/serf-handlers/metrics.lua"
    stats_vars+=", stats_metrics_file: /var/lib/prometheus/node-exporter/serf_handlers.prom"
    if [[ -n ${LB_STATS_AUTH:-} ]]; then
        # Never echoed: the message names the rule, not the value.
        [[ $LB_STATS_AUTH =~ ^[A-Za-z0-9_.-]+:[^[:space:]\"\'#\\$]+$ ]] ||
            die "LB_STATS_AUTH must be user:password (password without spaces, quotes, '#', '\\' or '\$')"
        stats_vars+=", stats_auth: \"$LB_STATS_AUTH\""
    fi
fi

# TLS termination (`vars.tls_*`): LB_TLS_CERTS, a mounted directory of PEM files (each a
# certificate chain and its key); HTTPS on LB_HTTPS_PORT (default 443); LB_HTTPS_REDIRECT
# (true, or the public HTTPS port when it is published elsewhere) redirects plain HTTP.
if [[ -n ${LB_TLS_CERTS:-} ]]; then
    [[ $LB_TLS_CERTS =~ ^/[A-Za-z0-9_./-]+$ && -d $LB_TLS_CERTS ]] ||
        die "LB_TLS_CERTS must be a mounted directory (an absolute path), got '$LB_TLS_CERTS'"
    https=${LB_HTTPS_PORT:-443}
    [[ $https =~ ^[0-9]{1,5}$ ]] && ((10#$https >= 1 && 10#$https <= 65535)) ||
        die "LB_HTTPS_PORT must be a TCP port number, got '$https'"
    stats_vars+=", tls_bind: \"*:$((10#$https))\", tls_certs: $LB_TLS_CERTS"
    case ${LB_HTTPS_REDIRECT:-false} in
        true | yes | 1) stats_vars+=", https_redirect: true" ;;
        false | no | 0) ;;
        *) [[ $LB_HTTPS_REDIRECT =~ ^[0-9]{1,5}$ ]] && ((10#$LB_HTTPS_REDIRECT <= 65535)) ||
               die "LB_HTTPS_REDIRECT must be true, false or a port number, got '$LB_HTTPS_REDIRECT'"
           stats_vars+=", https_redirect: $((10#$LB_HTTPS_REDIRECT))" ;;
    esac
fi

case ${LB_ROUTES_FROM_TAGS:-false} in
    true | yes | 1) routes_from_tags=true ;;
    false | no | 0 | "") routes_from_tags=false ;;
    *) die "LB_ROUTES_FROM_TAGS must be true or false, got '$LB_ROUTES_FROM_TAGS'" ;;
esac

# How events reach the handlers. The agent reads /etc/serf at every start: the event
# handler's file is there in handler mode only, so a slow handler never delays the RPC
# stream in watch mode (Serf feeds its scripts and its streams from one goroutine).
LB_MODE=${LB_MODE:-handler}
interval=${LB_RECONCILE_INTERVAL:-60}
case $LB_MODE in
    handler)
        install -m 0644 /usr/local/share/serf-handlers/serf-handlers.json /etc/serf/20-serf-handlers.json ;;
    watch)
        rm -f /etc/serf/20-serf-handlers.json
        [[ $interval =~ ^[0-9]{1,5}$ ]] && ((10#$interval <= 86400)) ||
            die "LB_RECONCILE_INTERVAL must be whole seconds, at most 86400, got '$interval'" ;;
    *) die "LB_MODE must be handler or watch, got '$LB_MODE'" ;;
esac
export LB_MODE

if [[ $config == "$default_config" ]]; then
    tmp=$(mktemp /etc/serf-handlers/.config.yml.XXXXXX)
    text=$(sed "s/@LB_PORT@/$port/g; s/@LB_ROUTES_FROM_TAGS@/$routes_from_tags/g" /usr/local/share/serf-handlers/config.yml.in)
    if [[ $LB_MODE == watch ]] && ((10#$interval > 0)); then
        # The watcher's own periodic reconcile (the image's reconcile loop then only renews certificates).
        text+=$'\n'"reconcile_interval: $((10#$interval))s"
    fi
    shopt -u patsub_replacement 2>/dev/null || true  # bash 5.2: no '&' magic in the replacement
    printf '%s\n' "${text//@LB_STATS_VARS@/$stats_vars}" >"$tmp"
    chmod 0600 "$tmp"  # it may hold the stats password; only root reads it
    mv -f "$tmp" "$default_config"
elif [[ ! -r $config ]]; then
    die "SERF_HANDLERS_CONFIG=$config: no such readable file"
fi

# The admin socket's directory (the master binds it as root before the workers drop
# to user haproxy) and the handler's state, readable by root only.
install -d -m 0755 /run/haproxy
install -d -m 0750 /var/lib/serf-handlers
# The handler's metrics file (`metrics:`): node_exporter's textfile directory in Debian,
# readable by HAProxy's workers, which serve it at /metrics/serf-handlers.
install -d -m 0755 /var/lib/prometheus/node-exporter

if [[ $# -gt 0 ]]; then
    exec "$@"
fi

serf-handle render --config "$config" --write >/dev/null
/usr/sbin/haproxy -c -q -f /etc/haproxy/haproxy.cfg
exec /usr/bin/supervisord -n -c /etc/supervisor/supervisord.conf
