#!/bin/bash
# Start the Serf agent from SERF_* environment variables (run by supervisord).
#
# The argv is built as an array and exec'ed: no eval, no word splitting of user data.
# Secrets (SERF_ENCRYPT_KEY, SERF_RPC_AUTH) go into a root-only JSON config file, not
# onto the command line where `ps` would show them.
#
#   SERF_NODE         node name                         (default: the hostname)
#   SERF_ROLE         the `role` tag                    (image default: lb or web)
#   SERF_TAGS         more tags, k=v,k=v                (e.g. port=80,weight=10)
#   SERF_JOIN         addresses to join, a,b:7946,...   (retried every SERF_RETRY_INTERVAL)
#                     Unset: the address of a legacy Docker link named `serf`, if any
#                     (`--link haproxy:serf`, the 2014 setup; links are deprecated)
#   SERF_RETRY_INTERVAL  join retry interval            (default 5s)
#   SERF_BIND         gossip bind address[:port]        (default 0.0.0.0:7946)
#   SERF_ADVERTISE    address[:port] peers should use   (default: the bind/interface address)
#   SERF_ENCRYPT_KEY  base64 32-byte gossip key         (`serf keygen`)
#   SERF_RPC_ADDR     RPC listener                      (default 127.0.0.1:7373)
#   SERF_RPC_AUTH     RPC auth token
#   SERF_LOG_LEVEL    agent log level                   (default info)
set -euo pipefail

die() {
    echo "serf-agent: $*" >&2
    # A configuration error will not fix itself: don't let supervisord spin on it.
    sleep 5
    exit 2
}

trim() {
    local s=$1
    s=${s#"${s%%[![:space:]]*}"}
    s=${s%"${s##*[![:space:]]}"}
    printf '%s' "$s"
}

json_string() {
    local s=$1
    [[ $s == *[[:cntrl:]]* ]] && return 1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}

node=${SERF_NODE:-$(hostname)}
role=${SERF_ROLE:-}
rpc_addr=${SERF_RPC_ADDR:-127.0.0.1:7373}

args=(agent -node "$node" -rpc-addr "$rpc_addr" -log-level "${SERF_LOG_LEVEL:-info}")
[[ -n ${SERF_BIND:-} ]] && args+=(-bind "$SERF_BIND")
[[ -n ${SERF_ADVERTISE:-} ]] && args+=(-advertise "$SERF_ADVERTISE")

[[ -n $role ]] && args+=(-tag "role=$role")
if [[ -n ${SERF_TAGS:-} ]]; then
    IFS=, read -r -a tags <<<"$SERF_TAGS"
    for tag in "${tags[@]}"; do
        tag=$(trim "$tag")
        [[ -z $tag ]] && continue
        [[ $tag == ?*=* ]] || die "SERF_TAGS: '$tag' is not key=value"
        key=$(trim "${tag%%=*}")
        if [[ $key == role ]]; then
            die "SERF_TAGS: set the role with SERF_ROLE, not a role= tag"
        fi
        args+=(-tag "$key=${tag#*=}")
    done
fi

join=${SERF_JOIN:-}
# Compatibility with the 2014 commands (`docker run --link haproxy:serf ...`): on Docker's
# default bridge, a link named `serf` sets SERF_PORT_7946_TCP_ADDR/_PORT. Only when
# SERF_JOIN is unset; a user-defined network and SERF_JOIN are the way now.
if [[ -z $join && -n ${SERF_PORT_7946_TCP_ADDR:-} ]]; then
    link_addr=$SERF_PORT_7946_TCP_ADDR
    link_port=${SERF_PORT_7946_TCP_PORT:-7946}
    [[ $link_addr =~ ^[0-9A-Za-z.:-]+$ && $link_port =~ ^[0-9]{1,5}$ ]] ||
        die "SERF_PORT_7946_TCP_ADDR/_PORT (a Docker link named serf) is not an address and port: '$link_addr' '$link_port'"
    [[ $link_addr == *:* ]] && link_addr="[$link_addr]"  # an IPv6 address
    join="$link_addr:$link_port"
    echo "serf-agent: SERF_JOIN is unset: joining $join, the Docker link named serf (legacy links are deprecated; set SERF_JOIN)" >&2
fi

if [[ -n $join ]]; then
    IFS=, read -r -a joins <<<"$join"
    for addr in "${joins[@]}"; do
        addr=$(trim "$addr")
        [[ -n $addr ]] && args+=(-retry-join "$addr")
    done
    args+=(-retry-interval "${SERF_RETRY_INTERVAL:-5s}")
fi

# Static settings (leave_on_terminate, snapshot, event handlers) are in /etc/serf/*.json.
args+=(-config-dir /etc/serf)

# Secrets: a file only root can read, rewritten at every start.
install -d -m 0700 /run/serf
secrets=/run/serf/secrets.json
umask 077
{
    printf '{'
    sep=
    if [[ -n ${SERF_ENCRYPT_KEY:-} ]]; then
        [[ $SERF_ENCRYPT_KEY =~ ^[A-Za-z0-9+/]+={0,2}$ ]] || die "SERF_ENCRYPT_KEY must be base64 (make one with: serf keygen)"
        printf '"encrypt_key": %s' "$(json_string "$SERF_ENCRYPT_KEY")"
        sep=', '
    fi
    if [[ -n ${SERF_RPC_AUTH:-} ]]; then
        auth=$(json_string "$SERF_RPC_AUTH") || die "SERF_RPC_AUTH must not contain control characters"
        printf '%s"rpc_auth": %s' "$sep" "$auth"
    fi
    printf '}\n'
} >"$secrets.tmp"
mv -f "$secrets.tmp" "$secrets"
umask 022
args+=(-config-file "$secrets")

install -d -m 0700 /var/lib/serf

# The agent logs every RPC client at INFO ("agent.ipc: Accepted client"): a line for each
# `serf members` of the healthcheck and of the load balancer's periodic reconcile. Only
# those lines are dropped; serf itself stays this process, for supervisord's signals.
exec /usr/bin/serf "${args[@]}" > >(exec grep --line-buffered -v -F '[INFO] agent.ipc: Accepted client')
