"""Section 2: one event carrying 100, 1,000 and 10,000 members, through the haproxy handler.

Reload mode with no HAProxy running: `check` is on (the real `haproxy -c` validates every
candidate) and the reload argv only appends a line to a file, which counts reloads.
- join N: from an empty config and no state to N servers;
- leave N: from those N servers back to none;
- stale update N: the same N members again as member-update: must write nothing and
  reload nothing (config and state inode + mtime, and the reload count, are checked).
All run interleaved in the same rounds, with `python -c pass` and `haproxy -c` of the
N-server config as baselines. Render time alone is timed in-process (render_time.py).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from support.site import Site, count_reload_argv

from .procs import BENCH
from .timing import Command, measure, summary

SIZES = (100, 1000, 10000)
ROUNDS = 5
WARMUP = 1


def member_lines(n: int) -> bytes:
    return "".join(
        f"web{i:05d}\t10.{i >> 16}.{(i >> 8) & 255}.{i & 255}\tweb\tport=8080,role=web\n" for i in range(n)
    ).encode()


class Setup:
    """One site per N (support's `Site`, no HAProxy running): the empty and the full
    snapshots, and the site's reload counter."""

    def __init__(self, venv_bin: Path, workdir: Path, n: int) -> None:
        self.n = n
        self.dir = workdir / f"scale-{n}"
        self.dir.mkdir(parents=True)
        reloads = self.dir / "reloads"
        self.site = Site(self.dir, serf_handle=str(venv_bin / "serf-handle"),
                         log={"level": "info", "file": str(self.dir / "handler.log")}, port=8080,
                         vars={"bind": "127.0.0.1:8080", "socket": str(self.dir / "admin.sock")},
                         reload=count_reload_argv(reloads))
        self.config, self.state = self.site.config, self.site.state
        self.stdin = member_lines(n)
        self.site.must("render", "--write")
        self.empty = self.config.read_bytes()
        self.site.must(event="member-join", stdin=self.stdin)
        self.full_config = self.config.read_bytes()
        self.full_state = self.state.read_bytes()
        self.full_cfg_path = self.dir / "full.cfg"
        self.full_cfg_path.write_bytes(self.full_config)
        assert self.servers() == n, f"setup: {self.servers()} servers, expected {n}"
        self._stat: tuple[object, ...] = ()
        self._reloads_before = 0

    def servers(self) -> int:
        return len(self.site.servers())

    def reload_count(self) -> int:
        return self.site.reload_count()

    # --- before / after each timed run ---------------------------------------------------------

    def to_empty(self) -> None:
        self.config.write_bytes(self.empty)
        self.state.unlink(missing_ok=True)
        self._reloads_before = self.reload_count()

    def to_full(self) -> None:
        self.config.write_bytes(self.full_config)
        self.state.write_bytes(self.full_state)
        self._reloads_before = self.reload_count()
        self._stat = self._stats()

    def _stats(self) -> tuple[object, ...]:
        return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in (os.stat(self.config), os.stat(self.state)))

    def joined(self) -> None:
        if self.servers() != self.n or self.reload_count() != self._reloads_before + 1:
            reloads = self.reload_count() - self._reloads_before
            raise RuntimeError(f"join {self.n}: {self.servers()} servers, {reloads} reloads")

    def left(self) -> None:
        if self.servers() != 0 or self.reload_count() != self._reloads_before + 1:
            raise RuntimeError(f"leave {self.n}: {self.servers()} servers left")

    def untouched(self) -> None:
        if self._stats() != self._stat or self.reload_count() != self._reloads_before:
            raise RuntimeError(f"stale update {self.n}: the config or state was written, or HAProxy reloaded")
        self.unchanged_runs += 1

    unchanged_runs = 0

    def commands(self) -> list[Command]:
        argv = [self.site.serf_handle, "--config", str(self.site.yml)]
        n = f"{self.n:,}"

        def env(event: str) -> dict[str, str]:
            return self.site.env(event, SERF_TAG_ROLE="lb")

        return [
            Command(f"join {n}", argv, self.stdin, env("member-join"), before=self.to_empty, after=self.joined),
            Command(f"leave {n}", argv, self.stdin, env("member-leave"), before=self.to_full, after=self.left),
            Command(f"stale update {n}", argv, self.stdin, env("member-update"),
                    before=self.to_full, after=self.untouched),
            Command(f"haproxy -c {n}", ["haproxy", "-c", "-q", "-f", str(self.full_cfg_path)]),
        ]


def run(venv_bin: Path, workdir: Path, rounds: int = ROUNDS, sizes: tuple[int, ...] = SIZES) -> dict[str, object]:
    setups = [Setup(venv_bin, workdir, n) for n in sizes]
    commands = [Command("python -c pass", [str(venv_bin / "python"), "-c", "pass"])]
    for setup in setups:
        commands += setup.commands()
    times = measure(commands, rounds=rounds, warmup=WARMUP)
    # The handler's private API may change under us: then only these columns are missing.
    done = subprocess.run(
        [str(venv_bin / "python"), str(BENCH / "render_time.py"), str(workdir), *map(str, sizes)],
        capture_output=True, text=True, timeout=300,
    )
    inprocess = json.loads(done.stdout) if done.returncode == 0 else None
    return {
        "rows": summary(times, "python -c pass"),
        "rounds": rounds,
        "sizes": sizes,
        "inprocess": inprocess,
        "inprocess_error": None if inprocess else (done.stderr.strip().splitlines() or ["?"])[-1],
        "unchanged_runs": {s.n: s.unchanged_runs for s in setups},
        "bytes": {s.n: (len(s.full_config), len(s.full_state)) for s in setups},
    }
