"""Section 10: nginx (open source) as the load balancer, kept by the `nginx` handler.

nginx has no runtime API for upstreams, so every membership change is a checked rewrite of
the whole nginx.conf (`nginx -t` on the candidate) and a graceful reload (`nginx -c <config>
-s reload`). Two measurements, in one run:

- **Churn under load** (as section 3): 4 web nodes (nginx + serf agent each) and one load
  balancer, a real nginx (master and workers, `nginx -c <config> -g 'daemon off;'`) whose
  serf agent runs `serf-handle` with the nginx handler. Every second a web node leaves
  gracefully or rejoins (section 3's schedule), while two bounded `wrk -t2 -c50 -dNs` run
  through it at the same time, seeing the same reloads: one with keep-alive (wrk's default),
  one with `Connection: close` (a new connection per request). Failed requests are wrk's
  non-2xx responses plus its socket errors; reloads come from the handler's log and from
  nginx's own (`signal 1 (SIGHUP) received`).
- **Per-event cost** (section 1's machinery, `bench/timing.py`): one `member-join` through the
  nginx handler (render, `nginx -t`, install, `nginx -s reload`), beside the haproxy handler in
  runtime-API mode, in the same interleaved rounds, against `python -c pass`. Every timed join
  is a real change: an untimed leave runs first, and an untimed check afterwards waits until
  nginx (or HAProxy) serves web1. Also timed alone: `nginx -t` and `nginx -s reload` of the
  same 1-server config, and the same join again (no change: no write, no reload).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from support.processes import Agent, Processes, free_port, get, wait_until

from .churn import CONNECTIONS, SCHEDULE, THREADS, WEBS, parse_wrk
from .per_event import B_LABEL, BASELINE, WARMUP
from .procs import ASSETS, processes, start_web
from .site import BenchSite
from .timing import Command, measure, summary

TITLE = "10. nginx as the load balancer"
RUNS = 3  # as section 3
DURATION = 20  # seconds of wrk per run, as section 3
ROUNDS = 30  # as section 1
CLIENTS = {
    "keep-alive": [],  # wrk's default: HTTP/1.1 keep-alive, one connection reused
    "close": ["-H", "Connection: close"],  # one connection per request
}
N_LABEL = "nginx handler (rewrite, `nginx -t`, `nginx -s reload`)"
N_AGAIN_LABEL = "nginx handler, same join again (no change)"
T_LABEL = "nginx -t (1 server)"
R_LABEL = "nginx -s reload (1 server)"


class NginxSite:
    """A load balancer: nginx in the foreground, the nginx handler's files, optionally a serf
    agent running it. The handler runs from the throwaway install and logs text (like
    BenchSite), so the per-event figures compare like with like."""

    def __init__(self, procs: Processes, venv_bin: Path, directory: Path) -> None:
        self.procs = procs
        self.dir = directory
        self.dir.mkdir(parents=True)
        self.serf_handle = str(venv_bin / "serf-handle")
        self.port = free_port()
        self.conf = directory / "nginx.conf"
        self.state = directory / "state.json"
        self.pid = directory / "nginx.pid"
        self.log = directory / "handler.log"
        self.nginx_log = procs.workdir / f"nginx-lb-{directory.name}.log"
        self.cache = directory / "cache"
        self.yml = directory / "config.yml"
        handler = {
            "type": "nginx", "config": str(self.conf), "state": str(self.state),
            "reload": ["nginx", "-c", str(self.conf), "-s", "reload"],
            # notice: nginx logs each reload it is signalled, so its own count can be read.
            "vars": {"listen": f"127.0.0.1:{self.port}", "pid": str(self.pid), "error_log": "stderr notice"},
        }
        self.yml.write_text(json.dumps({"log": {"level": "info", "file": str(self.log)}, "handlers": [handler]},
                                       indent=1) + "\n")
        self.must("render", "--write")  # no member yet: 503
        self.must("check")  # also fills the parsed-config cache
        procs.start(self.nginx_log.stem, ["nginx", "-c", str(self.conf), "-g", "daemon off;"])
        wait_until(lambda: self.pid.exists() and self.pid.read_text().strip(), timeout=10, what="nginx's pid file")
        wait_until(lambda: get(self.port)[0] == 503, timeout=10, what="nginx answering 503 (no member yet)")

    def event_env(self, event: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SERF_")}
        env.update({"SERF_HANDLERS_CACHE_DIR": str(self.cache), "SERF_SELF_NAME": "lb", "SERF_SELF_ROLE": "lb",
                    "SERF_TAG_ROLE": "lb"})
        if event is not None:
            env["SERF_EVENT"] = event
        return env

    def must(self, *args: str, event: str | None = None, stdin: bytes = b"") -> None:
        done = subprocess.run([self.serf_handle, "--config", str(self.yml), *args], input=stdin, capture_output=True,
                              env=self.event_env(event), timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"serf-handle {' '.join(args) or event}: exit {done.returncode}: "
                               f"{done.stderr.decode(errors='replace')[-800:]}")

    def event(self, event: str, stdin: bytes) -> None:
        self.must(event=event, stdin=stdin)

    def start_agent(self, join: Agent | None = None) -> Agent:
        return Agent(self.procs, "lb-nginx", {"role": "lb"}, join=join,
                     handler=f"{self.serf_handle} --config {self.yml}",
                     env={"SERF_HANDLERS_CACHE_DIR": str(self.cache)}, log_level="info")

    # --- what happened -----------------------------------------------------------------------

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines() if self.log.exists() else []

    def reload_count(self) -> int:
        """Reloads the handler ran (its log)."""
        return sum(1 for line in self.log_lines() if ": reloaded " in line)

    def nginx_reloads(self) -> int:
        """Reloads nginx's master was signalled (its own log)."""
        text = self.nginx_log.read_text(errors="replace") if self.nginx_log.exists() else ""
        return text.count("signal 1 (SIGHUP) received")

    def handler_errors(self) -> list[str]:
        return [line for line in self.log_lines() if " ERROR " in line]

    def state_nodes(self) -> set[str]:
        if not self.state.exists():
            return set()
        members = json.loads(self.state.read_bytes())["members"]
        return {name for name, m in members.items() if m["role"] == "web" and m["status"] == "alive"}

    def served(self, n: int) -> set[str]:
        return {body if status == 200 else f"<{status}>" for status, body in (get(self.port) for _ in range(n))}


def run(venv_bin: Path, workdir: Path, runs: int = RUNS, duration: int = DURATION, rounds: int = ROUNDS
        ) -> dict[str, object]:
    per_event = _per_event(venv_bin, workdir / "per-event", rounds)
    churn = _churn(venv_bin, workdir / "churn", runs, duration)
    return {"per_event": per_event, "churn": churn}


# --- per-event cost ----------------------------------------------------------------------------


def _per_event(venv_bin: Path, workdir: Path, rounds: int) -> dict[str, object]:
    workdir.mkdir()
    with processes(workdir) as procs:
        python = str(venv_bin / "python")
        serf_handle = str(venv_bin / "serf-handle")
        web_port = free_port()
        start_web(procs, "web1", web_port)
        member = f"web1\t127.0.0.1\tweb\tport={web_port},role=web\n".encode()

        live = BenchSite(procs, venv_bin, workdir / "runtime", "runtime")
        ngx = NginxSite(procs, venv_bin, workdir / "nginx")

        def live_leave() -> None:
            live.event("member-leave", member)
            if "web1" in live.live_servers():
                raise RuntimeError("runtime API leave did not remove web1 from HAProxy")

        def live_joined() -> None:
            if "web1" not in live.live_servers():
                raise RuntimeError("runtime API join did not add web1 to HAProxy")

        def nginx_leave() -> None:
            ngx.event("member-leave", member)
            wait_until(lambda: get(ngx.port)[0] == 503, timeout=10, interval=0.01,
                       what="nginx answering 503 after the leave")

        seen: dict[str, tuple[int, int, int]] = {}

        def nginx_joined() -> None:
            if f"127.0.0.1:{web_port} " not in ngx.conf.read_text():
                raise RuntimeError("the nginx handler's join did not write web1")
            # The reload returns once nginx is signalled; wait (untimed) until it serves web1.
            wait_until(lambda: get(ngx.port) == (200, "web1"), timeout=10, interval=0.01,
                       what="nginx serving web1 after the join")
            st = os.stat(ngx.conf)
            seen["config"] = (st.st_ino, st.st_mtime_ns, ngx.reload_count())

        def nginx_unchanged() -> None:
            st = os.stat(ngx.conf)
            if seen["config"] != (st.st_ino, st.st_mtime_ns, ngx.reload_count()):
                raise RuntimeError("a repeated join rewrote nginx.conf or reloaded nginx")

        commands = [
            Command(BASELINE, [python, "-c", "pass"]),
            Command(B_LABEL, [serf_handle, "--config", str(live.yml)], member, live.event_env("member-join"),
                    before=live_leave, after=live_joined),
            Command(N_LABEL, [serf_handle, "--config", str(ngx.yml)], member, ngx.event_env("member-join"),
                    before=nginx_leave, after=nginx_joined),
            Command(N_AGAIN_LABEL, [serf_handle, "--config", str(ngx.yml)], member, ngx.event_env("member-join"),
                    after=nginx_unchanged),
            Command(T_LABEL, ["nginx", "-t", "-q", "-c", str(ngx.conf)]),
            Command(R_LABEL, ["nginx", "-c", str(ngx.conf), "-s", "reload"]),
        ]
        times = measure(commands, rounds=rounds, warmup=WARMUP)
        timed = rounds + WARMUP
        wait_until(lambda: ngx.nginx_reloads() >= ngx.reload_count() + timed, timeout=10,
                   what="nginx logging every reload")
        return {
            "rows": summary(times, BASELINE),
            "rounds": rounds,
            "timed": timed,
            "nginx_reloads_by_handler": ngx.reload_count(),
            "nginx_reloads_seen": ngx.nginx_reloads(),
            "runtime_reloads": live.reload_count(),
            "runtime_changes": live.runtime_changes(),
            "handler_errors": (live.handler_errors() + ngx.handler_errors())[:5],
            "served_after": get(ngx.port),
        }


# --- churn under load --------------------------------------------------------------------------


def _churn(venv_bin: Path, workdir: Path, runs: int, duration: int) -> dict[str, object]:
    workdir.mkdir()
    results: dict[str, list[dict[str, object]]] = {client: [] for client in CLIENTS}
    info: list[dict[str, object]] = []
    with processes(workdir) as nginx:
        ports = [free_port() for _ in range(WEBS)]
        for i, port in enumerate(ports):
            start_web(nginx, f"web{i + 1}", port)
        for number in range(runs):
            one, extra = _one_run(venv_bin, workdir / f"run{number + 1}", ports, duration)
            for client, figures in one.items():
                results[client].append(figures)
            info.append(extra)
    return {"runs": results, "info": info, "duration": duration, "connections": CONNECTIONS, "threads": THREADS,
            "webs": WEBS}


def _one_run(venv_bin: Path, workdir: Path, ports: list[int], duration: int
             ) -> tuple[dict[str, dict[str, object]], dict[str, object]]:
    workdir.mkdir(parents=True)
    procs = Processes(workdir)
    lb_agent: Agent | None = None
    try:
        lb = NginxSite(procs, venv_bin, workdir / "nginx")
        lb_agent = lb.start_agent()
        names = [f"web{i + 1}" for i in range(WEBS)]

        def join_web(i: int) -> Agent:
            return Agent(procs, names[i], {"role": "web", "port": str(ports[i])}, join=lb_agent, wait=False)

        webs = [join_web(i) for i in range(WEBS)]
        everyone = set(names)
        wait_until(lambda: lb.state_nodes() == everyone, timeout=30, what="all web nodes in the state")
        wait_until(lambda: lb.served(3 * WEBS) == everyone, timeout=15, what="every web node served")
        time.sleep(1.5)  # let the last handler runs finish before counting
        reloads0, seen0, errors0 = lb.reload_count(), lb.nginx_reloads(), len(lb.handler_errors())

        wrks = {
            client: subprocess.Popen(
                ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{duration}s", "--timeout", "2s", *headers,
                 "-s", str(ASSETS / "wrk_status.lua"), f"http://127.0.0.1:{lb.port}/"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
            for client, headers in CLIENTS.items()
        }
        started = time.monotonic()
        changes = []
        try:
            for step in range(1, duration):
                delay = started + step - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                action, i = SCHEDULE[(step - 1) % len(SCHEDULE)]
                if action == "leave":
                    webs[i].leave(wait=False)
                else:
                    try:
                        webs[i].proc.wait(5)  # the old agent has finished leaving
                    except subprocess.TimeoutExpired:
                        pass
                    webs[i] = join_web(i)
                changes.append((round(time.monotonic() - started, 2), action, names[i]))
            outputs = {client: wrk.communicate(timeout=duration + 30)[0].decode(errors="replace")
                       for client, wrk in wrks.items()}
        finally:
            for wrk in wrks.values():
                if wrk.poll() is None:
                    wrk.kill()
                    wrk.wait(5)
        reloads = lb.reload_count() - reloads0
        seen = lb.nginx_reloads() - seen0

        for web in webs:  # a node told to leave in the last second is still leaving
            if web.leaving and web.proc.poll() is None:
                try:
                    web.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        alive = {names[i] for i, web in enumerate(webs) if web.proc.poll() is None}
        try:
            wait_until(lambda: lb.state_nodes() == alive, timeout=15, what="converged")
            wait_until(lambda: lb.served(3 * WEBS) == alive, timeout=10, what="nginx serving the alive nodes")
            converged = True
        except AssertionError:  # wait_until timed out
            converged = False
        figures = {
            client: {**parse_wrk(outputs[client]), "reloads": reloads, "nginx_reloads": seen,
                     "handler_errors": len(lb.handler_errors()) - errors0, "converged": converged}
            for client in CLIENTS
        }
        return figures, {"changes": changes, "alive_at_end": sorted(alive)}
    finally:
        if lb_agent is not None:  # the load balancer's agent first: the leaves run no more handlers
            lb_agent.leave(wait=False)
            try:
                lb_agent.proc.wait(10)
            except subprocess.TimeoutExpired:
                lb_agent.proc.kill()
        procs.stop_all(together=True)


# --- the report --------------------------------------------------------------------------------

CLIENT_LABELS = {
    "keep-alive": "keep-alive (wrk's default)",
    "close": "`Connection: close` (a connection per request)",
}


def _ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def format_nginx(r: dict[str, Any]) -> str:
    return _format_churn(r["churn"]) + "\n" + _format_per_event(r["per_event"])


def _format_churn(c: dict[str, Any]) -> str:
    runs = c["runs"]
    n_runs = len(runs["keep-alive"])
    changes = c["info"][0]["changes"]

    def med(client: str, key: str) -> float:
        return float(statistics.median(run[key] for run in runs[client]))

    out = [
        f"**Churn under load.** Two `wrk -t{c['threads']} -c{c['connections']} -d{c['duration']}s` (2 s timeout) at "
        f"once through one nginx load balancer, {n_runs} run(s); {len(changes)} membership changes per run (one a "
        "second: " + ", ".join(f"{a} {n}" for _t, a, n in changes[:4]) + ", …, as in section 3). Counts are "
        "medians over the runs, with each run's failed-request count in brackets.\n",
        "| client | requests | non-2xx | socket errors (connect/read/write/timeout) | failed requests "
        "| reloads (handler / nginx's log) | state = alive members, nginx serving them, at the end |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for client, label in CLIENT_LABELS.items():
        failed_each = ", ".join(str(run["failed"]) for run in runs[client])
        out.append(
            f"| {label} | {med(client, 'requests'):,.0f} | {med(client, 'non2xx'):,.0f} "
            f"| {med(client, 'connect'):.0f}/{med(client, 'read'):.0f}/{med(client, 'write'):.0f}/"
            f"{med(client, 'timeout'):.0f} | {med(client, 'failed'):,.0f} [{failed_each}] "
            f"| {med(client, 'reloads'):.0f} / {med(client, 'nginx_reloads'):.0f} "
            f"| {'yes' if all(run['converged'] for run in runs[client]) else 'NO'} |"
        )
    keep = runs["keep-alive"]
    total_failed = sum(run["failed"] for run in keep)
    total_reloads = sum(run["reloads"] for run in keep)
    total_requests = sum(run["requests"] for run in keep)
    bad: dict[str, int] = {}
    for client in CLIENTS:
        for run in runs[client]:
            for code, count in run["statuses"].items():
                if not 200 <= int(code) < 400:
                    bad[f"{client} {code}"] = bad.get(f"{client} {code}", 0) + count
    errors = sum(run["handler_errors"] for run in keep)
    out += [
        "",
        f"- Keep-alive: {total_failed:,} failed of {total_requests:,} requests over {total_reloads} reloads "
        f"({total_failed / max(total_reloads, 1):.2f} per reload, {total_failed / max(total_requests, 1) * 1e6:,.0f} "
        "per million requests); `Connection: close`: "
        f"{sum(run['failed'] for run in runs['close']):,} failed of {sum(run['requests'] for run in runs['close']):,}.",
        "- Non-2xx responses by status, summed over the runs: "
        + (", ".join(f"{count:,} × {key}" for key, count in sorted(bad.items())) or "none") + ".",
        f"- Handler errors logged: {errors}.",
    ]
    return "\n".join(out) + "\n"


def _format_per_event(p: dict[str, Any]) -> str:
    rows = {row[0]: row for row in p["rows"]}
    out = [
        f"**Per-event cost.** Wall time of one run, median of {p['rounds']} interleaved rounds (after "
        f"{p['timed'] - p['rounds']} warm-up rounds), beside the haproxy handler's runtime-API mode in the same "
        "rounds; p25–p75 shows the spread.\n",
        "| command | median ms | p25–p75 ms | × `python -c pass` |",
        "|---|---:|---:|---:|",
    ]
    for label, med, low, high, ratio, _n in p["rows"]:
        out.append(f"| {label} | {_ms(med)} | {_ms(low)}–{_ms(high)} | {ratio:.2f}× |")
    n, b = rows[N_LABEL], rows[B_LABEL]
    t, r, base = rows[T_LABEL], rows[R_LABEL], rows[BASELINE]
    rest = n[1] - t[1] - r[1] - base[1]
    out += [
        "",
        f"- The nginx handler: {n[4]:.2f}× `python -c pass`; {n[1] / b[1]:.2f}× the haproxy handler's runtime-API "
        f"join ({_ms(n[1])} ms against {_ms(b[1])} ms). Of its {_ms(n[1])} ms, `nginx -t` alone takes {_ms(t[1])} ms "
        f"and `nginx -s reload` alone {_ms(r[1])} ms (it parses the whole config too, then signals the master); "
        f"Python's start-up {_ms(base[1])} ms; the rest, {_ms(rest)} ms, is the handler's own work.",
        f"- The same join again: {_ms(rows[N_AGAIN_LABEL][1])} ms ({rows[N_AGAIN_LABEL][4]:.2f}×); checked after each "
        "run: nginx.conf's inode and mtime unchanged, no reload.",
        f"- Every timed nginx join and leave really changed nginx: the handler reloaded it "
        f"{p['nginx_reloads_by_handler']} times (one per join and per leave, warm-up included) and nginx's log shows "
        f"{p['nginx_reloads_seen']} reloads (those plus the {p['timed']} of the `nginx -s reload` row); after each "
        f"join the benchmark waited (untimed) until nginx served web1. The haproxy handler: "
        f"{p['runtime_changes']} runtime-API changes, {p['runtime_reloads']} reloads. Handler errors logged: "
        f"{len(p['handler_errors'])}. A request through nginx afterwards: {p['served_after'][0]} "
        f"`{p['served_after'][1]}`.",
    ]
    return "\n".join(out) + "\n"
