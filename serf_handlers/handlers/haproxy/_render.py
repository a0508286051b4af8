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
    from ._servers import Server


def context(options: Options, servers: Mapping[str, Server]) -> dict[str, object]:
    """The template variables: defaults, then the operator's `vars`, then the servers (with ids)."""
    backends = by_backend(with_ids(servers), options.backend)
    # TCP services are always there, with or without servers, and never routed to by Host.
    tcp_services = [(name, bind, backends.pop(name, [])) for name, bind in sorted(options.tcp.items())]
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
    )
    return values


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
