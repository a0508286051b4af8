#!/bin/bash
# HEALTHCHECK for the load balancer: the serf agent answers, and HAProxy accepts
# connections on LB_PORT (an empty backend answering 503 still counts as up).
set -eu
serf members -name '^$' >/dev/null
exec 3<>"/dev/tcp/127.0.0.1/${LB_PORT:-80}"
exec 3>&-
