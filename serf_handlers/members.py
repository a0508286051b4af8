"""Ask the local Serf agent for the full member list (`serf members -format json`).

Incremental events drift (missed while the handler was down, never sent to a new
joiner), so `serf-handle reconcile` rebuilds handler state from this list. Tags here
are exact, unlike the ambiguous `k=v,k=v` text of member events.
"""

from __future__ import annotations

import json
import subprocess
from types import MappingProxyType

from .errors import EventError, SerfRPCError
from .events import Member, parse_addr

SERF_TIMEOUT = 10.0  # seconds; Serf runs handlers one at a time, so never wait forever


def alive_members(
    rpc_addr: str | None = None, rpc_auth: str | None = None, serf: str = "serf", timeout: float = SERF_TIMEOUT
) -> tuple[tuple[Member, ...], tuple[str, ...]]:
    """The alive members, and one message per member skipped because its data is invalid."""
    argv = [serf, "members", "-format", "json", "-status", "alive"]
    if rpc_addr:
        argv.append(f"-rpc-addr={rpc_addr}")
    if rpc_auth:
        argv.append(f"-rpc-auth={rpc_auth}")
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise SerfRPCError(f"cannot run {serf!r}: not found") from None
    except subprocess.TimeoutExpired:
        raise SerfRPCError(f"'serf members' did not answer within {timeout:g} s") from None
    if done.returncode != 0:
        # serf prints its errors on stdout ("Error connecting to Serf agent: ...").
        output = (done.stderr + done.stdout).decode("utf-8", "replace").strip()
        detail = " ".join(output.split())[:300] or f"exit {done.returncode}"
        raise SerfRPCError(f"'serf members' failed: {detail}")
    return parse_members_json(done.stdout)


def parse_members_json(text: bytes | str) -> tuple[tuple[Member, ...], tuple[str, ...]]:
    """Parse `serf members -format json` output into alive Members. Pure."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SerfRPCError(f"'serf members' printed invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SerfRPCError("'serf members' printed JSON that is not an object")
    raw_members = data.get("members") or []  # no match prints {"members": null}
    if not isinstance(raw_members, list):
        raise SerfRPCError("'serf members': 'members' is not a list")
    members: list[Member] = []
    skipped: list[str] = []
    for index, raw in enumerate(raw_members):
        try:
            member = _member(raw, f"serf members[{index}]")
        except EventError as exc:
            skipped.append(str(exc))
            continue
        if member is not None:
            members.append(member)
    return tuple(members), tuple(skipped)


def _member(raw: object, where: str) -> Member | None:
    if not isinstance(raw, dict):
        raise EventError(f"{where}: not an object")
    name, addr, status, tags = raw.get("name"), raw.get("addr"), raw.get("status"), raw.get("tags") or {}
    if not isinstance(name, str) or not name:
        raise EventError(f"{where}: missing or empty name")
    where = f"{where} ({name!r})"
    if status != "alive":
        return None
    if not isinstance(addr, str):
        raise EventError(f"{where}: missing address")
    if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise EventError(f"{where}: tags are not a string mapping")
    # Here addr carries the gossip port ("10.0.0.5:7946", "[::1]:7946"): keep the IP only.
    host = addr.rpartition(":")[0] if addr.count(":") == 1 or addr.startswith("[") else addr
    host = host.removeprefix("[").removesuffix("]")
    return Member(name, parse_addr(host, where), tags.get("role", ""), MappingProxyType(dict(tags)))
