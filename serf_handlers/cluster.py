"""`serf-handle cluster-check`: do all load balancers serve the same servers?

Run on any node. It lists the alive members with the load balancers' role tag
(`serf members`), then asks them all one Serf query (`serf query -format json -tag
role=^ROLE$ backends digest`); each load balancer's haproxy or nginx handler answers with one
line, `digest=<16 hex> servers=N backends=M kept_failed=K` (see `serf_handlers.answers`), far
below Serf's ~1 KiB reply limit however many servers there are. A query travels by gossip
and can miss a node now and then (seen on loopback: no ack, no answer), so the silent ones
are asked once more, by name, before they are reported.

Exit codes: 0 every load balancer answered and all digests agree; 1 they do not (the odd
ones out are named: those outside the largest group, or every group when no group is
larger than all others), or one did not answer in time, or answered something else; 2 an
error (Serf unreachable, unreadable output, no member has the role).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from ._log import escape
from .errors import SerfRPCError
from .members import json_object, read_members, run_serf

DEFAULT_ROLE = "lb"  # the role tag the images (SERF_ROLE) and the README give load balancers
DEFAULT_QUERY = "backends"  # the haproxy and nginx handlers' default `query`
PAYLOAD = "digest"
# Beyond the query's own timeout (or Serf's default, about 3 s and growing with the log of
# the cluster's size), how long `serf query` may take before it is given up as hung.
GRACE = 10.0
DEFAULT_LIMIT = 60.0

EXIT_AGREE, EXIT_DISAGREE, EXIT_ERROR = 0, 1, 2
_DIGEST = re.compile(r"[0-9a-f]{16}")
_COUNTS = ("servers", "backends", "kept_failed")


class QueryResult(NamedTuple):
    acks: tuple[str, ...]  # the nodes that received the query
    responses: Mapping[str, str]  # node -> its reply


class Answer(NamedTuple):
    """One load balancer's answer: a digest and counts, or the problem with it."""

    node: str
    digest: str | None = None
    servers: int = 0
    backends: int = 0
    kept_failed: int = 0
    problem: str | None = None  # NO_REPLY, NO_ACK, "error: ...", "unexpected answer: ..."


def query_argv(
    serf: str, query: str, role: str, rpc_addr: str | None, timeout: float | None, nodes: Sequence[str] = ()
) -> list[str]:
    """`serf query` asking every member whose role is exactly `role` (Serf's tag filter is
    an unanchored regular expression: anchored and escaped here); only `nodes`, if given."""
    argv = [serf, "query", "-format", "json", "-tag", f"role=^{re.escape(role)}$"]
    argv += [f"-node={node}" for node in nodes]
    if timeout is not None:
        argv.append(f"-timeout={timeout:.3f}s")
    if rpc_addr:
        argv.append(f"-rpc-addr={rpc_addr}")
    return [*argv, query, PAYLOAD]


def parse_query_output(text: bytes | str) -> QueryResult:
    """Parse `serf query -format json` output (`{"Acks": [...] | null, "Responses": {...}}`). Pure."""
    data = json_object(text, "serf query")
    acks = data.get("Acks") or []  # no node matched: "Acks": null
    responses = data.get("Responses") or {}
    if not isinstance(acks, list) or not all(isinstance(a, str) for a in acks):
        raise SerfRPCError("'serf query': 'Acks' is not a list of node names")
    if not isinstance(responses, dict) or not all(isinstance(v, str) for v in responses.values()):
        raise SerfRPCError("'serf query': 'Responses' is not an object of replies")
    return QueryResult(tuple(acks), dict(responses))


def parse_reply(node: str, reply: str) -> Answer:
    """A load balancer's reply: its `digest=` line (other handlers answering the same query
    may add lines of their own; unknown `key=value` words are ignored), or what is wrong."""
    for line in reply.splitlines():
        words = dict(word.partition("=")[::2] for word in line.split() if "=" in word)
        if line.startswith("error="):
            return Answer(node, problem=f"error: {escape(words['error'])[:80]}")
        if not line.startswith("digest="):
            continue
        counts = [words.get(key, "") for key in _COUNTS]
        if not _DIGEST.fullmatch(words["digest"]) or not all(c.isascii() and c.isdigit() for c in counts):
            break
        servers, backends, kept = (int(c) for c in counts)
        return Answer(node, words["digest"], servers, backends, kept)
    return Answer(node, problem=f"unexpected answer: {escape(reply.strip())[:80]!r}")


def answers(expected: Sequence[str], result: QueryResult) -> list[Answer]:
    """One Answer per load balancer, by name: every one `expected` (the alive members with
    the role) and every one that replied; "no answer (...)" for the silent ones."""
    names = sorted(set(expected) | set(result.responses))
    return [
        parse_reply(name, result.responses[name]) if name in result.responses
        else Answer(name, problem=NO_REPLY if name in result.acks else NO_ACK)
        for name in names
    ]


NO_REPLY = "no answer (acked, but no reply in time: no handler, or it failed or was busy)"
NO_ACK = "no answer (no ack: the query did not reach it)"


def merged(first: QueryResult, again: QueryResult) -> QueryResult:
    return QueryResult(tuple(dict.fromkeys((*first.acks, *again.acks))), {**first.responses, **again.responses})


def verdict(found: Sequence[Answer], role: str) -> tuple[list[str], int]:
    """The lines to print (one per load balancer, then a summary) and the exit code. Pure."""
    if not found:
        return [f"no alive member has role={role}: no load balancer to check"], EXIT_ERROR
    groups = Counter(a.digest for a in found if a.digest is not None)
    ranked = groups.most_common()
    majority = ranked[0][0] if len(ranked) == 1 or (ranked and ranked[0][1] > ranked[1][1]) else None
    odd = [a for a in found if a.digest is not None and a.digest != majority and len(groups) > 1]
    width = max(len(escape(a.node)) for a in found)
    lines = []
    for a in found:
        name = escape(a.node).ljust(width)
        if a.digest is None:
            lines.append(f"{name}  {a.problem}")
            continue
        mark = "  DIFFERS" if a in odd else ""
        lines.append(f"{name}  digest={a.digest} servers={a.servers} backends={a.backends} "
                     f"kept_failed={a.kept_failed}{mark}")
    silent = [a for a in found if a.digest is None]
    problems = []
    if len(groups) > 1:
        names = ", ".join(escape(a.node) for a in odd)
        if majority is not None:
            holders = [escape(a.node) for a in found if a.digest == majority]
            problems.append(f"{names} differ(s) from the majority ({majority} on {', '.join(holders)})")
        else:
            problems.append(f"no majority: {len(groups)} different digests on {names}")
    if silent:
        problems.append(f"{', '.join(escape(a.node) for a in silent)}: no valid answer")
    total = f"{len(found)} load balancer(s) (role={role})"
    if problems:
        return [*lines, f"DISAGREE: {total}: " + "; ".join(problems)], EXIT_DISAGREE
    a = found[0]
    return [*lines, f"OK: {total} serve the same {a.servers} server(s) (digest {a.digest})"], EXIT_AGREE


def run_query(
    query: str,
    role: str,
    rpc_addr: str | None,
    env: Mapping[str, str],
    timeout: float | None = None,
    serf: str = "serf",
    nodes: Sequence[str] = (),
) -> QueryResult:
    """Run `serf query` (an argv, no shell, under a time limit). The RPC auth token goes
    through the environment (SERF_RPC_AUTH in `env`), never the command line."""
    argv = query_argv(serf, query, role, rpc_addr, timeout, nodes)
    limit = DEFAULT_LIMIT if timeout is None else timeout + GRACE
    return parse_query_output(run_serf(argv, limit, env))


def check(
    role: str,
    query: str,
    rpc_addr: str | None,
    rpc_auth: str | None,
    env: Mapping[str, str],
    timeout: float | None = None,
    serf: str = "serf",
) -> tuple[list[str], int]:
    """Ask every load balancer; the lines to print and the exit code. Raises SerfRPCError."""
    expected = [m.name for m in read_members(rpc_addr, rpc_auth, serf).alive if m.role == role]
    query_env = {k: v for k, v in env.items() if k != "SERF_RPC_AUTH"}
    if rpc_auth:
        query_env["SERF_RPC_AUTH"] = rpc_auth
    result = run_query(query, role, rpc_addr, query_env, timeout, serf)
    silent = [name for name in expected if name not in result.responses]
    if silent:  # once more, only them: a gossiped query can miss a node
        result = merged(result, run_query(query, role, rpc_addr, query_env, timeout, serf, silent))
    return verdict(answers(expected, result), role)
