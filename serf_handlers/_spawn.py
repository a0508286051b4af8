"""Run a program on the event path (`haproxy -c`, the reload command) without `subprocess`.

Importing subprocess (with threading, locale, contextlib and selectors) costs every
haproxy-handler event about half of a bare `python -c pass`. This is the one thing the
handler needs from it, with the same behaviour as
`subprocess.run(argv, stdin=DEVNULL, capture_output=True, timeout=...)`: an argv list, no
shell; PATH searched as exec does; stdin /dev/null; SIGPIPE and SIGXFSZ back to their
defaults in the child (Python ignores them); on timeout the program is killed and reaped.
stdout and stderr come back together, in the order written (one pipe). One difference:
subprocess closes every descriptor but 0, 1 and 2 in the child, posix_spawn only those
marked close-on-exec; that is every one Python opens, and Serf passes a handler only 0-2.
tests/test_haproxy_security.py records every program started this way.
"""

from __future__ import annotations

import os
import time

from ._typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


class Timeout(Exception):
    """The program did not finish in time; it was killed (SIGKILL) and reaped."""


def run(argv: Sequence[str], timeout: float) -> tuple[int, bytes]:
    """(exit code, output) of `argv`; a program killed by a signal gives minus its number,
    as subprocess does. Raises OSError when it cannot start (FileNotFoundError: not found),
    Timeout after `timeout` seconds."""
    import select
    import signal

    deadline = time.monotonic() + timeout
    read_fd, write_fd = os.pipe()  # both close-on-exec; dup2 clears it on the child's 1 and 2
    try:
        try:
            pid = os.posix_spawnp(
                argv[0],
                list(argv),
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, write_fd, 1),
                    (os.POSIX_SPAWN_DUP2, write_fd, 2),
                ],
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            )
        finally:
            os.close(write_fd)
        chunks = []
        poller = select.poll()
        poller.register(read_fd, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(max(1, int(left * 1000))):
                _kill(pid)
                raise Timeout(f"{argv[0]}: no exit within {timeout:g} s")
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
    return _wait(pid, deadline, argv[0], timeout), b"".join(chunks)


def _wait(pid: int, deadline: float, name: str, timeout: float) -> int:
    """The exit code, once the program exits (it closed its output, so it is usually done)."""
    pause = 0.0005
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            _kill(pid)
            raise Timeout(f"{name}: no exit within {timeout:g} s")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _kill(pid: int) -> None:
    import signal

    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)
