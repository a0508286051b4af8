"""Issue 11, operating live traffic through Serf: a node drained, put in maintenance and made
ready again from its own `state` tag, an invalid `state` tag, HTTP health checks
(`check_path`) and `weight=0` as a soft drain.

Real serf agents, HAProxy 2.6 in master-worker mode with its admin socket (runtime-API mode)
and nginx on loopback, under a light bounded load (`support.load.Load`: 50 requests a second,
each on a fresh connection, so every request is balanced on its own; failed requests are
counted). Reloads are counted with the site's one reload counter (`Site.reload_count`).
What counts is HAProxy's own live state (`show servers state` on the admin socket) and the
traffic each node gets, never the handler's state file alone. The cluster helpers of
test_haproxy_convergence.py are reused.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from support.load import Load
from support.processes import Processes, set_healthy, wait_until
from support.site import Site
from tests.integration.test_haproxy_convergence import (
    brief,
    converged,
    live,
    mark,
    next_run,
    reload_haproxy_by_hand,
    start_lb,
    status,
    web_tags,
)

pytestmark = pytest.mark.integration

# HAProxy's admin state bits (`enum srv_admin`) and operational states (`enum srv_state`).
ADMIN_MAINT = 0x23  # forced, inherited, or unresolvable address
ADMIN_DRAIN = 0x18  # forced or inherited
RUNNING = "2"


@pytest.fixture
def procs(short_procs: Processes) -> Processes:
    return short_procs  # see conftest.py


def admin_state(lb: Site, name: str) -> str:
    """HAProxy's administrative state of web/`name`, in `set server ... state` words
    ("missing" if HAProxy has no such server)."""
    row = live(lb).get(name)
    if row is None:
        return "missing"
    bits = int(row["srv_admin_state"])
    return "maint" if bits & ADMIN_MAINT else "drain" if bits & ADMIN_DRAIN else "ready"


def is_up(lb: Site, name: str) -> bool:
    return live(lb).get(name, {}).get("srv_op_state") == RUNNING


def timed(predicate: Callable[[], object], what: str, timeout: float = 15) -> float:
    """Seconds until `predicate` holds (fails after `timeout`)."""
    started = time.monotonic()
    wait_until(predicate, timeout=timeout, interval=0.05, what=what)
    return time.monotonic() - started


def requests_to(load: Load, body: str, seconds: float) -> int:
    """How many requests the node answering `body` got in the next `seconds`."""
    before = load.seen[body]
    time.sleep(seconds)
    return load.seen[body] - before


def serves(load: Load, body: str) -> Callable[[], bool]:
    """A predicate: the node answering `body` got a request since the predicate was made."""
    before = load.seen[body]
    return lambda: load.seen[body] > before


# --- a. drain, maint, ready from the node's own tag ----------------------------------------


def test_drain_then_maint_then_ready_from_the_nodes_own_tag(procs: Processes) -> None:
    lb = start_lb(procs)
    reloads = lb.reload_count()
    web3 = lb.webs["web3"]
    timings: dict[str, float] = {}
    with Load(lb.port, rate=50, seconds=120) as load:
        wait_until(serves(load, "body-web3"), timeout=5, what="web3 getting traffic")

        web3.serf("tags", "-set", "state=drain")
        timings["drain"] = timed(lambda: admin_state(lb, "web3") == "drain", "web3 drained in HAProxy")
        rows = live(lb)
        assert rows["web3"]["srv_admin_state"] == "8", f"want forced drain (0x08): {brief(rows)}"
        assert rows["web3"]["srv_uweight"] == "1", f"drain keeps the weight: {brief(rows)}"
        time.sleep(0.2)  # a request balanced just before the change may still be answered
        drained = requests_to(load, "body-web3", 2)
        code, shown = status(lb)
        assert code == 0, f"status with web3 drained (exit {code}):\n{shown}"
        line = next(line for line in shown.splitlines() if " web3 " in f" {line} ")
        assert "drain (tag)" in line and "drain UP" in line, shown

        web3.serf("tags", "-set", "state=maint")
        timings["maint"] = timed(lambda: admin_state(lb, "web3") == "maint", "web3 in maintenance in HAProxy")
        maint = requests_to(load, "body-web3", 2)

        web3.serf("tags", "-delete", "state")
        timings["ready"] = timed(lambda: admin_state(lb, "web3") == "ready" and is_up(lb, "web3"),
                                 "web3 ready and UP in HAProxy")
        timings["served"] = timings["ready"] + timed(serves(load, "body-web3"), "web3 getting traffic again", 5)
        others = {body: load.seen[body] for body in ("body-web1", "body-web2")}
        time.sleep(0.5)
    print(
        f"\ndrain/maint/ready: live after the tag change: drain {timings['drain']:.2f} s, maint "
        f"{timings['maint']:.2f} s, ready {timings['ready']:.2f} s (served {timings['served']:.2f} s); web3 got "
        f"{drained} requests while drained, {maint} in maintenance; {len(load.failures)} of {load.requests} "
        f"requests failed; reloads {lb.reload_count() - reloads}"
    )
    assert drained == 0, f"web3 got {drained} new requests in 2 s while drained"
    assert maint == 0, f"web3 got {maint} requests in 2 s in maintenance"
    assert all(others.values()), f"web1 and web2 kept serving: {others}"
    assert converged(lb), brief(live(lb))
    assert load.failures == [], f"{len(load.failures)} of {load.requests} requests failed: {load.failures[:5]}"
    assert lb.reload_count() == reloads, "a state change reloaded HAProxy"


def test_a_manual_reload_keeps_a_drained_server_drained(procs: Processes) -> None:
    lb = start_lb(procs)
    reloads = lb.reload_count()
    with Load(lb.port, rate=50, seconds=120) as load:
        lb.webs["web3"].serf("tags", "-set", "state=drain")
        wait_until(lambda: admin_state(lb, "web3") == "drain", timeout=15, what="web3 drained in HAProxy")
        before = brief(live(lb))
        server_line = next(line for line in lb.server_lines() if line.startswith("server web3 "))

        reload_haproxy_by_hand(lb)  # the README's `kill -USR2 <master>`: no handler involved
        time.sleep(1)  # the new worker's first health checks
        after = live(lb)
        got = requests_to(load, "body-web3", 2)
        code, shown = status(lb)
    state_file = lb.config.with_name(lb.config.name + ".state")
    saved = state_file.read_text() if state_file.exists() else "(none)"
    print(f"\nmanual reload while drained: before {before['web3']}, after {brief(after).get('web3')}; "
          f"web3 got {got} requests after it; config: {server_line!r}")
    assert admin_state(lb, "web3") == "drain", (
        f"after `kill -USR2 <master>` web3 is {brief(after).get('web3')} (want admin=8, drain; before the reload: "
        f"{before['web3']}); its config line: {server_line!r}; {state_file.name}: {saved!r}"
    )
    assert got == 0, f"web3 got {got} new requests after the reload"
    assert code == 0, f"status after the manual reload (exit {code}: HAProxy differs from the state):\n{shown}"
    assert load.failures == [], f"{len(load.failures)} of {load.requests} requests failed: {load.failures[:5]}"
    assert lb.reload_count() == reloads


# --- b. an invalid state tag ---------------------------------------------------------------


def test_an_invalid_state_tag_skips_only_that_node_which_keeps_its_last_valid_form(procs: Processes) -> None:
    lb = start_lb(procs)
    reloads = lb.reload_count()
    with Load(lb.port, rate=50, seconds=120) as load:
        start = mark(lb)
        lb.webs["web3"].serf("tags", "-set", "state=drain")
        assert next_run(lb, start, "member-update").code == 0
        wait_until(lambda: admin_state(lb, "web3") == "drain", timeout=5, what="web3 drained")

        start = mark(lb)
        lb.webs["web3"].serf("tags", "-set", "state=bogus")
        bad = next_run(lb, start, "member-update")
        errors = [line for line in bad.stderr if line.strip()]
        assert bad.code == 1, bad
        assert len(errors) == 1 and "web3" in errors[0] and "bogus" in errors[0], errors
        time.sleep(0.5)
        assert admin_state(lb, "web3") == "drain", f"web3 lost its last valid form: {brief(live(lb))}"
        assert lb.state_data()["servers"]["web3"]["drain"] is True, lb.state_data()  # type: ignore[index]
        code, shown = status(lb)
        assert code == 0 and any("web3" in line and "bogus" in line for line in shown.splitlines()), shown

        # The other members' changes still apply, and their runs succeed.
        start = mark(lb)
        lb.webs["web1"].serf("tags", "-set", "state=maint")
        run = next_run(lb, start, "member-update")
        assert run.code == 0, run
        wait_until(lambda: admin_state(lb, "web1") == "maint", timeout=5, what="web1 in maintenance")
        start = mark(lb)
        lb.webs["web2"].serf("tags", "-set", "weight=3")
        run = next_run(lb, start, "member-update")
        assert run.code == 0, run
        wait_until(lambda: live(lb)["web2"]["srv_uweight"] == "3", timeout=5, what="web2 weight 3")
        assert admin_state(lb, "web3") == "drain", brief(live(lb))

        # A valid state again: applied.
        for name in ("web3", "web1"):
            start = mark(lb)
            lb.webs[name].serf("tags", "-delete", "state")
            run = next_run(lb, start, "member-update")
            assert run.code == 0, (name, run)
        wait_until(lambda: converged(lb), timeout=5, what="every server ready and UP")
        wait_until(serves(load, "body-web3"), timeout=5, what="web3 serving again")
    code, shown = status(lb)
    assert code == 0 and "bogus" not in shown, shown
    assert load.failures == [], f"{len(load.failures)} of {load.requests} requests failed: {load.failures[:5]}"
    assert lb.reload_count() == reloads


# --- c. HTTP health checks -----------------------------------------------------------------


def test_a_node_whose_health_check_fails_leaves_rotation_and_comes_back(procs: Processes) -> None:
    lb = start_lb(procs, check_path="/healthz")
    reloads = lb.reload_count()
    config = lb.config.read_text()
    assert "    option httpchk GET /healthz\n" in config, config
    port = web_tags(lb.webs["web2"])["port"]
    with Load(lb.port, rate=50, seconds=120) as load:
        wait_until(serves(load, "body-web2"), timeout=5, what="web2 getting traffic")
        set_healthy(procs, port, False)  # /healthz answers 500; every other path still 200
        down = timed(lambda: not is_up(lb, "web2"), "web2 DOWN in HAProxy", timeout=10)
        time.sleep(0.2)
        while_down = requests_to(load, "body-web2", 2)
        rows = live(lb)
        code, shown = status(lb)

        set_healthy(procs, port, True)
        up = timed(lambda: is_up(lb, "web2"), "web2 UP again", timeout=10)
        served = up + timed(serves(load, "body-web2"), "web2 getting traffic again", timeout=5)
        time.sleep(0.5)
    print(f"\nhealth check: web2 DOWN {down:.2f} s after /healthz answered 500, UP {up:.2f} s after 200 "
          f"(served {served:.2f} s); {while_down} requests to it while down; {len(load.failures)} of "
          f"{load.requests} requests failed; reloads {lb.reload_count() - reloads}")
    assert down <= 2, f"web2 left rotation only after {down:.2f} s"
    assert rows["web2"]["srv_admin_state"] == "0", f"health, not the admin state: {brief(rows)}"
    assert while_down == 0, f"web2 got {while_down} requests while its health check failed"
    assert code == 0 and any(" web2 " in f" {line} " and "DOWN" in line for line in shown.splitlines()), shown
    assert up <= 2, f"web2 came back only after {up:.2f} s"
    assert load.failures == [], f"{len(load.failures)} of {load.requests} requests failed: {load.failures[:5]}"
    assert lb.reload_count() == reloads


# --- d. weight=0 ---------------------------------------------------------------------------


def test_weight_0_is_a_soft_drain(procs: Processes) -> None:
    lb = start_lb(procs)
    reloads = lb.reload_count()
    with Load(lb.port, rate=50, seconds=120) as load:
        wait_until(serves(load, "body-web1"), timeout=5, what="web1 getting traffic")
        lb.webs["web1"].serf("tags", "-set", "weight=0")
        took = timed(lambda: live(lb)["web1"]["srv_uweight"] == "0", "web1 weight 0 in HAProxy")
        rows = live(lb)
        time.sleep(0.2)
        got = requests_to(load, "body-web1", 2)
        lb.webs["web1"].serf("tags", "-delete", "weight")
        back = timed(lambda: live(lb)["web1"]["srv_uweight"] == "1", "web1 weight 1 again")
        wait_until(serves(load, "body-web1"), timeout=5, what="web1 serving again")
    print(f"\nweight=0: applied {took:.2f} s after the tag change, weight 1 again after {back:.2f} s; web1 got "
          f"{got} requests at weight 0; {len(load.failures)} of {load.requests} requests failed; "
          f"reloads {lb.reload_count() - reloads}")
    assert rows["web1"]["srv_admin_state"] == "0" and rows["web1"]["srv_op_state"] == RUNNING, brief(rows)
    assert got == 0, f"web1 got {got} new requests at weight 0"
    assert load.failures == [], f"{len(load.failures)} of {load.requests} requests failed: {load.failures[:5]}"
    assert lb.reload_count() == reloads
