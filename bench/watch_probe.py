"""`serf-handle watch` with timestamps at each step of a membership change (section 11).

Run by path with the install's own Python (`python bench/watch_probe.py STAMPS ARGS...`,
ARGS as for `serf-handle`), so that `serf_handlers` comes from that install, not the repo.
It wraps a few functions of the running package, unchanged otherwise, and appends one line
per step to STAMPS: `<CLOCK_MONOTONIC seconds> <label>` (the benchmark's `time.monotonic()`
reads the same clock, so its HAProxy polls line up with these). A wrapper costs about a
microsecond; a change takes milliseconds.

The steps, in the order a member-update runs through the watcher and the haproxy handler:
`received` (the RPC reader queued the record), `window` (the loop applies the coalesced
changes), `dispatch`, `lock.done` (the state lock held), `live`/`live.done` (`show servers
state` read), `plan`/`plan.done` (the servers planned, the config rendered), `install`/
`check`/`check.done`/`install.done` (the config written, `haproxy -c` on it), `apply`/
`apply.done` (the runtime API commands), `server_state`/`server_state.done` (the server-state
file rewritten), `state_save`/`state_save.done` and `dispatch.done`. A query record stamps
`query LTIME ID` instead of `received`, and the watcher's answer `respond ID`, then
`respond.done ID ok` or `respond.done ID refused REASON` (the agent's reply to `respond`).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

_fd = -1


def stamp(label: str) -> None:
    os.write(_fd, f"{time.monotonic():.6f} {label}\n".encode())


def wrap(owner: Any, name: str, label: str) -> None:
    """Replace `owner.name` with a version that stamps `label` before and `label.done` after."""
    original: Callable[..., Any] = getattr(owner, name)

    @functools.wraps(original)
    def probed(*args: Any, **kwargs: Any) -> Any:
        stamp(label)
        try:
            return original(*args, **kwargs)
        finally:
            stamp(f"{label}.done")

    setattr(owner, name, probed)


def install_probes() -> None:
    from serf_handlers import _files, dispatch
    from serf_handlers.handlers.haproxy import _execute, _handler, _install, _runtime, _state
    from serf_handlers.watch import _inbox, _loop, _rpc

    put_record = _inbox.Inbox.put_record

    def received(self: _inbox.Inbox, generation: int, body: object) -> None:
        if isinstance(body, dict) and body.get("Event") == "query":
            stamp(f"query {body.get('LTime')} {body.get('ID')}")  # the drain storm's timeline
        else:
            stamp("received")
        put_record(self, generation, body)

    _inbox.Inbox.put_record = received  # type: ignore[method-assign]
    lock_enter = _files.Lock.__enter__

    def locked(self: _files.Lock) -> _files.Lock:
        held = lock_enter(self)
        stamp("lock.done")
        return held

    _files.Lock.__enter__ = locked  # type: ignore[method-assign]
    respond = _rpc.Client.respond

    def responded(self: _rpc.Client, query_id: int, payload: bytes) -> None:
        stamp(f"respond {query_id}")
        try:
            respond(self, query_id, payload)
        except Exception as exc:
            stamp(f"respond.done {query_id} refused {str(exc).replace(chr(10), ' ')}")
            raise
        stamp(f"respond.done {query_id} ok")

    _rpc.Client.respond = responded  # type: ignore[method-assign]
    for owner, name, label in (
        (_loop.Watcher, "_apply_window", "window"),
        (dispatch.Dispatcher, "dispatch", "dispatch"),
        *([(dispatch.Dispatcher, "dispatch_all", "dispatch")] if hasattr(dispatch.Dispatcher, "dispatch_all") else []),
        (_runtime.Runtime, "live", "live"),
        (_execute, "make_plan", "plan"),
        (_install, "install", "install"),
        (_install, "validate", "check"),
        (_runtime.Runtime, "apply", "apply"),
        (_runtime.Runtime, "save_server_state", "server_state"),
        (_state, "save", "state_save"),
    ):
        wrap(owner, name, label)
    assert _handler  # imported so that its `from ._execute import ...` ran before the wraps


def main() -> int:
    global _fd
    _fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    install_probes()
    from serf_handlers.cli import main as serf_handle

    return serf_handle(sys.argv[2:])


if __name__ == "__main__":
    raise SystemExit(main())
