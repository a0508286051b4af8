#!/bin/bash
# supervisord program `watch` (load balancer): with LB_MODE=watch, `serf-handle watch`: the
# handlers in one long-running process, fed by the local agent's RPC event stream
# (SERF_RPC_ADDR, SERF_RPC_AUTH), instead of a process per event. It waits for the agent,
# reconciles on every (re)connect and every reconcile_interval, and logs one line when it
# loses the agent and one when it is back. SIGHUP (`supervisorctl signal HUP watch`) re-reads
# the config; SIGTERM lets the run under way finish, then it exits 0.
# In the default mode (LB_MODE=handler) it exits 0 at once, and supervisord leaves it so.
set -euo pipefail

if [[ ${LB_MODE:-handler} != watch ]]; then
    exit 0
fi
exec serf-handle watch --config "${SERF_HANDLERS_CONFIG:-/etc/serf-handlers/config.yml}" </dev/null
