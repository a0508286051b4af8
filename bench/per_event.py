"""Section 1: what one `serf-handle` run costs for a 1-member member-join.

All variants run interleaved in the same rounds (bench/timing.py), against `python -c pass`
on the same interpreter as the throwaway install, and against the Ruby seed handler.
Every timed haproxy-handler join is a real change: an untimed leave of the same member
runs before it, and an untimed check after it asks HAProxy (or the config) for the server.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
from pathlib import Path

from lb import BenchLoadBalancer
from procs import BENCH, processes, start_web
from timing import Command, measure, summary

from tests.harness import Processes, free_port, get, start_haproxy, wait_until

ROUNDS = 30
WARMUP = 3
IMPORTTIME_RUNS = 7
TOP_IMPORTS = 14
NO_CA_LABEL = "haproxy -c (1 server), `httpclient.ssl.verify none`"


def run(venv_bin: Path, workdir: Path, rounds: int = ROUNDS) -> dict[str, object]:
    with processes(workdir) as procs:
        return _run(procs, venv_bin, workdir, rounds)


def _run(procs: Processes, venv_bin: Path, workdir: Path, rounds: int) -> dict[str, object]:
    python = str(venv_bin / "python")
    serf_handle = str(venv_bin / "serf-handle")
    web_port = free_port()
    start_web(procs, "web1", web_port)
    member = f"web1\t127.0.0.1\tweb\tport={web_port},role=web\n".encode()

    # (a) the log handler, logging to /dev/null.
    a_yml = workdir / "log.yml"
    a_yml.write_text("log: {level: info, file: /dev/null}\nhandlers:\n  - type: log\n")
    a_env = {"SERF_HANDLERS_CACHE_DIR": str(workdir / "cache-a"), "SERF_EVENT": "member-join",
             "SERF_SELF_NAME": "lb", "SERF_SELF_ROLE": "lb", "SERF_TAG_ROLE": "lb"}

    # (b) runtime API, (c) reload mode: each its own HAProxy.
    live = BenchLoadBalancer(procs, venv_bin, workdir / "runtime", "runtime")
    reload = BenchLoadBalancer(procs, venv_bin, workdir / "reload", "reload")

    # The Ruby seed: its own master-worker HAProxy, reloaded with USR2 after each append.
    seed_dir = workdir / "seed"
    seed_dir.mkdir()
    seed_port = free_port()
    base = seed_dir / "base.cfg"
    base.write_text(
        reload.config.read_text()
        .replace(f"127.0.0.1:{reload.port}", f"127.0.0.1:{seed_port}")
        .replace(str(reload.admin_socket), str(seed_dir / "admin.sock"))
        .replace(f"{reload.config}.state", str(seed_dir / "haproxy.cfg.state"))
    )
    seed_cfg = seed_dir / "haproxy.cfg"
    shutil.copy(base, seed_cfg)
    seed_pidfile = seed_dir / "haproxy.pid"
    start_haproxy(procs, seed_cfg, seed_pidfile, name="haproxy-seed")
    wait_until(lambda: get(seed_port)[0] == 503, timeout=10, what="seed haproxy")
    seed_master = seed_pidfile.read_text().split()[0]

    def leave(lb: BenchLoadBalancer) -> None:
        lb.event("member-leave", member)

    def live_has_it() -> None:
        if "web1" not in live.live_servers():
            raise RuntimeError("runtime API join did not add web1 to HAProxy")

    def live_leave() -> None:
        leave(live)
        if "web1" in live.live_servers():
            raise RuntimeError("runtime API leave did not remove web1 from HAProxy")

    config_seen: dict[str, tuple[int, int]] = {}

    def unchanged() -> None:
        st = os.stat(live.config)
        if config_seen.get("stat", (st.st_ino, st.st_mtime_ns)) != (st.st_ino, st.st_mtime_ns):
            raise RuntimeError("a repeated join rewrote the config")

    def joined_live() -> None:
        live_has_it()
        st = os.stat(live.config)
        config_seen["stat"] = (st.st_ino, st.st_mtime_ns)  # the repeated join must keep this

    def reload_has_it() -> None:
        if " web1 " not in reload.config.read_text():
            raise RuntimeError("reload-mode join did not write web1")

    # The same config with `httpclient.ssl.verify none` in `global`: HAProxy 2.6 then skips
    # loading the system CA store for its (unused) HTTP client at every start and check.
    no_ca = workdir / "no-ca.cfg"

    def refresh_no_ca() -> None:  # from the reload-mode config as it is now (1 server)
        text = reload.config.read_text()
        patched = text.replace("\nglobal\n", "\nglobal\n    httpclient.ssl.verify none\n", 1)
        if patched == text or " web1 " not in text:
            raise RuntimeError("the reload-mode config has no `global` section or no server web1")
        no_ca.write_text(patched)

    commands = [
        Command("python -c pass", [python, "-c", "pass"]),
        Command("Ruby seed handler", ["ruby", str(BENCH / "seed_handler.rb"), str(base), str(seed_cfg),
                                      "kill", "-USR2", seed_master], member),
        Command("(a) log handler", [serf_handle, "--config", str(a_yml)], member, a_env),
        Command("(b) haproxy, runtime API", [serf_handle, "--config", str(live.yml)], member,
                live.event_env("member-join"), before=live_leave, after=joined_live),
        Command("(b) same join again (no change)", [serf_handle, "--config", str(live.yml)], member,
                live.event_env("member-join"), after=unchanged),
        Command("(c) haproxy, reload (USR2)", [serf_handle, "--config", str(reload.yml)], member,
                reload.event_env("member-join"), before=lambda: leave(reload), after=reload_has_it),
        Command("haproxy -c (1 server)", ["haproxy", "-c", "-q", "-f", str(reload.config)]),
        Command(NO_CA_LABEL, ["haproxy", "-c", "-q", "-f", str(no_ca)], before=refresh_no_ca),
    ]
    times = measure(commands, rounds=rounds, warmup=WARMUP)
    runtime_reloads = live.reload_count()
    runtime_changes = live.runtime_changes()
    reload_reloads = reload.reload_count()
    errors = live.handler_errors() + reload.handler_errors()

    # Still serving through the runtime-API HAProxy after all that?
    live.event("member-join", member)
    status, body = get(live.port)

    imports = {
        "(a) log handler": importtime(python, serf_handle, a_yml, member, a_env, None),
        "(b) haproxy, runtime API": importtime(python, serf_handle, live.yml, member,
                                               live.event_env("member-join"), lambda: leave(live)),
    }
    return {
        "rows": summary(times, "python -c pass"),
        "rounds": rounds,
        "runtime_reloads": runtime_reloads,
        "runtime_changes": runtime_changes,
        "reload_reloads": reload_reloads,
        "handler_errors": errors[:5],
        "served_after": (status, body),
        "imports": imports,
    }


_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)$")


def importtime(python: str, serf_handle: str, yml: Path, member: bytes, env: dict[str, str],
               before: object) -> dict[str, object]:
    """`python -X importtime`, several runs: median self/cumulative ms per module, and its importer."""
    runs: list[dict[str, tuple[int, int, int]]] = []
    parents: dict[str, str] = {}
    totals = []
    for _ in range(IMPORTTIME_RUNS):
        if callable(before):
            before()
        done = subprocess.run([python, "-X", "importtime", serf_handle, "--config", str(yml)], input=member,
                              env={**os.environ, **env}, capture_output=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"importtime run failed: {done.stderr.decode(errors='replace')[-500:]}")
        modules: dict[str, tuple[int, int, int]] = {}
        total = 0
        lines = []
        for line in done.stderr.decode(errors="replace").splitlines():
            match = _IMPORT_LINE.match(line)
            if match:
                lines.append((int(match[1]), int(match[2]), len(match[3]) // 2, match[4]))
        for index, (self_us, cumulative_us, depth, name) in enumerate(lines):
            modules[name] = (self_us, cumulative_us, depth)
            # importtime prints a module after everything it imported: its importer is
            # the next line with a smaller depth.
            parent = next((n for _s, _c, d, n in lines[index + 1:] if d < depth), "")
            parents[name] = parent
            if depth == 0:
                total += cumulative_us
        runs.append(modules)
        totals.append(total)
    names = set.intersection(*(set(r) for r in runs))
    table = []
    for name in names:
        self_ms = statistics.median(r[name][0] for r in runs) / 1000
        cumulative_ms = statistics.median(r[name][1] for r in runs) / 1000
        table.append((name, parents.get(name, ""), self_ms, cumulative_ms))
    table.sort(key=lambda row: -row[3])
    package_self = sum(row[2] for row in table if row[0].startswith("serf_handlers"))
    return {
        "total_ms": statistics.median(totals) / 1000,
        "modules": len(runs[-1]),
        "top": table[:TOP_IMPORTS],
        "package_self_ms": package_self,
        "runs": IMPORTTIME_RUNS,
        "has": {m: (m in names) for m in ("jinja2", "yaml", "re", "typing", "json", "subprocess", "socket",
                                          "ipaddress", "argparse", "logging", "dataclasses")},
    }
