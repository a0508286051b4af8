"""Many `serf-handle` processes at once (several agents sharing one load balancer's files,
a manual run during an event): the state lock serialises them and no member is lost.
Six at once through the haproxy handler's own files, and 50 at once through a site."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serf_handlers.handlers.haproxy import _state
from serf_handlers.handlers.haproxy._servers import node_id
from support.site import HAPROXY, Site, member_line, sha
from tests.test_haproxy_handler import write_config

pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")

RUNS = 50


def test_50_concurrent_runs_each_adding_a_member(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    members = {f"web{i:02}": (f"127.0.{i // 200}.{i % 200 + 1}", 8000 + i) for i in range(RUNS)}
    errors = [tmp_path / f"stderr{i}" for i in range(RUNS)]
    runs: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    try:
        for (name, (addr, port)), err in zip(members.items(), errors, strict=True):
            runs.append(site.spawn("member-join", member_line(name, addr, port=str(port)), err))
        codes = [run.wait(120) for run in runs]
    finally:
        for run in runs:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait(10)
    elapsed = time.monotonic() - started

    assert codes == [0] * RUNS, [err.read_text() for err, code in zip(errors, codes, strict=True) if code]
    assert site.servers() == site.applied() == set(members)
    assert sorted(site.server_lines()) == sorted(
        f"server {name} {addr}:{port} id {node_id(name)} weight 1 check inter 500ms fall 1 rise 1"
        for name, (addr, port) in members.items()
    )
    check = subprocess.run(
        [HAPROXY or "haproxy", "-c", "-f", str(site.config)], capture_output=True, timeout=30, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    reloads = site.reload_hashes()
    assert reloads[-1] == sha(site.config.read_bytes())  # the last reload loaded all 50
    assert 1 <= len(reloads) <= RUNS
    assert site.temp_files() == []
    print(f"\nconcurrency: {RUNS} concurrent serf-handle runs, all exit 0, {len(reloads)} reloads, {elapsed:.1f} s")


def test_concurrent_serf_handle_runs_lose_no_member(tmp_path: Path) -> None:
    """Several `serf-handle` processes at once (several agents' handlers, a manual run)."""
    config = write_config(tmp_path)
    serf_handle = str(Path(sys.executable).parent / "serf-handle")
    env = {**os.environ, "SERF_EVENT": "member-join", "SERF_HANDLERS_CACHE_DIR": str(tmp_path / "cache")}
    runs = [
        subprocess.Popen(
            [serf_handle, "--config", str(config)], stdin=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
        )
        for _ in range(6)
    ]
    try:
        for i, run in enumerate(runs):
            assert run.stdin is not None
            run.stdin.write(f"web{i}\t127.0.0.{i + 1}\tweb\tport=80{i}\n".encode())
            run.stdin.close()
        assert [run.wait(120) for run in runs] == [0] * 6
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()
    text = (tmp_path / "haproxy.cfg").read_text()
    assert all(f"server web{i} 127.0.0.{i + 1}:80{i} " in text for i in range(6))
    assert set(_state.load(str(tmp_path / "state.json")).servers) == {f"web{i}" for i in range(6)}
