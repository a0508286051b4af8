#!/bin/bash
# Idles until supervisord stops it, then waits SERF_LEAVE_GRACE seconds (default 3).
# Its priority puts it between serf (stopped first) and nginx (stopped last), so nginx
# keeps serving while the load balancer reacts to this node's member-leave.
set -u
grace=${SERF_LEAVE_GRACE:-3}
[[ $grace =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "serf-leave-grace: SERF_LEAVE_GRACE must be seconds, got '$grace'" >&2; grace=3; }
sleeper=
on_stop() {
    [[ -n $sleeper ]] && kill "$sleeper" 2>/dev/null
    echo "serf-leave-grace: serf has stopped; nginx keeps serving for ${grace}s while the load balancer drains this node"
    sleep "$grace"
    exit 0
}
trap on_stop TERM INT
while :; do
    sleep 86400 &
    sleeper=$!
    wait "$sleeper"
done
