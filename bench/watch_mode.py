"""Section 11: per event or watch, side by side in one run, with real serf agents.

Two clusters on loopback, one per mode, each: a load balancer (HAProxy in runtime-API mode,
`Site.serve(procs, "runtime")`) with its serf agent `lb`, and one web node `web1` (nginx + serf
agent). In the per-event cluster `lb` runs `serf-handle --config ...` as its -event-handler; in
the watch cluster `lb` has no event handler and one `serf-handle ... watch --rpc-addr ...`
process reads its RPC stream (as tests/integration/test_watch.py starts it). Both run the
throwaway install.

- **Delivery to HAProxy's live change**: `serf tags -set weight=N` on web1 (N alternating),
  one mode after the other in each round. Serf's delivery time: in watch mode, when a
  separate RPC stream client (the package's own `watch._rpc.Client`, subscribed to
  `member-update` on the same `lb` agent, in this process) receives the record, as the
  watcher's stream does; in per-event mode, a first -event-handler
  `member-update=date +%s.%N >> FILE` (Serf runs an agent's handlers one after the other,
  synchronously, and hands the event to its RPC streams only after them, so a stream is no
  clock there). The agent's log line `[INFO] serf: EventMemberUpdate: web1` has 1-second
  timestamps: useless here. HAProxy's live change is the first `show servers state` (polled
  every 2 ms) showing web1's new weight.
- **Drain storm** (`watch_drain.py`): 100 `drained web1` queries to lb with Serf's default
  timeout, sent back to back through one RPC connection to web1's agent, each query's send,
  ack, answer and end stamped; in watch mode the watcher's side from its probe stamps. Then,
  in watch mode, the earlier method (100 `serf query` processes at once) for comparison.
- **CPU per 1,000 events**, over the tag changes above: the watcher's own utime+stime
  (/proc/PID/stat) against the per-event agent's reaped children's (cutime+cstime: every
  `sh -c serf-handle ...` it ran, with their children), divided by the events delivered.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from serf_handlers.watch._rpc import Client
from support.admin import live_servers
from support.processes import Agent, Processes, wait_until
from support.site import Site

from . import watch_breakdown, watch_drain, watch_scale, watch_storm
from .procs import BENCH

TITLE = "11. Per event or watch"
CHANGES = 50  # tag changes per mode
UNCHECKED = 20  # more watch-mode changes with the haproxy handler's `check: false`
QUERIES = 100  # concurrent drain queries per mode
POLL = 0.002  # s between `show servers state` polls
MODES = ("event", "watch")
MODE_LABELS = {"event": "per event (`-event-handler`)", "watch": "`serf-handle watch`"}
WEIGHTS = ("10", "20")
TICK = os.sysconf("SC_CLK_TCK")


class Stamps:
    """What `watch._rpc.Client` needs of an inbox; stamps every member-update record it gets."""

    def __init__(self) -> None:
        self.received = 0
        self.lock = threading.Lock()
        self.seen: list[tuple[float, dict[str, str]]] = []  # (monotonic time, web1's tags)

    def put_record(self, generation: int, body: object) -> None:
        now = time.monotonic()
        self.received += 1
        if isinstance(body, dict) and body.get("Event") == "member-update":
            for member in body.get("Members") or []:
                if isinstance(member, dict) and member.get("Name") == "web1":
                    with self.lock:
                        self.seen.append((now, dict(member.get("Tags") or {})))

    def put_control(self, item: object) -> None:
        pass

    def first(self, after: int, weight: str) -> float | None:
        with self.lock:
            for stamp, tags in self.seen[after:]:
                if tags.get("weight") == weight:
                    return stamp
        return None

    def count(self) -> int:
        with self.lock:
            return len(self.seen)


class Cluster:
    """One mode's load balancer, its agent (with or without the event handler), web1 and a
    stamping stream on the agent."""

    def __init__(self, mode: str, venv_bin: Path, workdir: Path) -> None:
        workdir.mkdir(parents=True)
        self.mode = mode
        self.procs = Processes(workdir)
        self.watch: subprocess.Popen[bytes] | None = None
        self.stamps = Stamps()
        self.client: Client | None = None
        try:
            self._start(venv_bin, workdir)
        except BaseException:
            self.stop()  # not yet in run()'s `clusters`: its finally would miss these processes
            raise

    def _start(self, venv_bin: Path, workdir: Path) -> None:
        log = {"level": "info", "format": "json", "file": str(workdir / "handler.jsonl")}
        self.site = Site(workdir, serf_handle=str(venv_bin / "serf-handle"), log=log)
        self.site.serve(self.procs, "runtime")
        self.stamps_file = workdir / "stamps"  # watch: watch_probe.py's timestamps
        self.timed: list[tuple[float, float]] = []  # watch: (command started, change seen live) per change
        self.delivered = workdir / "delivered"  # per event: one wall-clock line per member-update handed over
        if self.mode == "event":
            # Serf runs an agent's event handlers one after the other, synchronously, before the
            # event reaches its RPC streams: so here a first handler stamps the hand-over.
            stamp = f"member-update=date +%s.%N >> {self.delivered}"
            self.lb = self.site.start_agent(log_level="info", before=[stamp])
        else:
            self.lb = Agent(self.procs, "lb", {"role": "lb"}, log_level="info")
            self.site.agent = self.lb
            # Under watch_probe.py: the same `serf-handle watch`, with a timestamp at each step.
            argv = [str(venv_bin / "python"), str(BENCH / "watch_probe.py"), str(self.stamps_file),
                    "--config", str(self.site.yml), "watch", "--rpc-addr", self.lb.rpc]
            self.watch = self.procs.start("watch", argv, env=self.site.env(None))
            wait_until(lambda: any("connected to the serf agent" in str(r.get("message"))
                                   for r in self.site.records()), timeout=20, what="the watcher connected")
        self.web = self.site.add_web("web1", "body1")
        wait_until(lambda: "web1" in live_servers(self.site.admin_socket), timeout=30,
                   what=f"{self.mode}: web1 live in HAProxy")
        self.client = Client(self.lb.rpc, self.stamps, 1)  # type: ignore[arg-type]  # duck-typed inbox
        self.client.open(None)
        self.client.stream("member-update")

    def weight(self) -> str | None:
        server = live_servers(self.site.admin_socket).get("web1")
        return server[2] if server else None

    def cpu(self) -> float:
        """The watcher's own CPU seconds, or the event agent's reaped children's."""
        pid = self.watch.pid if self.watch is not None else self.lb.proc.pid
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
        # after "pid (comm) ": state is fields[0]; utime, stime, cutime, cstime are stat's 14-17
        own, children = int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
        return (own if self.watch is not None else children) / TICK

    def change(self, weight: str, timeout: float = 15.0) -> dict[str, float]:
        """One tag change; seconds from the command, and from Serf's delivery, to HAProxy."""
        mark = self.stamps.count()
        lines = len(self._delivered())
        started = time.monotonic()
        self.web.serf("tags", "-set", f"weight={weight}")
        returned = time.monotonic()
        deadline = returned + timeout
        while self.weight() != weight:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.mode}: weight {weight} never live in HAProxy")
            time.sleep(POLL)
        live, live_wall = time.monotonic(), time.time()
        self.timed.append((started, live))
        wait_until(lambda: self.stamps.first(mark, weight), timeout=5, interval=0.01,
                   what=f"{self.mode}: the member-update on the stream")
        streamed = self.stamps.first(mark, weight)
        assert streamed is not None
        if self.watch is not None:
            delivery_to_live = live - streamed
        else:
            wait_until(lambda: len(self._delivered()) > lines, timeout=5, interval=0.01,
                       what="the per-event stamp")
            delivery_to_live = live_wall - self._delivered()[lines]
        return {"delivery_to_live": delivery_to_live, "command_to_live": live - returned,
                "command": returned - started, "stream_to_live": live - streamed}

    def without_check(self, weights: list[str]) -> list[dict[str, float]]:
        """Watch mode: the handler's `check: false` (no `haproxy -c` before installing), read
        by the running watcher on SIGHUP; then one change per weight."""
        assert self.watch is not None
        self.site.write_yml(check=False)
        self.watch.send_signal(signal.SIGHUP)
        wait_until(lambda: any("config reloaded" in str(r.get("message")) for r in self.site.records()),
                   timeout=20, what="the watcher re-read its config")
        time.sleep(1)  # the reconcile that follows a reload
        return [self.change(weight) for weight in weights]

    def _delivered(self) -> list[float]:
        text = self.delivered.read_text() if self.delivered.exists() else ""
        return [float(line) for line in text.splitlines() if line.strip()]

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        self.procs.stop_all(together=True)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def add_watch_extra(venv_bin: Path) -> None:
    """The throwaway install has no extras: add `[watch]` (msgpack) from the same copied source."""
    if subprocess.run([str(venv_bin / "python"), "-c", "import msgpack"], capture_output=True,
                      timeout=60).returncode == 0:
        return
    source = venv_bin.parent.parent / "src"  # procs.make_install's layout
    subprocess.run([str(venv_bin / "pip"), "install", "-q", f"{source}[watch]"], check=True, timeout=300,
                   capture_output=True)


def run(venv_bin: Path, workdir: Path, changes: int = CHANGES, queries: int = QUERIES) -> dict[str, Any]:
    add_watch_extra(venv_bin)
    clusters: dict[str, Cluster] = {}
    try:
        for mode in MODES:
            clusters[mode] = Cluster(mode, venv_bin, workdir / mode)
        time.sleep(2)  # let the joins' handler runs finish
        times: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
        cpu0 = {mode: c.cpu() for mode, c in clusters.items()}
        events0 = {mode: c.stamps.count() for mode, c in clusters.items()}
        began = time.monotonic()
        for i in range(changes):
            for mode in MODES:  # one mode after the other: the two never share the 2 cores' moment
                times[mode].append(clusters[mode].change(WEIGHTS[i % 2]))
        elapsed = time.monotonic() - began
        time.sleep(1)
        cpu = {mode: c.cpu() - cpu0[mode] for mode, c in clusters.items()}
        events = {mode: c.stamps.count() - events0[mode] for mode, c in clusters.items()}
        watch = clusters["watch"]
        storms = watch_drain.run(watch, clusters["event"], queries, lambda: watch_breakdown.read(watch.stamps_file))
        breakdown = watch_breakdown.breakdown(watch_breakdown.read(watch.stamps_file), watch.timed)
        unchecked = watch.without_check([WEIGHTS[(changes + i) % 2] for i in range(UNCHECKED)])
    finally:
        for cluster in clusters.values():
            cluster.stop()
    return {
        "changes": changes, "elapsed": elapsed, "queries": queries,
        "latency": {mode: {key: [t[key] * 1000 for t in ts] for key in ts[0]} for mode, ts in times.items()},
        "cpu": cpu, "events": events, "storms": storms, "breakdown": breakdown,
        "unchecked": [t["delivery_to_live"] * 1000 for t in unchecked],
        "scale": watch_scale.run(venv_bin, workdir / "scale"),
        "event_storm": watch_storm.run(str(venv_bin / "serf-handle"), workdir / "event-storm"),
    }


def format_watch(r: dict[str, Any]) -> str:
    lat = r["latency"]
    out = [
        f"**Serf's delivery to HAProxy's live change**, {r['changes']} one-member changes per mode (`serf tags -set "
        "weight=N` on web1, N alternating 10/20), the modes one after the other in each round "
        f"({r['elapsed']:.0f} s in all). Delivery: watch, the member-update record's arrival on a separate RPC "
        "stream of the same `lb` agent; per event, a first handler `member-update=date +%s.%N >> FILE`. Live: the "
        "first `show servers state` (polled every 2 ms) with the new weight. Also shown: from `serf tags -set`'s "
        "return to live (gossip and Serf's own coalescing included), and from the stream record to live (per event "
        "the agent streams the event only after its handlers have run: negative there).\n",
        "| mode | delivery → live, median ms | p95 ms | max ms | `serf tags` return → live, median ms | p95 ms "
        "| stream record → live, median ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        d, c, s = (lat[mode][key] for key in ("delivery_to_live", "command_to_live", "stream_to_live"))
        out.append(f"| {MODE_LABELS[mode]} | {statistics.median(d):.1f} | {_pct(d, 0.95):.1f} | {max(d):.1f} "
                   f"| {statistics.median(c):.0f} | {_pct(c, 0.95):.0f} | {statistics.median(s):.1f} |")
    watch_med = statistics.median(lat["watch"]["delivery_to_live"])
    out += ["", f"- Goal, watch ≤ 10 ms median: {watch_med:.1f} ms, "
            + ("met." if watch_med <= 10 else f"missed by {watch_med - 10:.1f} ms.")]
    out += ["", *watch_drain.format_storms(r["storms"], MODE_LABELS)]
    u = r["unchecked"]
    out += ["", f"- The same watcher after `check: false` (SIGHUP), {len(u)} more changes: delivery → live median "
            f"{statistics.median(u):.1f} ms, p95 {_pct(u, 0.95):.1f} ms: no `haproxy -c` on any change (with "
            "`check: true` a change of weights and states alone skips it too, see the breakdown below)."]
    out += ["", "**CPU per 1,000 events**, over the tag changes above: the watcher's own CPU (utime+stime), "
            "against the per-event agent's reaped children (cutime+cstime: every `sh -c serf-handle ...` run).\n",
            "| mode | events delivered | CPU s | CPU s per 1,000 events |", "|---|---:|---:|---:|"]
    for mode in MODES:
        n, cpu = r["events"][mode], r["cpu"][mode]
        out.append(f"| {MODE_LABELS[mode]} | {n} | {cpu:.2f} | {cpu / max(n, 1) * 1000:.1f} |")
    out += ["", "**Where a watch-mode change spends its time**, the same changes as above: the watcher ran under "
            "`bench/watch_probe.py` (the same `serf-handle watch`, a timestamp at each step), each change from the "
            "watcher's own RPC reader queueing the record to the benchmark's poll seeing the new weight.\n",
            *watch_breakdown.format_breakdown(r["breakdown"])]
    out += ["", *watch_scale.format_scale(r["scale"])]
    out += ["", *watch_storm.format_storm(r["event_storm"])]
    return "\n".join(out) + "\n"
