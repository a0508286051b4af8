#!/bin/bash
# HEALTHCHECK for the load balancer: the serf agent answers, HAProxy accepts connections
# on LB_PORT (an empty backend answering 503 still counts as up), and with LB_MODE=watch
# the watcher runs (supervisord restarts it; a crash loop, a bad config say, shows here).
set -eu
serf members -name '^$' >/dev/null
if [[ ${LB_MODE:-handler} == watch ]]; then
    supervisorctl status watch | grep -q ' RUNNING '
fi
exec 3<>"/dev/tcp/127.0.0.1/${LB_PORT:-80}"
exec 3>&-
