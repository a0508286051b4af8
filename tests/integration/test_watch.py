"""`serf-handle watch` with real serf agents and a real HAProxy (runtime API) on loopback.

The load balancer's agent runs no -event-handler: one `serf-handle watch` process reads its
RPC stream. What counts is HAProxy's own live state (`show servers state`) against the
agent's alive members, and traffic through HAProxy; never our state file.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from bench.watch_drain import rpc_storm
from bench.watch_storm import STABLE, StormSite, settle, storm
from serf_handlers._files import Lock
from support.admin import live_servers
from support.load import Load
from support.processes import SERF_HANDLE, Agent, Processes, require, wait_until
from support.site import Site, bodies

pytestmark = pytest.mark.integration


class Watched:
    """HAProxy (runtime API), a serf agent `lb` without an event handler, and `serf-handle
    watch` on it; web nodes with `add_web`."""

    def __init__(self, procs: Processes, max_queue: int | None = None, more_handlers: Sequence[dict[str, object]] = (),
                 **top: object) -> None:
        require("serf", "haproxy", "nginx")
        self.procs = procs
        log = {"level": "debug", "format": "json", "file": str(procs.workdir / "w.jsonl")}
        self.site = Site(procs.workdir, log=log)
        self.site.more_handlers = list(more_handlers)
        self.top = top
        self.site.serve(procs, "runtime")
        self.write_config()
        self.lb = Agent(procs, "lb", {"role": "lb"})
        self.site.agent = self.lb
        self.argv = [SERF_HANDLE, "--config", str(self.site.yml), "watch", "--rpc-addr", self.lb.rpc]
        if max_queue is not None:
            self.argv += ["--max-queue", str(max_queue)]
        self.proc = procs.start("watch", self.argv, env=self.site.env(None))
        wait_until(lambda: self.logged("connected to the serf agent"), what="the watcher connected")

    def write_config(self) -> None:
        """The site's config (JSON, which YAML reads), with the top-level `wait` etc. added."""
        self.site.write_yml()
        data = json.loads(self.site.yml.read_text())
        data.update(self.top)
        self.site.yml.write_text(json.dumps(data) + "\n")

    def live(self) -> set[str]:
        return set(live_servers(self.site.admin_socket))

    def webs(self) -> set[str]:
        out = self.lb.serf("members", "-status", "alive", "-tag", "role=web", "-format", "json").stdout
        return {m["name"] for m in json.loads(out)["members"] or []}

    def converged(self) -> bool:
        return self.live() == self.webs()

    def records(self) -> list[dict[str, object]]:
        return self.site.records()

    def logged(self, text: str) -> list[str]:
        return [str(r["message"]) for r in self.records() if text in str(r["message"])]


@pytest.fixture
def watched(short_procs: Processes) -> Watched:
    return Watched(short_procs)


def test_joins_leaves_failures_and_tag_changes_reach_haproxy_under_load(watched: Watched) -> None:
    w = watched
    w.site.add_web("web1", "body1")
    wait_until(lambda: w.live() == {"web1"}, what="the first join in HAProxy")
    with Load(w.site.port, rate=40, seconds=120) as load:
        for n in (2, 3):
            w.site.add_web(f"web{n}", f"body{n}")
        wait_until(lambda: w.live() == {"web1", "web2", "web3"}, what="three joins in HAProxy")
        wait_until(lambda: bodies(w.site) == {"body1", "body2", "body3"}, what="traffic to all three")
        w.site.webs["web3"].serf("tags", "-set", "weight=7")
        wait_until(lambda: live_servers(w.site.admin_socket)["web3"][2] == "7", what="the tag change, live")
        w.site.webs["web2"].leave()
        wait_until(lambda: w.live() == {"web1", "web3"}, what="the leave in HAProxy")
        time.sleep(0.5)
        load.stop()
    assert load.failures == [], load.failures[:5]
    assert load.ok > 20
    w.site.webs["web1"].crash()  # kill -9: member-failed after serf's failure detection
    wait_until(lambda: w.live() == {"web3"}, timeout=40, what="the failure in HAProxy")
    assert w.converged()
    # The state lock is shared: the other commands work alongside the watcher.
    status = w.site.run(None, args=["status"])
    assert status.returncode == 0, status.stderr
    assert b"web3" in status.stdout
    reconcile = w.site.run(None, args=["reconcile", "--rpc-addr", w.lb.rpc])
    assert reconcile.returncode == 0, reconcile.stderr
    assert w.proc.poll() is None


def test_a_query_is_answered_through_respond(watched: Watched) -> None:
    w = watched
    web = w.site.add_web("web1", "body1")
    wait_until(lambda: w.live() == {"web1"}, what="web1 in HAProxy")
    done = web.serf("query", "-format", "json", "-node", "lb", "-timeout", "3s", "backends", "digest")
    assert json.loads(done.stdout)["Responses"]["lb"].startswith("digest=")
    drained = web.serf("query", "-format", "json", "-node", "lb", "-timeout", "3s", "backends", "drained web1")
    assert json.loads(drained.stdout)["Responses"]["lb"].startswith("drained=no")


def test_a_drain_storm_is_answered_in_full_within_serfs_timeout(watched: Watched) -> None:
    """Many `drained web1` queries at once, through one RPC connection of web1's agent (one
    connection: Serf gives concurrent queries of one agent the same LTime and then drops one
    of their answers, see bench/watch_drain.py): every one answered by lb, none refused."""
    w = watched
    web = w.site.add_web("web1", "body1")
    wait_until(lambda: w.live() == {"web1"}, what="web1 in HAProxy")
    storm = rpc_storm(web.rpc, 40)
    assert storm["unfinished"] == 0
    assert (storm["answered"], storm["payloads"]) == (40, ["drained=no"])
    assert max(storm["to_answer"]) < storm["timeout"] * 1000
    assert w.logged("reply not sent") == []


def test_the_agent_restarted_while_members_change(watched: Watched) -> None:
    w = watched
    for n in (1, 2):
        w.site.add_web(f"web{n}", f"body{n}")
    wait_until(lambda: w.live() == {"web1", "web2"}, what="two servers")
    argv = [str(a) for a in w.lb.proc.args]  # type: ignore[union-attr]  # Popen.args: a list here
    w.lb.crash()
    # While the agent is down: web2 leaves, web3 joins (through web1). No event reaches us.
    w.site.webs["web2"].leave()
    w.site.agent = w.site.webs["web1"]
    w.site.add_web("web3", "body3")
    w.lb.proc = w.procs.start("serf-lb-again", [*argv, "-join", f"127.0.0.1:{w.site.webs['web1'].bind}"])
    w.lb.wait_ready()
    back = time.monotonic()
    wait_until(lambda: w.live() == {"web1", "web3"} and w.converged(), timeout=10, what="HAProxy = members")
    assert time.monotonic() - back < 5
    lost = w.logged("lost the serf agent")
    assert len(lost) == 1 and "events until then are lost" in lost[0]
    assert len(w.logged("is back after")) == 1
    assert w.proc.poll() is None


def test_sighup_with_a_broken_config_keeps_serving_and_sigterm_exits_0(watched: Watched) -> None:
    w = watched
    good = w.site.yml.read_text()
    w.site.yml.write_text("handlers: [ {type: haproxy\n")  # broken YAML
    w.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: w.logged("SIGHUP"), what="the SIGHUP line")
    [line] = w.logged("SIGHUP")
    assert line.startswith("watch: SIGHUP: config not reloaded, the running one stays: ")
    assert "invalid YAML" in line
    w.site.add_web("web1", "body1")
    wait_until(lambda: w.live() == {"web1"}, what="still serving: the join applied")
    w.site.yml.write_text(good)
    w.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: w.logged("config reloaded"), what="the good config read")
    started = time.monotonic()
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(5) == 0
    assert time.monotonic() - started < 5
    assert w.logged("stopped")


def test_a_storm_past_the_bound_collapses_into_a_reconcile_and_ends_correct(short_procs: Processes) -> None:
    w = Watched(short_procs, max_queue=4, more_handlers=[{"type": "log", "events": ["user:storm"]}])
    w.site.add_web("web1", "body1")
    wait_until(lambda: w.live() == {"web1"}, what="web1")
    # Hold the haproxy handler's lock, as a long `serf-handle reconcile` would: its next run waits.
    with Lock(f"{w.site.state}.lock"):
        w.site.add_web("web2", "body2")
        wait_until(lambda: [r for r in w.records() if r["message"] == "watch: member-join" and r["members"] == "web2"],
                   what="the watcher running web2's join, stuck on the lock")
        for n in (3, 4):
            w.site.add_web(f"web{n}", f"body{n}")
        w.site.webs["web1"].leave()
        time.sleep(4)  # Serf's own coalescing sends the member records (1 s quiet, 3 s at most): queued
        for n in range(30):
            w.lb.serf("event", "-coalesce=false", "storm", str(n))
        time.sleep(0.5)
    wait_until(w.converged, timeout=20, what="HAProxy = members after the storm")
    assert w.live() == {"web2", "web3", "web4"}
    [line] = w.logged("records queued")
    assert line.startswith("watch: more than 4 records queued (the handlers are behind): ")
    assert "member record(s) collapsed into one reconcile" in line
    assert "user event(s) or query(ies) dropped" in line
    assert w.logged("reconciled (the queue overflowed)")
    assert w.proc.poll() is None


def test_wait_coalesces_a_burst_into_one_run(short_procs: Processes) -> None:
    w = Watched(short_procs, wait={"min": "1500ms", "max": "6s"})
    for n in (1, 2, 3):
        w.site.add_web(f"web{n}", f"body{n}")
    wait_until(lambda: w.live() == {"web1", "web2", "web3"}, timeout=20, what="the burst applied")
    runs = [r for r in w.records() if r["message"] == "watch: member-join"]
    assert len(runs) <= 2, runs  # three agents started ~1 s apart: one window (two at most)
    assert any("," in str(r["members"]) for r in runs), runs  # members merged into one run


def test_rpc_auth_from_the_environment(short_procs: Processes, tmp_path: Path) -> None:
    require("serf")
    agent_config = tmp_path / "auth.json"
    agent_config.write_text(json.dumps({"rpc_auth": "s3cret"}))
    lb = Agent(short_procs, "lb", {"role": "lb"}, extra=["-config-file", str(agent_config)], rpc_auth="s3cret")
    config = tmp_path / "config.yml"
    log = tmp_path / "log.jsonl"
    config.write_text(f"log: {{level: info, format: json, file: {log}}}\nhandlers: [{{type: log}}]\n")
    env = {"SERF_RPC_ADDR": lb.rpc, "SERF_RPC_AUTH": "s3cret", "PATH": "/usr/bin:/bin"}
    proc = short_procs.start("watch-auth", [SERF_HANDLE, "--config", str(config), "watch"], env=env)
    wait_until(lambda: log.exists() and "connected to the serf agent" in log.read_text(), what="connected")
    Agent(short_procs, "web1", {"role": "web"}, join=lb)
    wait_until(lambda: '"name": "web1"' in log.read_text(), what="web1's join logged by the log handler")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 0
    bad = subprocess.run([SERF_HANDLE, "--config", str(config), "watch", "--rpc-addr", lb.rpc, "--rpc-auth", "nope"],
                         capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert bad.returncode == 2
    assert bad.stderr == f"serf-handle: error: serf agent at {lb.rpc}: 'auth': Invalid authentication token\n"


def test_an_event_storm_faster_than_the_handlers_loses_nothing(short_procs: Processes) -> None:
    # A plugin sleeping 50 ms per event, a queue bound of 8, and for 6 s: tag changes on every
    # web agent, 100 user events a second, a join and a leave (bench/watch_storm.py, section 11).
    s = StormSite(short_procs, SERF_HANDLE, max_queue=8)
    for n in range(1, 5):
        s.add_web(f"web{n}")
    wait_until(lambda: set(s.live()) == set(s.webs), timeout=30, what="four web nodes live")
    sent = storm(s, 6.0, joins=["web5"], leaves=["web1"], user_rate=100, tag_rate=10)
    assert sent["tags"] >= 20 and sent["user"] >= 300, sent
    settle(s, timeout=30)
    time.sleep(STABLE)
    members = s.members()
    assert set(members) == {"web2", "web3", "web4", "web5"}
    assert s.live() == members  # names and weights: HAProxy's own view
    collapsed = s.collapses()
    assert collapsed["lines"] >= 1, collapsed
    assert collapsed["reconciles"] >= (1 if collapsed["member_records"] else 0), collapsed
    # Every user event either ran or was counted in a log line: none lost silently.
    assert s.user_events_run() + collapsed["user_dropped"] == sent["user"], (s.user_events_run(), collapsed, sent)
    assert s.watch.poll() is None
