#!/bin/bash
# Web nodes: idles until supervisord stops it, then, while serf and nginx still run, drains
# this node on every load balancer and waits until each of them says it has (at most
# SERF_DRAIN_TIMEOUT seconds). Its priority makes it the first program stopped; serf leaves
# after it, nginx stops last (see supervisor/serf-drain.conf).
#
#  1. `serf tags -set state=drain`: every load balancer's haproxy handler sets the server to
#     drain through HAProxy's runtime API (no new requests; open ones finish; no reload).
#  2. Ask the alive members with role=SERF_LB_ROLE, with the Serf query SERF_DRAIN_QUERY and
#     the payload `drained NODE`, until each has answered `drained=yes` (its HAProxy was
#     brought to drain, or has no server for this node). An answer is kept: the next round
#     asks only those that have not said yes, by name. A load balancer that does not answer
#     counts as not drained. The first round waits 1 s (a load balancer sees the tag change
#     after Serf's coalescing window, at least 1 s); rounds end as soon as every one asked has
#     answered, and the pause between rounds grows from 0.5 to 2 s, so that many nodes
#     stopping at once ask each load balancer a few times each, not every few milliseconds.
#  3. Once all have: SERF_DRAIN_TAIL seconds more, for requests HAProxy dispatched just before
#     the drain (nginx's graceful stop finishes those anyway). Then it exits, and serf leaves.
# One line says what happened: drained by N of M load balancers after X s, or timed out
# waiting for some of them (and what each answered). The result goes to SERF_DRAIN_STATUS
# (`drained` or `not-drained`), which serf-leave-grace reads: when every load balancer
# drained the node, nginx need not keep serving after serf has left.
#
#   SERF_DRAIN_TIMEOUT  seconds to wait for the load balancers (default 15, at most 300; 0: no drain)
#   SERF_DRAIN_TAIL     seconds after all have drained it (default 1, at most 60)
#   SERF_LB_ROLE        the load balancers' role tag (default lb)
#   SERF_DRAIN_QUERY    the query their haproxy handler answers (its `query` option; default backends)
#   SERF_DRAIN_STATUS   where the result is written (default /run/serf-drain.status)
#   SERF_RPC_ADDR, SERF_RPC_AUTH  the local agent's RPC address and token (read by `serf` itself)
# Needs bash, serf and python3 (for serf's JSON; supervisor brings it).
set -u

status_file=${SERF_DRAIN_STATUS:-/run/serf-drain.status}
role=${SERF_LB_ROLE:-lb}
query=${SERF_DRAIN_QUERY:-backends}
ROUND_MS=5000  # one round's query timeout: a busy load balancer runs one handler at a time

log() { printf 'serf-drain: %s\n' "$*"; }

# Seconds (decimal) -> milliseconds, at most $3 seconds; $2 when not a number.
to_ms() {
    local value=$1 fallback=$2 cap=$3 whole frac
    if [[ ! $value =~ ^([0-9]{1,6})(\.([0-9]{1,3})[0-9]*)?$ ]]; then
        log "not a number of seconds: '$value'; using $fallback" >&2
        value=$fallback
        [[ $value =~ ^([0-9]+)(\.([0-9]{1,3}))?$ ]]
    fi
    whole=${BASH_REMATCH[1]} frac=${BASH_REMATCH[3]}000
    local ms=$((10#$whole * 1000 + 10#${frac:0:3}))
    echo $((ms > cap * 1000 ? cap * 1000 : ms))
}

now_ms() { local t=${EPOCHREALTIME//[!0-9]/}; echo $((10#$t / 1000)); }
seconds() { printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100)); }
printable() { printf '%s' "${1//[[:cntrl:]]/?}"; }

timeout_ms=$(to_ms "${SERF_DRAIN_TIMEOUT:-15}" 15 300)
tail_ms=$(to_ms "${SERF_DRAIN_TAIL:-1}" 1 60)
[[ $role =~ ^[A-Za-z0-9_-]+$ ]] || { log "SERF_LB_ROLE must be [A-Za-z0-9_-]+, got '$(printable "$role")'; using lb" >&2; role=lb; }

# serf's JSON, read by python3: the agent's own name (`serf info`), or the names of the
# alive members (`serf members`), NUL-terminated so that any name survives.
read_json() {
    python3 -I -c '
import json, sys
data = json.load(sys.stdin)
if sys.argv[1] == "name":
    names = [data["agent"]["name"]]
else:
    names = [m["name"] for m in data.get("members") or [] if m.get("status") == "alive"]
sys.stdout.write("".join(n + "\0" for n in names))
' "$1"
}

# Ask the load balancers in `pending` once (by name); sets reply[NAME] for each that answers.
# `serf query` waits for its whole timeout, so the round ends (and the query is stopped) as
# soon as every one asked has answered. Its text output streams answers as they arrive:
# "Response from 'NAME': REPLY", NAME exactly as we asked for it.
ask() {
    local wait_ms=$1 line name prefix fd qpid answered=0
    local args=(query -tag "role=^${role}\$" -timeout "${wait_ms}ms")
    for name in "${pending[@]}"; do args+=(-node "$name"); done
    exec {fd}< <(exec serf "${args[@]}" "$query" "drained $node" 2>&1)
    qpid=$!
    while ((answered < ${#pending[@]})) && IFS= read -r -u "$fd" line; do
        [[ $line == "Response from '"* ]] || continue
        for name in "${pending[@]}"; do
            prefix="Response from '$name': "
            if [[ $line == "$prefix"* && -z ${reply[$name]+set} ]]; then
                reply[$name]=${line#"$prefix"}
                answered=$((answered + 1))
                break
            fi
        done
    done
    kill "$qpid" 2>/dev/null
    exec {fd}<&-
    wait "$qpid" 2>/dev/null
}

# Drain this node on every load balancer; 0 once all have (or there is none), 1 otherwise.
drain() {
    local started deadline left pause=500 rounds=0 name node json
    local -a lbs pending missing
    local -A yes=() reply=()
    started=$(now_ms)
    deadline=$((started + timeout_ms))
    if ((timeout_ms == 0)); then
        log "SERF_DRAIN_TIMEOUT=0: not draining"
        return 1
    fi
    node=$(serf info -format json 2>/dev/null | read_json name | tr -d '\0')
    if [[ -z $node ]]; then
        log "the serf agent does not answer (SERF_RPC_ADDR=${SERF_RPC_ADDR:-127.0.0.1:7373}): cannot drain this node"
        return 1
    fi
    if ! out=$(serf tags -set state=drain 2>&1); then
        log "serf tags -set state=drain failed: $(printable "$out")"
        return 1
    fi
    sleep 1  # a load balancer sees the tag after Serf's coalescing window (at least 1 s)
    while :; do
        if ! json=$(serf members -format json -status alive -tag "role=^${role}\$" 2>&1); then
            log "serf members failed: $(printable "$json"); stopping without the load balancers' word"
            return 1
        fi
        mapfile -d '' -t lbs < <(printf '%s' "$json" | read_json members)
        pending=()
        for name in "${lbs[@]}"; do [[ -n ${yes[$name]+set} ]] || pending+=("$name"); done
        if ((${#lbs[@]} == 0)); then
            log "no alive load balancer (role=$role) after $(seconds $(($(now_ms) - started))) s: nothing to drain"
            return 0
        fi
        if ((${#pending[@]} == 0)); then
            log "drained by ${#lbs[@]} of ${#lbs[@]} load balancer(s) after $(seconds $(($(now_ms) - started))) s;" \
                "serf leaves in $(seconds "$tail_ms") s"
            sleep "$(seconds "$tail_ms")"
            return 0
        fi
        left=$((deadline - $(now_ms)))
        if ((left <= 0)); then
            missing=()
            for name in "${pending[@]}"; do
                missing+=("$(printable "$name") (${reply[$name]:-no answer})")
            done
            log "timed out after $(seconds "$timeout_ms") s waiting for ${missing[*]}:" \
                "drained by $((${#lbs[@]} - ${#pending[@]})) of ${#lbs[@]} load balancer(s)"
            return 1
        fi
        if ((rounds > 0)); then  # not drained by all yet: a pause before asking again
            sleep "$(seconds $((left < pause ? left : pause)))"
            pause=$((pause * 2 > 2000 ? 2000 : pause * 2))
            left=$((deadline - $(now_ms)))
            ((left > 0)) || continue
        fi
        rounds=$((rounds + 1))
        reply=()
        ask $((left < ROUND_MS ? left : ROUND_MS))
        for name in "${pending[@]}"; do
            [[ ${reply[$name]:-} == drained=yes* ]] && yes[$name]=1
        done
    done
}

sleeper=
on_stop() {
    trap '' TERM INT  # a second signal must not cut the drain short; supervisord's SIGKILL bounds it
    [[ -n $sleeper ]] && kill "$sleeper" 2>/dev/null
    if drain; then result=drained; else result=not-drained; fi
    printf '%s\n' "$result" >"$status_file.tmp" && mv -f "$status_file.tmp" "$status_file"
    exit 0
}

rm -f "$status_file"  # a result from an earlier run of this container means nothing now
trap on_stop TERM INT
while :; do
    sleep 86400 &
    sleeper=$!
    wait "$sleeper"
done
