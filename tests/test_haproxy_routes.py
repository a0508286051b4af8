"""Routes by host and path (issue 21): the `backends` option, routes from tags, the map files."""

from __future__ import annotations

from pathlib import Path

import pytest

from serf_handlers.errors import ConfigError
from serf_handlers.handlers.haproxy._maps import report, text
from serf_handlers.handlers.haproxy._options import parse
from serf_handlers.handlers.haproxy._routes import HOSTS, PATHS, WILDCARDS, make_routes, tag_service
from serf_handlers.handlers.haproxy._servers import from_member


def server(node: str, backend: str, **tags: str):  # type: ignore[no-untyped-def]
    return from_member(node, "10.0.0.1", {"backend": backend, **tags}, 80, "web")


@pytest.mark.parametrize(
    ("backends", "error"),
    [
        pytest.param({"api": {"paths": ["api"]}}, "backends.api.paths[0]: expected a path prefix", id="relative path"),
        pytest.param({"api": {"paths": ["/a", "/b c"]}}, "backends.api.paths[1]", id="space in path"),
        pytest.param({"api": {"paths": ["/a#x"]}}, "backends.api.paths[0]", id="hash in path"),
        pytest.param({"api": {"hosts": ["api.example.com\nfrontend x"]}}, "backends.api.hosts[0]", id="newline"),
        pytest.param({"api": {"hosts": ["*"]}}, "backends.api.hosts[0]", id="bare wildcard"),
        pytest.param({"api": {"hosts": ["a.*.com"]}}, "backends.api.hosts[0]", id="inner wildcard"),
        pytest.param({"api": {"hosts": ["-a.com"]}}, "backends.api.hosts[0]", id="leading hyphen"),
        pytest.param({"api": {"hosts": "api.example.com"}}, "backends.api.hosts: expected a list", id="not a list"),
        pytest.param({"api": {"balance": "fastest"}}, "backends.api.balance", id="unknown balance"),
        pytest.param({"api": {"slowstart": "10 s"}}, "backends.api.slowstart", id="bad time"),
        pytest.param({"api": {"timeout_server": "-1s"}}, "backends.api.timeout_server", id="negative time"),
        pytest.param({"api": {"maxconn": 0}}, "backends.api.maxconn", id="maxconn 0"),
        pytest.param({"api": {"sticky": "yes"}}, "backends.api.sticky: expected true or false", id="sticky text"),
        pytest.param({"api": {"strip_path": True}}, "backends.api.strip_path: needs paths", id="strip nothing"),
        pytest.param({"api": {"hots": []}}, "backends.api.hots: unknown setting", id="typo"),
        pytest.param({"a b": {}}, "backends: 'a b'", id="bad backend name"),
        pytest.param({"a": {"paths": ["/x"]}, "b": {"paths": ["/x"]}},
                     "backends.b: path /x is also routed to backends.a", id="one path, two backends"),
        pytest.param({"api": {"https_redirect": True}}, "backends.api.https_redirect: needs vars.tls_bind",
                     id="redirect without TLS"),
    ],
)
def test_a_bad_backends_entry_names_its_path(backends: dict[str, object], error: str) -> None:
    with pytest.raises(ConfigError, match=None) as raised:
        parse(backends=backends)
    assert error in str(raised.value)


def test_routes_land_in_their_map_longest_first() -> None:
    options = parse(backends={
        "api": {"hosts": ["api.example.com"], "paths": ["/v1", "/v1/admin"]},
        "shop": {"hosts": ["Shop.Example.com", "*.shop.example.com"]},
        "static": {"paths": ["/static"]},
    })
    routes = make_routes(options.backends, [], False)
    assert routes.entries(HOSTS) == (
        ("api.example.com/v1/admin", "api"), ("api.example.com/v1", "api"), ("shop.example.com/", "shop"),
    )
    assert routes.entries(WILDCARDS) == (("^[^/]+[.]shop[.]example[.]com/", "shop"),)
    assert routes.entries(PATHS) == (("/static", "static"),)
    assert routes.conflicts == ()


@pytest.mark.parametrize(
    ("tags", "expect"),
    [
        pytest.param({"host": "a.example.com,*.b.example.com"}, (("a.example.com", "*.b.example.com"), ()), id="hosts"),
        pytest.param({"path": "/x,/y"}, ((), ("/x", "/y")), id="paths"),
        pytest.param({"host": "A.example.com", "path": "/x"}, (("a.example.com",), ("/x",)), id="both"),
        pytest.param({"host": "a.example.com\n"}, None, id="newline"),
        pytest.param({"host": "a.example.com x"}, None, id="space"),
        pytest.param({"path": "/x y"}, None, id="space in path"),
        pytest.param({"path": "x"}, None, id="relative"),
        pytest.param({"path": "/%2e%2e"}, None, id="percent"),
        pytest.param({"host": "^evil$"}, None, id="regex"),
    ],
)
def test_tag_routes_are_checked_like_names(tags: dict[str, str], expect: tuple[object, object] | None) -> None:
    service, why = tag_service(tags)
    if expect is None:
        assert service is None and why.startswith("tag expected"), why
    else:
        assert service is not None and (service.hosts, service.paths) == expect and why == ""


def test_a_host_two_backends_claim_from_tags_goes_to_neither_and_names_both() -> None:
    options = parse(backends={"api": {"hosts": ["api.example.com"]}}, routes_from_tags=True)
    servers = [
        server("web1", "shop", host="x.example.com"),
        server("web2", "blog", host="x.example.com"),
        server("web3", "shop", host="x.example.com,y.example.com"),  # same backend: no conflict
        server("web4", "blog", host="api.example.com"),  # the config's route wins
    ]
    routes = make_routes(options.backends, servers, True)
    assert routes.entries(HOSTS) == (("api.example.com/", "api"), ("y.example.com/", "shop"))
    assert routes.conflicts == (
        "host api.example.com: asked for by member(s) ['web4']; the config gives it to api",
        "host x.example.com: claimed by blog (member 'web2') and shop (member 'web1'); routed to neither",
    )


def test_tags_add_no_route_unless_the_operator_allows_it() -> None:
    options = parse(backends={"api": {"hosts": ["api.example.com"]}})
    routes = make_routes(options.backends, [server("web1", "shop", host="shop.example.com")], options.routes_from_tags)
    assert routes.entries(HOSTS) == (("api.example.com/", "api"),)


def test_an_invalid_tag_route_ignores_that_member_only() -> None:
    servers = [server("web1", "shop", host="shop.example.com"), server("web2", "blog", path="/blog x")]
    routes = make_routes({}, servers, True)
    assert routes.entries(HOSTS) == (("shop.example.com/", "shop"),) and routes.entries(PATHS) == ()
    assert len(routes.conflicts) == 1 and "member 'web2'" in routes.conflicts[0]


def test_map_files_list_refused_routes_as_comments() -> None:
    routes = make_routes({}, [server("a", "one", host="x.example.com"), server("b", "two", host="x.example.com")], True)
    hosts = text(HOSTS, routes)
    assert hosts.splitlines()[1].startswith("# refused: host x.example.com: claimed by one (member 'a')")
    assert [line for line in hosts.splitlines() if not line.startswith("#")] == []


def test_status_marks_routes_haproxy_lacks_and_entries_that_are_no_route() -> None:
    routes = make_routes(parse(backends={"api": {"hosts": ["api.example.com"], "paths": ["/v1"]}}).backends, [], False)
    same = {HOSTS: (("api.example.com/v1", "api"),), WILDCARDS: (), PATHS: ()}
    assert report(routes, same)[1] is False
    drifted = {HOSTS: (("evil.example.com/", "api"),), WILDCARDS: (), PATHS: ()}
    text_, differs = report(routes, drifted)
    assert differs and "host api.example.com path /v1 -> api (config)  ! not in HAProxy" in text_
    assert "HAProxy's hosts map also has evil.example.com/ -> api" in text_


def test_service_settings_reach_backend_and_server_lines(tmp_path: Path) -> None:
    from serf_handlers.handlers.haproxy._render import render

    options = parse(config=str(tmp_path / "haproxy.cfg"), backends={
        "api": {"paths": ["/api"], "strip_path": True, "sticky": True, "slowstart": "10s", "maxconn": 20,
                "balance": "leastconn", "timeout_server": "5s", "check_path": "/up"},
    })
    config = render(options, {"web1": server("web1", "api")})
    backend = config.split("backend api\n", 1)[1].split("\n\n", 1)[0]
    assert backend.splitlines()[:5] == [
        "    option httpchk GET /up", "    balance leastconn", "    timeout server 5s",
        "    cookie SERVERID insert indirect nocache", "    http-request replace-path ^(/api)/?(.*) /\\2",
    ]
    assert " weight 1 cookie web1 slowstart 10s maxconn 20 check " in backend
    assert f"map_beg({tmp_path}/maps/hosts.map)" in config


@pytest.mark.parametrize(
    ("before", "after", "reloads"),
    [
        pytest.param({}, {"s1": "shop"}, True, id="a join to a sticky backend reloads"),
        pytest.param({"s1": "shop"}, {}, False, id="a leave from it stays live"),
        pytest.param({"s1": "shop"}, {"s1": "shop"}, False, id="no join"),
        pytest.param({}, {"a1": "api"}, False, id="a join elsewhere stays live"),
    ],
)
def test_a_server_joins_a_sticky_backend_by_a_reload(
    tmp_path: Path, before: dict[str, str], after: dict[str, str], reloads: bool
) -> None:
    """HAProxy 2.6 answers `add server ... cookie x` with "'cookie' option is not accepted for
    dynamic server": the plan says so up front instead of sending it and falling back."""
    from serf_handlers.handlers.haproxy._plan import _reload_reason
    from serf_handlers.handlers.haproxy._render import render

    options = parse(config=str(tmp_path / "haproxy.cfg"), socket=str(tmp_path / "sock"), reload=["true"],
                    backends={"shop": {"hosts": ["shop.example.com"], "sticky": True}, "api": {"paths": ["/api"]}})
    old = {node: server(node, backend) for node, backend in before.items()}
    new = {node: server(node, backend) for node, backend in after.items()}
    text = render(options, new)
    reason = _reload_reason(old, old, new, render(options, old), text, lambda s: render(options, s), options)
    assert (reason is not None and "sticky backend(s) ['shop']" in reason) == reloads, reason
