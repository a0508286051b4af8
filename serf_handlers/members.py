"""Ask the local Serf agent for the full member list (`serf members -format json`).

Incremental events drift (missed while the handler was down, never sent to a new
joiner), so `serf-handle reconcile` rebuilds handler state from this list. Tags here
are exact, unlike the ambiguous `k=v,k=v` text of member events.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import NamedTuple, overload

from .errors import EventError, SerfRPCError
from .events import Member, parse_addr

SERF_TIMEOUT = 10.0  # seconds; Serf runs handlers one at a time, so never wait forever


class Snapshot(NamedTuple):
    alive: tuple[Member, ...]
    failed: tuple[Member, ...]  # members Serf reports failed (not those that left)
    skipped: tuple[str, ...]  # one message per member whose data is invalid


def read_members(
    rpc_addr: str | None = None, rpc_auth: str | None = None, serf: str = "serf", timeout: float = SERF_TIMEOUT
) -> Snapshot:
    """Every member the local agent knows, by status."""
    argv = [serf, "members", "-format", "json"]
    if rpc_addr:
        argv.append(f"-rpc-addr={rpc_addr}")
    if rpc_auth:
        argv.append(f"-rpc-auth={rpc_auth}")
    return parse_snapshot(run_serf(argv, timeout))


def run_serf(argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> bytes:
    """Run a `serf` command (an argv, no shell, under `timeout`) and return what it printed;
    any failure is one SerfRPCError naming the command."""
    what = f"serf {argv[1]}"
    try:
        done = subprocess.run(
            list(argv), capture_output=True, timeout=timeout, check=False, env=None if env is None else dict(env)
        )
    except FileNotFoundError:
        raise SerfRPCError(f"cannot run {argv[0]!r}: not found") from None
    except subprocess.TimeoutExpired:
        raise SerfRPCError(f"'{what}' did not answer within {timeout:g} s") from None
    if done.returncode != 0:
        # serf prints its errors on stdout ("Error connecting to Serf agent: ...").
        output = (done.stderr + done.stdout).decode("utf-8", "replace").strip()
        detail = " ".join(output.split())[:300] or f"exit {done.returncode}"
        raise SerfRPCError(f"'{what}' failed: {detail}")
    return done.stdout


class Membership(Sequence[Member]):
    """The alive members (and `failed`), read from Serf when first used, not before.

    `serf-handle reconcile` hands this to each reconciler: one that takes its own lock
    before looking at the members can never apply a snapshot older than an event it
    already applied under that lock.
    """

    def __init__(self, read: Callable[[], Snapshot], role: str | None = None) -> None:
        self._read = read
        self._role = role
        self._snapshot: Snapshot | None = None

    def with_role(self, role: str) -> Membership:
        """The members of `role` only; read separately, when first used."""
        return Membership(self._read, role)

    @property
    def snapshot(self) -> Snapshot:
        if self._snapshot is None:
            snapshot = self._read()
            if self._role is not None:
                alive = tuple(m for m in snapshot.alive if m.role == self._role)
                failed = tuple(m for m in snapshot.failed if m.role == self._role)
                snapshot = snapshot._replace(alive=alive, failed=failed)
            self._snapshot = snapshot
        return self._snapshot

    @property
    def failed(self) -> tuple[Member, ...]:
        return self.snapshot.failed

    @overload
    def __getitem__(self, index: int) -> Member: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Member]: ...
    def __getitem__(self, index: int | slice) -> Member | Sequence[Member]:
        return self.snapshot.alive[index]

    def __len__(self) -> int:
        return len(self.snapshot.alive)

    def __iter__(self) -> Iterator[Member]:
        return iter(self.snapshot.alive)


def parse_members_json(text: bytes | str) -> tuple[tuple[Member, ...], tuple[str, ...]]:
    """The alive Members of `serf members -format json` output, and the skipped messages. Pure."""
    snapshot = parse_snapshot(text)
    return snapshot.alive, snapshot.skipped


def json_object(text: bytes | str, command: str) -> dict[str, object]:
    """What a `serf` command printed with `-format json`: an object, else a SerfRPCError."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SerfRPCError(f"'{command}' printed invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SerfRPCError(f"'{command}' printed JSON that is not an object")
    return data


def parse_snapshot(text: bytes | str) -> Snapshot:
    """Parse `serf members -format json` output. Pure."""
    data = json_object(text, "serf members")
    raw_members = data.get("members") or []  # no match prints {"members": null}
    if not isinstance(raw_members, list):
        raise SerfRPCError("'serf members': 'members' is not a list")
    found: dict[str, list[Member]] = {"alive": [], "failed": []}
    skipped: list[str] = []
    for index, raw in enumerate(raw_members):
        try:
            status, member = _member(raw, f"serf members[{index}]")
        except EventError as exc:
            skipped.append(str(exc))
            continue
        if status in found:
            found[status].append(member)
    return Snapshot(tuple(found["alive"]), tuple(found["failed"]), tuple(skipped))


def _member(raw: object, where: str) -> tuple[str, Member]:
    """(status, member); only alive and failed members are validated."""
    if not isinstance(raw, dict):
        raise EventError(f"{where}: not an object")
    name, addr, status, tags = raw.get("name"), raw.get("addr"), raw.get("status"), raw.get("tags") or {}
    if not isinstance(name, str) or not name:
        raise EventError(f"{where}: missing or empty name")
    where = f"{where} ({name!r})"
    if status not in ("alive", "failed"):
        return str(status), Member(name, "", "")
    if not isinstance(addr, str):
        raise EventError(f"{where}: missing address")
    if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise EventError(f"{where}: tags are not a string mapping")
    # Here addr carries the gossip port ("10.0.0.5:7946", "[::1]:7946"): keep the IP only.
    host = addr.rpartition(":")[0] if addr.count(":") == 1 or addr.startswith("[") else addr
    host = host.removeprefix("[").removesuffix("]")
    return status, Member(name, parse_addr(host, where), tags.get("role", ""), MappingProxyType(dict(tags)))
