#!/bin/bash
# HEALTHCHECK for a web node: nginx answers /healthz with 200 and the serf agent answers.
set -eu
exec 3<>/dev/tcp/127.0.0.1/80
printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
read -r -t 4 status <&3
exec 3<&-
[[ $status == "HTTP/1."?" 200 "* ]]
serf members -name '^$' >/dev/null
