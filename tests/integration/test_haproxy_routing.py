"""Issue 21: one load balancer, many services. A real HAProxy in runtime-API mode, real serf
agents and nginx web nodes on loopback, the handler's `backends` routing three services by
host, two by path prefix, one by wildcard host, and `routes_from_tags`:

- a table of requests (host, path) -> the backend whose node answers, through HAProxy;
- a host route added, then removed, by a member's tag while a load runs over every route:
  routing follows with no reload and no failed request;
- route drift made on the admin socket (`del map`, `add map`): `status` flags it, `reconcile`
  repairs it;
- two members of different backends claiming one host: neither gets it, one error names both;
- sticky sessions: 100 requests with the cookie stay on one server; it leaves, and they move
  to the other with no failed request (HAProxy 2.6 refuses `cookie` on `add server`, so a
  server joins a sticky backend by a reload, planned as such);
- slow start on a server added through the runtime API (HAProxy's `show stat` throttle
  ramps up: HAProxy 2.6 honours `slowstart` on `add server`).

Judged by HAProxy's answers, its live maps and servers, and the reload log.
"""

from __future__ import annotations

import http.client
import time
from pathlib import Path
from typing import Any

import pytest

from support.admin import admin
from support.load import Load
from support.processes import Processes, free_port, get, require, start_haproxy, start_nginx, wait_until
from support.site import Site
from tests.integration.test_haproxy_convergence import live, reconcile, start_lb, status

pytestmark = pytest.mark.integration

SERVICES: dict[str, dict[str, Any]] = {
    "api": {"hosts": ["api.example.com"], "slowstart": "8s"},
    "shop": {"hosts": ["shop.example.com"], "sticky": True},
    "admin": {"hosts": ["admin.example.com"], "paths": ["/console"]},
    "static": {"paths": ["/static"]},
    "docs": {"paths": ["/docs"]},
    "docs2": {"paths": ["/docs/v2"]},
    "tenants": {"hosts": ["*.tenants.example.com"]},
}
NODES = {"api1": "api", "shop1": "shop", "shop2": "shop", "admin1": "admin", "static1": "static",
         "docs1": "docs", "docs2a": "docs2", "tenant1": "tenants"}

# (Host header, path) -> the backend that must answer ("web": the default backend).
CASES = [
    pytest.param("api.example.com", "/", "api", id="exact host"),
    pytest.param("API.Example.COM:8080", "/x", "api", id="host: case and port ignored"),
    pytest.param("api.example.com", "/static/a.css", "api", id="a host route wins over a path route"),
    pytest.param("shop.example.com", "/cart", "shop", id="second host"),
    pytest.param("admin.example.com", "/console", "admin", id="host and path"),
    pytest.param("admin.example.com", "/console/users", "admin", id="host and deeper path"),
    pytest.param("admin.example.com", "/", "web", id="host without its path: default"),
    pytest.param("elsewhere.test", "/static/app.js", "static", id="path prefix, any host"),
    pytest.param("elsewhere.test", "/static", "static", id="path prefix exactly"),
    pytest.param("elsewhere.test", "/docs", "docs", id="second path prefix"),
    pytest.param("elsewhere.test", "/docs/v2/intro", "docs2", id="longest prefix wins"),
    pytest.param("elsewhere.test", "/docs/v3", "docs", id="shorter prefix when the longer misses"),
    pytest.param("a.tenants.example.com", "/", "tenants", id="wildcard"),
    pytest.param("b.c.tenants.example.com", "/x", "tenants", id="wildcard, two labels"),
    pytest.param("tenants.example.com", "/", "web", id="wildcard needs a label"),
    pytest.param("a.tenants.example.com", "/static/x", "tenants", id="wildcard host before path"),
    pytest.param("a.tenants.example.com.evil.test", "/", "web", id="wildcard is a suffix, not a substring"),
    pytest.param("shop.example.com.evil.test", "/", "web", id="exact host only"),
    pytest.param("evilapi.example.com", "/", "web", id="no partial host"),
    pytest.param("elsewhere.test", "/", "web", id="default backend"),
    pytest.param("elsewhere.test", "/Static/x", "web", id="paths are case-sensitive"),
    pytest.param("api", "/", "web", id="a routed backend loses its name-as-host route"),
]


def request(lb: Site, host: str, path: str, cookie: str | None = None) -> tuple[int, str, str]:
    """(status, body, Set-Cookie) of one request through a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", lb.port, timeout=3)
    try:
        headers = {"Host": host, "Connection": "close", **({"Cookie": cookie} if cookie else {})}
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode().strip(), response.getheader("Set-Cookie") or ""
    except OSError as exc:
        return 0, f"<{type(exc).__name__}>", ""
    finally:
        conn.close()


def backend_of(body: str) -> str:
    node = body.removeprefix("body-")
    return {**NODES, "api2": "api"}.get(node, "web" if node.startswith("web") else f"? {body}")


def serving(lb: Site, backend: str) -> set[str]:
    return {name for name, row in live(lb, backend).items() if row["srv_op_state"] == "2"}


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    require("serf", "haproxy", "nginx")
    procs = Processes(tmp_path_factory.mktemp("routing"))
    try:
        lb = start_lb(procs, webs=("web1",), backends=SERVICES, routes_from_tags=True)
        lb.metrics = procs.workdir / "serf_handlers.prom"
        lb.write_yml()
        for node, backend in NODES.items():
            lb.add_web(node, f"body-{node}", backend=backend)
        for backend in set(NODES.values()):
            nodes = {n for n, b in NODES.items() if b == backend}
            wait_until(lambda b=backend, n=nodes: serving(lb, b) == n, timeout=30, what=f"{backend} serving {nodes}")
        yield lb
    finally:
        procs.stop_all(together=True)


@pytest.mark.parametrize(("host", "path", "backend"), CASES)
def test_requests_land_where_the_routing_table_says(routed: Site, host: str, path: str, backend: str) -> None:
    code, body, _ = request(routed, host, path)
    assert (code, backend_of(body)) == (200, backend), body


def test_the_table_holds_under_load(routed: Site) -> None:
    """Every case of the table again, while a load runs over all of them: none fails, none strays."""
    cases = [(p.values[0], p.values[1], p.values[2]) for p in CASES]
    with Load(routed.port, rate=40, seconds=30, targets=[(host, path) for host, path, _ in cases]) as load:
        rounds = 0
        while load.requests < 80:  # 2 s of the load at least, whatever this machine's speed
            for host, path, backend in cases:
                code, body, _ = request(routed, host, path)
                assert (code, backend_of(body)) == (200, backend), (host, path, body)
            rounds += 1
    assert load.failures == [] and rounds >= 1, load.failures[:3]


def metric(lb: Site, name: str) -> float:
    assert lb.metrics is not None
    return sum(float(line.rsplit(" ", 1)[1]) for line in lb.metrics.read_text().splitlines() if line.startswith(name))


def maps(lb: Site) -> dict[str, str]:
    return {name: str(lb.dir / "maps" / f"{name}.map") for name in ("hosts", "wildcards", "paths")}


def test_tag_routes_come_and_go_with_no_reload_and_no_failed_request(routed: Site) -> None:
    lb = routed
    reloads = lb.reload_count()
    updates = metric(lb, "serf_handlers_haproxy_route_updates_total")
    targets = [("api.example.com", "/"), ("elsewhere.test", "/static/x"), ("a.tenants.example.com", "/"),
               ("api2.example.com", "/"), ("elsewhere.test", "/"), ("elsewhere.test", "/v9/x")]
    with Load(lb.port, rate=40, seconds=60, targets=targets) as load:
        lb.webs["api1"].serf("tags", "-set", "host=api2.example.com")
        wait_until(lambda: backend_of(request(lb, "api2.example.com", "/")[1]) == "api", timeout=10,
                   interval=0.05, what="api2.example.com routed to api")
        assert "api2.example.com/ api" in admin(lb.admin_socket, f"show map {maps(lb)['hosts']}")
        lb.webs["api1"].serf("tags", "-delete", "host")
        wait_until(lambda: backend_of(request(lb, "api2.example.com", "/")[1]) == "web", timeout=10,
                   interval=0.05, what="api2.example.com back to the default backend")
        lb.webs["api1"].serf("tags", "-set", "path=/v9")
        wait_until(lambda: backend_of(request(lb, "elsewhere.test", "/v9/x")[1]) == "api", timeout=10,
                   interval=0.05, what="/v9 routed to api")
        lb.webs["api1"].serf("tags", "-delete", "path")
        wait_until(lambda: backend_of(request(lb, "elsewhere.test", "/v9/x")[1]) == "web", timeout=10,
                   interval=0.05, what="/v9 back to the default backend")
        time.sleep(0.5)
    print(f"a tag's host route, then a path route, added and removed: {load.requests} requests, "
          f"{len(load.failures)} failed, {lb.reload_count() - reloads} reloads")
    assert load.failures == [] and load.requests > 40
    assert lb.reload_count() == reloads
    assert metric(lb, "serf_handlers_haproxy_route_updates_total") - updates >= 4  # each change replaced a map
    assert backend_of(request(lb, "api.example.com", "/")[1]) == "api"  # the config's own route untouched


def test_route_drift_on_the_admin_socket_is_flagged_and_repaired(routed: Site) -> None:
    lb = routed
    files = maps(lb)
    admin(lb.admin_socket, f"del map {files['hosts']} api.example.com/")
    admin(lb.admin_socket, f"add map {files['paths']} /evil api")
    assert backend_of(request(lb, "api.example.com", "/")[1]) == "web"  # the drift is real
    code, text = status(lb)
    assert code != 0, text
    assert "host api.example.com -> api (config)  ! not in HAProxy" in text, text
    assert "HAProxy's paths map also has /evil -> api, which is no route" in text, text
    reloads = lb.reload_count()
    assert reconcile(lb).returncode == 0
    assert backend_of(request(lb, "api.example.com", "/")[1]) == "api"
    assert backend_of(request(lb, "elsewhere.test", "/evil")[1]) == "web"
    assert status(lb)[0] == 0
    assert lb.reload_count() == reloads


def test_two_members_claiming_one_host_get_neither(routed: Site) -> None:
    lb = routed
    offset = len(lb.records())
    lb.webs["static1"].serf("tags", "-set", "host=claimed.example.com")
    lb.webs["docs1"].serf("tags", "-set", "host=claimed.example.com")
    wanted = ("host claimed.example.com: claimed by docs (member 'docs1') and static (member 'static1'); "
              "routed to neither")
    wait_until(lambda: any(wanted in str(r.get("message")) for r in lb.records()[offset:]), timeout=15,
               what="the refused route's error")
    time.sleep(1)
    records = lb.records()[offset:]
    errors = [r for r in records if r.get("level") == "error" and "claimed.example.com" in str(r["message"])]
    assert len(errors) == 1, errors
    assert backend_of(request(lb, "claimed.example.com", "/")[1]) == "web"
    assert backend_of(request(lb, "api.example.com", "/")[1]) == "api"
    assert f"# refused: {wanted}" in (lb.dir / "maps" / "hosts.map").read_text()
    for node in ("static1", "docs1"):
        lb.webs[node].serf("tags", "-delete", "host")


def test_sticky_sessions_stay_then_move_without_failing(routed: Site) -> None:
    lb = routed
    _, body, cookie = request(lb, "shop.example.com", "/")
    assert cookie.startswith("SERVERID="), cookie
    jar = cookie.split(";")[0]
    first = body.removeprefix("body-")
    seen = {request(lb, "shop.example.com", f"/item/{i}", jar)[1] for i in range(100)}
    assert seen == {body}, seen
    failed, moved = [], set()
    lb.webs[first].leave(wait=False)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and first in serving(lb, "shop") | set(live(lb, "shop")):
        code, got, _ = request(lb, "shop.example.com", "/", jar)
        (moved.add(got) if code == 200 else failed.append((code, got)))
        time.sleep(0.02)
    for _ in range(20):
        code, got, _ = request(lb, "shop.example.com", "/", jar)
        (moved.add(got) if code == 200 else failed.append((code, got)))
    print(f"sticky: 100 requests on {first}; it left; {len(failed)} failed, answered by {sorted(moved)}")
    reasons = [str(r.get("reason")) for r in lb.records() if r.get("message") == "haproxy: reloaded"]
    assert any("join sticky backend(s) ['shop']" in reason for reason in reasons), reasons  # planned, not refused
    assert failed == []
    assert first not in live(lb, "shop")
    other = ({"shop1", "shop2"} - {first}).pop()
    assert f"body-{other}" in moved


def test_a_server_added_live_starts_slowly(routed: Site) -> None:
    """HAProxy 2.6 and `slowstart` on a server added through the runtime API (`add server ...
    slowstart 8s`): `show stat`'s throttle column (percent of the weight given) ramps up."""
    lb = routed
    reloads = lb.reload_count()
    lb.add_web("api2", "body-api2", backend="api")
    # HAProxy's operational state 1 (starting) is the slow start itself; 2 (running) follows it.
    wait_until(lambda: live(lb, "api").get("api2", {}).get("srv_op_state") in ("1", "2"), timeout=20, interval=0.05,
               what="api2 added")
    throttles = []
    for _ in range(8):
        rows = [line.split(",") for line in admin(lb.admin_socket, "show stat").splitlines()]
        row = next(r for r in rows if r[:2] == ["api", "api2"])
        throttles.append(row[rows[0].index("throttle")])
        time.sleep(0.5)
    print(f"slowstart 8s on a server added live: throttle {throttles}")
    assert lb.reload_count() == reloads  # added through the runtime API
    ramp = [int(t) for t in throttles if t]
    assert len(ramp) >= 4 and ramp[0] < 60 and ramp == sorted(ramp), throttles


def test_strip_path_and_a_services_https_redirect_in_real_haproxy(tmp_path: Path) -> None:
    """The backend lines `strip_path` renders and the frontend's per-service redirect, run by
    HAProxy itself: a backend answering with the path it would send on."""
    from serf_handlers.handlers.haproxy._render import backend_lines, frontend_lines
    from serf_handlers.handlers.haproxy._routes import Service

    require("haproxy")
    procs = Processes(tmp_path)
    maps = {name: str(tmp_path / f"{name}.map") for name in ("hosts", "wildcards", "paths")}
    (tmp_path / "hosts.map").write_text("secure.example.com/ secure\n")
    (tmp_path / "wildcards.map").write_text("")
    (tmp_path / "paths.map").write_text("/static/v2 static\n/static static\n")
    services = {"static": Service(paths=("/static", "/static/v2"), strip_path=True),
                "secure": Service(hosts=("secure.example.com",), https_redirect=True)}
    port = free_port()
    indent = "\n    "
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n"
        f"frontend http\n    bind 127.0.0.1:{port}\n    {indent.join(frontend_lines(maps, services, 8443))}\n"
        "    default_backend web\n"
        f"backend static\n    {indent.join(backend_lines(services['static'], None))}\n"
        '    http-request return status 200 content-type text/plain lf-string "static %[path]"\n'
        'backend secure\n    http-request return status 200 content-type text/plain lf-string "secure"\n'
        'backend web\n    http-request return status 200 content-type text/plain lf-string "web %[path]"\n'
    )
    try:
        start_haproxy(procs, config, tmp_path / "haproxy.pid")
        lb = type("LB", (), {"port": port})()
        cases = {"/static/a.css": "static /a.css", "/static": "static /", "/static/v2/x": "static /x",
                 "/static/v2": "static /", "/staticx": "static /x", "/other": "web /other"}
        for path, body in cases.items():
            assert request(lb, "any.test", path)[:2] == (200, body), path  # type: ignore[arg-type]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
        conn.request("GET", "/login?next=/", headers={"Host": "secure.example.com:8080"})
        response = conn.getresponse()
        assert (response.status, response.getheader("Location")) == (301, "https://secure.example.com:8443/login?next=/")
        conn.close()
    finally:
        procs.stop_all(together=True)  # all at once, no graceful leaves


def test_a_route_update_that_fails_leaves_the_servers_applied_and_says_so(
    procs: Processes, short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure path of the maps: HAProxy's live maps cannot be replaced (the admin
    socket's map commands refused, injected here) while a member joins with a route tag.
    The join still reaches HAProxy; the run fails naming the routes; HAProxy's live servers,
    the state file and `status` agree on the servers, and `status` flags the route HAProxy
    lacks. The next run (a reconcile) puts the route live, and everything agrees again."""
    from serf_handlers import HandlerError, Member, MemberEvent
    from serf_handlers.handlers.haproxy import HAProxyHandler, _maps
    from support.admin import live_servers

    site = Site(short_dir, backends={"api": {"hosts": ["api.example.com"]}}, routes_from_tags=True)
    site.serve(procs, "runtime")
    port = free_port()
    start_nginx(procs, "api1", port, "body-api1")
    handler = HAProxyHandler(**{k: v for k, v in site.options.items() if v is not None})
    member = Member("api1", "127.0.0.1", "web", {"role": "web", "backend": "api", "port": str(port),
                                                   "host": "v2.example.com"})

    def refuse(*args: object) -> None:
        raise HandlerError("commit map: refused (injected)")

    monkeypatch.setattr(_maps, "replace", refuse)
    with pytest.raises(HandlerError, match=r"routes not updated live: commit map: refused \(injected\)"):
        handler(MemberEvent("member-join", (member,)))
    state = site.state_data()
    assert state is not None and set(state["servers"]) == {"api1"} and state["applied"] == "servers"
    assert set(live_servers(site.admin_socket, "api")) == {"api1"}  # the join is live
    text = str(handler.status())
    assert type(handler.status()).__name__ == "Drift", text
    assert "host v2.example.com -> api (tags of 'api1')  ! not in HAProxy" in text, text
    assert "api1" in text and "host api.example.com -> api (config)" in text
    assert get(site.port, "api.example.com")[1] == "body-api1"
    assert get(site.port, "v2.example.com")[0] == 503  # not routed yet: the default backend is empty

    monkeypatch.undo()
    handler.reconcile([member])
    assert set(live_servers(site.admin_socket, "api")) == {"api1"}
    assert type(handler.status()).__name__ == "str", handler.status()
    assert get(site.port, "v2.example.com")[1] == "body-api1"
    assert site.reload_count() == 0
