#!/usr/bin/python3 -I
"""Serf query handler `query:backends` of the nginx load balancer (docker/nginx-lb).

A web node that is stopping tags itself state=drain, then asks every member with role=lb the
`backends` query with the payload `drained NODE` until each answers `drained=yes`
(docker/common/serf-drain.sh). HAProxy load balancers answer through their handler; the
nginx handler answers no query, so without this script every web node would wait its whole
SERF_DRAIN_TIMEOUT (15 s) for this load balancer, then fall back to SERF_LEAVE_GRACE.

The answer, one line, the same words as the haproxy handler's:
  drained=yes absent        nginx.conf has no server for NODE (never served, or removed)
  drained=yes state=down    every server line of NODE is `down` (its state tag is drain or
                            maint, or its weight 0): nginx gives it no new requests
  drained=no state=ready    NODE is still served
  drained=no state=unknown  nginx.conf is not the built-in template's (`template:` set)
  drained=no state=applying nginx.conf is not known to be what nginx runs: a handler run in
                            progress, a reload owed, or a file changed by hand
Only once the installed file is the one nginx was told to load is it read (the handler's
state file, serf_handlers/pipeline/_record.py, version 1: `installed`, `reload_pending`).
Anything else than `drained NODE` gets `error=unsupported`: this load balancer has no digest
for `serf-handle cluster-check`, which compares HAProxy load balancers.
One short-lived Python process, no import of the package: Serf runs a node's handlers one
at a time, so a slow answer would delay the handler's own runs and the other askers.
Always exits 0; the asker's text is never echoed.
"""

import hashlib
import json
import sys

# The image's handler config (docker/nginx-lb/config.yml): its `config` and `state`. With
# another SERF_HANDLERS_CONFIG that moves them, every answer is no (the stop falls back to
# SERF_DRAIN_TIMEOUT and SERF_LEAVE_GRACE, as without this script).
NGINX_CONF = "/etc/nginx/nginx.conf"
STATE = "/var/lib/serf-handlers/nginx.json"
# The first line of the handler's built-in template; a file from an operator's own `template`
# is not read (its server lines may not name their nodes): the answer is then always no.
BUILTIN_HEADER = "# Written by serf-handlers (the nginx handler)"
MAX_NODE_BYTES = 512  # as the haproxy handler: far above a real name, below Serf's 1 KiB


def asked_node(payload: bytes) -> str | None:
    """NODE of `drained NODE` (Serf appends one newline), or None. NODE is untrusted."""
    body = payload[:-1] if payload.endswith(b"\n") else payload
    if not body.startswith(b"drained "):
        return None
    raw = body[len(b"drained "):]
    if not raw or len(raw) > MAX_NODE_BYTES:
        return None
    try:
        node = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(ch < " " or "\x7f" <= ch <= "\x9f" for ch in node):
        return None
    return node


def read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def loaded(conf: bytes) -> bool:
    """Whether `conf` is what the handler last installed and nginx was told to load: the
    state file's `installed` digest is the file's, and no reload is owed. The handler saves
    "reload pending" before it installs a file and clears it only after the reload (`nginx
    -s reload`) succeeded, so a run in progress, a failed reload or a hand edit all say no."""
    raw = read(STATE)
    try:
        state = json.loads(raw) if raw is not None else None
    except ValueError:
        return False
    return (isinstance(state, dict) and state.get("version") == 1 and state.get("reload_pending") is None
            and state.get("installed") == hashlib.sha256(conf).hexdigest())


def answer(node: str) -> str:
    conf = read(NGINX_CONF)
    if conf is None or not loaded(conf):
        return "drained=no state=applying"
    text = conf.decode("utf-8", "replace")
    if not text.startswith(BUILTIN_HEADER):
        return "drained=no state=unknown"  # an operator's `template`: its lines are not known here
    # The built-in template's server lines: `server HOST:PORT weight=W ...[ down];  # NODE`.
    # The part before the first ";  # " is the directive (no '#'), the rest the node's name.
    lines = []
    for line in text.splitlines():
        directive, sep, name = line.strip().partition(";  # ")
        if sep and name == node and directive.startswith("server "):
            lines.append(directive)
    if not lines:
        return "drained=yes absent"
    if all(directive.endswith(" down") for directive in lines):
        return "drained=yes state=down"
    return "drained=no state=ready"


def main() -> int:
    node = asked_node(sys.stdin.buffer.read(MAX_NODE_BYTES + 64))
    reply = "error=unsupported (nginx load balancer: drained NODE only)" if node is None else answer(node)
    sys.stdout.write(reply + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
