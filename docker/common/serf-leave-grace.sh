#!/bin/bash
# Idles until supervisord stops it (after serf has left, before nginx stops). Then, unless
# serf-drain found every load balancer had drained this node (SERF_DRAIN_STATUS says
# `drained`), waits SERF_LEAVE_GRACE seconds (default 3), so that nginx keeps serving while
# the load balancers react to this node's member-leave.
set -u
grace=${SERF_LEAVE_GRACE:-3}
status_file=${SERF_DRAIN_STATUS:-/run/serf-drain.status}
[[ $grace =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "serf-leave-grace: SERF_LEAVE_GRACE must be seconds, got '$grace'" >&2; grace=3; }
sleeper=
on_stop() {
    [[ -n $sleeper ]] && kill "$sleeper" 2>/dev/null
    if [[ $(cat "$status_file" 2>/dev/null) == drained ]]; then
        echo "serf-leave-grace: serf has left and every load balancer had drained this node: nginx stops now"
        exit 0
    fi
    echo "serf-leave-grace: serf has stopped; nginx keeps serving for ${grace}s while the load balancers drain this node"
    sleep "$grace"
    exit 0
}
trap on_stop TERM INT
while :; do
    sleep 86400 &
    sleeper=$!
    wait "$sleeper"
done
