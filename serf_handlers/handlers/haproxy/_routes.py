"""Routes: which backend a request goes to, by host and path prefix (pure functions).

Two sources:
- the operator's `backends` entries (trusted; checked when the config loads, an error
  names the entry: `backends.api.paths[0]`);
- with `routes_from_tags: true`, members' `host` and `path` tags (untrusted network
  input: checked like names, and never allowed to take another service's traffic).

Tag syntax, short because Serf caps a node's tags at 512 bytes: `host=api.example.com,*.api.example.com`
and `path=/api,/v2` (comma-separated; a `*.` prefix is a wildcard of one or more labels).
A member with both routes the combinations (those paths under those hosts).

A route lands in one of three HAProxy map files (`_maps` writes them and keeps HAProxy's
live copies in step; the built-in template looks them up in this order):
- `hosts`: exact host, then path prefix, keyed `host/path` (`map_beg` on host + path);
- `wildcards`: `*.suffix` hosts, keyed by an anchored regex (`map_reg` on host + path);
- `paths`: path prefixes for any host (`map_beg` on the path).
Within a map the longest key comes first, so the most specific route wins.
"""

from __future__ import annotations

from ..._typing import TYPE_CHECKING, NamedTuple
from ...errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from ._servers import Server

HOSTS, WILDCARDS, PATHS = "hosts", "wildcards", "paths"
MAPS = (HOSTS, WILDCARDS, PATHS)
BALANCE = ("roundrobin", "leastconn", "first", "source", "static-rr", "random")
MAX_HOST = 253
MAX_PATH = 200
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")
_PATH_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/")
_TIME_UNITS = ("ms", "s", "m", "h")


class Service(NamedTuple):
    """One `backends` entry: how requests reach a backend and how it treats them."""

    hosts: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    strip_path: bool = False  # remove the matched prefix before the request goes on
    check_path: str | None = None  # this backend's health-check path (else the handler's)
    balance: str | None = None
    sticky: bool = False  # an inserted cookie naming the server
    slowstart: str | None = None  # HAProxy time: a server that comes up ramps its weight up over it
    timeout_server: str | None = None
    maxconn: int | None = None  # per server; more requests queue
    https_redirect: bool = False  # plain-HTTP requests for this service are redirected to HTTPS


class Route(NamedTuple):
    map: str  # HOSTS, WILDCARDS or PATHS
    key: str  # the map file's key
    backend: str
    host: str  # "" for a path-only route
    path: str  # "" for a host-only route
    source: str  # "config", or the node whose tags asked for it


class Routes(NamedTuple):
    table: tuple[Route, ...]  # in map order, longest key first within a map
    conflicts: tuple[str, ...]  # one line per tag route refused (sorted)

    def entries(self, name: str) -> tuple[tuple[str, str], ...]:
        """The (key, backend) lines of one map, in lookup order."""
        return tuple((r.key, r.backend) for r in self.table if r.map == name)


NO_ROUTES = Routes((), ())


# --- the operator's entries --------------------------------------------------------------


def parse_services(value: object, backend_name: Callable[[object], bool]) -> dict[str, Service]:
    """`backends` from the config; a ConfigError names the bad entry's path."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"backends: expected a mapping of backend name to its settings, got {type(value).__name__}")
    services = {}
    for name, entry in value.items():
        if not backend_name(name):
            raise ConfigError(f"backends: {name!r}: a backend name is 1-63 of A-Z a-z 0-9 _ . -")
        services[name] = _service(entry or {}, f"backends.{name}")
    claimed: dict[str, str] = {}
    for name, service in services.items():
        for route in service_routes(name, service, "config"):
            owner = claimed.setdefault(route.key, name)
            if owner != name:
                raise ConfigError(f"backends.{name}: {describe(route)} is also routed to backends.{owner}")
    return services


def _service(entry: object, where: str) -> Service:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(Service._fields))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown setting (known: {', '.join(Service._fields)})")
    hosts = tuple(host.lower() for host in _checked(entry.get("hosts", []), f"{where}.hosts", _host_error))
    paths = tuple(_checked(entry.get("paths", []), f"{where}.paths", _path_error))
    for key in ("strip_path", "sticky", "https_redirect"):
        if not isinstance(entry.get(key, False), bool):
            raise ConfigError(f"{where}.{key}: expected true or false, got {entry[key]!r}")
    if entry.get("strip_path") and not paths:
        raise ConfigError(f"{where}.strip_path: needs paths (the prefixes to strip)")
    check_path = entry.get("check_path")
    if check_path is not None and _path_error(check_path):
        raise ConfigError(f"{where}.check_path: {_path_error(check_path)}")
    balance = entry.get("balance")
    if balance is not None and balance not in BALANCE:
        raise ConfigError(f"{where}.balance: expected one of {', '.join(BALANCE)}, got {balance!r}")
    maxconn = entry.get("maxconn")
    if maxconn is not None and not (isinstance(maxconn, int) and not isinstance(maxconn, bool) and maxconn > 0):
        raise ConfigError(f"{where}.maxconn: expected a positive integer, got {maxconn!r}")
    return Service(
        hosts, paths, bool(entry.get("strip_path")), check_path, balance, bool(entry.get("sticky")),
        _time(entry.get("slowstart"), f"{where}.slowstart"),
        _time(entry.get("timeout_server"), f"{where}.timeout_server"),
        maxconn, bool(entry.get("https_redirect")),
    )


def _checked(values: object, where: str, error: Callable[[object], str | None]) -> list[str]:
    if not isinstance(values, list):
        raise ConfigError(f"{where}: expected a list, got {values!r}")
    for i, value in enumerate(values):
        why = error(value)
        if why:
            raise ConfigError(f"{where}[{i}]: {why}")
    return [str(v) for v in values]


def _time(value: object, where: str) -> str | None:
    """An HAProxy time: a number of milliseconds, or digits with ms, s, m or h."""
    if value is None:
        return None
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(text, str):
        digits = text[: len(text) - len(next((u for u in _TIME_UNITS if text.endswith(u)), ""))]
        if digits.isdigit() and digits.isascii() and 0 < int(digits) < 10**9:
            return text
    raise ConfigError(f"{where}: expected a time such as 10s, 500ms or 2m, got {value!r}")


# --- checks shared by both sources --------------------------------------------------------


def _host_error(value: object) -> str | None:
    if not isinstance(value, str):
        return f"expected a host name, got {value!r}"
    host = value.lower()
    name = host[2:] if host.startswith("*.") else host
    labels = name.split(".")
    if not (0 < len(host) <= MAX_HOST and set(name) <= _HOST_CHARS and all(labels)):
        return f"expected a host name such as api.example.com or *.example.com, got {value!r}"
    if any(len(label) > 63 or label.startswith("-") or label.endswith("-") for label in labels):
        return f"expected a host name such as api.example.com or *.example.com, got {value!r}"
    return None


def _path_error(value: object) -> str | None:
    ok = isinstance(value, str) and value.startswith("/") and len(value) <= MAX_PATH and set(value) <= _PATH_CHARS
    if not ok:
        return f"expected a path prefix such as /api (letters, digits, - . _ ~ /), got {value!r}"
    return None


def service_routes(backend: str, service: Service, source: str) -> list[Route]:
    """The routes of one service: each host with each path (or alone), or the paths alone."""
    if service.hosts:
        return [_route(backend, host, path, source) for host in service.hosts for path in (service.paths or ("",))]
    return [_route(backend, "", path, source) for path in service.paths]


def _route(backend: str, host: str, path: str, source: str) -> Route:
    if not host:
        return Route(PATHS, path, backend, host, path, source)
    if host.startswith("*."):
        # A regex of our own making from checked characters: only '.' means something to it.
        suffix = (host[1:] + (path or "/")).replace(".", "[.]")
        return Route(WILDCARDS, f"^[^/]+{suffix}", backend, host, path, source)
    return Route(HOSTS, host + (path or "/"), backend, host, path, source)


def describe(route: Route) -> str:
    if not route.host:
        return f"path {route.path}"
    return f"host {route.host}" + (f" path {route.path}" if route.path else "")


# --- the table ----------------------------------------------------------------------------


def make_routes(services: Mapping[str, Service], servers: Iterable[Server], from_tags: bool) -> Routes:
    """Every route: the config's, then (with `from_tags`) those members ask for that no other
    backend claims; a key two backends claim from tags goes to neither, reported once."""
    config = {r.key: r for name, s in services.items() for r in service_routes(name, s, "config")}
    claims: dict[str, dict[str, Route]] = {}  # key -> backend -> the first member's route
    conflicts = []
    for server in sorted(servers, key=lambda s: s.node) if from_tags else ():
        asked, why = tag_service(server.tags)
        if why:
            conflicts.append(f"member {server.node!r}: {why}; its tag routes are ignored")
        for route in service_routes(server.backend, asked, server.node) if asked else ():
            claims.setdefault(route.key, {}).setdefault(route.backend, route)
    table = dict(config)
    for key, by_backend in sorted(claims.items()):
        mine = config.get(key)
        if mine is not None:
            others = sorted(r.source for b, r in by_backend.items() if b != mine.backend)
            if others:  # (a member of the config's own backend asking for it changes nothing)
                given = f"the config gives it to {mine.backend}"
                conflicts.append(f"{describe(mine)}: asked for by member(s) {others}; {given}")
        elif len(by_backend) > 1:
            named = " and ".join(f"{b} (member {r.source!r})" for b, r in sorted(by_backend.items()))
            conflicts.append(f"{describe(next(iter(by_backend.values())))}: claimed by {named}; routed to neither")
        else:
            table[key] = next(iter(by_backend.values()))
    ordered = sorted(table.values(), key=lambda r: (MAPS.index(r.map), -len(r.key), r.key))
    return Routes(tuple(ordered), tuple(sorted(conflicts)))


def tag_service(tags: Mapping[str, str]) -> tuple[Service | None, str]:
    """A member's `host` and `path` tags as a Service (None: no routes), and why not if invalid."""
    hosts = [h for h in tags.get("host", "").split(",") if h]
    paths = [p for p in tags.get("path", "").split(",") if p]
    for value, error in [*((h, _host_error) for h in hosts), *((p, _path_error) for p in paths)]:
        why = error(value)
        if why:
            return None, f"tag {why}"
    if not hosts and not paths:
        return None, ""
    return Service(tuple(h.lower() for h in hosts), tuple(paths)), ""
