"""haproxy.cfg from servers: the template context, and which renderer makes the text.

The built-in template is rendered by `_builtin` (plain Python: Jinja2 costs more to import
than a Python start, and Serf starts a process per event); an operator's own template
(the `template` option) by `_jinja`.
"""

from __future__ import annotations

from ..._typing import TYPE_CHECKING
from ._options import DEFAULT_SOCKET, METRICS_LUA, server_state_file
from ._routes import backend_lines, frontend_lines, server_extras
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
        server_extras={s.path: server_extras(services.get(s.backend), s.name) for g in backends.values() for s in g},
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
