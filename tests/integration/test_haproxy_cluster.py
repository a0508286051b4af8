"""The haproxy handler with real processes on loopback: serf agents, HAProxy in master-worker
mode (`-W -db`, reloaded with USR2 of the master pid from its `-p` pidfile) and nginx with a
distinct body per web node.

Two load balancers, each shared by the tests of its mode (module-scoped, stopped by PID in
a finalizer even when a test fails):
- `reload_lb`: no admin socket, every change is a config rewrite plus a USR2 reload;
- `live_lb`: admin socket set, changes go through the runtime API and must cause no reload.
The tests of one mode run in file order and each adds its own nodes, so each checks the
bodies it expects to see (or not) rather than the exact set.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.background import Background
from support.processes import SERF_HANDLE, Processes, free_port, start_nginx, wait_until
from support.site import Site, bodies, load_balancer

pytestmark = pytest.mark.integration

def _start(tmp_path_factory: pytest.TempPathFactory, name: str, live: bool) -> Iterator[Site]:
    procs = Processes(tmp_path_factory.mktemp(name))
    try:
        yield load_balancer(procs, live)
    finally:
        procs.stop_all(together=True)  # all at once, no graceful leaves


@pytest.fixture(scope="module")
def reload_lb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from _start(tmp_path_factory, "hx-reload", live=False)


@pytest.fixture(scope="module")
def live_lb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from _start(tmp_path_factory, "hx-live", live=True)


# --- reload mode -----------------------------------------------------------------------


def test_three_nodes_join_and_traffic_reaches_all_three(reload_lb: Site) -> None:
    lb = reload_lb
    for i in (1, 2, 3):
        lb.add_web(f"web{i}", f"body-web{i}")
    wait_until(lambda: {"body-web1", "body-web2", "body-web3"} <= bodies(lb), timeout=20, what="all three served")
    assert lb.reload_count() >= 1
    assert {"web1", "web2", "web3"} <= lb.state_nodes()
    # Every load balancer's view, through Serf.
    answer = json.loads(lb.agent.serf("query", "-format", "json", "-tag", "role=lb", "backends").stdout)
    reply = answer["Responses"]["lb"]
    assert reply.startswith("web: ") and all(f"web{i}=127.0.0.1:" in reply for i in (1, 2, 3))
    status = subprocess.run([SERF_HANDLE, "status", "--config", str(lb.yml)], capture_output=True, text=True)
    assert status.returncode == 0 and "web1" in status.stdout and "ready" in status.stdout


def test_graceful_leave_and_kill_9_remove_a_node_each(reload_lb: Site) -> None:
    lb = reload_lb
    leaver = lb.add_web("leaver", "body-leaver")
    crasher = lb.add_web("crasher", "body-crasher")
    wait_until(lambda: {"body-leaver", "body-crasher"} <= bodies(lb), timeout=20, what="both served")
    leaver.leave()
    wait_until(lambda: "body-leaver" not in bodies(lb), timeout=15, what="the leaver removed")
    crasher.crash()  # its nginx keeps answering: only member-failed can remove it
    started = time.monotonic()
    wait_until(lambda: "crasher" not in lb.state_nodes(), timeout=30, what="member-failed")
    assert time.monotonic() - started > 3  # it really was Serf's failure detection
    wait_until(lambda: "body-crasher" not in bodies(lb), timeout=5, what="the crasher out of traffic")
    assert {"body-web1", "body-web2", "body-web3"} <= bodies(lb)


def test_port_tag_update_moves_a_server(reload_lb: Site) -> None:
    lb = reload_lb
    mover = lb.add_web("mover", "body-mover-a")
    wait_until(lambda: "body-mover-a" in bodies(lb), timeout=20, what="mover served on its first port")
    second = free_port()
    start_nginx(lb.procs, "body-mover-b", second, "body-mover-b")
    mover.serf("tags", "-set", f"port={second}")
    wait_until(lambda: "body-mover-b" in bodies(lb), timeout=15, what="mover served on its new port")
    assert "body-mover-a" not in bodies(lb)
    assert f"127.0.0.1:{second} " in lb.config.read_text()


def test_hostile_node_name_is_served_safely(reload_lb: Site) -> None:
    lb = reload_lb
    name = "evil\nserver x 6.6.6.6:80 #;/{{ 7*7 }}"
    lb.add_web(name, "body-hostile")
    wait_until(lambda: "body-hostile" in bodies(lb), timeout=20, what="the hostile node served")
    text = lb.config.read_text()
    assert "6.6.6.6:80" not in text and "{{" not in text and "#;" not in text
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("server evil")]
    assert len(lines) == 1 and lines[0].startswith("server evil_server_x_6.6.6.6_80_____")
    assert name in lb.state_nodes()
    check = subprocess.run(["haproxy", "-c", "-f", str(lb.config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_template_failing_validation_changes_nothing(reload_lb: Site) -> None:
    lb = reload_lb
    from serf_handlers.handlers.haproxy._jinja import BUILTIN_TEMPLATE

    good = Path(BUILTIN_TEMPLATE).read_text()
    bad = lb.dir / "bad.cfg.j2"
    bad.write_text(good.replace("{{ server.options }}", "{{ server.options }} frobnicate"))
    installed, reloads = lb.config.read_bytes(), lb.reload_count()
    lb.write_yml(template=bad)
    lb.add_web("blocked", "body-blocked")
    wait_until(
        lambda: any("frobnicate" in str(r.get("message", "")) for r in lb.records()),
        timeout=20,
        what="the handler to report HAProxy's rejection",
    )
    assert lb.config.read_bytes() == installed
    assert lb.reload_count() == reloads
    assert "body-blocked" not in bodies(lb) and {"body-web1", "body-web2"} <= bodies(lb)
    # Rejected candidates are removed (one may exist for a moment while a later event runs).
    wait_until(lambda: not [p for p in lb.dir.iterdir() if p.name.endswith(".tmp")], timeout=5, what="no candidate")
    # Fixed: the next event brings in the member whose event failed.
    lb.write_yml(template=None)
    lb.webs["web1"].serf("tags", "-set", "touch=1")
    wait_until(lambda: "body-blocked" in bodies(lb), timeout=15, what="the blocked node after the fix")


def test_reconcile_after_the_state_file_was_deleted(reload_lb: Site) -> None:
    lb = reload_lb
    wait_until(lambda: lb.agent.alive_names() - {"lb"} <= lb.state_nodes(), what="the state to settle")
    alive = lb.agent.alive_names() - {"lb"}
    installed, reloads = lb.config.read_bytes(), lb.reload_count()
    lb.state.unlink()
    done = subprocess.run(
        [SERF_HANDLE, "reconcile", "--config", str(lb.yml), "--rpc-addr", lb.agent.rpc],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert lb.state_nodes() == alive
    assert lb.config.read_bytes() == installed and lb.reload_count() == reloads
    assert {"body-web1", "body-web2", "body-web3", "body-mover-b"} <= bodies(lb)


# --- runtime API mode ------------------------------------------------------------------


class RequestStream(Background):
    """A bounded stream of keep-alive requests through HAProxy, in a thread, counting failures."""

    def __init__(self, port: int, limit: int = 200_000) -> None:
        super().__init__(f"requests-{port}")
        self.port = port
        self.limit = limit
        self.ok = 0
        self.failures: list[str] = []
        self.seen: set[str] = set()

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=3)
        for _ in range(self.limit):
            if self._stop.is_set():
                break
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read().decode().strip()
                if response.status != 200:
                    self.failures.append(f"HTTP {response.status}")
                else:
                    self.ok += 1
                    self.seen.add(body)
                if response.will_close:
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                conn.close()
        conn.close()


def test_runtime_api_ten_membership_changes_zero_reloads_no_failed_request(live_lb: Site) -> None:
    lb = live_lb
    lb.add_web("base1", "body-base1")
    lb.add_web("base2", "body-base2")
    wait_until(lambda: {"body-base1", "body-base2"} <= bodies(lb), timeout=20, what="the base nodes served")
    assert lb.reload_count() == 0

    def served(body: str, present: bool = True) -> None:
        wait_until(lambda: (body in bodies(lb, 16)) == present, timeout=30, what=f"{body} present={present}")

    with RequestStream(lb.port) as stream:
        changes = 0
        for i in (1, 2, 3):
            lb.add_web(f"churn{i}", f"body-churn{i}")  # join
            served(f"body-churn{i}")
            changes += 1
        lb.webs["churn1"].leave()  # graceful leave: drain, maint, del
        served("body-churn1", present=False)
        changes += 1
        moved = free_port()
        start_nginx(lb.procs, "body-churn2-moved", moved, "body-churn2-moved")
        lb.webs["churn2"].serf("tags", "-set", f"port={moved}")  # update: set server addr
        served("body-churn2-moved")
        changes += 1
        lb.webs["churn3"].serf("tags", "-set", "weight=3")  # update: set weight
        wait_until(lambda: json.loads(lb.state.read_text())["servers"]["churn3"]["weight"] == 3, timeout=15,
                   what="the weight update")
        changes += 1
        lb.webs["churn2"].leave()
        served("body-churn2-moved", present=False)
        changes += 1
        lb.add_web("churn1", "body-churn1-again")  # the same name rejoins
        served("body-churn1-again")
        changes += 1
        lb.webs["churn3"].leave()
        served("body-churn3", present=False)
        changes += 1
        lb.add_web("churn4", "body-churn4")
        served("body-churn4")
        changes += 1
        time.sleep(1)  # the stream keeps going after the last change
    assert changes == 10
    assert lb.reload_count() == 0, "a membership change reloaded HAProxy"
    assert stream.failures == [], stream.failures[:5]
    assert stream.ok > 100 and {"body-base1", "body-base2", "body-churn4"} <= stream.seen
    installed = lb.config.read_text()  # rewritten all along, so a reload would keep the same servers
    assert "churn4" in installed and "churn3" not in installed and "base1" in installed
    records = [r for r in lb.records() if r.get("message") == "haproxy: servers changed through the runtime API"]
    assert len(records) >= 10
