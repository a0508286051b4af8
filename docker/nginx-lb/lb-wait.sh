# Sourced by the load balancer's reconcile programs (serf-reconcile-at-start and
# serf-reconcile-loop, docker/haproxy's scripts, reused): the nginx image's version. Wait
# until the local Serf agent answers and nginx accepts connections on LB_PORT, so that a
# reconcile neither fails on a starting agent nor reloads an nginx that is not up yet.
#   lb_wait_until_up SECONDS   returns 1, with one line on stderr, if they are not up in time

lb_agent_answers() {
    serf members -name '^$' >/dev/null 2>&1
}

lb_nginx_answers() {
    (exec 3<>"/dev/tcp/127.0.0.1/${LB_PORT:-80}") 2>/dev/null
}

lb_wait_until_up() {
    local deadline=$((SECONDS + $1))
    _lb_wait "$deadline" "$1" lb_agent_answers "the serf agent" &&
        _lb_wait "$deadline" "$1" lb_nginx_answers "nginx on port ${LB_PORT:-80}"
}

# _lb_wait DEADLINE SECONDS CHECK WHAT: run CHECK every 0.5 s until it succeeds, or fail
# saying that WHAT did not answer within SECONDS.
_lb_wait() {
    until "$3"; do
        if ((SECONDS >= $1)); then
            echo "${0##*/}: $4 did not answer within $2 s" >&2
            return 1
        fi
        sleep 0.5
    done
}
