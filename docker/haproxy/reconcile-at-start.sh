#!/bin/bash
# One-shot (supervisord program serf-reconcile): wait until the local agent and
# HAProxy's admin socket answer and the agent has joined, then rebuild the HAProxy
# servers from `serf members`.
#   SERF_RECONCILE_WAIT  seconds to wait for peers before reconciling anyway (default 20)
set -uo pipefail

# LB_MODE=watch: `serf-handle watch` reconciles whenever it connects to the agent.
[[ ${LB_MODE:-handler} == watch ]] && exit 0

wait_max=${SERF_RECONCILE_WAIT:-20}
[[ $wait_max =~ ^[0-9]+$ ]] || wait_max=20
# shellcheck source=lb-wait.sh
. /usr/local/share/serf-handlers/lb-wait.sh
lb_wait_until_up 60 || exit 1

# Joining a cluster (SERF_JOIN, or a rejoin from the snapshot) takes a moment; a
# reconcile before it would see only this node. A lone load balancer reconciles anyway.
deadline=$((SECONDS + wait_max))
while ((SECONDS < deadline)); do
    count=$(serf members -status alive | wc -l)
    ((count > 1)) && break
    sleep 1
done
# Let the join settle (member events are coalesced for about 1 s).
sleep 1

exec serf-handle reconcile --config "${SERF_HANDLERS_CONFIG:-/etc/serf-handlers/config.yml}"
