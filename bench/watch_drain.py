"""Section 11's drain storm: 100 `drained web1` queries at once, and where each answer went.

The storm is sent from one process through one RPC connection to web1's agent
(`watch._rpc.Client.query`, as `serf query` sends it: `-node lb`, an ack requested, Serf's
default timeout), back to back, each as soon as the agent took the one before. Each query's
send, lb's ack, lb's response and the `done` that ends it are stamped here (CLOCK_MONOTONIC).

Why not 100 `serf query` processes, as before: started at once on 2 cores, they all reach
web1's agent within a few milliseconds, and Serf's `Query()` reads the query Lamport clock
without advancing it (serf/serf.go, `LTime: s.queryClock.Time()`; only the local
`handleQuery` witnesses it after), so concurrent queries can get the same LTime. The
agent keeps its pending queries in a map keyed by LTime (`registerQueryResponse`): the
second overwrites the first, whose ack and response lb still sends and web1 then drops
("query reply ID mismatch" in web1's log). Those lost answers are Serf's, not the load
balancer's. One connection is handled by one goroutine, so its queries never share an
LTime. `cli_storm` keeps the old method, run once beside it in watch mode, with the LTimes
the watcher received counted for duplicates.

In watch mode the watcher's own side comes from `watch_probe.py`'s stamps: `query LTIME ID`
when its RPC reader queued the record, `respond ID` and `respond.done ID ok|refused ...`.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from serf_handlers.watch._rpc import Client

QUERY, PAYLOAD, TARGET = "backends", b"drained web1", "lb"
WAIT = 30.0  # s: at most this long for every query's `done` (Serf's default timeout is 3.2 s here)


class _NoStream:
    """The inbox `Client` needs; this connection subscribes to no stream."""

    received = 0

    def put_record(self, generation: int, body: object) -> None:
        pass

    def put_control(self, item: object) -> None:
        pass


class _Query:
    """One query's stamps, filled by the client's reader thread."""

    def __init__(self) -> None:
        self.sent = 0.0
        self.ack: float | None = None
        self.response: float | None = None
        self.payload = b""
        self.done = threading.Event()
        self.ended = 0.0

    def record(self, body: object) -> None:
        now = time.monotonic()
        if not isinstance(body, dict):
            return
        kind, sender = body.get("Type"), body.get("From")
        if kind == "done":
            self.ended = now
            self.done.set()
        elif sender == TARGET and kind == "ack" and self.ack is None:
            self.ack = now
        elif sender == TARGET and kind == "response" and self.response is None:
            self.response, self.payload = now, bytes(body.get("Payload") or b"")


def rpc_storm(web_rpc: str, n: int) -> dict[str, Any]:
    """`n` queries through one connection to web1's agent; each one's times (monotonic)."""
    client = Client(web_rpc, _NoStream(), 1)  # type: ignore[arg-type]  # duck-typed inbox
    client.open(None)
    queries = [_Query() for _ in range(n)]
    try:
        for query in queries:
            client.query(QUERY, PAYLOAD, query.record, nodes=(TARGET,))
            query.sent = time.monotonic()  # the agent took it: Query() ran, its timeout runs
        deadline = time.monotonic() + WAIT
        for query in queries:
            query.done.wait(max(0.0, deadline - time.monotonic()))
    finally:
        client.close()
    first = queries[0].sent
    answered = [q for q in queries if q.response is not None]
    return {
        "driver": "rpc", "sent": n, "answered": len(answered), "first_sent": first,
        "send_spread": (queries[-1].sent - first) * 1000,
        "to_answer": [((q.response or 0) - q.sent) * 1000 for q in answered],
        "acked": sum(1 for q in queries if q.ack is not None),
        "timeout": statistics.median(q.ended - q.sent for q in queries if q.done.is_set()) if answered else 0.0,
        "unfinished": sum(1 for q in queries if not q.done.is_set()),
        "payloads": sorted({q.payload.decode("utf-8", "replace").split()[0][:40] for q in answered if q.payload}),
        "seconds": max((q.ended for q in queries), default=first) - first,
    }


def cli_storm(web_rpc: str, n: int) -> dict[str, Any]:
    """The earlier method: `n` `serf query -format json` processes started at once."""
    argv = ["serf", "query", f"-rpc-addr={web_rpc}", "-node", TARGET, "-format", "json", QUERY, PAYLOAD.decode()]
    started = time.monotonic()
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
             for _ in range(n)]
    answered = 0
    for proc in procs:
        try:
            out, _err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            continue
        try:
            answered += TARGET in (json.loads(out)["Responses"] or {})
        except (ValueError, KeyError, TypeError):
            continue
    return {"driver": "cli", "sent": n, "answered": answered, "first_sent": started,
            "seconds": time.monotonic() - started}


def dropped_by_web1(log: Path, since: int) -> tuple[int, int]:
    """Queries whose answer from lb web1's agent dropped, from its log after byte `since`:
    (another query had taken their LTime's slot: distinct "query reply ID mismatch" ID
    pairs; the answer came after the query had ended: distinct "reply for non-running
    query" LTimes from lb). The ack and the response each log a line."""
    text = log.read_bytes()[since:].decode("utf-8", "replace")
    taken = set(re.findall(r"query reply ID mismatch \(Local: (\d+), Response: (\d+)\)", text))
    late = set(re.findall(r"reply for non-running query \(LTime: (\d+), ID: \d+\) From: lb\b", text))
    return len(taken), len(late)


def watcher_side(stamps: list[tuple[float, str]], since: float) -> dict[str, Any]:
    """From the probe's stamps after `since`: each query record's arrival, and its answer."""
    arrived: dict[int, tuple[float, int]] = {}  # query ID -> (stamp, LTime)
    responded: dict[int, float] = {}
    results: Counter[str] = Counter()
    for stamp, label in stamps:
        if stamp < since:
            continue
        words = label.split(None, 3)
        if words[0] == "query" and len(words) >= 3:
            arrived[int(words[2])] = (stamp, int(words[1]))
        elif words[0] == "respond" and len(words) == 2:
            responded[int(words[1])] = stamp
        elif words[0] == "respond.done" and len(words) >= 3:
            results["ok" if words[2] == "ok" else " ".join(words[3:])[:80] or "refused"] += 1
    waits = [(responded[i] - t) * 1000 for i, (t, _l) in arrived.items() if i in responded]
    times = sorted(t for t, _l in arrived.values())
    ltimes = Counter(lt for _t, lt in arrived.values())
    return {"received": len(arrived), "first": times[0] if times else since, "last": times[-1] if times else since,
            "to_respond": waits, "results": dict(results), "shared_ltime": sum(c - 1 for c in ltimes.values())}


def _past_deadline(log: Path, since: int) -> int:
    """Answers lb's agent refused as too late (its "response is past the deadline" lines)."""
    return log.read_bytes()[since:].decode("utf-8", "replace").count("response is past the deadline")


def run(watch: Any, event: Any, n: int, read_stamps: Any) -> dict[str, Any]:
    """The storm in both modes, then the earlier method once in watch mode. `watch`/`event`
    are watch_mode.Cluster objects; `read_stamps` reads the watch cluster's probe stamps."""
    out: dict[str, Any] = {}
    for key, cluster, driver in (("watch", watch, rpc_storm), ("event", event, rpc_storm),
                                 ("watch_cli", watch, cli_storm)):
        web_log, lb_log = (cluster.procs.workdir / f"serf-{name}.log" for name in ("web1", "lb"))
        sizes = web_log.stat().st_size, lb_log.stat().st_size
        storm = driver(cluster.web.rpc, n)
        if cluster is event:
            # The per-event agent's handler runs go on after the storm: wait until each query
            # is accounted for, so that the next measurement has the CPU to itself.
            deadline = time.monotonic() + WAIT
            while (storm["answered"] + _past_deadline(lb_log, sizes[1]) + sum(dropped_by_web1(web_log, sizes[0]))
                   < n and time.monotonic() < deadline):
                time.sleep(0.2)
            storm["refused"] = _past_deadline(lb_log, sizes[1])
        time.sleep(0.5)  # the last log lines
        storm["taken"], storm["late"] = dropped_by_web1(web_log, sizes[0])
        if cluster is watch:
            storm["watcher"] = side = watcher_side(read_stamps(), storm["first_sent"] - 0.05)
            storm["refused"] = sum(count for result, count in side["results"].items() if result != "ok")
        out[key] = storm
    return out


def _ms(values: list[float]) -> tuple[str, str]:
    return (f"{statistics.median(values):.0f}", f"{max(values):.0f}") if values else ("-", "-")


def format_storms(storms: dict[str, Any], labels: dict[str, str]) -> list[str]:
    n = storms["watch"]["sent"]
    out = [
        f"**Drain storm.** {n} `drained web1` queries to `lb` (`-node lb`, an ack asked, Serf's default timeout), "
        "sent back to back from one process through one RPC connection to web1's agent (`watch._rpc.Client.query`); "
        "each query's send (the agent took it: its timeout runs from there), lb's ack and answer, and its end "
        "stamped. Last row: the earlier method, as many `serf query -format json` processes started at once.\n",
        "| mode | sent | answered by lb | no answer | lb answered after its deadline (refused) | lb's answer reached "
        "web1 after the query ended | web1 dropped lb's answer: its LTime taken by another query | all sent within "
        "ms | send → lb's answer, median ms | max ms | Serf's timeout s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label in (("event", labels["event"]), ("watch", labels["watch"]),
                       ("watch_cli", f"{labels['watch']}, {n} `serf query` processes")):
        s = storms[key]
        if s["driver"] == "rpc":
            median, worst = _ms(s["to_answer"])
            timing = f"{s['send_spread']:.0f} | {median} | {worst} | {s['timeout']:.1f}"
        else:
            timing = "- | - | - | -"
        out.append(f"| {label} | {s['sent']} | {s['answered']} | {s['sent'] - s['answered']} | {s['refused']} "
                   f"| {s['late']} | {s['taken']} | {timing} |")
    w = storms["watch"]
    out += ["", f"- Goal, all {n} answered in watch mode: {w['answered']} answered, "
            + ("met." if w["answered"] == w["sent"] else "missed.")]
    for key, what in (("watch", "this storm"), ("watch_cli", "the `serf query` processes' storm")):
        side = storms[key]["watcher"]
        median, worst = _ms(side["to_respond"])
        results = ", ".join(f"{count} {result}" for result, count in sorted(side["results"].items())) or "none"
        out.append(f"- The watcher, {what}: {side['received']} query records received, from "
                   f"{(side['first'] - storms[key]['first_sent']) * 1000:.0f} to "
                   f"{(side['last'] - storms[key]['first_sent']) * 1000:.0f} ms after the first send; record → "
                   f"`respond` median {median} ms, max {worst} ms; Serf's replies to `respond`: {results}; "
                   f"records sharing an LTime with another: {side['shared_ltime']}.")
    e = storms["event"]
    out.append(f"- Per event, lb's agent runs one handler at a time: {e['refused']} answers came after lb's own "
               f"deadline and {e['late']} after the query had ended at web1 (lb's deadline counts from the query's "
               "arrival, web1's from its send).")
    return out
