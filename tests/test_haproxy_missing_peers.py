"""Peers that are missing or broken: HAProxy not running (admin socket missing, refusing, or
silent), the `haproxy` binary missing, a reload command that fails, is missing or hangs.

In every case: one clear error record and exit 1, bounded time, the membership change kept
in the state, and the next event (once the peer is back) brings HAProxy exactly there.
Serf RPC unreachable or with bad auth: tests/integration/test_reconcile.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from serf_handlers.handlers.haproxy._install import RELOAD_TIMEOUT
from serf_handlers.handlers.haproxy._runtime import ATTEMPTS, BACKOFF
from serf_handlers.handlers.haproxy._runtime import TIMEOUT as SOCKET_TIMEOUT
from support.admin import answers, live_servers
from support.processes import Processes, free_port, start_haproxy, wait_until
from support.site import HAPROXY, Site, member_line, sha, stderr_lines, usr2_reload_argv

pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")

WEB1 = member_line("web1", "127.0.0.1", port="8081")
WEB2 = member_line("web2", "127.0.0.2", port="8082")
WEB3 = member_line("web3", "127.0.0.3", port="8083")
FAILED = " ERROR handler haproxy (handlers[0]) failed: "


def the_failure(done: subprocess.CompletedProcess[bytes]) -> str:
    """Exit 1; every stderr record one line; the failure record, then the summary."""
    lines = stderr_lines(done)
    assert done.returncode == 1, lines
    assert lines[-1].startswith("serf-handle: error: handler haproxy (handlers[0]) failed: "), lines
    assert b"Traceback" not in done.stderr
    (failure,) = [line for line in lines if FAILED in line]
    # Serf captures stderr: its last line alone says what went wrong.
    assert lines[-1].split(" failed: ", 1)[1] == failure.split(FAILED, 1)[1].rsplit(' handler="', 1)[0]
    return failure


class LiveSite:
    """A site with an admin socket and a `kill -USR2 <master pid>` reload, HAProxy not started."""

    def __init__(self, tmp_path: Path, short_dir: Path, **options: Any) -> None:
        self.sock = short_dir / "admin.sock"
        self.pidfile = tmp_path / "haproxy.pid"
        self.site = Site(tmp_path / "site", socket=str(self.sock))
        site = self.site
        settings: dict[str, Any] = {
            "reload": usr2_reload_argv(site.reloads, site.config, self.pidfile),
            "vars": {
                "bind": f"127.0.0.1:{free_port()}",
                "socket": str(self.sock),
                "server_state_file": str(tmp_path / "ss"),
            },
        }
        site.write_yml(**{**settings, **options})
        assert site.run(None, args=["render", "--write"]).returncode == 0  # as an image does

    def start_haproxy(self, procs: Processes) -> None:
        start_haproxy(procs, self.site.config, self.pidfile)
        wait_until(lambda: self.pidfile.exists() and self.pidfile.read_text().strip(), what="haproxy pidfile")
        wait_until(lambda: answers(self.sock), what="haproxy admin socket")

    def live(self) -> set[str]:
        return set(live_servers(self.sock))


@pytest.mark.integration
@pytest.mark.parametrize(
    ("condition", "says"),
    [
        pytest.param("missing", "No such file or directory", id="haproxy not running, socket missing"),
        pytest.param("refusing", "Connection refused", id="socket file with no listener"),
        pytest.param("silent", "timed out", id="socket accepts but never answers"),
    ],
)
def test_haproxy_down_fails_clearly_and_the_next_event_heals(
    tmp_path: Path, short_dir: Path, procs: Processes, condition: str, says: str
) -> None:
    lb = LiveSite(tmp_path, short_dir)
    site = lb.site
    listener = None
    if condition == "refusing":
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(lb.sock))
        stale.close()  # the file stays, nobody listens: what a crashed HAProxy leaves behind
    elif condition == "silent":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(lb.sock))
        listener.listen(16)  # connections wait in the backlog; nothing ever answers
    try:
        started = time.monotonic()
        done = site.join(WEB1)
        elapsed = time.monotonic() - started
    finally:
        if listener is not None:
            listener.close()
            lb.sock.unlink()

    failure = the_failure(done)
    assert "reload command [" in failure and "exited 1: haproxy is not running: " in failure
    assert str(lb.pidfile) in failure
    (warning,) = [line for line in stderr_lines(done) if "runtime API cannot apply the change" in line]
    assert f"admin socket {lb.sock}: {says}" in warning
    # Bounded: the first read is tried ATTEMPTS times; after that the run gives up on the
    # socket (the change and the server-state save fail at once) and reloads.
    assert elapsed < ATTEMPTS * SOCKET_TIMEOUT + sum(BACKOFF) + 5, elapsed
    # Nothing lost: the member is remembered, its config installed, HAProxy known not to have
    # it (it ran the empty config `render --write` installed).
    assert site.servers() == {"web1"} and site.applied() == set()
    assert "server web1 127.0.0.1:8081 " in site.config.read_text()
    print(f"\nmissing peer ({condition}): failed in {elapsed:.2f} s")

    lb.start_haproxy(procs)  # HAProxy comes back (from the installed config)
    healed = site.join(WEB2)
    assert healed.returncode == 0, healed.stderr
    assert site.servers() == site.applied() == {"web1", "web2"}
    wait_until(lambda: lb.live() == {"web1", "web2"}, timeout=10, what="HAProxy serving web1 and web2")


def test_runtime_api_without_a_reload_fallback_is_refused_up_front(tmp_path: Path, short_dir: Path) -> None:
    # Without a reload, a change the runtime API cannot make (a new backend, or HAProxy's
    # servers unknown after a crash) could never be applied: refuse the config instead.
    site = Site(tmp_path / "site", socket=str(short_dir / "admin.sock"))
    site.write_yml(reload=None)
    done = site.join(WEB1)
    assert done.returncode == 2
    assert stderr_lines(done) == [
        f"serf-handle: error: {site.yml}: handlers[0] (haproxy): socket: needs `reload` as well, "
        "the fallback for what the runtime API cannot do"
    ]
    assert not site.config.exists()


def test_haproxy_binary_missing(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    assert site.join(WEB1).returncode == 0
    installed, reloads = site.config.read_bytes(), site.reload_hashes()
    site.write_yml(haproxy="/nonexistent/haproxy")

    failure = the_failure(site.join(WEB2))

    assert (
        "cannot validate the config: '/nonexistent/haproxy' not found (set the handler's `haproxy` option)" in failure
    )
    assert site.config.read_bytes() == installed and site.reload_hashes() == reloads
    assert site.servers() == {"web1", "web2"} and site.applied() == {"web1"}
    site.write_yml(haproxy=HAPROXY)
    assert site.join(WEB3).returncode == 0
    assert site.servers() == site.applied() == {"web1", "web2", "web3"}
    assert site.reload_hashes()[-1] == sha(site.config.read_bytes())


@pytest.mark.parametrize(
    ("reload", "says"),
    [
        pytest.param(
            [sys.executable, "-S", "-c", "import sys; sys.exit('cannot signal haproxy: no such process')"],
            "exited 1: cannot signal haproxy: no such process",
            id="reload fails",
        ),
        pytest.param(
            ["/nonexistent/reload-haproxy"],
            "reload command '/nonexistent/reload-haproxy' not found",
            id="reload command missing",
        ),
    ],
)
def test_failing_reload_keeps_the_change_for_the_next_event(tmp_path: Path, reload: list[str], says: str) -> None:
    site = Site(tmp_path / "site")
    assert site.join(WEB1).returncode == 0
    good, reloads = site.options["reload"], site.reload_hashes()
    site.write_yml(reload=reload)

    failure = the_failure(site.join(WEB2))

    assert says in failure
    assert "server web2 " in site.config.read_text() and site.reload_hashes() == reloads
    assert site.servers() == {"web1", "web2"} and site.applied() == {"web1"}
    site.write_yml(reload=good)
    assert site.join(WEB3).returncode == 0
    assert site.servers() == site.applied() == {"web1", "web2", "web3"}
    assert site.reload_hashes()[-1] == sha(site.config.read_bytes())


def test_a_hung_reload_is_cut_by_the_timeout(tmp_path: Path) -> None:
    """A reload that never ends (`sleep 100`) blocks Serf's one-at-a-time handler queue only
    for RELOAD_TIMEOUT, and is killed."""
    pidfile = tmp_path / "sleeper.pid"
    sleep_100 = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(100)"
    site = Site(tmp_path / "site")
    good = site.options["reload"]
    site.write_yml(reload=[sys.executable, "-S", "-c", sleep_100, str(pidfile)])
    started = time.monotonic()
    try:
        done = site.join(WEB1)
    finally:
        elapsed = time.monotonic() - started
        pid = int(pidfile.read_text()) if pidfile.exists() else None
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)  # ours: only if the handler failed to kill it

    failure = the_failure(done)
    assert f"did not finish within {RELOAD_TIMEOUT:g} s" in failure
    assert RELOAD_TIMEOUT <= elapsed < RELOAD_TIMEOUT + 5, elapsed
    assert pid is not None and not _alive(pid), "the hung reload command was left running"
    assert site.servers() == {"web1"} and site.applied() is None
    print(f"\nhung reload: cut after {elapsed:.1f} s (RELOAD_TIMEOUT {RELOAD_TIMEOUT:g} s)")

    site.write_yml(reload=good)
    assert site.join(WEB2).returncode == 0
    assert site.servers() == site.applied() == {"web1", "web2"}
    assert site.reload_hashes()[-1] == sha(site.config.read_bytes())


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
