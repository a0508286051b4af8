"""The YAML configuration: find it, read it (cached), validate all of it, build the dispatcher.

Validation happens in full before any handler runs, and every message names the file,
the place (`handlers[1].role`) and the problem.

PyYAML is slow to import compared with a Python start, and Serf starts a process per
event, so the parsed file is cached (with `marshal`, see _cache.py) keyed by the file's
exact bytes: YAML is only imported when the file changed.
"""

from __future__ import annotations

from . import _cache, _log
from ._typing import TYPE_CHECKING, NamedTuple
from .dispatch import Dispatcher, validate_selector
from .errors import ConfigError
from .plugins import make_handler

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

DEFAULT_PATH = "/etc/serf-handlers/config.yml"
_LOG_KEYS = {"level", "format", "file"}
_TOP_KEYS = {"log", "handlers", "metrics"}
_DEFAULT_HANDLERS: tuple[Mapping[str, object], ...] = ({"type": "log"},)


class HandlerSpec(NamedTuple):
    """One validated `handlers:` entry. `options` are the keys the handler itself takes."""

    where: str  # "handlers[1]", for messages
    type: str
    events: tuple[str, ...] | None  # None: the handler's default
    role: str | None  # None: members of every role
    options: Mapping[str, Any]


class Config(NamedTuple):
    source: str  # the file, or "(built-in default)"
    log_level: str = "info"
    log_format: str = "text"
    log_file: str | None = None
    handlers: tuple[HandlerSpec, ...] = ()
    metrics: str | None = None  # the handler's own metrics file (Prometheus text, see _metrics.py)


def find_config(cli_path: str | None, env: Mapping[str, str]) -> tuple[str, bool]:
    """The config path to use, and whether it was asked for (so it must exist)."""
    if cli_path:
        return cli_path, True
    if env.get("SERF_HANDLERS_CONFIG"):
        return env["SERF_HANDLERS_CONFIG"], True
    return DEFAULT_PATH, False


def load_config(path: str, required: bool, cache_dir: str | None = None) -> Config:
    """Read and validate the config file; a missing optional file means the defaults."""
    try:
        with open(path, "rb") as file:
            source = file.read()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: config file not found") from None
        return parse_config({}, "(built-in default)")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    return parse_config(_parse_yaml(path, source, cache_dir), path)


def parse_config(data: object, source: str) -> Config:
    """Validate already-parsed YAML data. Pure: no I/O, no imports of handlers."""
    if data is None:
        data = {}
    mapping = _mapping(data, source, "the top level")
    _no_unknown_keys(mapping, _TOP_KEYS, source, "")
    log = _mapping(mapping.get("log") or {}, source, "log")
    _no_unknown_keys(log, _LOG_KEYS, source, "log.")
    level = _string(log.get("level", "info"), source, "log.level")
    fmt = _string(log.get("format", "text"), source, "log.format")
    file = log.get("file")
    if file is not None:
        file = _string(file, source, "log.file")
    if level not in _log.LEVELS:
        raise ConfigError(f"{source}: log.level: expected one of {', '.join(_log.LEVELS)}, got {level!r}")
    if fmt not in _log.FORMATS:
        raise ConfigError(f"{source}: log.format: expected one of {', '.join(_log.FORMATS)}, got {fmt!r}")
    entries = mapping.get("handlers", _DEFAULT_HANDLERS)
    if not isinstance(entries, (list, tuple)):
        raise ConfigError(f"{source}: handlers: expected a list, got {_kind(entries)}")
    specs = tuple(_handler_spec(entry, source, f"handlers[{i}]") for i, entry in enumerate(entries))
    metrics = mapping.get("metrics")
    if metrics is not None:
        metrics = _string(metrics, source, "metrics")
        if not metrics.isprintable() or metrics.endswith("/"):
            example = "/var/lib/prometheus/node-exporter/serf_handlers.prom"
            raise ConfigError(f"{source}: metrics: expected a file path (e.g. {example}), got {metrics!r}")
    return Config(source, level, fmt, file, specs, metrics)


def build_dispatcher(config: Config) -> Dispatcher:
    """Import and create every configured handler, and register it."""
    dispatcher = Dispatcher()
    for spec in config.handlers:
        where = f"{config.source}: {spec.where} ({spec.type})"
        handler = make_handler(spec.type, spec.options, where, spec.role)
        try:
            # No `events:` means the handler's default_events; the role stays on the registration
            # even for a handler that filters members itself (see dispatch.capabilities).
            dispatcher.register(handler, *(spec.events or ()), role=spec.role, name=f"{spec.type} ({spec.where})")
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return dispatcher


def _handler_spec(entry: object, source: str, where: str) -> HandlerSpec:
    entry = _mapping(entry, source, where)
    if "type" not in entry:
        raise ConfigError(f"{source}: {where}.type: missing (a built-in name, module:attr, or a plugin name)")
    kind = _string(entry["type"], source, f"{where}.type")
    events = None
    if "events" in entry:
        raw = entry["events"]
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"{source}: {where}.events: expected a non-empty list of event selectors")
        try:
            events = tuple(validate_selector(_string(e, source, f"{where}.events")) for e in raw)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {where}.events: {exc}") from None
    role = entry.get("role")
    if role is not None:
        role = _string(role, source, f"{where}.role")
    options = {k: v for k, v in entry.items() if k not in ("type", "events", "role")}
    for key in options:
        if not isinstance(key, str):
            raise ConfigError(f"{source}: {where}: option names must be strings, got {key!r}")
    return HandlerSpec(where, kind, events, role, options)


def _parse_yaml(path: str, source: bytes, cache_dir: str | None) -> object:
    cached = _cache.read(cache_dir, path, source) if cache_dir else None
    if cached is not None:
        return cached[0]
    import yaml

    try:
        data = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        place = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: {place}invalid YAML: {problem}".replace("\n", " ")) from None
    if cache_dir:
        _cache.write(cache_dir, path, source, data)
    return data


def _mapping(value: object, source: str, where: str) -> Mapping[Any, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping, got {_kind(value)}")
    return value


def _string(value: object, source: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{source}: {where}: expected a non-empty string, got {_kind(value)}")
    return value


def _no_unknown_keys(mapping: Mapping[Any, Any], allowed: set[str], source: str, prefix: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise ConfigError(f"{source}: {prefix}{key}: unknown key (expected one of {', '.join(sorted(allowed))})")


def _kind(value: object) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]
