"""The `haproxy` handler's options, validated in full before any event is handled."""

from __future__ import annotations

import os

from ..._options import Option
from ..._options import parse as parse_table
from ..._typing import TYPE_CHECKING, NamedTuple
from ...errors import ConfigError
from ._servers import is_backend_name

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, TypeGuard

    from ._routes import Service

DEFAULT_CONFIG = "/etc/haproxy/haproxy.cfg"
DEFAULT_STATE = "/var/lib/serf-handlers/haproxy.json"
DEFAULT_SOCKET = "/run/haproxy/admin.sock"
ON_FAILED = ("remove", "maint")
HSTS_MAX_AGE = 63072000  # `vars.hsts: true`: two years, as Mozilla's generator sets it
# Template variables the handler itself provides; `vars` may not shadow them.
RESERVED_VARS = frozenset({"backends", "servers", "default_backend", "check_path", "check_options", "tcp_services"})
# The Lua service that serves the handler's metrics file (`vars.stats_lua` by default; templates/metrics.lua).
METRICS_LUA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "templates", "metrics.lua")


class Tls(NamedTuple):
    """TLS termination (`vars.tls_*`), as validated (`_tls_vars`)."""

    bind: str  # tls_bind: the HTTPS address(es), e.g. "*:443"
    certs: str  # tls_certs: the certificate directory, without a trailing '/'
    default_cert: str | None  # tls_default_cert: a file name in `certs`, for clients without SNI
    https_redirect: int | None  # the HTTPS port plain HTTP is redirected to; None: no redirect
    hsts: int | None  # the Strict-Transport-Security max-age in seconds; None: no header


class Stats(NamedTuple):
    """The stats frontend (`vars.stats_*`), as validated (`_stats_vars`)."""

    bind: str  # stats_bind: its address
    auth: str | None  # stats_auth: "user:password" for basic auth (never put in a message)
    metrics_file: str | None  # stats_metrics_file: the handler's metrics file, served by `lua`
    lua: str  # stats_lua: the Lua service that serves it


def tls_settings(vars: Mapping[str, Any]) -> Tls | None:
    """The TLS record of validated `vars` (or of a template context, which holds them)."""
    if not vars.get("tls_bind"):
        return None
    return Tls(str(vars["tls_bind"]), str(vars["tls_certs"]), vars.get("tls_default_cert") or None,
               vars.get("https_redirect") or None, vars.get("hsts") or None)


def stats_settings(vars: Mapping[str, Any]) -> Stats | None:
    """The stats record of validated `vars` (or of a template context, which holds them)."""
    if not vars.get("stats_bind"):
        return None
    return Stats(str(vars["stats_bind"]), vars.get("stats_auth") or None, vars.get("stats_metrics_file") or None,
                 str(vars.get("stats_lua") or METRICS_LUA))


class Options(NamedTuple):
    role: str
    port: int
    backend: str
    config: str
    template: str | None  # None: the built-in template
    vars: Mapping[str, Any]
    tls: Tls | None  # from vars.tls_* (None: no TLS termination)
    stats: Stats | None  # from vars.stats_* (None: no stats frontend)
    state: str
    check: bool
    haproxy: str
    reload: tuple[str, ...] | None
    socket: str | None
    on_failed: str
    query: str
    min_alive: float  # member-failed never takes a backend below this fraction of its servers
    check_path: str | None  # HTTP health checks of this path; None: TCP connects
    check_inter: int | None  # ms between health checks; None: by the number of servers
    tcp: Mapping[str, str]  # TCP service (backend name) -> its listen address
    backup: bool  # keep the previous config as <config>.bak
    check_spread: int  # HAProxy's `spread-checks`: each check interval varies by up to this percent
    reload_above: int  # with `socket`: a change of more servers than this is one reload (it costs less)
    backends: Mapping[str, Service]  # routes and settings per backend (`_routes`)
    routes_from_tags: bool  # members' `host` and `path` tags add routes to their backend


def _role(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"role: expected a non-empty string, got {value!r}")
    return value


def _port(value: object) -> int:
    if not isinstance(value, int) or not _is_port(value):
        raise ConfigError(f"port: expected an integer from 1 to 65535, got {value!r}")
    return value


def _backend(value: object) -> str:
    if not is_backend_name(value):
        raise ConfigError(
            f"backend: expected 1-63 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit, got {value!r}"
        )
    return value


def _template(value: object) -> str | None:
    if value is None:
        return None
    template = _path(value, "template")
    if not os.path.isfile(template):
        raise ConfigError(f"template: {template}: no such file")
    return template


def _on_failed(value: object) -> str:
    if value not in ON_FAILED:
        raise ConfigError(f"on_failed: expected one of {', '.join(ON_FAILED)}, got {value!r}")
    return str(value)


# Every option: name, kind (see serf_handlers/_options.py), default, required, its check.
OPTIONS = (
    Option("role", "text", "web", False, _role),
    Option("port", "port", 80, False, _port),
    Option("backend", "text", "web", False, _backend),
    Option("config", "path", DEFAULT_CONFIG, False, lambda v: _path(v, "config")),
    Option("template", "path", None, False, _template),
    Option("vars", "mapping", {}, False, lambda v: _vars({} if v is None else v)),
    Option("state", "path", DEFAULT_STATE, False, lambda v: _path(v, "state")),
    Option("check", "bool", True, False, lambda v: _flag(v, "check")),
    Option("haproxy", "path", "haproxy", False, lambda v: _path(v, "haproxy")),
    Option("reload", "argv", None, False, lambda v: None if v is None else _argv(v)),
    Option("socket", "path", None, False, lambda v: None if v is None else _path(v, "socket")),
    Option("on_failed", "text", "remove", False, _on_failed),
    Option("query", "query", "backends"),
    Option("min_alive", "fraction", 0.5, False, lambda v: _fraction(v, "min_alive")),
    Option("check_path", "text", None, False, lambda v: _check_path(v)),
    Option("check_inter", "int", None, False, lambda v: _check_inter(v)),
    Option("tcp", "mapping", None, False),  # checked against `backend` in `parse`
    Option("backup", "bool", False, False, lambda v: _flag(v, "backup")),
    Option("check_spread", "int", 5, False, lambda v: _check_spread(v)),
    Option("reload_above", "int", 250, False, lambda v: _reload_above(v)),
    Option("backends", "mapping", None, False),  # checked in `parse`
    Option("routes_from_tags", "bool", False, False, lambda v: _flag(v, "routes_from_tags")),
)


def parse(**options: object) -> Options:
    """The options, checked one by one from `OPTIONS`, then together."""
    values = parse_table(OPTIONS, {key: value for key, value in options.items() if key not in ("tcp", "backends")})
    vars: Mapping[str, Any] = values["vars"]  # type: ignore[assignment]
    values["tls"], values["stats"] = tls_settings(vars), stats_settings(vars)
    values["tcp"] = _tcp(options.get("tcp"), str(values["backend"]))
    values["backends"] = _services(options.get("backends"), values["tcp"], values["tls"])  # type: ignore[arg-type]
    if values["socket"] is not None:
        _socket(values["socket"], values["reload"])  # type: ignore[arg-type]
    return Options(**values)  # type: ignore[arg-type]


def server_state_file(options: Options) -> str:
    """Where HAProxy loads servers' state from at start-up (saved before every reload):
    `vars.server_state_file`, else next to the config."""
    return str(options.vars.get("server_state_file") or f"{os.path.abspath(options.config)}.state")


def _socket(socket: object, reload: tuple[str, ...] | None) -> str:
    path = _path(socket, "socket")
    if reload is None:
        # Without a fallback, a change the runtime API cannot make (a new backend, or
        # HAProxy's servers unknown after a crash or a lost state file) could never be applied.
        raise ConfigError("socket: needs `reload` as well, the fallback for what the runtime API cannot do")
    return path


def _check_path(value: object) -> str | None:
    if value is None:
        return None
    if not _is_word(value) or not value.startswith("/"):
        raise ConfigError(f"check_path: expected a path such as /healthz (no spaces, quotes or '#'), got {value!r}")
    return value


def _tcp(value: object, http_backend: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"tcp: expected a mapping of service name to listen address, got {type(value).__name__}")
    for name, bind in value.items():
        if not is_backend_name(name):
            raise ConfigError(
                f"tcp: {name!r}: a service name is 1-63 of A-Z a-z 0-9 _ . -, starting with a letter or digit"
            )
        if name == http_backend:
            raise ConfigError(f"tcp.{name}: the same name as the HTTP backend `backend: {http_backend}`")
        if not _is_line(bind):
            raise ConfigError(f"tcp.{name}: expected a listen address such as '*:6379', got {bind!r}")
    return dict(value)


def _services(value: object, tcp: Mapping[str, str], tls: Tls | None) -> dict[str, Service]:
    if value is None:
        return {}  # no routing: `_routes` stays unimported (a Serf event's start-up)
    from ._routes import parse_services

    services = parse_services(value, is_backend_name)
    for name, service in services.items():
        if name in tcp:
            raise ConfigError(f"backends.{name}: also a TCP service (`tcp.{name}`)")
        if service.https_redirect and tls is None:
            raise ConfigError(f"backends.{name}.https_redirect: needs vars.tls_bind and vars.tls_certs (TLS)")
    return services


def _check_inter(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 100 <= value <= 60000:
        raise ConfigError(f"check_inter: expected milliseconds from 100 to 60000 (or null: by size), got {value!r}")
    return value


def _check_spread(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 50:
        raise ConfigError(f"check_spread: expected a percent from 0 to 50, got {value!r}")
    return value


def _reload_above(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"reload_above: expected a number of servers (0 or more), got {value!r}")
    return value


def _flag(value: object, option: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{option}: expected true or false, got {value!r}")
    return value


def _fraction(value: object, option: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ConfigError(f"{option}: expected a fraction from 0 to 1 (e.g. 0.5), got {value!r}")
    return float(value)


def _vars(vars: object) -> dict[str, Any]:
    if not isinstance(vars, dict):
        raise ConfigError(f"vars: expected a mapping, got {type(vars).__name__}")
    for key in vars:
        if not isinstance(key, str) or not key.isidentifier():
            raise ConfigError(f"vars: {key!r}: a variable name must be an identifier")
        if key in RESERVED_VARS:
            raise ConfigError(f"vars.{key}: reserved: the handler provides it")
    for key in ("socket", "server_state_file", "user", "group"):
        if key in vars and not _is_word(vars[key]):
            raise ConfigError(f"vars.{key}: expected a non-empty word without spaces, quotes or '#'")
    if "bind" in vars and not _is_line(vars["bind"]):
        raise ConfigError("vars.bind: expected a non-empty, single-line string without '#' (e.g. '*:80')")
    _stats_vars(vars)
    return _tls_vars(dict(vars))


def _stats_vars(vars: Mapping[str, Any]) -> None:
    """The built-in template's stats frontend: `stats_bind`, `stats_auth`, `stats_metrics_file`
    (and `stats_lua`, by default the package's metrics.lua). The password is never put in a message."""
    if "stats_bind" in vars and not _is_line(vars["stats_bind"]):
        raise ConfigError("vars.stats_bind: expected a single-line address without '#' (e.g. 127.0.0.1:8404)")
    auth = vars.get("stats_auth")
    if auth is not None:
        user, colon, password = auth.partition(":") if isinstance(auth, str) else ("", "", "")
        if not (colon and _is_name(user) and _is_word(password) and "$" not in password):
            raise ConfigError(
                "vars.stats_auth: expected 'user:password' (user: letters, digits, _ . -; password: no spaces, "
                "quotes, '#', '$' or backslashes); the value is not shown"
            )
    for key in ("stats_lua", "stats_metrics_file"):
        if key in vars and not (isinstance(vars[key], str) and vars[key] and _is_name(vars[key].replace("/", ""))):
            raise ConfigError(f"vars.{key}: expected a path of letters, digits, _ . - and /, got {vars[key]!r}")
    if any(key in vars for key in ("stats_auth", "stats_lua", "stats_metrics_file")) and "stats_bind" not in vars:
        raise ConfigError("vars.stats_bind: needed by vars.stats_auth and vars.stats_metrics_file (the stats frontend)")


def _tls_vars(vars: dict[str, Any]) -> dict[str, Any]:
    """The built-in template's TLS termination: `tls_bind`, `tls_certs`, `tls_default_cert`,
    `https_redirect`, `hsts`. Returns `vars` with `tls_certs` without a trailing '/' (HAProxy
    names a directory's certificates `<dir>/<file>`, the names `serf-handle certs` uses),
    `https_redirect` as the port to redirect to, and `hsts` as a max-age in seconds."""
    if ("tls_bind" in vars) != ("tls_certs" in vars):
        raise ConfigError("vars.tls_bind, vars.tls_certs: set both (the HTTPS address and the certificate directory)")
    if "tls_bind" not in vars:
        for key in ("tls_default_cert", "https_redirect", "hsts"):
            if key in vars:
                raise ConfigError(f"vars.{key}: needs vars.tls_bind and vars.tls_certs (TLS termination)")
        return vars
    bind = vars["tls_bind"]
    ports = [part.rpartition(":")[2] for part in bind.split(",")] if _is_word(bind) else []
    if not ports or not all(p.isdigit() and 1 <= int(p) <= 65535 for p in ports):
        raise ConfigError(f"vars.tls_bind: expected an address with a port, such as '*:443', got {bind!r}")
    certs = vars["tls_certs"]
    if not (isinstance(certs, str) and certs.startswith("/") and _is_name(certs.replace("/", "") or "/")):
        raise ConfigError(f"vars.tls_certs: expected an absolute directory path of letters, digits, _ . - and /, "
                          f"got {certs!r}")
    vars["tls_certs"] = certs.rstrip("/") or "/"
    default = vars.get("tls_default_cert")
    if default is not None and not (isinstance(default, str) and _is_name(default) and default not in (".", "..")):
        raise ConfigError(f"vars.tls_default_cert: expected a file name in vars.tls_certs, got {default!r}")
    redirect = vars.get("https_redirect", False)
    if redirect is True:
        vars["https_redirect"] = int(ports[0])
    elif not (redirect is False or _is_port(redirect)):
        raise ConfigError(f"vars.https_redirect: expected true, false or the public HTTPS port, got {redirect!r}")
    hsts = vars.get("hsts", False)
    if hsts is True:
        vars["hsts"] = HSTS_MAX_AGE
    elif not (hsts is False or (isinstance(hsts, int) and not isinstance(hsts, bool) and hsts > 0)):
        raise ConfigError(f"vars.hsts: expected true, false or a max-age in seconds, got {hsts!r}")
    return vars


def _is_port(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def _is_name(value: str) -> bool:
    return bool(value) and all(c.isascii() and (c.isalnum() or c in "_.-") for c in value)


def _argv(reload: object) -> tuple[str, ...]:
    if isinstance(reload, str):
        raise ConfigError("reload: expected an argv list such as [kill, -USR2, '1234'], not a shell string")
    if not isinstance(reload, list) or not reload or not all(isinstance(a, str) and a for a in reload):
        raise ConfigError(f"reload: expected a non-empty list of non-empty strings, got {reload!r}")
    return tuple(reload)


def _path(value: object, option: str) -> str:
    # Paths can end up inside haproxy.cfg (socket, server-state-file next to the config).
    if not _is_word(value):
        raise ConfigError(f"{option}: expected a non-empty path without spaces, quotes or '#', got {value!r}")
    return value


def _is_line(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and bool(value.strip()) and value.isprintable() and "#" not in value


def _is_word(value: object) -> TypeGuard[str]:
    return (
        isinstance(value, str)
        and bool(value)
        and value.isprintable()
        and not any(c.isspace() or c in "\"'#\\" for c in value)
    )
