"""The handler's state file: which servers should exist, and which HAProxy runs.

JSON, mode 0600, replaced atomically, read and written under an exclusive lock on
`<state>.lock` (see `_files.Lock`). Its shape:

    {"version": 1,
     "servers": {NODE: {"name", "addr", "port", "weight", "backend", "tags", "maint", "failed"}},
     "applied": {NODE: {...}}, or "servers" when equal to servers, or null,
     "pending": [[BACKEND, SERVER], ...],
     "failed": {NODE: {...}},
     "skipped": {NODE: [FINGERPRINT, WHY]},
     "notices": [TEXT, ...],
     "behind": {"why": TEXT, "servers": {NODE: {...}}}}

- `servers`: the wanted servers, keyed by the exact Serf node name (the stable id).
- `applied`: the servers the running HAProxy is known to have (last successful apply);
  null when unknown. Where the admin socket answers, HAProxy's live servers are the
  truth instead (see `_plan`); `applied` still tells which config HAProxy loaded.
- `pending`: servers removed from the config whose `del server` HAProxy refused because
  connections were still open. They sit in maintenance; deletion is retried later.
- `failed`: failed members that are not served (the partition rule allowed removing
  them); they still count in their backend's size until they leave, are reaped or return.
- `skipped`: members that cannot be served (an invalid tag, or a config HAProxy rejects
  because of them), with what they sent, so each problem is reported once, not every run.
- `notices`: the warnings last logged about side concerns (a certificate about to expire);
  a run logs a notice only when it is not here, so an unchanged warning is not repeated.
- `behind`: the installed config file could not be replaced (`why`: a broken template, a
  certificate HAProxy refuses, the disk) while HAProxy got the change through the runtime
  API; `servers` are the ones the installed file still renders. The first run after the fix
  installs the file, and reloads only if the file was changed otherwise (see `_plan`).
"""

from __future__ import annotations

import os

from ..._files import read_bytes, write_atomic
from ..._typing import TYPE_CHECKING, NamedTuple
from ...errors import HandlerError
from ._servers import Rejected, Server, from_json, server_name, to_json

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from ._live import LiveServer
    from ._servers import Key

VERSION = 1


class Behind(NamedTuple):
    why: str
    servers: Mapping[str, Server]  # what the installed (old) config file renders


class State(NamedTuple):
    servers: Mapping[str, Server]
    applied: Mapping[str, Server] | None
    pending: tuple[tuple[str, str], ...] = ()
    failed: Mapping[str, Server] = {}  # never mutated (a NamedTuple's default): replaced with _replace
    skipped: Mapping[str, tuple[str, str]] = {}  # node -> (fingerprint, why)
    exists: bool = True  # False: there was no state file (a first run, or it was deleted)
    notices: tuple[str, ...] = ()
    behind: Behind | None = None


EMPTY = State({}, None, (), exists=False)


class StateError(HandlerError):
    """The state file exists but cannot be used; `serf-handle reconcile` rebuilds it."""


def load(path: str) -> State:
    raw = read_bytes(path)
    if raw is None:
        return EMPTY
    from ..._json import loads

    try:
        data = loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise StateError(f"state file {path}: invalid JSON ({exc}); run `serf-handle reconcile`") from None
    try:
        return _parse(data)
    except Rejected as exc:
        raise StateError(f"state file {path}: {exc}; run `serf-handle reconcile`") from None


def from_live(live: Mapping[Key, LiveServer]) -> State:
    """A state rebuilt from HAProxy's live servers, when the file is lost or unreadable.

    A server named like a node (not a hashed name) is taken to be that node's; HAProxy is
    known to have them. The next event corrects their tags, `reconcile` everything else."""
    servers = {}
    for row in live.values():
        if server_name(row.name) == row.name:
            maint, drain = row.state == "maint", row.state == "drain"
            servers[row.name] = Server(
                row.name, row.name, row.addr, row.port, row.weight, row.backend, {}, maint, False, drain
            )
    return State(servers, dict(servers))


def _parse(data: object) -> State:
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise Rejected(f"not a version {VERSION} state object")
    servers = _servers(data.get("servers"), "servers")
    raw_applied = data.get("applied")
    applied = servers if raw_applied == "servers" else None if raw_applied is None else _servers(raw_applied, "applied")
    pending = data.get("pending", [])
    if not isinstance(pending, list) or not all(_is_key(item) for item in pending):
        raise Rejected("pending: expected a list of [backend, server] pairs")
    failed = _servers(data.get("failed", {}), "failed")
    skipped = data.get("skipped", {})
    if not isinstance(skipped, dict) or not all(_is_pair(value) for value in skipped.values()):
        raise Rejected("skipped: expected an object of [fingerprint, reason] pairs")
    pairs = {node: (fingerprint, why) for node, (fingerprint, why) in skipped.items()}
    notices = data.get("notices", [])
    if not isinstance(notices, list) or not all(isinstance(n, str) for n in notices):
        raise Rejected("notices: expected a list of strings")
    behind = _behind(data.get("behind"))
    return State(servers, applied, tuple((b, s) for b, s in pending), failed, pairs, True, tuple(notices), behind)


def _behind(raw: object) -> Behind | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("why"), str):
        raise Rejected("behind: expected an object with why and servers")
    return Behind(raw["why"], _servers(raw.get("servers"), "behind.servers"))


def _is_pair(value: object) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)


def _servers(raw: object, where: str) -> dict[str, Server]:
    if not isinstance(raw, dict):
        raise Rejected(f"{where}: expected an object")
    servers = {node: from_json(node, entry) for node, entry in raw.items()}
    names = [s.name for s in servers.values()]
    if len(set(names)) != len(names):
        raise Rejected(f"{where}: two nodes have the same server name")
    return servers


def _is_key(item: object) -> bool:
    from ._servers import is_token

    return isinstance(item, list) and len(item) == 2 and is_token(item[0]) and is_token(item[1])


def dumps(state: State) -> bytes:
    from ..._json import dumps as json_dumps

    applied: object = None
    if state.applied == state.servers:
        applied = "servers"  # the usual case: don't write (and later parse) every server twice
    elif state.applied is not None:
        applied = {node: to_json(s) for node, s in sorted(state.applied.items())}
    data: dict[str, Any] = {
        "version": VERSION,
        "servers": {node: to_json(s) for node, s in sorted(state.servers.items())},
        "applied": applied,
        "pending": [list(key) for key in sorted(set(state.pending))],
    }
    if state.failed:
        data["failed"] = {node: to_json(s) for node, s in sorted(state.failed.items())}
    if state.skipped:
        data["skipped"] = {node: list(pair) for node, pair in sorted(state.skipped.items())}
    if state.notices:
        data["notices"] = list(state.notices)
    if state.behind is not None:
        written = {node: to_json(s) for node, s in sorted(state.behind.servers.items())}
        data["behind"] = {"why": state.behind.why, "servers": written}
    # Compact: with 10,000 members the file is read and written on every event
    # (`serf-handle status` is the readable view).
    return (json_dumps(data) + "\n").encode("ascii")


def save(path: str, state: State) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    write_atomic(path, dumps(state), 0o600)


def same(a: State, b: State) -> bool:
    """Whether saving `b` over `a` would change nothing."""
    return a.exists and _content(a) == _content(b)


def _content(state: State) -> tuple[object, ...]:
    return (
        state.servers, state.applied, sorted(set(state.pending)), state.failed, state.skipped, state.notices,
        state.behind,
    )
