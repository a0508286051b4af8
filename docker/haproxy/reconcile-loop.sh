#!/bin/bash
# supervisord program `reconcile` (load balancer only): every LB_RECONCILE_INTERVAL
# seconds (default 60; 0 disables it) run `serf-handle reconcile`, which repairs what a
# missed event or a change behind the handler's back left wrong. A reconcile with
# nothing to do writes and logs nothing, and this loop prints nothing per round; a
# failing one logs its error to stderr (docker logs) and the next round retries.
# SIGTERM (supervisorctl stop, docker stop) ends the loop at once, or right after a
# reconcile in progress.
set -uo pipefail

interval=${LB_RECONCILE_INTERVAL:-60}
[[ $interval =~ ^[0-9]{1,7}$ ]] || {
    echo "reconcile-loop: LB_RECONCILE_INTERVAL must be whole seconds, got '$interval'; using 60" >&2
    interval=60
}
interval=$((10#$interval))
if ((interval == 0)); then
    echo "reconcile-loop: periodic reconcile disabled (LB_RECONCILE_INTERVAL=0)"
    exit 0
fi
# LB_MODE=watch: `serf-handle watch` reconciles every reconcile_interval itself (the
# entrypoint sets it from LB_RECONCILE_INTERVAL); this loop only renews certificates.
reconcile=true
if [[ ${LB_MODE:-handler} == watch ]]; then
    [[ -n ${LB_TLS_CERTS:-} ]] || exit 0
    reconcile=false
fi

sleeper=
on_stop() {
    [[ -n $sleeper ]] && kill "$sleeper" 2>/dev/null
    exit 0
}
trap on_stop TERM INT

# shellcheck source=lb-wait.sh
. /usr/local/share/serf-handlers/lb-wait.sh
# Not up in time: say so once, then reconcile anyway; each failing round logs why.
lb_wait_until_up 120

config=${SERF_HANDLERS_CONFIG:-/etc/serf-handlers/config.yml}
while :; do
    sleep "$interval" &
    sleeper=$!
    wait "$sleeper"
    sleeper=
    if $reconcile; then
        serf-handle reconcile --config "$config" </dev/null
    fi
    # Renewed certificates (a file replaced in LB_TLS_CERTS) go live through the runtime API.
    [[ -z ${LB_TLS_CERTS:-} ]] || serf-handle certs --config "$config" </dev/null >/dev/null
done
