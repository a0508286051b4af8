"""A real load balancer on loopback, seen as an operator sees it: HAProxy's stats page in
headless Chromium, HAProxy's Prometheus metrics and the handler's own, all through the stats
frontend (`vars.stats_*`), parsed with prometheus-client's text parser."""

from __future__ import annotations

import html
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.processes import Processes, wait_until
from support.stats import StatsLB, chromium_dom, chromium_screenshot, fetch

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (make deps)"),
]
USER, PASSWORD = "ops", "s3cret-pw"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def lb(tmp_path: Path) -> Iterator[StatsLB]:
    procs = Processes(tmp_path)
    try:
        balancer = StatsLB(procs)
        balancer.add_webs("web1", "web2", "web3")
        wait_until(lambda: balancer.served() == {"web1", "web2", "web3"}, timeout=30, what="three servers")
        yield balancer
    finally:
        procs.stop_all(together=True)


def server_rows(dom: str) -> dict[str, str]:
    """Server name -> "<row class> <status cell>" for each server row of the rendered page's
    `web` table, e.g. "active_down 1s DOWN". (Rows hold tooltip tables of their own, so rows
    are split at HAProxy's classed `<tr class=...>`, never matched as a whole.)"""
    rows = {}
    for chunk in dom.split('<tr class="')[1:]:
        found = re.match(r'(\w+)"><td class="ac"><a name="web/([^"]+)">', chunk)
        if found is None or found[2] == "Backend":  # the backend's own summary row
            continue
        text = html.unescape(re.sub(r"<[^>]+>", " ", chunk))
        status = re.search(r"\b(?:\d+[smhd]\S* )?(UP|DOWN|MAINT|DRAIN|NOLB)\b", text)
        rows[found[2]] = f"{found[1]} {status[0] if status else '?'}"
    return rows


def test_stats_page_in_chromium_lists_every_node_and_marks_a_stopped_one_down(lb: StatsLB, tmp_path: Path) -> None:
    wait_until(lambda: [r.split()[-1] for r in server_rows(chromium_dom(f"{lb.url}/stats")).values()] == ["UP"] * 3,
               timeout=20, interval=0.5, what="all three UP on the page")
    lb.stop_nginx("web2")  # its serf agent stays alive: only HAProxy's health check sees it
    rows = wait_until(lambda: (r := server_rows(chromium_dom(f"{lb.url}/stats"))).get("web2", "").find("DOWN") >= 0
                      and r, timeout=20, interval=0.5, what="web2 DOWN on the rendered page")
    assert set(rows) == {"web1", "web2", "web3"}
    assert "DOWN" in rows["web2"]
    assert "UP" in rows["web1"] and "UP" in rows["web3"] and "DOWN" not in rows["web1"] + rows["web3"]
    png = chromium_screenshot(f"{lb.url}/stats", tmp_path / "stats.png")
    assert png.stat().st_size > 10_000

    # HAProxy's own Prometheus exporter agrees.
    status, text = fetch(f"{lb.url}/metrics")
    assert status == 200
    haproxy = samples(text)
    down = {labels: v for (name, labels), v in haproxy.items() if name == "haproxy_server_status" and v == 1}
    states = {(dict(labels)["server"], dict(labels)["state"]) for labels in down if dict(labels)["proxy"] == "web"}
    assert states == {("web1", "UP"), ("web2", "DOWN"), ("web3", "UP")}


def test_handler_metrics_over_http_match_the_textfile_and_what_happened(lb: StatsLB) -> None:
    assert lb.site.metrics is not None
    ready = ("serf_handlers_haproxy_servers", (("backend", "web"), ("state", "ready")))
    # The run that saved the state writes its metrics just after: wait for that.
    wait_until(lambda: samples(fetch(f"{lb.url}/metrics/serf-handlers")[1]).get(ready) == 3, what="metrics of 3")
    status, served = fetch(f"{lb.url}/metrics/serf-handlers")
    assert status == 200
    text = lb.site.metrics.read_text()
    assert served == text  # HAProxy's Lua reads the file on every request
    got = samples(served)
    # Serf may coalesce the three joins into fewer events; each is counted once, in order.
    joins = got[("serf_handlers_events_total", (("type", "member-join"),))]
    assert 1 <= joins <= 3
    assert got[("serf_handlers_haproxy_reloads_total", ())] == 0  # runtime-API mode
    assert got[("serf_handlers_haproxy_runtime_commands_total", ())] >= 3 * 3
    assert got[("serf_handlers_haproxy_servers", (("backend", "web"), ("state", "ready")))] == 3
    assert got[("serf_handlers_handler_failures_total", (("handler", "haproxy (handlers[0])"),))] == 0
    runs = sum(v for (name, labels), v in got.items() if name == "serf_handlers_runs_total" and
               dict(labels)["command"] == "handle")
    assert runs == joins + got[("serf_handlers_events_total", (("type", "member-update"),))]  # one event per run
    assert got[("serf_handlers_runs_total", (("command", "render"), ("result", "ok")))] == 1  # render --write

    # A graceful leave: counted, and the gauge follows; HAProxy still never reloaded.
    lb.webs["web3"][0].leave()
    wait_until(lambda: "web3" not in lb.served(), timeout=20, what="web3 removed")

    def after_leave() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        now = samples(fetch(f"{lb.url}/metrics/serf-handlers")[1])
        return now if now[("serf_handlers_events_total", (("type", "member-leave"),))] == 1 else None

    now = wait_until(after_leave, timeout=10, what="the leave counted")
    assert now[("serf_handlers_haproxy_servers", (("backend", "web"), ("state", "ready")))] == 2
    assert now[("serf_handlers_haproxy_reloads_total", ())] == 0
    assert fetch(f"{lb.url}/nothing-here")[0] == 503


def test_basic_auth_guards_every_endpoint(tmp_path: Path) -> None:
    procs = Processes(tmp_path)
    try:
        lb = StatsLB(procs, auth=f"{USER}:{PASSWORD}")
        for path in ("/stats", "/metrics", "/metrics/serf-handlers"):
            assert fetch(f"{lb.url}{path}")[0] == 401, path
            assert fetch(f"{lb.url}{path}", auth=(USER, "wrong"))[0] == 401, path
            assert fetch(f"{lb.url}{path}", auth=(USER, PASSWORD))[0] == 200, path
        # The password is in haproxy.cfg (mode at most 0640) and nowhere in the handler's log.
        log = (tmp_path / "h.jsonl").read_text() if (tmp_path / "h.jsonl").exists() else ""
        assert PASSWORD not in log
        assert lb.site.config.stat().st_mode & 0o077 in (0, 0o040)
    finally:
        procs.stop_all(together=True)
