"""`kill -9` of `serf-handle` in the middle of its work.

- 200 membership updates, each run killed (with its children: `haproxy -c`, the reload) at a
  seeded random moment within a typical run. After every kill the installed haproxy.cfg
  passes `haproxy -c` and the state file loads; at the end one `serf-handle reconcile`
  makes config, state and the config HAProxy runs exactly what a clean run would make.
- Kills at chosen points: during `haproxy -c`, and between the install and the reload.
"""

from __future__ import annotations

import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from serf_handlers.handlers.haproxy import _state
from serf_handlers.handlers.haproxy._servers import node_id
from support.site import (
    HAPROXY,
    HAProxyCheck,
    Site,
    member_line,
    record_reload_argv,
    sha,
)

pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")

UPDATES = 200
SEED = 6
POOL = [(f"node{i}", f"127.0.1.{i + 1}", 9000 + i) for i in range(8)]
TEMP_NAME = r"^\.(haproxy\.cfg|state\.json)\.\d+\.[0-9a-f]{8}\.tmp$"


def typical_run_time(site: Site) -> float:
    """The median wall time of an update that runs to the end (it includes `haproxy -c` and a reload)."""
    times = []
    for name, addr, port in POOL[:3]:
        for kind in ("member-join", "member-leave"):
            started = time.monotonic()
            done = site.run(kind, member_line(name, addr, port=str(port)))
            times.append(time.monotonic() - started)
            assert done.returncode == 0, done.stderr
    return statistics.median(times)


def server_line(name: str, addr: str, port: int) -> str:
    return f"server {name} {addr}:{port} id {node_id(name)} weight 1 check inter 500ms fall 1 rise 1"


def test_kill_9_at_random_points_during_200_updates(tmp_path: Path) -> None:
    typical = typical_run_time(Site(tmp_path / "calibration"))
    site = Site(tmp_path / "site")
    assert site.run(None, args=["render", "--write"]).returncode == 0
    check = HAProxyCheck(tmp_path)
    rng = random.Random(SEED)
    pool_lines = {server_line(*member) for member in POOL}
    model: set[str] = set()  # what the 200 events, all delivered, make the membership
    outcomes: Counter[str] = Counter()
    started = time.monotonic()

    for update in range(UPDATES):
        name, addr, port = rng.choice(POOL)
        kind = "member-leave" if name in model else "member-join"
        model ^= {name}
        config_before = site.config.read_bytes()
        state_before = site.state.read_bytes() if site.state.exists() else None
        delay = rng.uniform(0, typical)

        err = tmp_path / "stderr"
        run = site.spawn(kind, member_line(name, addr, port=str(port)), err)
        spawned = time.monotonic()
        killed = False
        try:
            time.sleep(max(0.0, spawned + delay - time.monotonic()))
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)  # the group still exists: its leader is not reaped yet
                killed = True
            code = run.wait(60)
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait(10)
        if not killed:
            assert code == 0, (update, err.read_text())

        # After every kill: a complete config HAProxy accepts, and a state file that loads.
        config = site.config.read_bytes()
        ok, output = check(config)
        assert ok, (update, output)
        assert set(site.server_lines()) <= pool_lines, update
        if site.state.exists():
            _state.load(str(site.state))  # parses and validates, or raises
        state = site.state.read_bytes() if site.state.exists() else None
        if not killed:
            outcomes["finished before its kill"] += 1
        elif state != state_before:
            outcomes["killed after saving the state"] += 1
        elif config != config_before:
            outcomes["killed between install and state save"] += 1
        else:
            outcomes["killed before installing anything"] += 1

    kills = UPDATES - outcomes["finished before its kill"]
    loop_seconds = time.monotonic() - started

    # Events lost to kills are not redelivered by Serf: reconcile is what heals.
    members = [(name, addr, {"role": "web", "port": str(port)}) for name, addr, port in POOL if name in model]
    healed = site.reconcile(members)
    assert healed.returncode == 0, healed.stderr
    clean = Site(tmp_path / "clean")
    assert clean.reconcile(members).returncode == 0
    assert site.config.read_bytes() == clean.config.read_bytes()
    assert site.servers() == model and site.applied() == model
    assert site.reload_hashes()[-1] == sha(site.config.read_bytes()), "HAProxy was not reloaded with the final config"
    leftovers = site.temp_files()
    assert all(re.match(TEMP_NAME, name) for name in leftovers), leftovers
    # Such leftovers cannot be loaded by HAProxy, even with `-f <directory>` (it reads only *.cfg).
    assert not [name for name in leftovers if name.endswith(".cfg")]

    print(
        f"\ncrash-safety: {UPDATES} updates, {kills} killed, typical run {typical * 1000:.0f} ms, "
        f"loop {loop_seconds:.1f} s, haproxy -c runs {check.runs}, {dict(outcomes)}, "
        f"{len(site.reload_hashes())} reloads, {len(leftovers)} stray temp files"
    )
    assert kills >= UPDATES // 4, outcomes  # the delays really do land inside runs
    assert outcomes["killed between install and state save"] > 0, outcomes  # the window that matters was hit


# --- kills at chosen points ------------------------------------------------------------

KILL_MY_PARENT = "import os, signal; os.kill(os.getppid(), signal.SIGKILL)"


def test_kill_during_haproxy_check_keeps_the_old_config_and_the_next_run_works(tmp_path: Path) -> None:
    site = Site(tmp_path / "site")
    assert site.join(member_line("web1", "127.0.0.1", port="8081")).returncode == 0
    installed, state = site.config.read_bytes(), site.state.read_bytes()
    fake = tmp_path / "haproxy-that-dies"
    fake.write_text(f"#!{sys.executable}\n{KILL_MY_PARENT}\n")  # `haproxy -c` during which serf-handle is killed
    fake.chmod(0o755)
    site.write_yml(haproxy=str(fake))

    done = site.join(member_line("web2", "127.0.0.2", port="8082"))

    assert done.returncode == -signal.SIGKILL
    assert site.config.read_bytes() == installed and site.state.read_bytes() == state
    (leftover,) = site.temp_files()  # the candidate, never renamed, never cleaned up
    assert re.match(TEMP_NAME, leftover)
    # HAProxy given the directory would not read it either (only *.cfg files are loaded).
    only = tmp_path / "confdir"
    only.mkdir()
    (only / "haproxy.cfg").write_bytes(installed)
    (only / leftover).write_text("this is not a config\n")
    checked = subprocess.run(
        [HAPROXY or "haproxy", "-c", "-f", str(only)], capture_output=True, timeout=30, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    site.write_yml(haproxy=HAPROXY)
    assert site.join(member_line("web2", "127.0.0.2", port="8082")).returncode == 0
    assert site.servers() == site.applied() == {"web1", "web2"}
    assert site.reload_hashes()[-1] == sha(site.config.read_bytes())


@pytest.mark.parametrize(
    "first_run",
    [
        pytest.param(False, id="state file exists"),
        pytest.param(True, id="first run, no state file yet"),
    ],
)
def test_kill_between_install_and_reload_is_healed_by_reconcile(tmp_path: Path, first_run: bool) -> None:
    site = Site(tmp_path / "site")
    assert site.run(None, args=["render", "--write"]).returncode == 0  # as an image does before HAProxy starts
    web1, web2 = ("web1", "127.0.0.1", "8081"), ("web2", "127.0.0.2", "8082")
    members = [web2] if first_run else [web1, web2]
    if not first_run:
        assert site.join(member_line("web1", "127.0.0.1", port="8081")).returncode == 0
    running = site.reload_hashes()[-1:]  # the config HAProxy runs (nothing recorded: the empty one)

    site.write_yml(reload=[sys.executable, "-S", "-c", KILL_MY_PARENT])  # serf-handle dies while "reloading"
    done = site.join(member_line("web2", "127.0.0.2", port="8082"))
    assert done.returncode == -signal.SIGKILL
    assert "server web2 " in site.config.read_text()  # installed, but HAProxy never got it
    assert site.reload_hashes()[-1:] == running

    site.write_yml(reload=record_reload_argv(site.reloads, site.config))
    healed = site.reconcile([(name, addr, {"role": "web", "port": port}) for name, addr, port in members])
    assert healed.returncode == 0, healed.stderr
    assert site.servers() == site.applied() == {name for name, _, _ in members}
    assert site.reload_hashes()[-1:] == [sha(site.config.read_bytes())], "HAProxy still runs the old config"
