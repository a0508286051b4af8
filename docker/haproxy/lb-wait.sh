# Sourced by the load balancer's reconcile programs (serf-reconcile-at-start and
# serf-reconcile-loop): wait until the local Serf agent and HAProxy's admin socket
# answer, so that a reconcile neither fails on a starting agent nor falls back to a
# reload because HAProxy is not up yet.
#   lb_wait_until_up SECONDS   returns 1, with one line on stderr, if they are not up in time

# The admin socket of the image's config (docker/haproxy/config.yml).
LB_ADMIN_SOCKET=/run/haproxy/admin.sock

lb_agent_answers() {
    serf members -name '^$' >/dev/null 2>&1
}

# A connect, not a test for the file: a socket left over from before a restart exists
# but refuses.
lb_admin_socket_answers() {
    /usr/bin/python3 -S -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(2)
s.connect(sys.argv[1])
s.sendall(b"show info\n")
sys.exit(0 if s.recv(1) else 1)
' "$LB_ADMIN_SOCKET" 2>/dev/null
}

lb_wait_until_up() {
    local deadline=$((SECONDS + $1))
    _lb_wait "$deadline" "$1" lb_agent_answers "the serf agent" &&
        _lb_wait "$deadline" "$1" lb_admin_socket_answers "HAProxy's admin socket $LB_ADMIN_SOCKET"
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
