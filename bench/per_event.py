"""Section 1: what one `serf-handle` run costs for a 1-member member-join.

All variants run interleaved in the same rounds (bench/timing.py), against `python -c pass`
on the same interpreter as the throwaway install, and against the Ruby seed handler.
The log handler runs once per environment a handler really runs in (`ENVIRONMENTS`): each
row gets exactly that environment (`env -i`), nothing inherited from the benchmark's own,
and no SERF_HANDLERS_CACHE_DIR: whether the parsed config is cached is the code's business.
Every timed haproxy-handler join is a real change: an untimed leave of the same member
runs before it, and an untimed check after it asks HAProxy (or the config) for the server.
The "metrics on" rows are (a) in the Docker image's environment and (b) with the config's
top-level `metrics: PATH` set, as the image has it: each run also reads, locks and rewrites
the Prometheus text file; the file is checked afterwards for every run's count.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import NamedTuple

from support.processes import Processes, free_port, get, start_haproxy, wait_until

from .procs import ASSETS, processes, start_web
from .site import BenchSite
from .timing import Command, measure, summary

ROUNDS = 30
WARMUP = 3
IMPORTTIME_RUNS = 7
TOP_IMPORTS = 14
NO_CA_LABEL = "haproxy -c (1 server), `httpclient.ssl.verify none`"
METRICS_ENV = "supervisord (Docker image)"  # the (a) metrics-on row's environment: the image has metrics on
B_LABEL = "(b) haproxy, runtime API"
B_METRICS_LABEL = "(b) haproxy, runtime API, metrics on"


# What Serf adds to its own environment for a member-join handler on node `lb` (role=lb).
SERF_VARS = {"SERF_EVENT": "member-join", "SERF_SELF_NAME": "lb", "SERF_SELF_ROLE": "lb", "SERF_TAG_ROLE": "lb"}
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # systemd's default PATH for a service
DOCKER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # Docker's default PATH
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
BASELINE = "python -c pass"
BASELINE_NOBODY = "python -c pass, as nobody"


class Environment(NamedTuple):
    label: str
    where: str  # how it is spelled out in the report
    env: dict[str, str]
    prefix: list[str]  # argv before serf-handle's (`setpriv ...`)


def environments(workdir: Path, yml: Path) -> list[Environment]:
    """The environments a handler really runs in, one row each. HOME directories that root has
    are fresh empty ones here (the bench must not write into the real /root)."""
    root_home = workdir / "root-home"  # stands for /root
    login_home = workdir / "login-home"  # stands for a login user's home
    for home in (root_home, login_home):
        home.mkdir(exist_ok=True)
    found = [
        Environment(
            "serf.service (Debian)",
            "Debian's `serf.service`: root, `env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin` plus Serf's `SERF_*`: "
            "no HOME, no XDG_*",
            {"PATH": SYSTEM_PATH, **SERF_VARS},
            [],
        ),
        Environment(
            "supervisord (Docker image)",
            "the haproxy image's supervisord: root, the image's `ENV` (PATH with /opt/serf-handlers/bin first, "
            "LANG, SERF_ROLE, SERF_RPC_ADDR, SERF_HANDLERS_CONFIG, LB_PORT), HOME=/root as Docker sets it, "
            "supervisord's `SUPERVISOR_*`, plus Serf's `SERF_*`",
            {
                "PATH": f"/opt/serf-handlers/bin:{DOCKER_PATH}", "HOSTNAME": "lb", "HOME": str(root_home),
                "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive", "SERF_ROLE": "lb",
                "SERF_RPC_ADDR": "127.0.0.1:7373", "SERF_HANDLERS_CONFIG": str(yml), "LB_PORT": "80",
                "SUPERVISOR_ENABLED": "1", "SUPERVISOR_PROCESS_NAME": "serf", "SUPERVISOR_GROUP_NAME": "serf",
                "SUPERVISOR_SERVER_URL": "unix:///run/supervisor.sock", **SERF_VARS,
            },
            [],
        ),
        Environment(
            "login shell",
            "`serf agent` started from a root login shell: HOME (writable), USER, LOGNAME, SHELL, "
            "PATH=" + DOCKER_PATH + ", LANG, TERM, plus Serf's `SERF_*`",
            {
                "HOME": str(login_home), "USER": "root", "LOGNAME": "root", "SHELL": "/bin/bash",
                "PATH": DOCKER_PATH, "LANG": "C.UTF-8", "TERM": "xterm", **SERF_VARS,
            },
            [],
        ),
    ]
    if os.geteuid() == 0:
        found.append(Environment(
            "non-root, no writable home",
            "user nobody (`setpriv --reuid=nobody --regid=nogroup --clear-groups`), `env -i` "
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/nonexistent USER=nobody LOGNAME=nobody plus Serf's `SERF_*`",
            {"PATH": SYSTEM_PATH, "HOME": "/nonexistent", "USER": "nobody", "LOGNAME": "nobody", **SERF_VARS},
            AS_NOBODY,
        ))
    return found


def log_label(environment: Environment) -> str:
    return f"(a) log handler, {environment.label}"


def metrics_label(label: str) -> str:
    return f"{label}, metrics on"


_SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", re.MULTILINE)


def metrics_samples(path: Path) -> dict[str, float]:
    """`name{labels}` -> value, from a Prometheus text file the handler wrote."""
    if not path.exists():
        raise RuntimeError(f"the handler wrote no metrics file {path}")
    return {m[1] + (m[2] or ""): float(m[3]) for m in _SAMPLE.finditer(path.read_text())}


def metrics_counts(path: Path, runs: int) -> dict[str, float]:
    """What a metrics-on variant's file counted after `runs` joins (warm-up included; for (b),
    as many untimed leaves too); raises when it lost a join, i.e. the metrics are wrong."""
    samples = metrics_samples(path)
    counts = {
        "joins": samples.get('serf_handlers_events_total{type="member-join"}', 0.0),
        "runs_ok": samples.get('serf_handlers_runs_total{command="handle",result="ok"}', 0.0),
        "reloads": samples.get("serf_handlers_haproxy_reloads_total", 0.0),
        "runtime_commands": samples.get("serf_handlers_haproxy_runtime_commands_total", 0.0),
    }
    if counts["joins"] < runs:
        raise RuntimeError(f"{path}: {counts['joins']:.0f} member-join events counted, {runs} runs timed")
    return counts


def run(venv_bin: Path, workdir: Path, rounds: int = ROUNDS) -> dict[str, object]:
    with processes(workdir) as procs:
        return _run(procs, venv_bin, workdir, rounds)


def _run(procs: Processes, venv_bin: Path, workdir: Path, rounds: int) -> dict[str, object]:
    python = str(venv_bin / "python")
    serf_handle = str(venv_bin / "serf-handle")
    web_port = free_port()
    start_web(procs, "web1", web_port)
    member = f"web1\t127.0.0.1\tweb\tport={web_port},role=web\n".encode()

    # (a) the log handler, logging to /dev/null, in each environment.
    a_yml = workdir / "log.yml"
    a_yml.write_text("log: {level: info, file: /dev/null}\nhandlers:\n  - type: log\n")
    envs = environments(workdir, a_yml)
    a_commands = [
        Command(log_label(e), [*e.prefix, serf_handle, "--config", str(a_yml)], member, e.env, inherit_env=False)
        for e in envs
    ]
    # The same log handler with the handler's metrics file, in the image's environment.
    a_metrics = workdir / "log-metrics.prom"
    am_yml = workdir / "log-metrics.yml"
    am_yml.write_text(a_yml.read_text() + f"metrics: {a_metrics}\n")
    am_env = next(e for e in envs if e.label == METRICS_ENV)
    am_env_vars = {**am_env.env, "SERF_HANDLERS_CONFIG": str(am_yml)}
    a_commands.append(Command(metrics_label(log_label(am_env)), [*am_env.prefix, serf_handle, "--config", str(am_yml)],
                              member, am_env_vars, inherit_env=False))
    nobody_baseline = [Command(BASELINE_NOBODY, [*AS_NOBODY, python, "-c", "pass"], env={"PATH": SYSTEM_PATH},
                               inherit_env=False)] if any(e.prefix for e in envs) else []

    # (b) runtime API, (b) again with the metrics file, (c) reload mode: each its own HAProxy.
    live = BenchSite(procs, venv_bin, workdir / "runtime", "runtime")
    live_metrics = BenchSite(procs, venv_bin, workdir / "runtime-metrics", "runtime")
    b_metrics = live_metrics.metrics = live_metrics.dir / "serf_handlers.prom"
    live_metrics.write_yml()
    live_metrics.must("check")  # the parsed-config cache, for the new config
    reload = BenchSite(procs, venv_bin, workdir / "reload", "reload")

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

    def leave(lb: BenchSite) -> None:
        lb.event("member-leave", member)

    def live_has_it() -> None:
        if "web1" not in live.live_servers():
            raise RuntimeError("runtime API join did not add web1 to HAProxy")

    def live_leave() -> None:
        leave(live)
        if "web1" in live.live_servers():
            raise RuntimeError("runtime API leave did not remove web1 from HAProxy")

    def metrics_leave() -> None:
        leave(live_metrics)
        if "web1" in live_metrics.live_servers():
            raise RuntimeError("runtime API leave (metrics on) did not remove web1 from HAProxy")

    def metrics_joined() -> None:
        if "web1" not in live_metrics.live_servers():
            raise RuntimeError("runtime API join (metrics on) did not add web1 to HAProxy")

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
        Command(BASELINE, [python, "-c", "pass"]),
        *nobody_baseline,
        Command("Ruby seed handler", ["ruby", str(ASSETS / "seed_handler.rb"), str(base), str(seed_cfg),
                                      "kill", "-USR2", seed_master], member),
        *a_commands,
        Command(B_LABEL, [serf_handle, "--config", str(live.yml)], member,
                live.event_env("member-join"), before=live_leave, after=joined_live),
        Command(B_METRICS_LABEL, [serf_handle, "--config", str(live_metrics.yml)], member,
                live_metrics.event_env("member-join"), before=metrics_leave, after=metrics_joined),
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
    errors = live.handler_errors() + live_metrics.handler_errors() + reload.handler_errors()
    timed = rounds + WARMUP
    metrics = {
        metrics_label(log_label(am_env)): (log_label(am_env), metrics_counts(a_metrics, timed)),
        B_METRICS_LABEL: (B_LABEL, metrics_counts(b_metrics, timed)),
    }
    metrics_reloads = live_metrics.reload_count()

    # Still serving through the runtime-API HAProxy after all that?
    live.event("member-join", member)
    status, body = get(live.port)

    debian = envs[0]
    imports = {
        log_label(debian): importtime(python, serf_handle, a_yml, member, debian.env, None, inherit_env=False),
        B_LABEL: importtime(python, serf_handle, live.yml, member, live.event_env("member-join"),
                            lambda: leave(live)),
    }
    return {
        "rows": summary(times, BASELINE),
        "environments": [(log_label(e), e.where, bool(e.prefix)) for e in envs],
        "rounds": rounds,
        "runtime_reloads": runtime_reloads,
        "runtime_changes": runtime_changes,
        "reload_reloads": reload_reloads,
        "handler_errors": errors[:5],
        "served_after": (status, body),
        "metrics": metrics,  # metrics-on label -> (the same row without, the file's counts)
        "metrics_reloads": metrics_reloads,
        "imports": imports,
    }


_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)$")


def importtime(python: str, serf_handle: str, yml: Path, member: bytes, env: dict[str, str],
               before: object, inherit_env: bool = True) -> dict[str, object]:
    """`python -X importtime`, several runs: median self/cumulative ms per module, and its importer."""
    runs: list[dict[str, tuple[int, int, int]]] = []
    parents: dict[str, str] = {}
    totals = []
    for _ in range(IMPORTTIME_RUNS):
        if callable(before):
            before()
        done = subprocess.run([python, "-X", "importtime", serf_handle, "--config", str(yml)], input=member,
                              env={**os.environ, **env} if inherit_env else env, capture_output=True, timeout=60)
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
