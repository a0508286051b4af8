"""Install a rendered haproxy.cfg (validated, atomically) and run the reload command.

Only a candidate that `haproxy -c` accepted ever reaches the real path, by rename, so the
installed config is never partial and never broken; a rejected candidate leaves the old
file byte-identical. Every program gets an argv list (no shell) and a timeout (_spawn.run).
"""

from __future__ import annotations

import os
import stat

from ... import _spawn
from ..._files import read_bytes, write_atomic
from ..._typing import TYPE_CHECKING
from ...errors import HandlerError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from ._servers import Server

    Render = Callable[[Mapping[str, Server]], str]

CHECK_TIMEOUT = 30.0  # seconds; `haproxy -c` takes 0.5 s with 10,000 servers
RELOAD_TIMEOUT = 15.0
# Readable by root and the haproxy group, writable only by the owner; an existing file
# keeps its mode, but never one that lets anyone else write it (or read it, beyond the group).
_DEFAULT_MODE = 0o640
_ALLOWED_MODE = 0o640


class CannotInstall(HandlerError):
    """The candidate config cannot be installed, for a reason that is no member's: a broken
    template, a certificate HAProxy refuses, `haproxy -c`, the disk. HAProxy may still get the
    membership change through the runtime API (`_plan.live_only`)."""


class ValidationError(CannotInstall):
    """HAProxy rejected a candidate config; the message carries HAProxy's own words."""


def install(path: str, text: str, check: bool, haproxy: str, backup: bool = False) -> None:
    """Replace the config at `path` with `text`, validated first when `check`; with
    `backup`, the previous config is kept as `<path>.bak` (atomically, just before)."""
    owner = None
    try:
        st = os.stat(path)
        mode, owner = stat.S_IMODE(st.st_mode) & _ALLOWED_MODE, (st.st_uid, st.st_gid)
    except FileNotFoundError:
        mode = _DEFAULT_MODE
    try:

        def before_rename(candidate: str) -> None:
            if check:
                validate(haproxy, candidate)
            previous = read_bytes(path) if backup else None
            if previous is not None:
                write_atomic(f"{path}.bak", previous, mode, None, owner)

        write_atomic(path, text.encode("utf-8"), mode, before_rename if check or backup else None, owner)
    except OSError as exc:
        raise CannotInstall(f"cannot write {path}: {exc.filename or path}: {exc.strerror or exc}") from None


def validate(haproxy: str, path: str) -> None:
    """Run `haproxy -c -f path`; raise ValidationError with its alerts if it refuses."""
    argv = [haproxy, "-c", "-f", path]
    try:
        returncode, output = _spawn.run(argv, CHECK_TIMEOUT)
    except FileNotFoundError:
        raise CannotInstall(
            f"cannot validate the config: {haproxy!r} not found (set the handler's `haproxy` option)"
        ) from None
    except OSError as exc:
        raise CannotInstall(f"cannot validate the config: cannot run {haproxy!r}: {exc}") from None
    except _spawn.Timeout:
        raise ValidationError(f"`haproxy -c` did not finish within {CHECK_TIMEOUT:g} s; config not installed") from None
    if returncode != 0:
        raise ValidationError(f"haproxy rejected the new config, old config kept: {_alerts(output)}")


def culprits(
    before: Mapping[str, Server], wanted: Mapping[str, Server], render: Render, haproxy: str, probe: str
) -> dict[str, str]:
    """After `haproxy -c` refused the config for `wanted`: the members whose server alone makes
    it reject a config that is valid without them (node -> why), each tried on its own beside
    the servers that did not change since `before`, in a candidate at `probe`. Empty when the
    config is rejected without any of them (the template, or something else, is at fault)."""
    changed = sorted(node for node, server in wanted.items() if before.get(node) != server)
    base = {node: s for node, s in wanted.items() if node not in changed}

    def rejects(servers: Mapping[str, Server]) -> str | None:
        try:
            write_atomic(probe, render(servers).encode("utf-8"), 0o600)
            validate(haproxy, probe)
        except ValidationError as exc:
            return str(exc)
        finally:
            try:
                os.unlink(probe)
            except FileNotFoundError:
                pass
        return None

    if not changed or rejects(base) is not None:
        return {}
    found = {}
    for node in changed:
        why = rejects({**base, node: wanted[node]})
        if why is not None:
            server = wanted[node]
            found[node] = f"member {node!r} (tags {dict(server.tags)}): {why}"
    return found


def _alerts(output: bytes) -> str:
    lines = [line.strip() for line in output.decode("utf-8", "replace").splitlines() if line.strip()]
    alerts = [line for line in lines if "[ALERT]" in line] or [line for line in lines if "[NOTICE]" not in line]
    return " | ".join(alerts) or "(no output)"


def reload(argv: Sequence[str]) -> None:
    """Run the operator's reload command; raise HandlerError when it fails."""
    try:
        returncode, output = _spawn.run(argv, RELOAD_TIMEOUT)
    except FileNotFoundError:
        raise HandlerError(f"reload command {argv[0]!r} not found") from None
    except _spawn.Timeout:
        raise HandlerError(f"reload command {list(argv)} did not finish within {RELOAD_TIMEOUT:g} s") from None
    except OSError as exc:
        raise HandlerError(f"reload command {list(argv)} could not run: {exc}") from None
    if returncode != 0:
        text = output.decode("utf-8", "replace").strip() or "(no output)"
        raise HandlerError(f"reload command {list(argv)} exited {returncode}: {text}")
