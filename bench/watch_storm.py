"""Section 11 (and tests/integration/test_watch.py): an event storm faster than the handlers.

Real serf agents on loopback: `lb` (no event handler) with `serf-handle watch --max-queue N`
on its RPC port, HAProxy in runtime-API mode, and web agents (role=web, a `port` tag; no
nginx: HAProxy's live servers are what is compared, not traffic). Besides the haproxy
handler the watcher runs a deliberately slow plugin (`SLOW_PLUGIN`: it sleeps on every member
event and every `storm` user event, and writes one line per user event it ran), so the
queue outgrows its bound and collapses.

The storm, driven through the agents' own RPC ports (`watch._rpc.Client.tags` and `.event`,
no `serf` process per command): tag changes round-robin over the web agents, non-coalesced
user events from `lb`, and web agents joining and leaving, all at once. Afterwards HAProxy's
live servers must equal the alive web members, each with its member's weight; and every user
event sent must be either run by the slow handler or counted as dropped in the watcher's
log ("records queued ... N user event(s) or query(ies) dropped"): nothing lost silently.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serf_handlers.errors import SerfRPCError
from serf_handlers.watch._inbox import Inbox
from serf_handlers.watch._rpc import Client
from support.admin import live_servers
from support.processes import Agent, Processes, free_port, wait_until
from support.site import Site

SLOW_PLUGIN = '''"""A handler slower than the storm (bench/watch_storm.py)."""
import os
import time

RAN = os.environ["STORM_RAN"]


def slow(event):
    time.sleep(float(os.environ.get("STORM_SLEEP", "0.05")))
    if event.type == "user":
        with open(RAN, "a") as file:
            file.write(event.payload.decode() + "\\n")
'''
STABLE = 3.0  # s after convergence before the final comparison
MEMBER_EVENTS = ["member-join", "member-leave", "member-failed", "member-update", "member-reap"]


class StormSite:
    """HAProxy, the `lb` agent and the watcher (with the slow plugin) in `procs`' directory."""

    def __init__(self, procs: Processes, serf_handle: str, max_queue: int, sleep: float = 0.05) -> None:
        self.procs = procs
        work = procs.workdir
        (work / "slow_plugin.py").write_text(SLOW_PLUGIN)
        self.ran = work / "ran"
        self.site = Site(work, serf_handle=serf_handle,
                         log={"level": "debug", "format": "json", "file": str(work / "watch.jsonl")})
        self.site.more_handlers = [{"type": "slow_plugin:slow", "events": [*MEMBER_EVENTS, "user:storm"]}]
        path = os.pathsep.join(p for p in (str(work), os.environ.get("PYTHONPATH", "")) if p)
        self.site.extra_env = {"PYTHONPATH": path, "STORM_RAN": str(self.ran), "STORM_SLEEP": str(sleep)}
        self.site.serve(procs, "runtime")
        self.lb = Agent(procs, "lb", {"role": "lb"}, log_level="info")
        self.site.agent = self.lb
        env = self.site.env(None)
        argv = [serf_handle, "--config", str(self.site.yml), "watch", "--rpc-addr", self.lb.rpc,
                "--max-queue", str(max_queue)]
        self.watch = procs.start("watch", argv, env=env)
        wait_until(lambda: self.logged("connected to the serf agent"), timeout=20, what="the watcher connected")
        self.webs: dict[str, Agent] = {}

    def add_web(self, name: str, wait: bool = True) -> Agent:
        agent = Agent(self.procs, name, {"role": "web", "port": str(free_port()), "weight": "1"}, join=self.lb,
                      log_level="info", wait=wait)
        self.webs[name] = agent
        return agent

    def logged(self, text: str) -> list[str]:
        return [str(r["message"]) for r in self.site.records() if text in str(r["message"])]

    def members(self) -> dict[str, str]:
        """The alive web members, by name: their weight tag."""
        out = self.lb.serf("members", "-status", "alive", "-tag", "role=web", "-format", "json").stdout
        return {m["name"]: m["tags"].get("weight", "1") for m in json.loads(out)["members"] or []}

    def live(self) -> dict[str, str]:
        """HAProxy's live servers, by name: their weight."""
        return {name: row[2] for name, row in live_servers(self.site.admin_socket).items()}

    def collapses(self) -> dict[str, int]:
        lines = self.logged("records queued (the handlers are behind)")
        members = sum(int(m) for line in lines for m in re.findall(r"(\d+) member record\(s\) collapsed", line))
        others = sum(int(m) for line in lines for m in re.findall(r"(\d+) user event\(s\) or query", line))
        return {"lines": len(lines), "member_records": members, "user_dropped": others,
                "reconciles": len(self.logged("reconciled (the queue overflowed)"))}

    def user_events_run(self) -> int:
        return len(self.ran.read_text().splitlines()) if self.ran.exists() else 0


def storm(s: StormSite, seconds: float, joins: list[str], leaves: list[str], user_rate: float,
          tag_rate: float) -> dict[str, int]:
    """Tag changes, user events, joins and leaves at once for `seconds`; what was sent."""
    sent = {"tags": 0, "user": 0, "joins": 0, "leaves": 0}
    stop = threading.Event()
    clients = {name: _client(agent) for name, agent in s.webs.items() if name not in leaves}
    lb = _client(s.lb)
    weights = iter(range(2, 1_000_000))

    count = threading.Lock()

    def tags(client: Client) -> None:  # one thread per agent: Serf's `tags` waits for its broadcast (0.4-0.8 s)
        while not stop.is_set():
            with count:
                weight = str(next(weights) % 200 + 2)
                sent["tags"] += 1
            try:
                client.tags({"weight": weight})
            except SerfRPCError as exc:
                # "timeout waiting for update broadcast" (memberlist's UpdateNode) under the storm:
                # the agent set the tags and queued their broadcast, it only stopped waiting for it.
                if "update broadcast" not in str(exc):
                    raise
            stop.wait(1 / tag_rate)

    def users() -> None:
        while not stop.is_set():
            lb.event("storm", str(sent["user"]).encode())
            sent["user"] += 1
            stop.wait(1 / user_rate)

    threads = [threading.Thread(target=users, daemon=True)]
    threads += [threading.Thread(target=tags, args=(client,), daemon=True) for client in clients.values()]
    try:
        for thread in threads:
            thread.start()
        _churn(s, seconds, joins, leaves, sent)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        for client in (*clients.values(), lb):
            client.close()
    return sent


def _churn(s: StormSite, seconds: float, joins: list[str], leaves: list[str], sent: dict[str, int]) -> None:
    """Joins and leaves spread over the storm."""
    def join(name: str) -> Callable[[], None]:
        def step() -> None:
            s.add_web(name, wait=False)

        return step

    def leave(name: str) -> Callable[[], None]:
        return lambda: s.webs[name].leave(wait=False)

    steps = [*map(join, joins), *map(leave, leaves)]
    began = time.monotonic()
    for i, step in enumerate(steps):
        time.sleep(max(0.0, began + seconds * (i + 1) / (len(steps) + 1) - time.monotonic()))
        step()
        sent["joins" if i < len(joins) else "leaves"] += 1
    time.sleep(max(0.0, began + seconds - time.monotonic()))


def _client(agent: Agent) -> Client:
    client = Client(agent.rpc, Inbox(), 1)
    client.open(agent.rpc_auth)
    return client


def run(serf_handle: str, workdir: Path, webs: int = 6, seconds: float = 10.0, max_queue: int = 8,
        user_rate: float = 100.0, tag_rate: float = 10.0) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    procs = Processes(workdir)
    try:
        s = StormSite(procs, serf_handle, max_queue)
        for n in range(1, webs + 1):
            s.add_web(f"web{n}")
        wait_until(lambda: set(s.live()) == set(s.webs), timeout=30, what=f"{webs} web nodes live")
        joins, leaves = [f"web{webs + 1}", f"web{webs + 2}"], ["web1", "web2"]
        began = time.monotonic()
        sent = storm(s, seconds, joins, leaves, user_rate, tag_rate)
        ended = time.monotonic()
        converged = settle(s)
        time.sleep(STABLE)  # still equal a while later: nothing was pending
        return {"sent": sent, "seconds": ended - began, "converged_after": converged - ended,
                "members": s.members(), "live": s.live(), "collapses": s.collapses(),
                "user_run": s.user_events_run(), "max_queue": max_queue, "webs": webs}
    finally:
        procs.stop_all(together=True)


def settle(s: StormSite, timeout: float = 60.0) -> float:
    """When the leaving agents have gone and HAProxy's live servers (with their weights)
    equal the alive members: monotonic time."""
    wait_until(lambda: not any(a.proc.poll() is None for a in s.webs.values() if a.leaving), timeout=timeout,
               what="the leaving agents gone")
    wait_until(lambda: s.live() == s.members(), timeout=timeout, interval=0.1, what="live = members after the storm")
    return time.monotonic()


def format_storm(r: dict[str, Any]) -> list[str]:
    sent, c = r["sent"], r["collapses"]
    same = r["live"] == r["members"]
    unaccounted = sent["user"] - r["user_run"] - c["user_dropped"]
    return [
        f"**An event storm faster than the handlers**, real agents: `serf-handle watch --max-queue {r['max_queue']}` "
        "with the haproxy handler (runtime API) and a plugin that sleeps 50 ms on every member event and every "
        f"`storm` user event; {r['webs']} web agents, then for {r['seconds']:.0f} s at once: tag changes on every "
        "web agent (`weight`, through each agent's RPC `tags`), non-coalesced user events from `lb` (its RPC "
        "`event`), two joins and two graceful leaves.\n",
        "| events sent | tag changes | user events | joins | leaves | collapses logged | member records collapsed "
        "| user events run | user events dropped (logged) | live = members, s after the storm |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {sum(sent.values())} | {sent['tags']} | {sent['user']} | {sent['joins']} | {sent['leaves']} "
        f"| {c['lines']} | {c['member_records']} | {r['user_run']} | {c['user_dropped']} "
        f"| {r['converged_after']:.1f} |",
        "",
        f"- After the storm HAProxy's live servers {'equal' if same else '**differ from**'} the alive web members, "
        f"names and weights ({len(r['live'])} servers; compared again {STABLE:g} s after they first matched); "
        f"{c['reconciles']} reconcile(s) after a collapse. Of {sent['user']} user events {r['user_run']} ran and "
        f"{c['user_dropped']} were dropped with a log line: "
        + ("every one accounted for." if unaccounted == 0 else f"**{unaccounted} unaccounted for**."),
    ]
