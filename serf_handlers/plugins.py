"""Find a handler type by name and create the handler.

A `type:` is, in this order:
1. a built-in name (`log`, `haproxy`, `template`, `file_sd`, `nginx`);
2. `module:attr`, any importable callable;
3. a name in the `serf_handlers.handlers` entry-point group (scanned only in this case,
   because reading every installed distribution's metadata is slow).

The object found is either a class, called with the entry's options to make the handler,
or a plain function, which is the handler itself and takes no options.
"""

from __future__ import annotations

import sys

from ._typing import TYPE_CHECKING
from .dispatch import takes_role
from .errors import ConfigError, PluginError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from .protocols import Handler

ENTRY_POINT_GROUP = "serf_handlers.handlers"

BUILTIN: Mapping[str, str] = {
    "log": "serf_handlers.handlers.log:LogHandler",
    "haproxy": "serf_handlers.handlers.haproxy:HAProxyHandler",
    "template": "serf_handlers.handlers.template:TemplateHandler",
    "file_sd": "serf_handlers.handlers.file_sd:FileSDHandler",
    "nginx": "serf_handlers.handlers.nginx:NginxHandler",
}


def make_handler(kind: str, options: Mapping[str, Any], where: str, role: str | None) -> Handler:
    """Resolve `kind` and create its handler; every failure is a PluginError naming it.

    A class that takes its role (protocols.RoleFilter) filters members by role itself, for
    instance to notice a member whose role changed away: it gets the entry's `role` as an option.
    """
    target = resolve(kind, where)
    if role is not None and takes_role(target):
        options = {**options, "role": role}
    if isinstance(target, type):
        try:
            return target(**options)  # type: ignore[no-any-return]
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any failure of third-party code, reported by name
            raise PluginError(f"{where}: cannot create handler: {type(exc).__name__}: {exc}") from None
    if not callable(target):
        raise PluginError(f"{where}: {kind!r} is not callable")
    if options:
        raise ConfigError(f"{where}: {', '.join(sorted(options))}: unknown option(s); a function handler takes none")
    return target


def resolve(kind: str, where: str) -> object:
    if kind in BUILTIN:
        return _import(BUILTIN[kind], kind, where)
    if ":" in kind:
        return _import(kind, kind, where)
    return _entry_point(kind, where)


def _import(spec: str, kind: str, where: str) -> object:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise PluginError(f"{where}: {kind!r}: expected module:attribute")
    try:
        # importlib.import_module, without importing importlib (and warnings) on every event.
        __import__(module_name)
        module = sys.modules[module_name]
    except Exception as exc:  # noqa: BLE001 - an import can fail in any way; say which plugin
        raise PluginError(f"{where}: handler {kind!r} failed to import: {type(exc).__name__}: {exc}") from None
    target = module
    for part in attr.split("."):
        if part not in vars(target):
            raise PluginError(f"{where}: handler {kind!r}: module {module_name!r} has no attribute {attr!r}")
        target = vars(target)[part]
    return target


def _entry_point(kind: str, where: str) -> object:
    from importlib.metadata import entry_points

    found = entry_points(group=ENTRY_POINT_GROUP, name=kind)
    if not found:
        raise PluginError(
            f"{where}: unknown handler type {kind!r}: not built-in ({', '.join(BUILTIN)}), "
            f"not module:attr, and no {ENTRY_POINT_GROUP!r} entry point has that name"
        )
    entry_point = sorted(found, key=lambda ep: ep.value)[0]
    try:
        return entry_point.load()
    except Exception as exc:  # noqa: BLE001 - say which plugin failed, whatever failed
        raise PluginError(
            f"{where}: plugin {kind!r} ({entry_point.value}) failed to load: {type(exc).__name__}: {exc}"
        ) from None
