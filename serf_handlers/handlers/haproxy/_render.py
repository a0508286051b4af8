"""haproxy.cfg from servers: the template context, and which renderer makes the text.

The built-in template is rendered by `_builtin` (plain Python: Jinja2 costs more to import
than a Python start, and Serf starts a process per event); an operator's own template
(the `template` option) by `_jinja`.
"""

from __future__ import annotations

from ..._typing import TYPE_CHECKING
from ._options import DEFAULT_SOCKET, METRICS_LUA, server_state_file
from ._servers import by_backend, check_interval, check_options, with_ids

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._options import Options
    from ._routes import Service
    from ._servers import Server


def context(options: Options, servers: Mapping[str, Server]) -> dict[str, object]:
    """The template variables: defaults, then the operator's `vars`, then the servers (with ids)."""
    backends = by_backend(with_ids(servers), options.backend, options.backends)
    # TCP services are always there, with or without servers, and never routed to by Host.
    tcp_services = [(name, bind, backends.pop(name, [])) for name, bind in sorted(options.tcp.items())]
    services = options.backends
    values: dict[str, object] = {
        "bind": "*:80",
        "socket": options.socket or DEFAULT_SOCKET,
        "server_state_file": server_state_file(options),
        "user": "",  # workers drop root to this user and group when set
        "group": "",
        "stats_lua": METRICS_LUA,  # serves `stats_metrics_file` next to the stats page
    }
    values.update(options.vars)
    values.update(
        check_path=options.check_path,
        check_options=health_checks(options, servers),
        check_spread=options.check_spread,
        tcp_services=tcp_services,
        backends=backends,
        servers=[s for group in backends.values() for s in group],
        default_backend=options.backend,
        # Routing (`_routes`): the built-in template's lines, also usable in an operator's own.
        routing_lines=[
            *frontend_lines(routing_maps(options), services, https_port(options)), *_routes_version(options, servers)
        ],
        name_routed=[n for n in backends if n != options.backend and not (n in services and _routed(services[n]))],
        backend_lines={n: backend_lines(services.get(n), options.check_path) for n in backends},
        server_extras={  # only servers of a `backends` entry: a 10,000-server render pays nothing
            s.path: server_extras(services[name], s.name) for name, g in backends.items() if name in services for s in g
        },
    )
    return values


def routing_maps(options: Options) -> dict[str, str]:
    """Map name -> file when requests are routed through maps (`backends` or `routes_from_tags`)."""
    if not (options.backends or options.routes_from_tags):
        return {}
    from ._maps import files

    return files(options)


def https_port(options: Options) -> int | None:
    """The public HTTPS port a service's `https_redirect` sends clients to (None: no TLS)."""
    tls = options.tls
    if tls is None:
        return None
    return tls.https_redirect or int(tls.bind.split(",")[0].rpartition(":")[2])


def _routes_version(options: Options, servers: Mapping[str, Server]) -> list[str]:
    """Without an admin socket HAProxy reads changed maps only on a reload, and a reload follows
    a changed config: so the config names the routes' version (with a socket: changed live)."""
    if options.socket is not None or not routing_maps(options):
        return []
    from ._maps import version
    from ._routes import make_routes

    return [f"# routes version {version(make_routes(options.backends, servers.values(), options.routes_from_tags))}"]


def _routed(service: Service) -> bool:
    return bool(service.hosts or service.paths)


def health_checks(options: Options, servers: Mapping[str, Server]) -> str:
    """The health-check options of every server line (and runtime `add server`)."""
    return check_options(options.check_inter or check_interval(len(servers)))


def render(options: Options, servers: Mapping[str, Server]) -> str:
    """The whole haproxy.cfg for `servers`; raises a HandlerError naming a broken template, or
    (with `vars.tls_certs`) a certificate file HAProxy must not get: the config then stays as it is."""
    if options.tls is not None:
        from ._certs import check

        check(options.tls.certs, options.tls.default_cert)
    if options.template is None:
        from . import _builtin

        return _builtin.render(context(options, servers))
    from ._jinja import render as render_template

    return render_template(options.template, context(options, servers))


# --- what a `backends` entry (`_routes.Service`) adds to the config -------------------------

STICKY_COOKIE = "SERVERID"


def backend_lines(service: Service | None, check_path: str | None) -> list[str]:
    """The backend section's settings for `service` (None: no `backends` entry)."""
    path = (service and service.check_path) or check_path
    lines = [f"option httpchk GET {path}"] if path else []
    if service is None:
        return lines
    if service.balance:
        lines.append(f"balance {service.balance}")
    if service.timeout_server:
        lines.append(f"timeout server {service.timeout_server}")
    if service.sticky:
        # The server's name in a cookie HAProxy adds; a client whose server is gone is
        # sent to another one (`option redispatch`), which then sets its own.
        lines.append(f"cookie {STICKY_COOKIE} insert indirect nocache")
    if service.strip_path:
        prefixes = "|".join(p.replace(".", "[.]") for p in sorted(service.paths, key=lambda p: (-len(p), p)))
        lines.append(f"http-request replace-path ^({prefixes})/?(.*) /\\2")
    return lines


def server_extras(service: Service | None, server_name: str) -> str:
    """What a service adds to each server line and runtime `add server` (leading space)."""
    if service is None:
        return ""
    extras = [f" cookie {server_name}"] if service.sticky else []
    if service.slowstart:
        extras.append(f" slowstart {service.slowstart}")
    if service.maxconn:
        extras.append(f" maxconn {service.maxconn}")
    return "".join(extras)


def frontend_lines(maps: Mapping[str, str], services: Mapping[str, Service], https_port: int | None) -> list[str]:
    """The `frontend http` lines that route through the maps (`maps`: name -> file), in the
    order `_routes` documents; then each service's own HTTPS redirect."""
    if not maps:
        return []
    from ._routes import HOSTS, PATHS, WILDCARDS

    found = "{ var(txn.serf_backend) -m found }"
    lines = [
        "# Routes by host and path: serf-handle keeps these maps equal to the routes, live.",
        "http-request set-var(txn.serf_path) path",
        "http-request set-var(txn.serf_route) req.hdr(host),field(1,:),lower,concat(,txn.serf_path,)",
        f"http-request set-var(txn.serf_backend) var(txn.serf_route),map_beg({maps[HOSTS]})",
        f"http-request set-var(txn.serf_backend) var(txn.serf_route),map_reg({maps[WILDCARDS]}) unless {found}",
        f"http-request set-var(txn.serf_backend) var(txn.serf_path),map_beg({maps[PATHS]}) unless {found}",
    ]
    redirected = sorted(name for name, s in services.items() if s.https_redirect)
    if redirected and https_port is not None:
        port = "" if https_port == 443 else f":{https_port}"
        lines.append(
            f"http-request redirect location https://%[req.hdr(host),regsub(:[0-9]+$,)]{port}%[capture.req.uri]"
            f" code 301 if !{{ ssl_fc }} {{ var(txn.serf_backend) -m str {' '.join(redirected)} }}"
        )
    lines.append(f"use_backend %[var(txn.serf_backend)] if {found}")
    return lines
