"""A kept file's state: JSON, mode 0600, written by the package's atomic writer under the
handler's lock (`<state>.lock`). Its shape:

    {"version": 1,
     "members": {NAME: {"addr", "role", "tags", "status"}},
     "installed": SHA-256 of the text last installed, or null,
     "reload_pending": why the installed file is not known to be loaded, or null,
     "node": {"name", "role", "tags"}}   (the agent that ran the last event)
"""

from __future__ import annotations

import os

from .._files import read_bytes, write_atomic
from .._typing import TYPE_CHECKING, NamedTuple
from ..errors import HandlerError
from ._members import Known

if TYPE_CHECKING:
    from collections.abc import Mapping

VERSION = 1


class Record(NamedTuple):
    members: Mapping[str, Known]
    installed: str | None = None  # SHA-256 (hex) of the text this handler last installed
    reload_pending: str | None = None  # why a reload is still owed (see `_plan`)
    node: Mapping[str, object] | None = None
    exists: bool = True  # False: no state file (a first run, or it was deleted)


EMPTY = Record({}, exists=False)


class RecordError(HandlerError):
    """The state file exists but cannot be used; `serf-handle reconcile` rebuilds it."""


def load(path: str) -> Record:
    raw = read_bytes(path)
    if raw is None:
        return EMPTY
    from .._json import loads

    try:
        data = loads(raw.decode("utf-8"))
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError(f"not a version {VERSION} state object")
        members = {name: _known(name, entry) for name, entry in data["members"].items()}
        installed, pending, node = data.get("installed"), data.get("reload_pending"), data.get("node")
        if not all(v is None or isinstance(v, str) for v in (installed, pending)):
            raise ValueError("installed, reload_pending: expected strings or null")
        if node is not None and not isinstance(node, dict):
            raise ValueError("node: expected an object")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RecordError(f"state file {path}: {exc}; run `serf-handle reconcile`") from None
    return Record(members, installed, pending, node)


def _known(name: str, entry: dict[str, object]) -> Known:
    addr, role, tags, status = entry["addr"], entry["role"], entry["tags"], entry["status"]
    if not (isinstance(addr, str) and isinstance(role, str) and status in ("alive", "failed")):
        raise ValueError(f"members.{name}: expected addr, role and status alive or failed")
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise ValueError(f"members.{name}.tags: expected an object of strings")
    return Known(name, addr, role, tags, str(status))


def dumps(record: Record) -> bytes:
    from .._json import dumps as json_dumps

    members = {
        name: {"addr": m.addr, "role": m.role, "tags": dict(sorted(m.tags.items())), "status": m.status}
        for name, m in sorted(record.members.items())
    }
    data = {"version": VERSION, "members": members, "installed": record.installed,
            "reload_pending": record.reload_pending, "node": record.node}
    return (json_dumps(data, sort_keys=True) + "\n").encode("utf-8")


def save(path: str, record: Record) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    write_atomic(path, dumps(record), 0o600)


def same(a: Record, b: Record) -> bool:
    """Whether saving `b` over `a` would change nothing."""
    return a.exists and dumps(a) == dumps(b)
